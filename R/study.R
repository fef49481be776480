#' Simulation studies and Bayesian power analysis with a trained amortizer
#'
#' Simulates `ndatasets` datasets at every grid point and every combination of `ngroups` and `nrows`, fits each
#' with the amortizer (no training: the amortizer of `fit` only samples, milliseconds per dataset), and
#' summarizes the posteriors against the truth. brms needs one MCMC fit per dataset for the same study.
#'
#' A grid point sets the true values of the global parameters it names (brms's names: `b_x`, `sd_g__Intercept`,
#' `sigma`, ...; `b_Intercept` is the uncentred intercept); the others take `truth`, by default the posterior
#' means of `fit`. Group-level effects are drawn from their distribution given the grid point's sds and
#' correlations, and covariates are resampled from the training data's groups, as in training.
#'
#' The amortizer must have been trained where the study goes: the grid must lie inside every prior's support and,
#' for a focused amortizer (`mlnpe(..., focus = k)`, the default), inside the box its training was focused on;
#' `ngroups` and `nrows` inside the trained ranges. Otherwise the call stops with an error that names the value
#' and the fix: for studies far from the data, fit with `focus = 0` (an amortizer over the whole prior).
#'
#' Each dataset's PSIS k-hat is reported (`datasets`): above 0.7 its amortized draws are not certified, and
#' `n_unreliable` counts those datasets per row of the summary.
#'
#' @param fit An `mlnpefit`.
#' @param grid A named list of parameter -> values; every combination is a grid point (`NULL`: the base truth).
#' @param truth A named list of parameter -> value for the parameters the grid leaves out (`NULL`: the
#'   posterior means of `fit`).
#' @param ngroups,nrows Numbers of groups and of rows per group to study, every combination (`NULL`: the data's
#'   number of groups and median group size).
#' @param ndatasets Datasets per grid point and design.
#' @param ndraws Posterior draws per dataset.
#' @param level Interval level of `power_interval` (0.5, 0.9 or 0.95).
#' @param threshold Posterior probability of `power_prob`.
#' @param seed Seed (`NULL`: drawn from R's generator).
#' @param progress Show a progress bar.
#' @param workers `NULL` (this R session's Python), a number of local worker processes, or the address of a
#'   running dask scheduler (`"tcp://host:8786"`; start one with `dask-scheduler` and `dask-worker` on Slurm or
#'   Kubernetes, each worker with mlnpe's Python installed): the grid's cells run as tasks there, and a task whose
#'   worker dies runs again elsewhere. Needs the Python package `dask[distributed]`.
#' @param checkpoint `NULL`, or a directory that keeps every finished cell (grid point and design): rerunning
#'   the same call resumes an interrupted study, computing only the cells that are missing.
#' @return An object of class `mlnpe_study`: `summary`, a data frame with one row per grid point, design and
#'   parameter (`point`, the grid's columns, `n_groups`, `n_rows`, `parameter`, `truth`, `bias` and `rmse` of the
#'   posterior mean, `mean_sd`, `coverage_50`, `coverage_90`, `coverage_95`, `power_interval` (the share of
#'   datasets whose central `level` interval excludes 0), `power_prob` (the share whose posterior probability of
#'   the truth's sign reaches `threshold`), `n_datasets`, `n_unreliable`); `datasets`, one row per dataset
#'   (`khat`, `reliable`); and `seconds`.
#' @examples
#' \dontrun{
#' fit <- mlnpe(y ~ x + (1 | g), data = d, focus = 0)
#' power <- simulate_study(fit, grid = list(b_x = c(0, 0.2, 0.5)), ngroups = c(10, 20, 40), nrows = 10)
#' power
#' plot(power, parameter = "b_x")
#' }
#' @export
simulate_study <- function(fit, grid = NULL, truth = NULL, ngroups = NULL, nrows = NULL, ndatasets = 200,
                           ndraws = 1000, level = 0.95, threshold = 0.975, seed = NULL, progress = interactive(),
                           workers = NULL, checkpoint = NULL) {
  if (!inherits(fit, "mlnpefit")) {
    mlnpe_abort(sprintf("`fit` must be an mlnpefit, not %s.", describe_class(fit)), "mlnpe_argument_error")
  }
  for (arg in c("grid", "truth")) {
    value <- get(arg)
    if (!is.null(value) && (!is.list(value) || is.null(names(value)) || any(names(value) == ""))) {
      mlnpe_abort(sprintf("`%s` must be NULL or a named list of parameter = values, e.g. list(b_x = c(0, 0.5)); got %s.",
                          arg, describe_value(value)), "mlnpe_argument_error")
    }
  }
  sizes <- function(x, arg) {
    if (is.null(x)) return(NULL)
    if (!is.numeric(x) || !length(x) || anyNA(x) || any(x < 1) || any(x != round(x))) {
      mlnpe_abort(sprintf("`%s` must be NULL or whole numbers >= 1, got %s.", arg, describe_value(x)),
                  "mlnpe_argument_error")
    }
    as.list(as.integer(x))
  }
  ngroups <- sizes(ngroups, "ngroups")
  nrows <- sizes(nrows, "nrows")
  ndatasets <- check_count(ndatasets, "ndatasets", min = 2L)
  ndraws <- check_count(ndraws, "ndraws", min = 10L)
  level <- check_number(level, "level", 0, 1, open = c("low", "high"))
  threshold <- check_number(threshold, "threshold", 0.5, 1, open = "high")
  seed <- check_seed(seed)
  if (!is.null(workers) && !(length(workers) == 1L && !is.na(workers) &&
                             (is.character(workers) || (is.numeric(workers) && workers >= 1 && workers == round(workers))))) {
    mlnpe_abort(sprintf("`workers` must be NULL, a number of worker processes or a scheduler address, got %s.",
                        describe_value(workers)), "mlnpe_argument_error")
  }
  if (is.numeric(workers)) workers <- as.integer(workers)
  if (!is.null(checkpoint) && (!is.character(checkpoint) || length(checkpoint) != 1L || is.na(checkpoint))) {
    mlnpe_abort(sprintf("`checkpoint` must be NULL or one directory path, got %s.", describe_value(checkpoint)),
                "mlnpe_argument_error")
  }
  if (!is.null(workers)) {
    # local worker processes start a fresh Python: R's library path would point it at another libpython
    old_ld <- Sys.getenv("LD_LIBRARY_PATH", unset = NA)
    on.exit(if (is.na(old_ld)) Sys.unsetenv("LD_LIBRARY_PATH") else Sys.setenv(LD_LIBRARY_PATH = old_ld), add = TRUE)
    Sys.setenv(LD_LIBRARY_PATH = subprocess_ld_path(if (is.na(old_ld)) "" else old_ld))
  }
  draws <- posterior::as_draws_matrix(fit)
  means <- as.list(colMeans(unclass(draws)[, !startsWith(colnames(draws), "."), drop = FALSE]))
  value <- py_call("study", model_path = fit$amortizer$path,
                   grid = if (is.null(grid)) NULL else lapply(grid, function(v) as.list(as.numeric(v))),
                   truth = if (is.null(truth)) NULL else lapply(truth, as.numeric),
                   n_groups = ngroups, n_rows = nrows, n_datasets = ndatasets, n_draws = ndraws, seed = seed,
                   level = level, threshold = threshold, progress = isTRUE(progress), workers = workers,
                   checkpoint = if (is.null(checkpoint)) NULL else path.expand(checkpoint), means = means)
  frame <- function(columns) {
    out <- lapply(columns, function(v) unlist(lapply(v, function(x) if (is.null(x)) NA else x)))
    as.data.frame(out, stringsAsFactors = FALSE, check.names = FALSE)
  }
  structure(list(summary = frame(value$summary), datasets = frame(value$datasets), level = value$level,
                 threshold = value$threshold, seconds = value$seconds, seed = as.integer(value$seed)),
            class = "mlnpe_study")
}

