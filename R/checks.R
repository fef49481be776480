# Argument checks and the condition helpers. Every error that mlnpe raises, in R or in Python, reaches the user as
# a condition of class "mlnpe_error" (plus a more specific class) whose message names the argument and the fix.

# Signals an error of class c(class, "mlnpe_error", "error", "condition"). `message` may have several elements;
# elements after the first, named "i" or "x", become bullet lines. An R argument error is also a
# "mlnpe_config_error", the class of Python's setting errors, so one class catches a bad setting on either side.
mlnpe_abort <- function(message, class = NULL, ..., call = NULL) {
  if ("mlnpe_argument_error" %in% class) class <- union(class, "mlnpe_config_error")
  cond <- structure(
    class = c(class, "mlnpe_error", "error", "condition"),
    list(message = format_message(message), call = call, ...)
  )
  stop(cond)
}

mlnpe_warn <- function(message, class = NULL, ...) {
  cond <- structure(
    class = c(class, "mlnpe_warning", "warning", "condition"),
    list(message = format_message(message), call = NULL, ...)
  )
  warning(cond)
}

format_message <- function(message) {
  if (length(message) <= 1L) return(paste(message, collapse = ""))
  bullets <- message[-1L]
  marks <- names(bullets)
  if (is.null(marks)) marks <- rep("", length(bullets))
  marks <- ifelse(marks == "x", "x ", ifelse(marks == "i", "i ", "* "))
  paste(c(message[[1L]], paste0(marks, bullets)), collapse = "\n")
}

# The condition R raises when the Python side is missing.
abort_python_missing <- function() {
  python <- tryCatch(reticulate::py_config()$python, error = function(e) NULL)
  mlnpe_abort(
    c("The Python package 'mlnpe' is not available, so mlnpe cannot fit models.",
      i = paste0("Python in use: ", if (is.null(python)) "none found" else python, "."),
      i = "Install it with install_mlnpe(path = \"<mlnpe repository>\") and restart R,",
      i = "or set RETICULATE_PYTHON to a Python that has it (before mlnpe starts Python).",
      i = "mlnpe_sitrep() reports what was found."),
    "mlnpe_python_missing"
  )
}

check_data <- function(data, arg = "data") {
  if (!is.data.frame(data)) {
    mlnpe_abort(
      c(sprintf("`%s` must be a data frame, not %s.", arg, describe_class(data)),
        i = sprintf("Convert it with as.data.frame(%s).", arg)),
      "mlnpe_data_error"
    )
  }
  if (nrow(data) == 0L) {
    mlnpe_abort(c(sprintf("`%s` has no rows.", arg),
                  i = "mlnpe needs data: did a filter or na.omit() remove every row?"), "mlnpe_data_error")
  }
  invisible(data)
}

check_columns <- function(data, vars, arg = "data") {
  missing <- setdiff(vars, names(data))
  if (length(missing)) {
    mlnpe_abort(
      c(sprintf("The formula uses %s, which %s not %s column%s of `%s`.", quote_list(missing),
                if (length(missing) > 1) "are" else "is", if (length(missing) > 1) "" else "a",
                if (length(missing) > 1) "s" else "", arg),
        i = sprintf("Columns of `%s`: %s.", arg, quote_list(utils::head(names(data), 20))),
        i = "Fix the formula or add the columns."),
      "mlnpe_data_error"
    )
  }
  twice <- intersect(vars, names(data)[duplicated(names(data))])
  if (length(twice)) {
    mlnpe_abort(c(sprintf("`%s` has more than one column named %s.", arg, quote_list(twice)),
                  i = "Rename them so that each name is unique (e.g. names(data) <- make.unique(names(data)))."),
                "mlnpe_data_error")
  }
  invisible(data)
}

