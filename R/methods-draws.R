# posterior's generics. A fit holds one draws_df with brms's variable names, built when it is fitted; every
# other format derives from it, so posterior::summarise_draws(fit) and bayesplot's mcmc_*() work on fits.

#' Posterior draws of an mlnpe fit
#'
#' Methods for posterior's generics. Variables carry brms's names (`b_Intercept`, `b_x`, `sd_g__Intercept`,
#' `cor_g__Intercept__x`, `sigma`, `r_g[level,Intercept]`); unlike brms there are no `lprior` and `lp__`.
#' The draws are independent and stored as one chain.
#'
#' @param x An `mlnpefit`.
#' @param variable Variables to select (names, or regular expressions with `regex = TRUE`); `NULL` for all.
#' @param regex Treat `variable` as regular expressions.
#' @param inc_warmup Ignored (amortized draws have no warmup).
#' @param ... Passed on to posterior's conversion functions.
#' @return A draws object (`draws_df`, `draws_array`, ...); `variables()` a character vector; `ndraws()` etc.
#'   integers.
#' @name draws-mlnpefit
#' @examples
#' \dontrun{
#' posterior::summarise_draws(fit)
#' as_draws_rvars(fit)$r_g
#' }
NULL

#' @rdname draws-mlnpefit
#' @method as_draws_df mlnpefit
#' @export
as_draws_df.mlnpefit <- function(x, variable = NULL, regex = FALSE, inc_warmup = FALSE, ...) {
  if (is.null(variable)) return(x$draws)
  posterior::subset_draws(x$draws, variable = variable, regex = regex)
}

#' @rdname draws-mlnpefit
#' @method as_draws mlnpefit
#' @export
as_draws.mlnpefit <- function(x, variable = NULL, regex = FALSE, inc_warmup = FALSE, ...) {
  as_draws_df.mlnpefit(x, variable = variable, regex = regex)
}

#' @rdname draws-mlnpefit
#' @method as_draws_matrix mlnpefit
#' @export
as_draws_matrix.mlnpefit <- function(x, variable = NULL, regex = FALSE, inc_warmup = FALSE, ...) {
  posterior::as_draws_matrix(as_draws_df.mlnpefit(x, variable = variable, regex = regex), ...)
}

#' @rdname draws-mlnpefit
#' @method as_draws_array mlnpefit
#' @export
as_draws_array.mlnpefit <- function(x, variable = NULL, regex = FALSE, inc_warmup = FALSE, ...) {
  posterior::as_draws_array(as_draws_df.mlnpefit(x, variable = variable, regex = regex), ...)
}

#' @rdname draws-mlnpefit
#' @method as_draws_list mlnpefit
#' @export
as_draws_list.mlnpefit <- function(x, variable = NULL, regex = FALSE, inc_warmup = FALSE, ...) {
  posterior::as_draws_list(as_draws_df.mlnpefit(x, variable = variable, regex = regex), ...)
}

#' @rdname draws-mlnpefit
#' @method as_draws_rvars mlnpefit
#' @export
as_draws_rvars.mlnpefit <- function(x, variable = NULL, regex = FALSE, inc_warmup = FALSE, ...) {
  posterior::as_draws_rvars(as_draws_df.mlnpefit(x, variable = variable, regex = regex), ...)
}

#' @rdname draws-mlnpefit
#' @method variables mlnpefit
#' @export
variables.mlnpefit <- function(x, ...) posterior::variables(x$draws)

#' @rdname draws-mlnpefit
#' @method nvariables mlnpefit
#' @export
nvariables.mlnpefit <- function(x, ...) posterior::nvariables(x$draws)

#' @rdname draws-mlnpefit
#' @method ndraws mlnpefit
#' @export
ndraws.mlnpefit <- function(x) posterior::ndraws(x$draws)

#' @rdname draws-mlnpefit
#' @method nchains mlnpefit
#' @export
nchains.mlnpefit <- function(x) posterior::nchains(x$draws)

#' @rdname draws-mlnpefit
#' @method niterations mlnpefit
#' @export
niterations.mlnpefit <- function(x) posterior::niterations(x$draws)

# The draws of selected variables as a plain draws x variables matrix.
draws_matrix <- function(x, variables) {
  m <- unclass(posterior::as_draws_matrix(posterior::subset_draws(x$draws, variable = variables)))
  attr(m, "nchains") <- NULL
  m[, variables, drop = FALSE]
}
