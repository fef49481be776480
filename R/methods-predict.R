# Predictions. The numerics (linear predictor, inverse link, simulation, log-likelihood) live in Python; R sends
# the fit's draws (or a subset) with the data and receives a draws x rows matrix.

#' Predictions from an mlnpe fit
#'
#' brms's prediction methods: `posterior_predict()` draws from the posterior predictive distribution,
#' `posterior_epred()` gives the expected response, `posterior_linpred()` the linear predictor (or, with
#' `transform = TRUE`, the expected response) and `log_lik()` the pointwise log-likelihood (for loo); each
#' returns a draws x observations matrix. `fitted()`, `predict()` and `residuals()` summarise them into an
#' observations x (Estimate, Est.Error, Q2.5, Q97.5) matrix.
#'
#' @param object An `mlnpefit`.
#' @param newdata Data to predict; `NULL` for the fitted data. Unseen levels of the grouping factor need
#'   `allow_new_levels = TRUE`; the response is needed only by `log_lik()` and `residuals()`.
#' @param re_formula `NULL` includes the group-level effects, `NA` (or `~ 0`) leaves them out.
#' @param ndraws Number of draws to use (a random subset); `NULL` for all.
#' @param draw_ids Indices of the draws to use (overrides `ndraws`).
#' @param allow_new_levels Draw the effects of unseen levels from their prior given each draw, like brms's
#'   `sample_new_levels = "gaussian"`.
#' @param seed Seed of the randomness of the predictions (`NULL`: drawn from R's generator).
#' @param transform For `posterior_linpred()`: return the expected response instead of the linear predictor.
#' @param summary Summarise the draws (`TRUE`) or return them.
#' @param robust Use the median and MAD instead of the mean and SD.
#' @param probs Quantiles to report.
#' @param scale For `fitted()`: `"response"` or `"linear"`.
#' @param type For `residuals()`: only `"ordinary"` (observed minus expected).
#' @param ... Unused.
#' @return A draws x observations matrix, or an observations x statistics matrix for `fitted()`, `predict()`
#'   and `residuals()` with `summary = TRUE`.
#' @name predict-mlnpefit
NULL

#' @rdname predict-mlnpefit
#' @method posterior_predict mlnpefit
#' @export
posterior_predict.mlnpefit <- function(object, newdata = NULL, re_formula = NULL, ndraws = NULL, draw_ids = NULL,
                                       allow_new_levels = FALSE, seed = NULL, ...) {
  prediction(object, "predict", newdata, re_formula, ndraws, draw_ids, allow_new_levels, seed)
}

#' @rdname predict-mlnpefit
#' @method posterior_epred mlnpefit
#' @export
posterior_epred.mlnpefit <- function(object, newdata = NULL, re_formula = NULL, ndraws = NULL, draw_ids = NULL,
                                     allow_new_levels = FALSE, seed = NULL, ...) {
  prediction(object, "epred", newdata, re_formula, ndraws, draw_ids, allow_new_levels, seed)
}

#' @rdname predict-mlnpefit
#' @method posterior_linpred mlnpefit
#' @export
posterior_linpred.mlnpefit <- function(object, transform = FALSE, newdata = NULL, re_formula = NULL,
                                       ndraws = NULL, draw_ids = NULL, allow_new_levels = FALSE, seed = NULL,
                                       ...) {
  kind <- if (isTRUE(transform)) "epred" else "linpred"
  prediction(object, kind, newdata, re_formula, ndraws, draw_ids, allow_new_levels, seed)
}

#' @rdname predict-mlnpefit
#' @method log_lik mlnpefit
#' @export
log_lik.mlnpefit <- function(object, newdata = NULL, re_formula = NULL, ndraws = NULL, draw_ids = NULL,
                             allow_new_levels = FALSE, seed = NULL, ...) {
  prediction(object, "log_lik", newdata, re_formula, ndraws, draw_ids, allow_new_levels, seed)
}

