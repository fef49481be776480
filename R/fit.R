#' Fit a multilevel model with an amortized neural posterior
#'
#' `mlnpe()` is mlnpe's `brm()`. It takes the same formula, data, family and priors, trains a neural posterior
#' for the model on simulations from the prior (the first time only) and returns posterior draws for `data`.
#' Identical later calls load the trained amortizer from the cache, and [update()][update.mlnpefit] with
#' `newdata` fits new data of the same design without training.
#'
#' Models have one or more grouping factors: `y ~ x + (1 + x | g)`, `(1 | g)`, `(1 + x || g)`, `(0 + x | g)`,
#' crossed `(1 | subject) + (1 | item)` and nested `(1 | school/class)`, factor predictors and interactions, and
#' `y | trials(n) ~ ...` for binomial models. Parameters are named as brms names them. With several factors, the
#' one with the most levels is amortized over its levels; the effects of the others (at most 100) are parameters
#' of the trained model, so new data may use their trained levels only.
#'
#' Differences from brms: every prior must be proper (see [mlnpe_prior()]); the default prior on `b` is
#' `normal(0, 2.5 * sd(y) / sd(x))` instead of flat; rows with missing values are an error, not dropped; the
#' draws are independent, and the Pareto k-hat of PSIS (printed by `summary()`) says how close they are to
#' the exact posterior (at most 0.7 is good).
#'
#' @param formula A model formula as in brms (a formula, a string, or a `brms::bf()` object): population-level
#'   terms, group-level terms of one or more grouping factors (crossed or nested), `y | trials(n)` for binomial models, brms's `0 + Intercept` (the intercept as a
#'   class `b` coefficient, predictors not centred) and offsets such as `offset(log(exposure))` (columns, numbers,
#'   `+ - * / ^` and `log`, `log2`, `log10`, `log1p`, `exp`, `sqrt`; not in group-level terms). An offset is data:
#'   `newdata` of predictions needs its columns, and its values must be finite on every row.
#' @param data A data frame (or tibble) holding every variable of `formula`. Columns are used as brms uses
#'   them: numbers (integer64 too, when exactly representable; labelled columns as their values) as numbers;
#'   factors, characters and logicals as factors (brms's `xTRUE` for a logical); a bernoulli response may be
#'   logical, a two-level factor or two strings, the first level (R's sort order for strings) being the failure.
#'   Grouping variables may be of any of these types or dates; their levels are named as R prints them. Missing
#'   values in any used column, dates as predictors, list or matrix columns, ordered factors as predictors and
#'   character columns that mix numbers and text are errors that name the column, the rows and the fix.
#'   Variable names must be plain (letters, digits, `.` and `_`), not names that need backticks.
#' @param family A family: `gaussian()`, `binomial()`, `poisson()`, `Gamma()`, `brms::bernoulli()`,
#'   `brms::negbinomial()`, `brms::lognormal()`, `brms::student()`, or a name (see [mlnpe_family()]).
#' @param prior Priors: `NULL` for the defaults, [brms::prior()] / [brms::set_prior()] output, or
#'   [mlnpe_prior()] output.
#' @param ... brms sampling arguments (`chains`, `iter`, ...) are ignored with a warning.
#' @param groups,rows Trained ranges `c(min, max)` of the number of groups and of rows per group. `NULL`
#'   takes them from the data (about half to 1.5 times the observed number of groups; 1 to 1.5 times the
#'   largest group). Refits (e.g. [update()][update.mlnpefit], [logo()]) must stay inside them.
#' @param network The networks (Python's `NetworkConfig`): a nested list of the parts to change, e.g.
#'   `list(summary = list(hidden = 64), global_flow = list(transforms = 4))`. The parts are `summary`,
#'   `global_flow`, `local_flow`, `statistics` and `shift` (`FALSE` turns the last two off), beside `log_inputs`
#'   and `log_response`; Python checks every value.
#' @param train Training settings (Python's `TrainConfig`), changing single fields of the default budget of
#'   1500 steps of 64 datasets at a learning rate of 0.002: `steps`, `batch_size`, `learning_rate`,
#'   `time_limit` (seconds), `seed`, `progress`, `schedule` (`"cosine"` or `"wsd"`), `device` (`"auto"`: a CUDA GPU when torch finds one, else the
#'   CPU), ... Besides simulations, training uses `data`: every step adds the reverse KL divergence of the
#'   amortized posterior from the exact one for `data`, its leave-one-group-out subsets and bootstrap
#'   resamples of its groups (`observed_weight`, 1; `0` turns it off), and every `check_every` (250) steps
#'   checks the PSIS certificate of `data`: training stops once its Pareto k-hat is below 0.7 and the
#'   held-out loss has stopped improving, or when the budget runs out. The message after training and
#'   [summary()][summary.mlnpefit] say which.
#' @param focus Focusing rounds of training. `1` (the default) first boxes the parameters without training
#'   (a linear regression of each parameter on pooled statistics of simulated datasets, prediction for `data`
#'   -/+ 6 residual sds), then trains in two rounds on the same budget: an amortizer in that box (40 %), then a
#'   fresh one (60 %) on simulations whose population-level parameters are drawn from the prior truncated to a
#'   wide box around the first round's posterior for `data` (quartiles -/+ 4 interquartile ranges of each
#'   intercept, coefficient, sd and family parameter). The
#'   result is far more accurate for `data` and for data like it ([update()][update.mlnpefit] with new data of
#'   the same design, [logo()]); a fit whose posterior reaches the edge of the box warns. `0` amortizes over
#'   the whole prior: use it for simulation studies over the prior. `2` to `5` repeat the focusing.
#' @param cache `TRUE` keeps trained amortizers in `$MLNPE_CACHE_DIR` or `~/.cache/mlnpe`; a directory
#'   keeps them there; `FALSE` trains every time (and keeps the amortizer in a temporary directory for the
#'   rest of the session).
#' @param ndraws Number of posterior draws.
#' @param seed Seed of the draws; `NULL` draws one from R's random number generator, so that `set.seed()`
#'   makes fits reproducible.
#' @param psis Compute the PSIS Pareto k-hat and effective sample size of the draws.
#' @param resample Return draws resampled by their PSIS importance weights, which corrects a slightly
#'   inaccurate amortizer: `TRUE`, `FALSE`, or `"auto"` (the default: resample exactly when the Pareto k-hat is
#'   at most its threshold, i.e. when the reweighted draws are reliable; otherwise return the amortized draws
#'   and warn). `summary()` says which draws a fit holds.
#' @param refine Replace the amortized draws by Hamiltonian Monte Carlo draws of the exact posterior, run in
#'   the amortized posterior's base space (neural transport: the trained networks straighten the posterior's
#'   geometry, so short chains suffice; seconds to a minute instead of milliseconds): `TRUE`, `FALSE`, or
#'   `"auto"` (the default: exactly when PSIS finds the amortized draws unreliable, k-hat above 0.7, or leaves
#'   too few effective draws for stable summaries, an ESS below 10 % of `ndraws`). The
#'   refined draws come with Stan's diagnostics (R-hat, bulk ESS, divergences; `summary()` prints them), and a
#'   warning when those object. Use `FALSE` where speed matters more than exactness (simulation studies).
#' @param refine_control Settings of the refinement: `chains` (32), `warmup` (120 iterations per chain),
#'   `target_accept` (0.8), `trajectory` (1.5), `max_leapfrog` (24), `pool` (1024 amortized draws to pick
#'   starting points from).
#' @return An object of class `mlnpefit`.
#' @examples
#' \dontrun{
#' fit <- mlnpe(Reaction ~ Days + (Days | Subject), data = lme4::sleepstudy,
#'              prior = mlnpe_prior(normal(10, 5), class = b, coef = Days))
#' summary(fit)
#' fit2 <- update(fit, newdata = new_study)   # no training: milliseconds
#' }
#' @export
mlnpe <- function(formula, data, family = gaussian(), prior = NULL, ..., groups = NULL, rows = NULL,
                  network = list(), train = list(), focus = 1, cache = TRUE,
                  ndraws = 4000, seed = NULL, psis = TRUE, resample = "auto", refine = "auto",
                  refine_control = list()) {
  call <- match.call()
  data_name <- paste(deparse(substitute(data), width.cutoff = 60L), collapse = " ")
  check_dots(list(...))
  spec <- formula_spec(formula)
  check_data(data)
  fam <- family_spec(family, trials = spec$trials)
  check_columns(data, spec$vars)
  settings <- list(
    groups = check_range(groups, "groups"), rows = check_range(rows, "rows"),
    network = check_settings(network, "network"), train = check_settings(train, "train"),
    focus = check_focus(focus), cache = check_cache(cache), psis = check_flag(psis, "psis"), resample = check_resample(resample),
    refine = check_auto_flag(refine, "refine"), refine_control = check_settings(refine_control, "refine_control")
  )
  ndraws <- check_count(ndraws, "ndraws")
  seed <- check_seed(seed)
  priors <- prior_rows(prior)
  encoded <- encode_data(data, spec$vars, spec$response, fam, spec$groups)
  save_to <- if (isFALSE(settings$cache)) tempfile("mlnpe-amortizer-") else NULL
  value <- py_fit(spec$text, encoded, unclass(fam), priors,
                  control = c(settings, list(ndraws = ndraws, seed = seed)), save_to = save_to)
  if (!isTRUE(value$from_cache)) {
    message(sprintf("Trained the amortizer in %.0f s (%s); stored in %s", value$setup_seconds,
                    training_line(value$training), value$model_path))
  }
  new_mlnpefit(value, spec = spec, data = select_columns(data, spec$vars), data_name = data_name, family = fam,
               prior = prior, settings = settings, seed = seed, call = call)
}

