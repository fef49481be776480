# Population- and group-level effects, variance components and model information, in brms's output shapes.

summarise_columns <- function(m, probs = c(0.025, 0.975), robust = FALSE) {
  est <- if (robust) apply(m, 2, stats::median) else colMeans(m)
  err <- if (robust) apply(m, 2, stats::mad) else apply(m, 2, stats::sd)
  q <- matrix(apply(m, 2, stats::quantile, probs = probs, names = FALSE), ncol = length(probs), byrow = TRUE)
  out <- cbind(est, err, q)
  dimnames(out) <- list(colnames(m), c("Estimate", "Est.Error", paste0("Q", probs * 100)))
  out
}

b_names <- function(x) grep("^b_", variables.mlnpefit(x), value = TRUE)

# The grouping factors of a fit, the primary one (whose levels the data set) first: each a list of its name
# (`group`), `levels` and group-level coefficients (`z_names`).
grouping_factors <- function(x) {
  c(list(list(group = x$group, levels = x$levels, z_names = x$z_names)), x$crossed)
}

r_names <- function(f, coef) {
  sprintf("r_%s[%s,%s]", f$group, gsub(" ", ".", f$levels, fixed = TRUE), coef)
}

cor_pairs <- function(x, f) {
  z <- f$z_names
  pairs <- list()
  for (j in seq_along(z)) for (i in seq_len(j - 1L)) pairs[[length(pairs) + 1L]] <- c(z[i], z[j])
  names <- vapply(pairs, function(p) sprintf("cor_%s__%s__%s", f$group, p[1], p[2]), character(1))
  keep <- names %in% variables.mlnpefit(x)
  list(pairs = pairs[keep], names = names[keep])
}

#' Population-level effects, group-level effects and coefficients
#'
#' As in brms: `fixef()` summarises the population-level effects, `ranef()` the group-level effects of each
#' level, `coef()` their sums (the level-specific coefficients), `VarCorr()` the group-level standard
#' deviations, correlations and covariances (and the residual SD of gaussian and student models).
#'
#' @param object,x An `mlnpefit`.
#' @param summary Summarise the draws (`TRUE`) or return them.
#' @param robust Use the median and MAD instead of the mean and SD.
#' @param probs Quantiles to report.
#' @param sigma Ignored (part of the generic).
#' @param ... Unused.
#' @return `fixef()`: a coefficients x (Estimate, Est.Error, Q2.5, Q97.5) matrix, or a draws x coefficients
#'   matrix. `ranef()`, `coef()`: a list with one element per grouping factor, an array levels x statistics x
#'   coefficients (or draws x levels x coefficients). `VarCorr()`: a list per grouping factor with `sd`, `cor`
#'   and `cov`, plus `residual__` where the family has a residual SD.
#' @name effects-mlnpefit
NULL

#' @rdname effects-mlnpefit
#' @method fixef mlnpefit
#' @export
fixef.mlnpefit <- function(object, summary = TRUE, robust = FALSE, probs = c(0.025, 0.975), ...) {
  check_summary_args(summary, robust, probs)
  names <- b_names(object)
  m <- draws_matrix(object, names)
  colnames(m) <- sub("^b_", "", names)
  if (!summary) {
    dimnames(m) <- list(draw = NULL, variable = colnames(m))
    return(m)
  }
  summarise_columns(m, probs, robust)
}

ranef_draws <- function(object, f) {
  z <- f$z_names
  out <- array(NA_real_, c(object$ndraws, length(f$levels), length(z)), dimnames = list(NULL, f$levels, z))
  for (k in seq_along(z)) out[, , k] <- draws_matrix(object, r_names(f, z[k]))
  out
}

summarise_array <- function(a, probs, robust) {
  stats_names <- c("Estimate", "Est.Error", paste0("Q", probs * 100))
  out <- array(NA_real_, c(dim(a)[2L], length(stats_names), dim(a)[3L]),
               dimnames = list(dimnames(a)[[2L]], stats_names, dimnames(a)[[3L]]))
  for (k in seq_len(dim(a)[3L])) {
    m <- a[, , k, drop = FALSE]
    dim(m) <- dim(a)[1:2]
    colnames(m) <- dimnames(a)[[2L]]
    out[, , k] <- summarise_columns(m, probs, robust)
  }
  out
}

#' @rdname effects-mlnpefit
#' @method ranef mlnpefit
#' @export
ranef.mlnpefit <- function(object, summary = TRUE, robust = FALSE, probs = c(0.025, 0.975), ...) {
  check_summary_args(summary, robust, probs)
  factors <- grouping_factors(object)
  out <- lapply(factors, function(f) {
    a <- ranef_draws(object, f)
    if (summary) summarise_array(a, probs, robust) else a
  })
  stats::setNames(out, vapply(factors, `[[`, character(1), "group"))
}

