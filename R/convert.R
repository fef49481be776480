# The only file that crosses into Python. Everything sent is a plain R vector or list (reticulate 1.28 turns them
# into Python lists and dicts); everything received is plain too: no NumPy arrays, no pandas frames. Python's
# entry points (python/mlnpe/interop.py) answer with an envelope list(ok, value, error, warnings).

interop <- function() {
  if (!mlnpe_available()) abort_python_missing()
  .mlnpe$interop
}

# Calls an entry point of mlnpe.interop and unwraps its envelope: warnings become R warnings, errors become
# conditions of class "mlnpe_error".
py_call <- function(fun, ...) {
  module <- interop()
  out <- tryCatch(
    module[[fun]](...),
    error = function(e) abort_reticulate(e, fun)
  )
  emit_python_warnings(out$warnings)
  if (!isTRUE(out$ok)) abort_from_python(out$error)
  out$value
}

abort_from_python <- function(error) {
  class <- python_error_class(error$type, isTRUE(error$mlnpe))
  message <- error$message
  if (!isTRUE(error$mlnpe)) message <- paste0(error$type, " in mlnpe's Python code: ", message)
  mlnpe_abort(message, class, python_type = error$type, python_traceback = error$traceback)
}

python_error_class <- function(type, is_mlnpe = TRUE) {
  if (!is_mlnpe) return("mlnpe_python_error")
  snake <- tolower(gsub("([a-z0-9])([A-Z])", "\\1_\\2", type))
  c(paste0("mlnpe_", snake), "mlnpe_python_error")
}

abort_reticulate <- function(e, fun) {
  first <- strsplit(conditionMessage(e), "\n", fixed = TRUE)[[1L]]
  mlnpe_abort(c(sprintf("Calling mlnpe's Python function '%s' failed: %s", fun, first[1L]),
                i = "mlnpe_sitrep() shows which Python and versions are in use."),
              "mlnpe_python_error", parent = e)
}

emit_python_warnings <- function(warnings) {
  for (w in warnings) {
    class <- switch(w$type, ParetoKWarning = "mlnpe_pareto_k_warning", RangeWarning = "mlnpe_range_warning",
                    "mlnpe_python_warning")
    mlnpe_warn(w$message, class)
  }
}

# ---- data ------------------------------------------------------------------------------------------------------

# A data frame as list(column = vector | list(codes, levels)) with the columns `vars`. Factors keep R's level
# order (their levels were set by R's sort in this session's locale, as brms's are); character and the grouping
# factor's other types are turned into factors first. The response is sent as numbers.
encode_data <- function(data, vars, response = NULL, family = NULL) {
  out <- lapply(stats::setNames(vars, vars), function(v) {
    x <- data[[v]]
    if (identical(v, response)) return(encode_response(x, v, family))
    if (is.character(x)) x <- factor(x)
    if (is.factor(x)) {
      x <- droplevels(x)
      return(list(codes = as.integer(x) - 1L, levels = levels(x)))
    }
    if (is.logical(x)) return(x)
    if (is.numeric(x) && !is.object(x)) return(if (is.integer(x)) x else as.numeric(x))
    mlnpe_abort(c(sprintf("Column '%s' has class <%s>, which mlnpe cannot use.", v, class(x)[1L]),
                  i = "Convert it to numbers, a factor or characters."), "mlnpe_data_error")
  })
  out
}

encode_response <- function(x, name, family = NULL) {
  if (is.logical(x)) return(as.numeric(x))
  if (is.factor(x) || is.character(x)) {
    x <- droplevels(factor(x))
    if (identical(family$family, "bernoulli") && nlevels(x) == 2L) {
      # as brms: the first level is 0, the second 1
      return(as.numeric(as.integer(x) == 2L))
    }
    mlnpe_abort(c(sprintf("The response '%s' must be numeric, not a %s.", name, class(x)[1L]),
                  i = "A factor response works only with two levels and the bernoulli family."),
                "mlnpe_data_error")
  }
  if (!is.numeric(x)) {
    mlnpe_abort(sprintf("The response '%s' must be numeric, not <%s>.", name, class(x)[1L]), "mlnpe_data_error")
  }
  as.numeric(x)
}

# ---- draws -------------------------------------------------------------------------------------------------------

# Python's list(variables, shape, data) (column-major) as a draws_df.
draws_from_py <- function(value) {
  m <- matrix_from_py(value)
  colnames(m) <- as.character(unlist(value$variables))
  posterior::as_draws_df(m)
}

matrix_from_py <- function(value) {
  shape <- as.integer(unlist(value$shape))
  matrix(as.numeric(unlist(value$data)), nrow = shape[1L], ncol = shape[2L])
}

# A fit's diagnostics, under the names Python sends and the fit keeps; NULL (none computed) becomes NA.
diagnostics_from_py <- function(d) {
  list(pareto_k = d$pareto_k %||% NA_real_, ess = d$ess %||% NA_real_,
       khat_threshold = d$khat_threshold %||% NA_real_, diagnosis = d$diagnosis %||% NA_character_,
       resampled = isTRUE(d$resampled), refined = isTRUE(d$refined), refine = d$refine)
}

# A draws object as list(variables, shape, data) for Python.
draws_to_py <- function(draws) {
  m <- unclass(posterior::as_draws_matrix(draws))
  attr(m, "nchains") <- NULL
  list(variables = as.list(colnames(m)), shape = as.list(dim(m)), data = as.numeric(m))
}

# ---- entry points ----------------------------------------------------------------------------------------------------

py_sitrep <- function() py_call("sitrep")

# `control` is the one list of a fit's settings, under the names of mlnpe()'s arguments (Python's FitControl in
# python/mlnpe/interop.py): groups, rows, network, train, cache, ndraws, seed, psis, resample, focus, refine,
# refine_control for mlnpe(); ndraws, seed, psis, resample, refine, refine_control for update(newdata =). R has
# checked the types of its arguments; Python coerces each value and its API checks it.
py_fit <- function(formula, data, family, priors, control, save_to = NULL) {
  py_call("fit_model", formula = formula, data = data, family = family, priors = priors, control = control,
          save_to = save_to)
}

py_refit <- function(path, data, control) py_call("refit", model_path = path, data = data, control = control)

py_predict <- function(path, data, draws, kind, newdata, seed, allow_new_levels, include_group_effects) {
  value <- py_call("predict", model_path = path, data = data, draws = draws_to_py(draws), kind = kind,
                   newdata = newdata, seed = as.integer(seed), allow_new_levels = allow_new_levels,
                   include_group_effects = include_group_effects)
  matrix_from_py(value)
}

py_logo <- function(path, data, ndraws, nsim, seed) {
  py_call("logo", model_path = path, data = data, n_draws = as.integer(ndraws), n_local = as.integer(nsim),
          seed = as.integer(seed))
}

py_save_model <- function(path, to) py_call("save_model", model_path = path, path = to)

py_load_model <- function(path) py_call("load_model", path = path)