new_mlnpefit <- function(value, spec, data, data_name, family, prior, settings, seed, call) {
  draws <- draws_from_py(value)
  levels <- as.character(unlist(value$levels))
  fit <- list(
    formula = spec$formula,
    formula_text = spec$text,
    spec = spec,
    family = family,
    data = data,
    data_name = data_name,
    prior_input = prior,
    prior = prior_table(value$prior_summary),
    draws = draws,
    group = value$group,
    levels = levels,
    x_names = as.character(unlist(value$x_names)),
    z_names = as.character(unlist(value$z_names)),
    crossed = lapply(value$crossed, function(f) {
      list(group = f$group, levels = as.character(unlist(f$levels)), z_names = as.character(unlist(f$z_names)))
    }),
    aux = as.character(unlist(value$aux)),
    nobs = as.integer(value$nobs),
    diagnostics = diagnostics_from_py(value$diagnostics),
    amortizer = list(
      path = value$model_path, from_cache = isTRUE(value$from_cache),
      groups = as.integer(unlist(value$groups)), rows = as.integer(unlist(value$rows)),
      train_seconds = value$train_seconds, network = value$network, training = value$training
    ),
    seconds = value$seconds,
    settings = settings,
    ndraws = posterior::ndraws(draws),
    seed = seed,
    call = call,
    versions = c(value$versions, list(mlnpe_r = format(utils::packageVersion("mlnpe"))))
  )
  validate_mlnpefit(structure(fit, class = "mlnpefit"))
}

