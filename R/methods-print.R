#' Summarise an mlnpe fit
#'
#' Prints the posterior as brms does: the model, then the group-level effects (standard deviations and
#' correlations), the population-level effects and the family-specific parameters, each with `Estimate`
#' (mean), `Est.Error` (SD) and a credible interval. Where brms reports MCMC convergence (Rhat, ESS), mlnpe
#' reports how close the amortized draws are to the exact posterior: the Pareto k-hat of PSIS and the
#' effective sample size of the importance weights (k-hat at most 0.7 is good; a larger k-hat calls for
#' `refine = TRUE`, more training or MCMC). Refined fits (see `refine` in [mlnpe()]) report their HMC
#' diagnostics (R-hat, bulk ESS, divergences) as well.
#'
#' @param object,x An `mlnpefit` (or its summary).
#' @param prob Probability mass of the credible intervals.
#' @param robust Use the median and MAD instead of the mean and SD.
#' @param digits Digits to print.
#' @param ... Unused.
#' @return `summary()`: an object of class `mlnpesummary` with elements `formula`, `family`, `data_name`,
#'   `nobs`, `ngrps`, `ndraws`, `pareto_k`, `ess`, `fixed`, `random` (a list per grouping factor) and
#'   `spec_pars` (data frames of Estimate, Est.Error and the interval bounds).
#' @name summary-mlnpefit
NULL

#' @rdname summary-mlnpefit
#' @export
summary.mlnpefit <- function(object, prob = 0.95, robust = FALSE, ...) {
  check_number(prob, "prob", 0, 1, open = c("low", "high"))
  check_flag(robust, "robust")
  probs <- c((1 - prob) / 2, 1 - (1 - prob) / 2)
  ci <- paste0(c("l-", "u-"), format(prob * 100), "% CI")
  tidy <- function(m, rows) {
    out <- as.data.frame(summarise_columns(m, probs, robust))
    names(out) <- c("Estimate", "Est.Error", ci)
    rownames(out) <- rows
    out
  }
  b <- b_names(object)
  fixed <- tidy(draws_matrix(object, b), sub("^b_", "", b))
  factors <- grouping_factors(object)
  random <- lapply(factors, function(f) {
    cp <- cor_pairs(object, f)
    rows <- c(sprintf("sd(%s)", f$z_names), vapply(cp$pairs, function(p) sprintf("cor(%s,%s)", p[1], p[2]), character(1)))
    tidy(draws_matrix(object, c(sprintf("sd_%s__%s", f$group, f$z_names), cp$names)), rows)
  })
  random <- stats::setNames(random, vapply(factors, `[[`, character(1), "group"))
  spec_pars <- if (length(object$aux)) tidy(draws_matrix(object, object$aux), object$aux) else NULL
  structure(list(
    formula = object$formula_text, family = object$family, aux = object$aux, data_name = object$data_name,
    nobs = object$nobs, ngrps = ngrps.mlnpefit(object), ndraws = object$ndraws,
    pareto_k = object$diagnostics$pareto_k, ess = object$diagnostics$ess,
    khat_threshold = object$diagnostics$khat_threshold, resampled = object$diagnostics$resampled,
    refined = isTRUE(object$diagnostics$refined), refine = object$diagnostics$refine,
    fixed = fixed, random = random, spec_pars = spec_pars, prior = object$prior,
    training = object$amortizer$training
  ), class = "mlnpesummary")
}

