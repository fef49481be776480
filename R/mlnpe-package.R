#' mlnpe: amortized Bayesian multilevel models
#'
#' `mlnpe()` fits brms-style multilevel models by multilevel neural posterior estimation (ML-NPE). The first
#' call of a model trains a neural posterior on simulations from the model (the amortizer) and stores it in a
#' cache; every later fit of the same model, including `update(fit, newdata = )` and [logo()], is a forward
#' pass that takes milliseconds.
#'
#' Fits follow brms: the same formula syntax (one grouping factor), families, prior specifications, parameter
#' names (`b_Intercept`, `sd_g__Intercept`, `r_g[a,Intercept]`, ...), summaries and methods ([fixef()],
#' [ranef()], [posterior::as_draws_df()], [posterior_predict()], [loo()][loo.mlnpefit], `pp_check()`).
#'
#' The numerics live in the Python package `mlnpe`; see [install_mlnpe()] and [mlnpe_sitrep()].
#'
#' @name mlnpe-package
#' @aliases mlnpe-package
#' @docType package
#' @keywords internal
#' @importFrom stats formula family nobs update coef predict fitted residuals quantile sd median mad
#' @importFrom stats as.formula setNames gaussian
NULL
