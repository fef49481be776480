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

# A data frame as list(column = vector | list(codes, levels)) with the columns `vars`, for Python. Each column is
# first made a plain vector as a brms user expects (`plain_column()`: a tibble's columns, integer64, labelled,
# one-column matrices), then checked for missing and infinite values (an error naming the column and the rows;
# nothing is dropped), then coded by its role:
# * the response as numbers; for bernoulli a logical, a two-level factor or a character column with two values
#   becomes 0/1 with the first level (in R's sort order for characters) the failure, as brms 2.18 does;
# * grouping factors (`groups`) as factor codes in R's level order: their labels are as R prints them (as brms
#   names r_<g>[level,...]); numbers, logicals, dates and integer64 ids become factors;
# * covariates as numbers, logicals (a factor FALSE/TRUE in Python, as model.matrix's xTRUE) or factor codes
#   (characters become factors; unused levels are dropped, as brms drops them).
# Character columns that mix numbers and text are an error: a stray value never decides a column's type.
encode_data <- function(data, vars, response = NULL, family = NULL, groups = character(), arg = "data") {
  role <- function(v) if (identical(v, response)) "response" else if (v %in% groups) "group" else "covariate"
  columns <- lapply(stats::setNames(vars, vars), function(v) plain_column(data[[v]], v, role(v), arg))
  check_no_na(columns, vars, arg)
  check_finite(columns, arg)
  lapply(stats::setNames(vars, vars), function(v) {
    x <- columns[[v]]
    switch(role(v),
      response = encode_response(x, v, family, arg),
      group = factor_codes(group_factor(x, v, arg)),
      covariate = encode_covariate(x, v, arg)
    )
  })
}

encode_covariate <- function(x, name, arg = "data") {
  if (is.ordered(x)) {
    mlnpe_abort(c(sprintf("Column '%s' of `%s` is an ordered factor, which brms codes by polynomial contrasts (%s.L, %s.Q, ...); mlnpe does not support them.",
                          name, arg, name, name),
                  i = sprintf("Use factor(%s, ordered = FALSE) for treatment contrasts, or as.numeric(%s) for a linear trend.",
                              name, name)),
                "mlnpe_data_error")
  }
  if (is.character(x)) x <- factor(check_one_kind(x, name, arg))
  if (is.factor(x)) return(factor_codes(droplevels(x)))
  if (is.logical(x) || is.integer(x)) return(x)
  as.numeric(x)
}

factor_codes <- function(x) list(codes = as.integer(x) - 1L, levels = levels(x))

# A grouping variable as a factor of its labels (R's as.character, as brms names the levels).
group_factor <- function(x, name, arg = "data") {
  if (is.factor(x)) return(droplevels(x))
  if (is.character(x)) return(factor(check_one_kind(x, name, arg)))
  if (is.numeric(x)) {
    values <- sort(unique(x))
    labels <- as.character(values)
    twice <- labels[duplicated(labels)]
    if (length(twice)) {
      mlnpe_abort(c(sprintf("The grouping variable '%s' of `%s` has distinct numbers that print alike ('%s') and would be merged into one group.",
                            name, arg, twice[1L]),
                    i = sprintf("Relabel them, e.g. %s$%s <- round(%s$%s, 6), or use characters.", arg, name, arg, name)),
                  "mlnpe_data_error")
    }
    return(factor(x, levels = values, labels = labels))
  }
  factor(x)  # logical, Date, POSIXct: labels as R prints them
}

encode_response <- function(x, name, family = NULL, arg = "data") {
  x <- plain_column(x, name, "response", arg)
  binary <- identical(family$family, "bernoulli")
  if (is.logical(x)) return(as.numeric(x))
  if (is.factor(x) || is.character(x)) {
    if (binary) return(binary_response(x, name, arg))
    looks <- is.character(x) && all(!is.na(suppressWarnings(as.numeric(x[!is.na(x)]))))
    mlnpe_abort(c(sprintf("The response '%s' must be numeric for the %s family, not a %s.", name,
                          family$family %||% "gaussian", if (is.factor(x)) "factor" else "character vector"),
                  i = if (looks) sprintf("Its values look like numbers: convert them with as.numeric(%s$%s).", arg, name)
                      else "A factor or character response works only with the bernoulli family (two values)."),
                "mlnpe_data_error")
  }
  as.numeric(x)
}

# brms 2.18's coding of a binary response: the first of the two levels (a factor's level order, R's sort order for
# characters) is the failure (0), the second the success (1).
binary_response <- function(x, name, arg = "data") {
  if (is.character(x)) x <- factor(check_one_kind(x, name, arg))
  used <- droplevels(x)
  levels <- if (nlevels(used) == 1L && nlevels(x) == 2L) levels(x) else levels(used)
  if (length(levels) != 2L) {
    mlnpe_abort(c(sprintf("The bernoulli response '%s' of `%s` has %d value%s (%s); it needs two.", name, arg,
                          length(levels), if (length(levels) == 1L) "" else "s", quote_list(utils::head(levels, 5L))),
                  i = if (length(levels) == 1L) sprintf("To say which value is the success, make it a factor with both levels, e.g. factor(%s, levels = c(\"no\", \"yes\")).", name)
                      else "Recode it to two values (0/1, FALSE/TRUE or a factor with two levels)."),
                "mlnpe_data_error")
  }
  as.numeric(match(as.character(x), levels) == 2L)
}