#' @rdname summary-mlnpefit
#' @export
print.mlnpesummary <- function(x, digits = 2, ...) {
  links <- paste(c(paste("mu =", x$family$link), paste(x$aux, "= identity")), collapse = "; ")
  cat(" Family: ", x$family$family, " \n", sep = "")
  cat("  Links: ", links, " \n", sep = "")
  cat("Formula: ", x$formula, " \n", sep = "")
  cat("   Data: ", x$data_name, " (Number of observations: ", x$nobs, ") \n", sep = "")
  if (isTRUE(x$refined)) {
    cat("  Draws: ", x$ndraws, " draws of the exact posterior by HMC through the amortized posterior (refined)\n",
        sep = "")
    cat("    HMC: ", refine_line(x$refine), "\n", sep = "")
    cat("   PSIS: ", psis_line(x$pareto_k, x$ess, x$khat_threshold, verdict = FALSE),
        " of the amortized draws it replaced\n", sep = "")
  } else {
    cat("  Draws: ", x$ndraws, if (isTRUE(x$resampled)) " importance-resampled" else " independent",
        " draws from the amortized posterior (NPE)\n", sep = "")
    cat("   PSIS: ", psis_line(x$pareto_k, x$ess, x$khat_threshold), "\n", sep = "")
  }
  if (!is.null(x$training)) cat("  Train: ", training_line(x$training), "\n", sep = "")
  cat("\nGroup-Level Effects: \n")
  for (g in names(x$random)) {
    cat("~", g, " (Number of levels: ", x$ngrps[[g]], ") \n", sep = "")
    print_table(x$random[[g]], digits)
    cat("\n")
  }
  cat("Population-Level Effects: \n")
  print_table(x$fixed, digits)
  cat("\n")
  if (!is.null(x$spec_pars)) {
    cat("Family Specific Parameters: \n")
    print_table(x$spec_pars, digits)
    cat("\n")
  }
  if (isTRUE(x$refined)) {
    cat("Draws were sampled by Hamiltonian Monte Carlo on the exact posterior, in the base space of an amortized\n",
        "neural posterior (ML-NPE). R-hat near 1 (at most 1.05 for these many short chains), no divergences and\n",
        "a bulk ESS above 100 mean the chains have mixed.\n", sep = "")
  } else {
    cat("Draws were sampled by an amortized neural posterior (ML-NPE). Pareto k-hat and the ESS of\n",
        "Pareto-smoothed importance weights (PSIS) compare them with the exact posterior: k-hat <= 0.7 means\n",
        "the draws are reliable; larger values call for refine = TRUE, more training, or MCMC (e.g. brms).\n",
        sep = "")
  }
  invisible(x)
}

refine_line <- function(r) {
  if (is.null(r)) return("not run")
  verdict <- if (length(unlist(r$problems))) "check the chains" else "converged"
  sprintf("%d chains, max R-hat = %.3f, min bulk ESS = %.0f, %d divergences, %.1f s (%s)", as.integer(r$chains),
          r$rhat_max, r$ess_bulk_min, as.integer(r$divergences), r$seconds, verdict)
}

# How training ended (Python's TrainHistory: `stopped`, the last certificate check's k-hat).
training_line <- function(t) {
  if (is.null(t) || !nzchar(t$stopped %||% "")) return("stop reason not recorded")
  where <- sprintf("%d steps on %s", as.integer(t$steps), t$device)
  if (identical(t$stopped, "certificate")) {
    return(sprintf("stopped at the certificate: training data's k-hat %.2f at step %d; %s", t$khat,
                   as.integer(t$khat_step), where))
  }
  if (is.null(t$khat)) return(sprintf("the whole budget (%s), without certificate checks; %s", t$stopped, where))
  sprintf("budget (%s) spent before the certificate; last check: training data's k-hat %.2f at step %d; %s",
          t$stopped, t$khat, as.integer(t$khat_step), where)
}

psis_line <- function(k, ess, threshold, verdict = TRUE) {
  if (is.null(k) || is.na(k)) return("not computed")
  line <- sprintf("Pareto k-hat = %s, ESS = %.0f", format(round(k, 2), nsmall = 2), ess)
  if (!verdict) return(line)
  sprintf("%s (%s)", line, if (k <= 0.7) "good" else "bad: refine = TRUE, train longer, or use MCMC")
}

print_table <- function(df, digits) {
  out <- df
  out[] <- lapply(df, function(col) format(round(col, digits), nsmall = digits))
  print(out, quote = FALSE, right = TRUE)
}

#' @rdname summary-mlnpefit
#' @export
print.mlnpefit <- function(x, digits = 2, ...) {
  print(summary.mlnpefit(x, ...), digits = digits)
  invisible(x)
}