# The columns `vars` of a data frame as a plain data.frame (a tibble's or data.table's columns, unchanged).
select_columns <- function(data, vars) {
  structure(lapply(stats::setNames(vars, vars), function(v) data[[v]]), class = "data.frame",
            row.names = .set_row_names(nrow(data)))
}

# Missing values in any used column are an error that names the columns and the rows: mlnpe never drops rows.
# `data` is a data frame or a list of columns (after `plain_column()`); a factor's NA level counts as missing.
check_no_na <- function(data, vars, arg = "data") {
  rows <- lapply(stats::setNames(vars, vars), function(v) which(missing_values(data[[v]])))
  bad <- rows[lengths(rows) > 0L]
  if (length(bad)) {
    where <- paste(sprintf("'%s' (%s)", names(bad), vapply(bad, rows_text, "")), collapse = ", ")
    mlnpe_abort(
      c(sprintf("`%s` has missing values (NA) in %s.", arg, where),
        i = "mlnpe never drops rows silently (brms would): remove or impute them first, e.g.",
        i = sprintf("%s <- na.omit(%s[c(%s)]) or %s <- tidyr::drop_na(%s, %s).", arg, arg,
                    paste(sprintf("\"%s\"", vars), collapse = ", "), arg, arg,
                    paste(backtick(vars), collapse = ", "))),
      "mlnpe_data_error"
    )
  }
  invisible(data)
}

missing_values <- function(x) {
  if (is.factor(x)) return(is.na(x) | is.na(levels(x))[as.integer(x)])
  is.na(x)
}

check_finite <- function(columns, arg = "data") {
  rows <- lapply(columns, function(x) if (is.numeric(x)) which(is.infinite(x)) else integer())
  bad <- rows[lengths(rows) > 0L]
  if (length(bad)) {
    mlnpe_abort(c(sprintf("`%s` has infinite values in %s.", arg,
                          paste(sprintf("'%s' (%s)", names(bad), vapply(bad, rows_text, "")), collapse = ", ")),
                  i = "Remove or fix those rows (a log of 0? a division by 0?)."),
                "mlnpe_data_error")
  }
  invisible(columns)
}

rows_text <- function(rows) {
  shown <- paste(utils::head(rows, 5L), collapse = ", ")
  more <- if (length(rows) > 5L) sprintf(" and %d more", length(rows) - 5L) else ""
  sprintf("%s %s%s", if (length(rows) == 1L) "row" else "rows", shown, more)
}

backtick <- function(x) ifelse(make.names(x) == x, x, paste0("`", x, "`"))

# ---- scalar arguments ---------------------------------------------------------------------------------------------
# R's whole numbers are doubles (1000, not 1000L): any integer-valued double is a count; 2.5, NA, Inf, TRUE, "10",
# and vectors of length > 1 are not. Counts and seeds must fit R's integers, which is what reaches Python.

abort_argument <- function(arg, wanted, x, hint = NULL) {
  mlnpe_abort(c(sprintf("`%s` must be %s, not %s.", arg, wanted, describe_value(x)), i = hint),
              "mlnpe_argument_error")
}

# A plain number (an integer64 scalar too), or NULL for anything else.
scalar_number <- function(x) {
  if (inherits(x, "integer64") && length(x) == 1L && requireNamespace("bit64", quietly = TRUE)) x <- as.double(x)
  if (!is.numeric(x) || is.object(x) || length(x) != 1L || is.na(x)) return(NULL)
  as.numeric(x)
}

check_count <- function(x, arg, min = 1L, allow_null = FALSE) {
  if (allow_null && is.null(x)) return(invisible(x))
  v <- scalar_number(x)
  if (is.null(v) || !is.finite(v) || v != round(v) || v < min || v > .Machine$integer.max) {
    huge <- !is.null(v) && is.finite(v) && v > .Machine$integer.max
    abort_argument(arg, sprintf("a whole number >= %d", min), x,
                   if (huge) sprintf("It must also fit R's integers: at most %d.", .Machine$integer.max))
  }
  invisible(as.integer(v))
}

