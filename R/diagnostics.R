#' Simulation-based calibration of an amortizer
#'
#' Checks that the amortized posterior is calibrated (Talts et al. 2018): `ndatasets` datasets are simulated
#' from the model's prior as in training (designs resampled from the training data's covariates, the number of
#' groups and of rows per group over the trained ranges), each is fitted with `ndraws` amortized draws, and the
#' rank of every true value among its draws is recorded. For a calibrated posterior the ranks are uniform. The
#' pass/fail decision per parameter is whether the ECDF difference of the ranks stays inside the band that
#' holds simultaneously with probability `prob` (Säilynoja, Bürkner and Vehtari 2022; the paper's plots), and
#' `pvalue` is a chi-square test of uniformity. Group effects are checked with one group per dataset (so the
#' ranks are independent) and, as a screen, pooled over every group (`pooled_inside_band`).
#'
#' Recovery is reported alongside: the correlation of the posterior medians with the true values and the
#' coverage of the 95 % central intervals.
#'
#' Parameters carry brms's names (`b_Intercept` is the uncentred intercept); group effects are `r_<group>[,coef]`.
#' After `mlnpe(..., focus = k)` the simulations follow the last focusing round's truncated prior, which is what
#' that amortizer was trained on.
#'
#' @param object An `mlnpefit` or an `mlnpe_amortizer` ([save_amortizer()]).
#' @param ndatasets Simulated datasets (at least 10; 100 to 200 as in the paper).
#' @param ndraws Posterior draws per dataset.
#' @param seed Seed (`NULL`: drawn from R's generator).
#' @param prob Simultaneous coverage of the ECDF band.
#' @param plot_dir `NULL`, or a directory to write `sbc_ecdf.png` (ECDF differences with the band),
#'   `recovery_global.png` and `recovery_local.png` (posterior medians and 95 % intervals against the truth) to.
#' @return A data frame of class `mlnpe_sbc`, one row per parameter: `parameter`, `kind` ("global" or "local"),
#'   `inside_band` (the pass/fail decision), `pvalue`, `pooled_inside_band` (group effects only), `correlation`
#'   and `coverage`; attributes `ndatasets`, `ndraws`, `prob`, `seed` and `plots` (the PNG paths).
#' @examples
#' \dontrun{
#' fit <- mlnpe(y ~ x + (1 | g), data = d)
#' calibration <- sbc(fit, plot_dir = tempdir())
#' calibration
#' all(calibration$inside_band)
#' }
#' @export
sbc <- function(object, ndatasets = 200, ndraws = 250, seed = NULL, prob = 0.99, plot_dir = NULL) {
  path <- amortizer_path(object)
  ndatasets <- check_count(ndatasets, "ndatasets", min = 10L)  # fewer give no ECDF band
  ndraws <- check_count(ndraws, "ndraws", min = 2L)
  prob <- check_number(prob, "prob", 0, 1, open = c("low", "high"))
  if (!is.null(plot_dir) && (!is.character(plot_dir) || length(plot_dir) != 1L || is.na(plot_dir))) {
    mlnpe_abort(sprintf("`plot_dir` must be NULL or one directory path, not %s.", describe_value(plot_dir)),
                "mlnpe_argument_error")
  }
  seed <- check_seed(seed)
  value <- py_call("sbc", model_path = path, n_datasets = ndatasets, n_draws = ndraws, seed = seed,
                   prob = prob, plot_dir = if (is.null(plot_dir)) NULL else path.expand(plot_dir))
  logical_column <- function(x) vapply(x, function(v) if (is.null(v)) NA else isTRUE(v), logical(1))
  out <- data.frame(
    parameter = as.character(unlist(value$parameter)),
    kind = as.character(unlist(value$kind)),
    inside_band = logical_column(value$inside_band),
    pvalue = as.numeric(unlist(value$pvalue)),
    pooled_inside_band = logical_column(value$pooled_inside_band),
    correlation = as.numeric(unlist(value$correlation)),
    coverage = as.numeric(unlist(value$coverage)),
    stringsAsFactors = FALSE
  )
  structure(out, class = c("mlnpe_sbc", "data.frame"), ndatasets = as.integer(value$n_datasets),
            ndraws = as.integer(value$n_draws), prob = as.numeric(value$prob), seed = as.integer(value$seed),
            plots = as.character(unlist(value$plots)))
}