#' @rdname predict-mlnpefit
#' @export
fitted.mlnpefit <- function(object, newdata = NULL, re_formula = NULL, scale = c("response", "linear"),
                            summary = TRUE, robust = FALSE, probs = c(0.025, 0.975), ndraws = NULL,
                            draw_ids = NULL, allow_new_levels = FALSE, seed = NULL, ...) {
  if (!is.character(scale) || !length(scale) || !scale[1L] %in% c("response", "linear")) {
    abort_argument("scale", "\"response\" or \"linear\"", scale)
  }
  kind <- if (scale[1L] == "response") "epred" else "linpred"
  check_flag(summary, "summary")
  m <- prediction(object, kind, newdata, re_formula, ndraws, draw_ids, allow_new_levels, seed)
  if (summary) summarise_rows(m, probs, robust) else m
}

#' @rdname predict-mlnpefit
#' @export
predict.mlnpefit <- function(object, newdata = NULL, re_formula = NULL, summary = TRUE, robust = FALSE,
                             probs = c(0.025, 0.975), ndraws = NULL, draw_ids = NULL, allow_new_levels = FALSE,
                             seed = NULL, ...) {
  check_flag(summary, "summary")
  m <- prediction(object, "predict", newdata, re_formula, ndraws, draw_ids, allow_new_levels, seed)
  if (summary) summarise_rows(m, probs, robust) else m
}

#' @rdname predict-mlnpefit
#' @export
residuals.mlnpefit <- function(object, newdata = NULL, re_formula = NULL, type = "ordinary", summary = TRUE,
                               robust = FALSE, probs = c(0.025, 0.975), ndraws = NULL, draw_ids = NULL,
                               allow_new_levels = FALSE, seed = NULL, ...) {
  if (!identical(type, "ordinary")) {
    mlnpe_abort(sprintf("`type` must be \"ordinary\", not %s.", describe_value(type)), "mlnpe_argument_error")
  }
  check_flag(summary, "summary")
  data <- newdata %||% object$data
  if (!object$spec$response %in% names(data)) {
    mlnpe_abort(sprintf("`newdata` lacks the response '%s', which residuals need.", object$spec$response),
                "mlnpe_data_error")
  }
  y <- encode_data(data, object$spec$response, object$spec$response, object$family,
                   arg = if (is.null(newdata)) "data" else "newdata")[[1L]]
  m <- prediction(object, "epred", newdata, re_formula, ndraws, draw_ids, allow_new_levels, seed)
  r <- sweep(-m, 2L, y, `+`)
  if (summary) summarise_rows(r, probs, robust) else r
}

summarise_rows <- function(m, probs, robust) {
  check_summary_args(TRUE, robust, probs)
  out <- summarise_columns(m, probs, robust)
  rownames(out) <- NULL
  out
}

prediction <- function(object, kind, newdata, re_formula, ndraws, draw_ids, allow_new_levels, seed) {
  check_flag(allow_new_levels, "allow_new_levels")
  include <- use_group_effects(re_formula)
  draws <- object$draws
  ids <- select_draws(object, ndraws, draw_ids)
  seed <- check_seed(seed)  # after select_draws: the same draws and seed for a given set.seed() as before
  if (!is.null(ids)) draws <- posterior::subset_draws(draws, draw = ids)
  spec <- object$spec
  data <- encode_data(object$data, spec$vars, spec$response, object$family, spec$groups)
  nd <- NULL
  if (!is.null(newdata)) {
    check_data(newdata, "newdata")
    needed <- setdiff(spec$vars, c(if (kind != "log_lik") spec$response, if (!include) object$group))
    check_columns(newdata, needed, "newdata")
    present <- intersect(spec$vars, names(newdata))
    nd <- encode_data(newdata, present, spec$response, object$family, spec$groups, "newdata")
  }
  py_predict(object$amortizer$path, data, draws, kind, nd, seed, allow_new_levels, include)
}