validate_mlnpefit <- function(x) {
  needed <- c("formula", "family", "data", "draws", "group", "levels", "amortizer")
  missing <- setdiff(needed, names(x))
  if (length(missing)) {
    mlnpe_abort(sprintf("Invalid mlnpefit object: it lacks %s.", quote_list(missing)), "mlnpe_object_error")
  }
  if (!posterior::is_draws(x$draws)) {
    mlnpe_abort("Invalid mlnpefit object: `draws` is not a draws object.", "mlnpe_object_error")
  }
  x
}

#' @rdname mlnpe
#' @param x An object.
#' @export
is_mlnpefit <- function(x) inherits(x, "mlnpefit")

prior_table <- function(columns) {
  df <- as.data.frame(lapply(columns, function(col) as.character(unlist(col))), stringsAsFactors = FALSE)
  for (col in c("resp", "dpar", "nlpar")) df[[col]] <- ""
  new_mlnpe_prior(df[c("prior", "class", "coef", "group", "resp", "dpar", "nlpar", "lb", "ub", "source")])
}

`%||%` <- function(x, y) if (is.null(x)) y else x

#' Refit with new data, or change the model
#'
#' With `newdata` only (and `ndraws`, `seed`), the trained amortizer fits the new data at once: no training.
#' The new data need the model's variables, and their numbers of groups and rows must lie in the trained
#' ranges. Changing `formula.`, `family`, `prior` or the training settings calls [mlnpe()] again, which
#' trains a new amortizer unless the cache has it.
#'
#' @param object An `mlnpefit`.
#' @param formula. A new formula (optional).
#' @param newdata New data (optional).
#' @param ... Other arguments of [mlnpe()] to change.
#' @param ndraws,seed,psis,resample,refine,refine_control As in [mlnpe()]; `NULL` keeps the fit's settings.
#' @return A new `mlnpefit`.
#' @export
update.mlnpefit <- function(object, formula. = NULL, newdata = NULL, ..., ndraws = NULL, seed = NULL,
                            psis = NULL, resample = NULL, refine = NULL, refine_control = NULL) {
  dots <- list(...)
  ndraws <- ndraws %||% object$ndraws
  psis <- psis %||% object$settings$psis
  resample <- resample %||% object$settings$resample
  refine <- refine %||% object$settings$refine %||% "auto"
  refine_control <- refine_control %||% object$settings$refine_control %||% list()
  data_name <- if (is.null(newdata)) object$data_name else
    paste(deparse(substitute(newdata), width.cutoff = 60L), collapse = " ")
  data <- newdata %||% object$data
  if (!is.null(formula.) || length(dots)) {
    formula <- object$formula
    if (!is.null(formula.)) formula <- stats::update(stats::as.formula(formula), formula.)
    args <- utils::modifyList(
      list(formula = formula, data = data, family = object$family, prior = object$prior_input,
           groups = object$settings$groups, rows = object$settings$rows, network = object$settings$network,
           train = object$settings$train, focus = object$settings$focus %||% 1, cache = object$settings$cache,
           ndraws = ndraws, seed = seed,
           psis = psis, resample = resample, refine = refine, refine_control = refine_control),
      dots
    )
    fit <- do.call(mlnpe, args)
    fit$data_name <- data_name
    return(fit)
  }
  refit_amortizer(object$amortizer$path, object$spec, object$family, object$prior_input, object$settings,
                  data, data_name, ndraws, seed, psis, resample, match.call(), refine, refine_control)
}