#' @export
print.mlnpe_sbc <- function(x, digits = 3, ...) {
  failed <- x$parameter[!x$inside_band]
  cat(sprintf("\nSimulation-based calibration: %d datasets, %d draws each, %g%% simultaneous ECDF bands\n",
              attr(x, "ndatasets"), attr(x, "ndraws"), 100 * attr(x, "prob")))
  cat(if (length(failed)) sprintf("Outside the band: %s\n\n", paste(failed, collapse = ", "))
      else "Every parameter inside its band\n\n")
  table <- as.data.frame(unclass(x), stringsAsFactors = FALSE)
  table$inside_band <- ifelse(table$inside_band, "pass", "FAIL")
  table$pooled_inside_band <- ifelse(is.na(table$pooled_inside_band), "",
                                     ifelse(table$pooled_inside_band, "pass", "FAIL"))
  print(format(table, digits = digits), row.names = FALSE)
  if (length(attr(x, "plots"))) cat("\nPlots:", paste(attr(x, "plots"), collapse = "\n       "), "\n")
  invisible(x)
}

#' Pooling factors of the group-level effects
#'
#' The pooling factor of group j for a group-level coefficient (Habermann et al. 2024, eq. 15, after Gelman and
#' Pardoe 2006): `kappa_j = Var(r_j) / E[sd^2]`, the posterior variance of the group's effect over the posterior
#' mean of the squared group-level standard deviation. Values near 1 mean complete pooling (the group's own
#' data say little, and its effect follows the population), values near 0 no pooling. The same function of a
#' brms fit's draws (`r_<g>[level,coef]` and `sd_<g>__coef` columns of [posterior::as_draws_matrix()]) gives
#' the reference to compare with.
#'
#' @param fit An `mlnpefit`, or any object with brms-named draws (`posterior::as_draws_matrix()` works on it,
#'   e.g. a `brmsfit`).
#' @param group,coef The grouping factor and its coefficients; for an `mlnpefit` any of its grouping factors (by
#'   default the one with the most levels) and by default its coefficients; needed otherwise.
#' @return A levels x coefficients matrix of pooling factors.
#' @examples
#' \dontrun{
#' k_mlnpe <- pooling_factor(fit)
#' k_brms <- pooling_factor(brms_fit, group = "g", coef = "Intercept")
#' plot(k_brms, k_mlnpe); abline(0, 1)
#' }
#' @export
pooling_factor <- function(fit, group = NULL, coef = NULL) {
  if (inherits(fit, "mlnpefit")) {
    group <- group %||% fit$group
    factor <- Filter(function(f) identical(f$group, group), grouping_factors(fit))
    if (!length(factor)) {
      mlnpe_abort(sprintf("`group` is %s, which is no grouping factor of this fit (%s).", describe_value(group),
                          paste0("\"", vapply(grouping_factors(fit), `[[`, character(1), "group"), "\"", collapse = ", ")),
                  "mlnpe_argument_error")
    }
    coef <- coef %||% factor[[1L]]$z_names
  }
  if (!is.character(group) || length(group) != 1L || !is.character(coef) || !length(coef)) {
    mlnpe_abort("`group` (one name) and `coef` (the group-level coefficients) are needed for a fit that is not an mlnpefit.",
                "mlnpe_argument_error")
  }
  m <- posterior::as_draws_matrix(fit)
  vars <- colnames(m)
  kappas <- lapply(coef, function(k) {
    sd_name <- sprintf("sd_%s__%s", group, k)
    pattern <- sprintf("^r_%s\\[(.*),%s\\]$", escape_regex(group), escape_regex(k))
    r_cols <- grep(pattern, vars, value = TRUE)
    if (!sd_name %in% vars || !length(r_cols)) {
      mlnpe_abort(sprintf("the draws have no `%s` or no `r_%s[level,%s]` columns: check `group` and `coef`.",
                          sd_name, group, k), "mlnpe_argument_error")
    }
    kappa <- apply(unclass(m[, r_cols, drop = FALSE]), 2, stats::var) / mean(unclass(m[, sd_name])^2)
    stats::setNames(kappa, sub(pattern, "\\1", r_cols))
  })
  levels <- names(kappas[[1L]])
  matrix(unlist(lapply(kappas, function(kappa) kappa[levels]), use.names = FALSE), ncol = length(coef),
         dimnames = list(levels, coef))
}

# A literal string as a regular expression (names such as "I(x^2)" carry metacharacters).
escape_regex <- function(x) gsub("([][{}()+*^$|\\\\?.])", "\\\\\\1", x)