use_group_effects <- function(re_formula) {
  if (is.null(re_formula)) return(TRUE)
  if (length(re_formula) == 1L && !inherits(re_formula, "formula") && is.na(re_formula)) return(FALSE)
  if (inherits(re_formula, "formula")) return(grepl("|", paste(deparse(re_formula), collapse = ""), fixed = TRUE))
  mlnpe_abort(c(sprintf("`re_formula` must be NULL, NA or a formula, not %s.", describe_value(re_formula)),
                i = "NULL includes the group-level effects, NA leaves them out."), "mlnpe_argument_error")
}

select_draws <- function(object, ndraws, draw_ids) {
  n <- object$ndraws
  if (!is.null(draw_ids)) {
    if (!is.numeric(draw_ids) || is.object(draw_ids) || !length(draw_ids) || anyNA(draw_ids) ||
        any(draw_ids < 1 | draw_ids > n | draw_ids != round(draw_ids))) {
      abort_argument("draw_ids", sprintf("whole numbers from 1 to %d (indices of draws)", n), draw_ids)
    }
    return(as.integer(draw_ids))
  }
  if (is.null(ndraws)) return(NULL)
  check_count(ndraws, "ndraws")
  if (ndraws >= n) return(NULL)
  sort(sample.int(n, ndraws))
}

#' Posterior predictive checks
#'
#' brms's `pp_check()`: compares the observed response with draws from the posterior predictive
#' distribution using bayesplot's `ppc_*()` functions.
#'
#' @param object An `mlnpefit`.
#' @param type The bayesplot plot, e.g. `"dens_overlay"`, `"hist"`, `"stat"`, `"stat_grouped"` (`ppc_<type>`).
#' @param ndraws Number of predictive draws (default 10 for plots that show single draws, else all).
#' @param group For grouped plots: the grouping variable (default: the model's grouping factor).
#' @param newdata Optional new data (with the response).
#' @param seed Seed of the predictive draws.
#' @param ... Passed to the bayesplot function.
#' @return A ggplot object.
#' @exportS3Method bayesplot::pp_check
pp_check.mlnpefit <- function(object, type = "dens_overlay", ndraws = NULL, group = NULL, newdata = NULL,
                              seed = NULL, ...) {
  if (!requireNamespace("bayesplot", quietly = TRUE)) {
    mlnpe_abort("pp_check() needs the package 'bayesplot': install.packages(\"bayesplot\").",
                "mlnpe_missing_package")
  }
  fun_name <- paste0("ppc_", type)
  if (!exists(fun_name, envir = asNamespace("bayesplot"))) {
    mlnpe_abort(sprintf("`type` '%s' is not a bayesplot plot (no bayesplot::%s).", type, fun_name),
                "mlnpe_argument_error")
  }
  fun <- get(fun_name, envir = asNamespace("bayesplot"))
  if (is.null(ndraws) && !grepl("stat|intervals|ribbon|error_scatter_avg|loo", type)) {
    ndraws <- 10L
    message(sprintf("Using 10 posterior draws for ppc type '%s' by default.", type))
  }
  data <- newdata %||% object$data
  y <- encode_response(data[[object$spec$response]], object$spec$response, object$family)
  yrep <- posterior_predict.mlnpefit(object, newdata = newdata, ndraws = ndraws, seed = seed)
  args <- list(y = y, yrep = yrep, ...)
  if ("group" %in% names(formals(fun))) args$group <- data[[group %||% object$group]]
  do.call(fun, args)
}

#' Approximate leave-one-out cross-validation
#'
#' PSIS-LOO ([loo::loo()]) of the pointwise log-likelihood. The draws are independent, so the relative
#' efficiencies are 1. For leave-one-group-out cross-validation, which the amortizer makes cheap, see [logo()].
#'
#' @param x An `mlnpefit`.
#' @param ... Passed to [loo::loo()].
#' @return A `psis_loo` object.
#' @exportS3Method loo::loo
loo.mlnpefit <- function(x, ...) {
  if (!requireNamespace("loo", quietly = TRUE)) {
    mlnpe_abort("loo() needs the package 'loo': install.packages(\"loo\").", "mlnpe_missing_package")
  }
  ll <- log_lik.mlnpefit(x)
  loo::loo(ll, r_eff = rep(1, ncol(ll)), ...)
}