# Character columns whose values are partly numbers and partly text: an error naming the rows of the minority.
check_one_kind <- function(x, name, arg = "data") {
  number <- !is.na(suppressWarnings(as.numeric(x)))
  if (any(number) && !all(number)) {
    odd <- if (sum(number) >= sum(!number)) which(!number) else which(number)
    mlnpe_abort(c(sprintf("Column '%s' of `%s` mixes numbers and text (%s); its type is never guessed from a stray value.",
                          name, arg, paste(sprintf("row %d: '%s'", utils::head(odd, 3L), x[utils::head(odd, 3L)]),
                                           collapse = ", ")),
                  i = "If those values mark missing data, set them to NA and remove the rows (na.omit(), tidyr::drop_na()).",
                  i = sprintf("If the column holds numbers, fix those rows and convert it: as.numeric(%s$%s).", arg, name),
                  i = sprintf("If every value is a label, make the column a factor: %s$%s <- factor(%s$%s).", arg, name,
                              arg, name)),
                "mlnpe_data_error")
  }
  x
}

# One column as a plain vector (a factor, character, logical, integer or double vector without attributes), as a
# brms user expects each input type to be used, or an error that names the column and the fix.
plain_column <- function(x, name, role = "covariate", arg = "data") {
  fix <- function(what, ...) {
    mlnpe_abort(c(sprintf("Column '%s' of `%s` %s.", name, arg, what), ...), "mlnpe_data_error")
  }
  if (inherits(x, "AsIs")) class(x) <- setdiff(class(x), "AsIs")
  if (inherits(x, "haven_labelled")) x <- labelled_values(x)
  if (inherits(x, "integer64")) x <- integer64_values(x, name, role, arg)
  if (is.matrix(x) && ncol(x) == 1L && !is.object(x)) x <- x[, 1L]  # scale() gives an n x 1 matrix
  if (is.data.frame(x) || is.matrix(x) || is.array(x) && length(dim(x)) > 1L) {
    fix(sprintf("holds %d columns (a matrix or data frame column, e.g. from poly() or cbind())", NCOL(x)),
        i = "mlnpe needs one value per row: give each column its own name in `data` and in the formula.")
  }
  if (is.list(x) && !is.object(x)) {
    fix("is a list column", i = "mlnpe needs one value per row: unnest it (tidyr::unnest()) or take one element per row.")
  }
  if (inherits(x, c("Date", "POSIXt"))) {
    if (role == "group") return(x)
    fix(sprintf("is a date (<%s>), which mlnpe does not convert to numbers implicitly", class(x)[1L]),
        i = sprintf("Use a number, e.g. %s$%s <- as.numeric(%s$%s - min(%s$%s)) (days since the first date), or a factor.",
                    arg, name, arg, name, arg, name))
  }
  if (inherits(x, "difftime")) {
    fix(sprintf("is a time difference in %s", attr(x, "units")),
        i = sprintf("Use a number in the units you mean, e.g. as.numeric(%s$%s, units = \"days\").", arg, name))
  }
  if (is.factor(x)) return(x)
  if (is.object(x) || !(is.numeric(x) || is.character(x) || is.logical(x))) {
    fix(sprintf("has class <%s>, which mlnpe cannot use", class(x)[1L]),
        i = "Convert it to numbers (as.numeric()), a factor (factor()) or characters (as.character()).")
  }
  attributes(x) <- NULL
  x
}

# A haven labelled column: its values (numbers or strings), without labels; SPSS user-defined missing values
# (haven's is.na() is TRUE for them) become NA, so that the missing-value check names their rows.
labelled_values <- function(x) {
  missing <- is.na(x)
  attributes(x) <- NULL
  x[missing] <- NA
  x
}

# An integer64 column: doubles when every value is exactly representable (about |x| <= 2^53); a grouping variable keeps
# its exact labels (database ids) in numeric order.
integer64_values <- function(x, name, role = "covariate", arg = "data") {
  if (!requireNamespace("bit64", quietly = TRUE)) {
    mlnpe_abort(c(sprintf("Column '%s' of `%s` is an integer64, which needs the package bit64.", name, arg),
                  i = "Install it (install.packages(\"bit64\")) or convert the column with as.numeric()."),
                "mlnpe_data_error")
  }
  missing <- is.na(x)  # bit64's methods, registered by its namespace
  values <- suppressWarnings(as.double(x))  # precision loss is checked below
  if (role == "group") {
    labels <- as.character(x)
    levels <- unique(labels[order(values)])
    return(factor(labels, levels = levels[!is.na(levels)]))
  }
  big <- which(!missing & suppressWarnings(bit64::as.integer64(values)) != x)
  if (length(big)) {
    mlnpe_abort(c(sprintf("Column '%s' of `%s` is an integer64 with values beyond 2^53 (row %d: %s), which a double cannot hold exactly.",
                          name, arg, big[1L], as.character(x[big[1L]])),
                  i = "Rescale it (e.g. other units), or use it as a grouping factor or as characters."),
                "mlnpe_data_error")
  }
  values[missing] <- NA
  values
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

py_logo <- function(path, data, ndraws, nsim, seed, group = NULL) {
  py_call("logo", model_path = path, data = data, n_draws = as.integer(ndraws), n_local = as.integer(nsim),
          seed = as.integer(seed), group = group)
}

py_save_model <- function(path, to) py_call("save_model", model_path = path, path = to)

py_load_model <- function(path) py_call("load_model", path = path)