refit_amortizer <- function(path, spec, family, prior, settings, data, data_name, ndraws, seed, psis, resample,
                            call, refine = "auto", refine_control = list()) {
  check_data(data, "newdata")
  check_columns(data, spec$vars, "newdata")
  control <- list(ndraws = check_count(ndraws, "ndraws"), seed = check_seed(seed), psis = check_flag(psis, "psis"),
                  resample = check_resample(resample), refine = check_auto_flag(refine, "refine"),
                  refine_control = check_settings(refine_control, "refine_control"))
  encoded <- encode_data(data, spec$vars, spec$response, family, spec$groups, "newdata")
  value <- py_refit(path, encoded, control)
  kept <- c("psis", "resample", "refine", "refine_control")
  settings[kept] <- control[kept]
  new_mlnpefit(value, spec = spec, data = select_columns(data, spec$vars), data_name = data_name, family = family,
               prior = prior, settings = settings, seed = control$seed, call = call)
}

#' Save and load trained amortizers
#'
#' A fit keeps only the path of its amortizer, in the cache or (with `cache = FALSE`) in a temporary
#' directory. `save_amortizer()` copies it to a directory of your choice (JSON configuration plus tensors; no
#' pickle); `load_amortizer()` reads it back, and `update(amortizer, newdata = )` fits data with it.
#'
#' @param object An `mlnpefit` or an `mlnpe_amortizer`.
#' @param path A directory (created if needed).
#' @return `save_amortizer()`: the path, invisibly. `load_amortizer()`: an object of class
#'   `mlnpe_amortizer`.
#' @examples
#' \dontrun{
#' save_amortizer(fit, "sleep_amortizer")
#' amortizer <- load_amortizer("sleep_amortizer")
#' fit2 <- update(amortizer, newdata = new_study)
#' }
#' @export
save_amortizer <- function(object, path) {
  source <- amortizer_path(object)
  if (!is.character(path) || length(path) != 1L || !nzchar(path)) {
    mlnpe_abort(sprintf("`path` must be a directory name, not %s.", describe_value(path)), "mlnpe_argument_error")
  }
  invisible(py_save_model(source, path.expand(path)))
}

