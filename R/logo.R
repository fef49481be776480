#' Leave-one-group-out cross-validation
#'
#' For each group, the amortizer fits the data without that group (an instant refit), draws the held-out
#' group's effects from their prior given each global draw (`nsim` draws per draw, r ~ MVN(0, Sigma)) and
#' computes the log predictive density of the group's observations, averaged over both with log-sum-exp:
#' the expected log predictive density of a new group. brms needs one MCMC refit per group for the same
#' quantity (`kfold(fit, group = )`).
#'
#' The result has loo's shape (`estimates` and `pointwise`, class `c("logo", "loo")`), so
#' [loo::loo_compare()] compares models fitted to the same data.
#'
#' @param fit An `mlnpefit`.
#' @param ndraws Draws of each refit.
#' @param nsim Draws of the held-out group's effects per draw.
#' @param seed Seed (`NULL`: drawn from R's generator).
#' @return An object of class `c("logo", "loo")`: `estimates` (rows `elpd_logo` and `logoic`, columns
#'   `Estimate` and `SE`), `pointwise` (one row per group: `elpd_logo`, `logoic`), `diagnostics`
#'   (`pareto_k` of each refit) and `group`, `nobs` (rows per group).
#' @examples
#' \dontrun{
#' loo::loo_compare(logo(fit1), logo(fit2))
#' }
#' @export
logo <- function(fit, ndraws = 1000, nsim = 20, seed = NULL) {
  if (!inherits(fit, "mlnpefit")) {
    mlnpe_abort(sprintf("`fit` must be an mlnpefit, not %s.", describe_class(fit)), "mlnpe_argument_error")
  }
  ndraws <- check_count(ndraws, "ndraws")
  nsim <- check_count(nsim, "nsim")
  seed <- check_seed(seed)
  spec <- fit$spec
  value <- py_logo(fit$amortizer$path, encode_data(fit$data, spec$vars, spec$response, fit$family), ndraws, nsim,
                   seed)
  new_logo(as.numeric(unlist(value$elpd)), as.character(unlist(value$levels)), fit$group,
           as.integer(unlist(value$nobs)), vapply(value$pareto_k, function(k) k %||% NA_real_, numeric(1)),
           ndraws, nsim)
}

new_logo <- function(elpd, levels, group, nobs, pareto_k, ndraws, nsim) {
  n <- length(elpd)
  se <- sqrt(n * stats::var(elpd))
  estimates <- matrix(c(sum(elpd), -2 * sum(elpd), se, 2 * se), nrow = 2L,
                      dimnames = list(c("elpd_logo", "logoic"), c("Estimate", "SE")))
  pointwise <- cbind(elpd_logo = elpd, logoic = -2 * elpd)
  rownames(pointwise) <- levels
  structure(list(estimates = estimates, pointwise = pointwise, diagnostics = list(pareto_k = pareto_k),
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