#' @rdname effects-mlnpefit
#' @export
coef.mlnpefit <- function(object, summary = TRUE, robust = FALSE, probs = c(0.025, 0.975), ...) {
  check_summary_args(summary, robust, probs)
  b <- fixef.mlnpefit(object, summary = FALSE)
  factors <- grouping_factors(object)
  out <- lapply(factors, function(f) {
    r <- ranef_draws(object, f)
    # as brms: the group-level coefficients first, then the population-level ones without a group-level part
    coefs <- c(dimnames(r)[[3L]], setdiff(colnames(b), dimnames(r)[[3L]]))
    a <- array(0, c(dim(r)[1:2], length(coefs)), dimnames = list(NULL, dimnames(r)[[2L]], coefs))
    for (k in seq_along(coefs)) {
      nm <- coefs[k]
      if (nm %in% dimnames(r)[[3L]]) a[, , k] <- r[, , nm]
      if (nm %in% colnames(b)) a[, , k] <- a[, , k] + b[, nm]
    }
    if (summary) summarise_array(a, probs, robust) else a
  })
  stats::setNames(out, vapply(factors, `[[`, character(1), "group"))
}

#' @rdname effects-mlnpefit
#' @method VarCorr mlnpefit
#' @export
VarCorr.mlnpefit <- function(x, sigma = 1, summary = TRUE, robust = FALSE, probs = c(0.025, 0.975), ...) {
  check_summary_args(summary, robust, probs)
  factors <- grouping_factors(x)
  out <- lapply(factors, function(f) {
    z <- f$z_names
    sds <- draws_matrix(x, sprintf("sd_%s__%s", f$group, z))
    colnames(sds) <- z
    n <- nrow(sds)
    cors <- array(0, c(n, length(z), length(z)), dimnames = list(NULL, z, z))
    for (k in seq_along(z)) cors[, k, k] <- 1
    cp <- cor_pairs(x, f)
    for (i in seq_along(cp$names)) {
      v <- draws_matrix(x, cp$names[i])[, 1L]
      cors[, cp$pairs[[i]][1], cp$pairs[[i]][2]] <- v
      cors[, cp$pairs[[i]][2], cp$pairs[[i]][1]] <- v
    }
    covs <- cors
    for (i in seq_along(z)) for (j in seq_along(z)) covs[, i, j] <- cors[, i, j] * sds[, i] * sds[, j]
    if (!summary) list(sd = sds, cor = cors, cov = covs) else
      list(sd = summarise_columns(sds, probs, robust),
           cor = summarise_cross(cors, probs, robust), cov = summarise_cross(covs, probs, robust))
  })
  out <- stats::setNames(out, vapply(factors, `[[`, character(1), "group"))
  if ("sigma" %in% variables.mlnpefit(x)) {
    s <- draws_matrix(x, "sigma")
    colnames(s) <- "Intercept"
    out$residual__ <- list(sd = if (summary) summarise_columns(s, probs, robust) else s)
  }
  out
}

# A draws x k x k array summarised into a k x statistics x k array, as brms's VarCorr()$cor.
summarise_cross <- function(a, probs, robust) {
  z <- dimnames(a)[[2L]]
  stats_names <- c("Estimate", "Est.Error", paste0("Q", probs * 100))
  out <- array(NA_real_, c(length(z), length(stats_names), length(z)), dimnames = list(z, stats_names, z))
  for (j in seq_along(z)) {
    m <- a[, , j, drop = FALSE]
    dim(m) <- dim(a)[1:2]
    colnames(m) <- z
    out[, , j] <- summarise_columns(m, probs, robust)
  }
  out
}

#' Model information of an mlnpe fit
#'
#' `nobs()` the number of observations, `ngrps()` the number of levels of the grouping factor (a named list,
#' as brms; registered for both `lme4::ngrps()` and `brms::ngrps()`), `formula()` and `family()` the model,
#' `prior_summary()` the priors in force (user and default, in brms's prior-table layout).
#'
#' @param object,x An `mlnpefit`.
#' @param ... Unused.
#' @name info-mlnpefit
NULL

#' @rdname info-mlnpefit
#' @export
nobs.mlnpefit <- function(object, ...) object$nobs

#' @rdname info-mlnpefit
#' @exportS3Method lme4::ngrps
#' @rawNamespace S3method(brms::ngrps, mlnpefit)
ngrps.mlnpefit <- function(object, ...) {
  factors <- grouping_factors(object)
  stats::setNames(lapply(factors, function(f) length(f$levels)), vapply(factors, `[[`, character(1), "group"))
}

#' @rdname info-mlnpefit
#' @export
formula.mlnpefit <- function(x, ...) x$formula

#' @rdname info-mlnpefit
#' @export
family.mlnpefit <- function(object, ...) object$family

#' @rdname info-mlnpefit
#' @method prior_summary mlnpefit
#' @export
prior_summary.mlnpefit <- function(object, ...) object$prior

#' @export
print.mlnpe_family <- function(x, ...) {
  cat("\nFamily:", x$family, "\nLink function:", x$link, "\n\n")
  invisible(x)
}