#' @rdname save_amortizer
#' @export
load_amortizer <- function(path) {
  if (!is.character(path) || length(path) != 1L || !dir.exists(path)) {
    mlnpe_abort(c(sprintf("`path` must be an existing directory, not %s.", describe_value(path)),
                  i = "Pass a directory written by save_amortizer()."), "mlnpe_load_error")
  }
  info <- py_load_model(path.expand(path))
  new_mlnpe_amortizer(info)
}

new_mlnpe_amortizer <- function(info) {
  family <- structure(list(family = info$family, link = info$link), class = c("mlnpe_family", "family"))
  spec <- formula_spec(info$formula)
  structure(list(path = info$model_path, formula = spec$formula, spec = spec, family = family,
                 prior = prior_table(info$prior_summary), groups = as.integer(unlist(info$groups)),
                 rows = as.integer(unlist(info$rows)), info = info),
            class = "mlnpe_amortizer")
}

amortizer_path <- function(object) {
  if (inherits(object, "mlnpefit")) return(object$amortizer$path)
  if (inherits(object, "mlnpe_amortizer")) return(object$path)
  mlnpe_abort(sprintf("`object` must be an mlnpefit or an mlnpe_amortizer, not %s.", describe_class(object)),
              "mlnpe_argument_error")
}

#' @rdname save_amortizer
#' @param newdata Data to fit.
#' @param ndraws,seed,psis,resample,refine,refine_control As in [mlnpe()].
#' @param ... Unused.
#' @export
update.mlnpe_amortizer <- function(object, newdata, ..., ndraws = 4000, seed = NULL, psis = TRUE,
                                   resample = "auto", refine = "auto", refine_control = list()) {
  data_name <- paste(deparse(substitute(newdata), width.cutoff = 60L), collapse = " ")
  settings <- list(groups = object$groups, rows = object$rows, network = object$info$network, train = list(),
                   cache = TRUE, psis = psis, resample = resample)
  refit_amortizer(object$path, object$spec, object$family, object$prior, settings, newdata, data_name,
                  ndraws, seed, psis, resample, match.call(), refine, refine_control)
}

#' @export
print.mlnpe_amortizer <- function(x, ...) {
  cat("mlnpe amortizer\n")
  cat(" Family: ", x$family$family, " (link: ", x$family$link, ")\n", sep = "")
  cat("Formula: ", x$info$formula, "\n", sep = "")
  cat("Trained: groups ", x$groups[1L], "-", x$groups[2L], ", rows per group ", x$rows[1L], "-", x$rows[2L],
      "\n", sep = "")
  focus <- x$info$focus %||% 0L
  if (focus > 0) {
    cat("Focused: ", focus, " round(s), on data like the training data (parameters simulated in a box ",
        "around its posterior)\n", sep = "")
  } else {
    cat("Focused: no (amortized over the whole prior)\n")
  }
  cat("   Path: ", x$path, "\n", sep = "")
  invisible(x)
}