# A number in [low, high] (an end is left out where `open` names it: "low", "high" or both).
check_number <- function(x, arg, low = -Inf, high = Inf, open = character()) {
  v <- scalar_number(x)
  below <- if ("low" %in% open) v <= low else v < low
  above <- if ("high" %in% open) v >= high else v > high
  if (is.null(v) || !is.finite(v) || below || above) {
    range <- if (is.finite(low) && is.finite(high)) {
      sprintf("in %s%g, %g%s", if ("low" %in% open) "(" else "[", low, high, if ("high" %in% open) ")" else "]")
    } else if (is.finite(low)) sprintf("%s %g", if ("low" %in% open) ">" else ">=", low) else "finite"
    abort_argument(arg, paste("a number", range), x)
  }
  v
}

check_flag <- function(x, arg) {
  if (!is.logical(x) || length(x) != 1L || is.na(x)) abort_argument(arg, "TRUE or FALSE", x)
  invisible(x)
}

check_auto_flag <- function(x, arg) {
  if (identical(x, "auto") || (is.logical(x) && length(x) == 1L && !is.na(x))) return(invisible(x))
  abort_argument(arg, "TRUE, FALSE or \"auto\"", x)
}

check_resample <- function(x) check_auto_flag(x, "resample")

check_focus <- function(x) {
  if (is.logical(x) && length(x) == 1L && !is.na(x)) return(as.integer(x))
  v <- scalar_number(x)
  if (!is.null(v) && v == round(v) && v >= 0 && v <= 5) return(as.integer(v))
  abort_argument("focus", "a whole number of focusing rounds from 0 to 5 (or TRUE/FALSE)", x,
                 "Use 0 to amortize over the whole prior, 1 to focus on data like `data`.")
}

check_seed <- function(seed) {
  if (is.null(seed)) return(sample.int(.Machine$integer.max, 1L))
  as.integer(check_count(seed, "seed", min = 0L))
}

# Quantiles of summaries: numbers in [0, 1], at least one.
check_probs <- function(probs, arg = "probs") {
  if (!is.numeric(probs) || is.object(probs) || !length(probs) || anyNA(probs) || any(probs < 0 | probs > 1)) {
    abort_argument(arg, "one or more probabilities in [0, 1], e.g. c(0.025, 0.975)", probs)
  }
  as.numeric(probs)
}

# The summary arguments of fixef(), ranef(), coef(), VarCorr(), fitted(), predict() and residuals().
check_summary_args <- function(summary, robust, probs) {
  check_flag(summary, "summary")
  check_flag(robust, "robust")
  invisible(check_probs(probs))
}

# ---- settings lists ------------------------------------------------------------------------------------------------
# `train`, `network` and `refine_control` go to Python as they are, and Python's configs check every name and value
# (one source of truth: unknown names, types, ranges, R's whole-number doubles). What R checks is what reticulate
# would corrupt on the way: NA becomes TRUE, -2147483648 or "NA"; factors become strings; integer64 becomes a
# denormal float. And every element needs a name, once.

check_settings <- function(x, arg) {
  if (is.null(x)) return(list())
  if (!is.list(x) || is.object(x)) {
    abort_argument(arg, "a named list", x, sprintf("E.g. %s = %s.", arg, settings_example(arg)))
  }
  check_setting_list(x, arg)
  x
}

settings_example <- function(arg) {
  switch(arg, network = "list(summary = list(hidden = 64), global_flow = list(transforms = 4))",
         refine_control = "list(chains = 16, warmup = 200)", "list(steps = 1500, batch_size = 64)")
}

