# Generics that mlnpe implements methods for, re-exported so that library(mlnpe) is enough to call them.

#' @importFrom posterior as_draws
#' @export
posterior::as_draws

#' @importFrom posterior as_draws_df
#' @export
posterior::as_draws_df

#' @importFrom posterior as_draws_array
#' @export
posterior::as_draws_array

#' @importFrom posterior as_draws_matrix
#' @export
posterior::as_draws_matrix

#' @importFrom posterior as_draws_list
#' @export
posterior::as_draws_list

#' @importFrom posterior as_draws_rvars
#' @export
posterior::as_draws_rvars

#' @importFrom posterior variables
#' @export
posterior::variables

#' @importFrom posterior nvariables
#' @export
posterior::nvariables

#' @importFrom posterior ndraws
#' @export
posterior::ndraws

#' @importFrom posterior nchains
#' @export
posterior::nchains

#' @importFrom posterior niterations
#' @export
posterior::niterations

#' @importFrom posterior summarise_draws
#' @export
posterior::summarise_draws

#' @importFrom rstantools posterior_predict
#' @export
rstantools::posterior_predict

#' @importFrom rstantools posterior_epred
#' @export
rstantools::posterior_epred

#' @importFrom rstantools posterior_linpred
#' @export
rstantools::posterior_linpred

#' @importFrom rstantools log_lik
#' @export
rstantools::log_lik

#' @importFrom rstantools prior_summary
#' @export
rstantools::prior_summary

#' @importFrom nlme fixef
#' @export
nlme::fixef

#' @importFrom nlme ranef
#' @export
nlme::ranef

#' @importFrom nlme VarCorr
#' @export
nlme::VarCorr
