# Reference posterior for the "Getting started" vignette: brms (rstan backend) on lme4's sleepstudy, with the
# priors the vignette gives mlnpe. Writes one row per parameter (posterior mean, sd, 2.5% / 50% / 97.5%
# quantiles, R-hat, bulk ESS) to inst/extdata/sleepstudy_brms.csv, so that the vignette can compare with Stan
# without compiling a Stan model (about 70 s and 2 GB of RAM) every time it is built.
#
# Run it once from the repository root, with Debian's rstan able to find Boost (scripts/setup_r.sh builds the
# BH shadow library; see shared/notes/R-CONVENTIONS.md §0.4):
#   R_LIBS=$HOME/R/bh-shadow Rscript inst/scripts/sleepstudy_brms.R [output.csv]
# Keep the model and priors in step with vignettes/getting-started.Rmd.

args <- commandArgs(trailingOnly = TRUE)
out <- if (length(args)) args[[1L]] else file.path("inst", "extdata", "sleepstudy_brms.csv")

for (pkg in c("brms", "rstan", "lme4", "posterior")) {
  if (!requireNamespace(pkg, quietly = TRUE)) stop("This script needs the R package '", pkg, "'.", call. = FALSE)
}
if (!dir.exists(system.file("include", "boost", package = "BH"))) {
  stop("rstan cannot find the Boost headers: BH has no include/boost. Put a BH with headers first on ",
       "R_LIBS, e.g. R_LIBS=$HOME/R/bh-shadow (built by scripts/setup_r.sh).", call. = FALSE)
}

data(sleepstudy, package = "lme4")
# The vignette's priors: proper normal(0, 20) on the population-level slope; brms's defaults elsewhere
# (they are proper: student_t on Intercept, sd and sigma, lkj(1) on the correlation).
prior <- brms::prior(normal(0, 20), class = b)
started <- proc.time()[["elapsed"]]
fit <- brms::brm(Reaction ~ Days + (1 + Days | Subject), data = sleepstudy, family = gaussian(),
                 prior = prior, backend = "rstan", chains = 4, iter = 3000, warmup = 1000, cores = 1,
                 seed = 2024, refresh = 0, silent = 2)
seconds <- proc.time()[["elapsed"]] - started

draws <- posterior::as_draws_df(fit)
keep <- setdiff(posterior::variables(draws), c("lprior", "lp__"))
draws <- posterior::subset_draws(draws, variable = keep)
q <- function(x) stats::quantile(x, c(0.025, 0.5, 0.975), names = FALSE)
summary <- posterior::summarise_draws(draws, mean = mean, sd = stats::sd, q = q, rhat = posterior::rhat,
                                      ess_bulk = posterior::ess_bulk)
summary <- as.data.frame(summary)
names(summary) <- c("variable", "mean", "sd", "q2.5", "q50", "q97.5", "rhat", "ess_bulk")
summary[-1] <- lapply(summary[-1], function(x) signif(as.numeric(unclass(x)), 6))  # drop pillar classes

sampler <- rstan::get_sampler_params(fit$fit, inc_warmup = FALSE)
divergent <- sum(vapply(sampler, function(s) sum(s[, "divergent__"]), numeric(1)))
if (divergent > 0 || any(summary$rhat > 1.01)) {
  warning(sprintf("The reference fit has %d divergent transitions and max R-hat %.3f.", divergent,
                  max(summary$rhat)), call. = FALSE)
}

dir.create(dirname(out), showWarnings = FALSE, recursive = TRUE)
utils::write.csv(summary, out, row.names = FALSE)
cat(sprintf("brms %s / rstan %s: %d draws (4 chains x 2000), %d divergent, max R-hat %.3f, %.0f s (incl. compile)\n",
            format(utils::packageVersion("brms")), format(utils::packageVersion("rstan")), posterior::ndraws(draws),
            divergent, max(summary$rhat), seconds))
cat("Wrote", out, "\n")
print(utils::head(summary, 6), row.names = FALSE)