check_setting_list <- function(x, path) {
  if (!length(x)) return(invisible())
  nms <- names(x)
  if (is.null(nms) || any(is.na(nms) | !nzchar(nms))) {
    abort_argument(path, "a named list", x, sprintf("E.g. %s = %s.", path, settings_example(sub("\\$.*", "", path))))
  }
  twice <- unique(nms[duplicated(nms)])
  if (length(twice)) {
    mlnpe_abort(sprintf("`%s` names %s more than once; give each setting once.", path, quote_list(twice)),
                "mlnpe_argument_error")
  }
  for (name in nms) check_setting(x[[name]], paste0(path, "$", name))
}

check_setting <- function(v, path) {
  if (is.null(v)) return(invisible())
  if (is.list(v) && !is.object(v)) return(check_setting_list(v, path))
  if (inherits(v, "integer64")) {
    mlnpe_abort(sprintf("`%s` is an integer64; give a plain number (as.numeric()).", path), "mlnpe_argument_error")
  }
  if (!is.atomic(v) || is.object(v) || !(is.numeric(v) || is.logical(v) || is.character(v))) {
    mlnpe_abort(sprintf("`%s` must be a number, TRUE/FALSE, a string or a vector of them, not %s.", path,
                        describe_class(v)), "mlnpe_argument_error")
  }
  if (!length(v) || anyNA(v)) {
    mlnpe_abort(c(sprintf("`%s` is %s.", path, if (length(v)) "NA" else "empty"),
                  i = "Give it a value, or leave the setting out to keep its default."),
                "mlnpe_argument_error")
  }
  invisible()
}

check_range <- function(x, arg) {
  if (is.null(x)) return(NULL)
  if (inherits(x, "integer64") && requireNamespace("bit64", quietly = TRUE)) x <- as.double(x)
  if (!is.numeric(x) || is.object(x) || length(x) != 2L || anyNA(x) || any(!is.finite(x)) || any(x < 1) ||
      any(x != round(x)) || any(x > .Machine$integer.max) || x[1] > x[2]) {
    abort_argument(arg, "NULL or c(min, max) with whole numbers 1 <= min <= max", x,
                   "NULL takes a range from the data.")
  }
  as.integer(x)
}

check_cache <- function(cache) {
  ok <- (is.logical(cache) && length(cache) == 1L && !is.na(cache)) ||
    (is.character(cache) && length(cache) == 1L && nzchar(cache))
  if (!ok) {
    mlnpe_abort(c(sprintf("`cache` must be TRUE, FALSE or a directory, not %s.", describe_value(cache)),
                  i = "TRUE uses $MLNPE_CACHE_DIR or ~/.cache/mlnpe."),
                "mlnpe_argument_error")
  }
  if (is.character(cache)) path.expand(cache) else cache
}

# brms sampling arguments mean nothing for amortized draws: say so instead of failing.
check_dots <- function(dots) {
  if (!length(dots)) return(invisible())
  nms <- names(dots)
  if (is.null(nms) || any(!nzchar(nms))) {
    mlnpe_abort("Arguments in `...` must be named.", "mlnpe_argument_error")
  }
  mlnpe_warn(
    c(sprintf("Ignoring %s: mlnpe draws independent samples from an amortized posterior.", quote_list(nms)),
      i = "Use `ndraws` for the number of draws and `train` for the training budget."),
    "mlnpe_ignored_argument"
  )
}

describe_class <- function(x) {
  if (is.null(x)) return("NULL")
  paste0("an object of class ", paste0("<", class(x)[1L], ">"))
}

describe_value <- function(x) {
  if (is.null(x)) return("NULL")
  if (is.atomic(x) && !is.object(x) && length(x) == 0L) return(sprintf("an empty %s vector", typeof(x)))
  if (is.atomic(x) && !is.object(x) && length(x) <= 3L) return(paste(deparse(x, width.cutoff = 60L), collapse = ""))
  if (is.atomic(x) && !is.object(x)) return(sprintf("a %s vector of length %d", typeof(x), length(x)))
  describe_class(x)
}

quote_list <- function(x) paste(sprintf("'%s'", x), collapse = ", ")
