# Argument checks and the condition helpers. Every error that mlnpe raises, in R or in Python, reaches the user as
# a condition of class "mlnpe_error" (plus a more specific class) whose message names the argument and the fix.

# Signals an error of class c(class, "mlnpe_error", "error", "condition"). `message` may have several elements;
# elements after the first, named "i" or "x", become bullet lines.
mlnpe_abort <- function(message, class = NULL, ..., call = NULL) {
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
    mlnpe_abort(sprintf("`%s` has no rows.", arg), "mlnpe_data_error")
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
  invisible(data)
}

check_no_na <- function(data, vars, arg = "data") {
  counts <- vapply(vars, function(v) sum(is.na(data[[v]])), integer(1))
  bad <- counts[counts > 0L]
  if (length(bad)) {
    mlnpe_abort(
      c(sprintf("`%s` has missing values: %s.", arg,
                paste(sprintf("'%s' (%d)", names(bad), bad), collapse = ", ")),
        i = "mlnpe never drops rows silently (brms would): remove or impute them first,",
        i = sprintf("e.g. %s <- na.omit(%s[c(%s)]).", arg, arg, paste(sprintf("\"%s\"", vars), collapse = ", "))),
      "mlnpe_data_error"
    )
  }
  invisible(data)
}

check_count <- function(x, arg, allow_null = FALSE) {
  if (allow_null && is.null(x)) return(invisible(x))
  if (!is.numeric(x) || length(x) != 1L || is.na(x) || x < 1 || x != round(x)) {
    mlnpe_abort(sprintf("`%s` must be a positive whole number, not %s.", arg, describe_value(x)),
                "mlnpe_argument_error")
  }
  invisible(as.integer(x))
}

check_flag <- function(x, arg) {
  if (!is.logical(x) || length(x) != 1L || is.na(x)) {
    mlnpe_abort(sprintf("`%s` must be TRUE or FALSE, not %s.", arg, describe_value(x)), "mlnpe_argument_error")
  }
  invisible(x)
}

check_auto_flag <- function(x, arg) {
  if (identical(x, "auto") || (is.logical(x) && length(x) == 1L && !is.na(x))) return(invisible(x))
  mlnpe_abort(sprintf("`%s` must be TRUE, FALSE or \"auto\", not %s.", arg, describe_value(x)),
              "mlnpe_argument_error")
}

check_resample <- function(x) {
  if (identical(x, "auto") || (is.logical(x) && length(x) == 1L && !is.na(x))) return(invisible(x))
  mlnpe_abort(sprintf("`resample` must be TRUE, FALSE or \"auto\", not %s.", describe_value(x)),
              "mlnpe_argument_error")
}

check_focus <- function(x) {
  if (is.logical(x) && length(x) == 1L && !is.na(x)) return(as.integer(x))
  if (is.numeric(x) && length(x) == 1L && !is.na(x) && x == round(x) && x >= 0 && x <= 5) return(as.integer(x))
  mlnpe_abort(sprintf(paste0("`focus` must be a whole number of focusing rounds from 0 to 5 (or TRUE/FALSE), not %s; ",
                             "use 0 to amortize over the whole prior, 1 to focus on data like `data`."),
                      describe_value(x)), "mlnpe_argument_error")
}

check_seed <- function(seed) {
  if (is.null(seed)) return(sample.int(.Machine$integer.max, 1L))
  if (!is.numeric(seed) || length(seed) != 1L || is.na(seed) || seed != round(seed) || seed < 0) {
    mlnpe_abort(sprintf("`seed` must be NULL or a non-negative whole number, not %s.", describe_value(seed)),
                "mlnpe_argument_error")
  }
  as.integer(seed)
}

check_settings <- function(x, arg) {
  if (is.null(x)) return(list())
  if (!is.list(x) || (length(x) && (is.null(names(x)) || any(!nzchar(names(x)))))) {
    mlnpe_abort(c(sprintf("`%s` must be a named list, not %s.", arg, describe_value(x)),
                  i = sprintf("E.g. %s = list(steps = 1500, batch_size = 64).", arg)),
                "mlnpe_argument_error")
  }
  x
}

check_range <- function(x, arg) {
  if (is.null(x)) return(NULL)
  if (!is.numeric(x) || length(x) != 2L || anyNA(x) || any(x < 1) || any(x != round(x)) || x[1] > x[2]) {
    mlnpe_abort(c(sprintf("`%s` must be NULL or c(min, max) with 1 <= min <= max, not %s.", arg, describe_value(x)),
                  i = "NULL takes a range from the data."),
                "mlnpe_argument_error")
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
  if (is.atomic(x) && length(x) <= 3L) return(paste(deparse(x, width.cutoff = 60L), collapse = ""))
  describe_class(x)
}

quote_list <- function(x) paste(sprintf("'%s'", x), collapse = ", ")
