#' Leave-one-group-out cross-validation
#'
#' For each group, the amortizer fits the data without that group (an instant refit) and computes the log
#' predictive density of the group's observations as a new group: the likelihood averaged over the refit's
#' global draws (weighted by their PSIS weights when the refit's k-hat is at most 0.7) and over the held-out
#' group's effects. The integral over the effects is importance-sampled with `nsim` draws per global draw from
#' an even mixture of the network's local posterior for that group and the prior r ~ MVN(0, Sigma), which is
#' unbiased and much less noisy than prior draws alone when groups have many rows. brms needs one MCMC refit
#' per group for the same quantity (`kfold(fit, group = )`).
#'
#' With several grouping factors, `group` names the factor whose levels are left out: by default the primary
#' factor, the one with the most levels (`fit$group`). For another factor, each level's rows are left out and
#' predicted as those of a new level: its effects drawn from their distribution given each draw of the refit (as
#' brms's `kfold(group = )` with `sample_new_levels = "gaussian"`), the effects of groups of the primary factor
#' from the refit where they keep rows, and from their distribution where all their rows are left out.
#'
#' The refits are never refined by HMC (`refine` in [mlnpe()]): that would cost seconds to a minute per group.
#' Their k-hats (in `diagnostics`) say how far each amortized refit is from its exact posterior.
#'
#' The result has loo's shape (`estimates` and `pointwise`, class `c("logo", "loo")`), so
#' [loo::loo_compare()] compares models fitted to the same data.
#'
#' @param fit An `mlnpefit`.
#' @param ndraws Draws of each refit.
#' @param nsim Draws of the held-out group's effects per draw.
#' @param seed Seed (`NULL`: drawn from R's generator).
#' @param group The grouping factor whose levels are left out (`NULL`: the primary one, `fit$group`).
#' @return An object of class `c("logo", "loo")`: `estimates` (rows `elpd_logo` and `logoic`, columns
#'   `Estimate` and `SE`), `pointwise` (one row per group: `elpd_logo`, `logoic`), `diagnostics`
#'   (`pareto_k` of each refit; `ess_local`, the effective sample size of the `ndraws` x `nsim` importance
#'   weights of each group's estimate) and `group`, `nobs` (rows per group).
#' @examples
#' \dontrun{
#' loo::loo_compare(logo(fit1), logo(fit2))
#' }
#' @export
logo <- function(fit, ndraws = 1000, nsim = 20, seed = NULL, group = NULL) {
  if (!inherits(fit, "mlnpefit")) {
    mlnpe_abort(sprintf("`fit` must be an mlnpefit, not %s.", describe_class(fit)), "mlnpe_argument_error")
  }
  ndraws <- check_count(ndraws, "ndraws")
  nsim <- check_count(nsim, "nsim")
  seed <- check_seed(seed)
  factors <- vapply(grouping_factors(fit), `[[`, character(1), "group")
  group <- group %||% fit$group
  if (!is.character(group) || length(group) != 1L || !group %in% factors) {
    mlnpe_abort(sprintf("`group` is %s, which is no grouping factor of this fit (%s).", describe_value(group),
                        paste0("\"", factors, "\"", collapse = ", ")), "mlnpe_argument_error")
  }
  spec <- fit$spec
  value <- py_logo(fit$amortizer$path, encode_data(fit$data, spec$vars, spec$response, fit$family, spec$groups),
                   ndraws, nsim, seed, if (identical(group, fit$group)) NULL else group)
  new_logo(as.numeric(unlist(value$elpd)), as.character(unlist(value$levels)), group,
           as.integer(unlist(value$nobs)), vapply(value$pareto_k, function(k) k %||% NA_real_, numeric(1)),
           ndraws, nsim, as.numeric(unlist(value$ess_local)))
}

new_logo <- function(elpd, levels, group, nobs, pareto_k, ndraws, nsim, ess_local = NULL) {
  n <- length(elpd)
  se <- sqrt(n * stats::var(elpd))
  estimates <- matrix(c(sum(elpd), -2 * sum(elpd), se, 2 * se), nrow = 2L,
                      dimnames = list(c("elpd_logo", "logoic"), c("Estimate", "SE")))
  pointwise <- cbind(elpd_logo = elpd, logoic = -2 * elpd)
  rownames(pointwise) <- levels
  structure(list(estimates = estimates, pointwise = pointwise,
                 diagnostics = list(pareto_k = pareto_k, ess_local = ess_local),
                 group = group, nobs = nobs),
            dims = c(ndraws, n), nsim = nsim, class = c("logo", "loo"))
}

#' @export
print.logo <- function(x, digits = 1, ...) {
  dims <- attr(x, "dims")
  cat("\nLeave-one-group-out cross-validation over ", dims[2L], " levels of '", x$group, "'\n", sep = "")
  cat("(", dims[1L], " draws per refit x ", attr(x, "nsim"), " draws of the held-out group's effects)\n\n", sep = "")
  est <- x$estimates
  print(format(round(as.data.frame(est), digits), nsmall = digits), quote = FALSE)
  k <- x$diagnostics$pareto_k
  if (length(k) && any(!is.na(k))) {
    bad <- sum(k > 0.7, na.rm = TRUE)
    cat(sprintf("\nPareto k-hat of the refits: max %.2f; %d of %d above 0.7%s\n", max(k, na.rm = TRUE), bad,
                length(k), if (bad) " (those refits are unreliable: train longer)" else ""))
  }
  invisible(x)
}