#' @export
print.mlnpe_study <- function(x, digits = 3, ...) {
  d <- x$datasets
  cat(sprintf("\nSimulation study: %d datasets in %.1f s; power at the %g%% interval and P >= %g\n", nrow(d),
              x$seconds, 100 * x$level, x$threshold))
  bad <- sum(!d$reliable)
  if (bad) {
    cat(sprintf("%d of %d datasets have k-hat > 0.7: their amortized draws are not certified (train longer)\n",
                bad, nrow(d)))
  }
  cat("\n")
  shown <- setdiff(names(x$summary), c("point", "mean_sd", "coverage_50", "power_prob", "n_datasets"))
  print(format(x$summary[, shown, drop = FALSE], digits = digits), row.names = FALSE)
  cat("\n(all columns, per-dataset k-hats: x$summary, x$datasets)\n")
  invisible(x)
}

#' Plot a simulation study
#'
#' Power (or coverage) of one parameter against the number of groups or of rows per group, one line per grid
#' point and other size.
#'
#' @param x An `mlnpe_study`.
#' @param parameter The parameter to plot (default: the first the grid names, else the first).
#' @param what "power_interval", "power_prob", "coverage_50", "coverage_90" or "coverage_95".
#' @param by "n_groups" or "n_rows".
#' @param ... Passed to [graphics::plot()].
#' @return `x`, invisibly.
#' @export
plot.mlnpe_study <- function(x, parameter = NULL, what = "power_interval", by = "n_groups", ...) {
  s <- x$summary
  fixed <- c("point", "n_groups", "n_rows", "parameter", "truth", "bias", "rmse", "mean_sd", "coverage_50",
             "coverage_90", "coverage_95", "power_interval", "power_prob", "n_datasets", "n_unreliable")
  grid_names <- setdiff(names(s), fixed)
  parameter <- parameter %||% (if (length(grid_names)) grid_names[1L] else s$parameter[1L])
  if (!parameter %in% s$parameter) {
    mlnpe_abort(sprintf("`parameter` '%s' is not in the study; its parameters: %s.", parameter,
                        quote_list(unique(s$parameter))), "mlnpe_argument_error")
  }
  what <- match.arg(what, c("power_interval", "power_prob", "coverage_50", "coverage_90", "coverage_95"))
  by <- match.arg(by, c("n_groups", "n_rows"))
  other <- if (by == "n_groups") "n_rows" else "n_groups"
  rows <- s[s$parameter == parameter, , drop = FALSE]
  keys <- interaction(rows$point, rows[[other]], drop = TRUE)
  graphics::plot(range(rows[[by]]), c(0, 1), type = "n", xlab = by, ylab = what, main = parameter, ...)
  if (startsWith(what, "coverage")) graphics::abline(h = as.numeric(sub("coverage_", "", what)) / 100, lty = 2)
  colours <- grDevices::hcl.colors(max(nlevels(keys), 2L), "Dark 3")
  for (i in seq_len(nlevels(keys))) {
    part <- rows[keys == levels(keys)[i], , drop = FALSE]
    part <- part[order(part[[by]]), , drop = FALSE]
    graphics::lines(part[[by]], part[[what]], type = "b", pch = 19, col = colours[i])
  }
  labels <- vapply(seq_len(nlevels(keys)), function(i) {
    part <- rows[keys == levels(keys)[i], , drop = FALSE][1L, ]
    paste(c(if (length(grid_names)) paste0(grid_names, " = ", format(unlist(part[grid_names]))),
            paste0(other, " = ", part[[other]])), collapse = ", ")
  }, character(1))
  graphics::legend("bottomright", legend = labels, col = colours[seq_along(labels)], lty = 1, pch = 19, cex = 0.7,
                   bty = "n")
  invisible(x)
}
