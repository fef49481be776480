#' Install the Python side of mlnpe
#'
#' Creates a Python virtual environment (default `r-mlnpe`) and installs PyTorch, NumPy 1.x and the `mlnpe`
#' Python package into it. mlnpe finds that environment by itself afterwards: a `RETICULATE_PYTHON`
#' environment variable wins; otherwise the virtualenv `envname` is used when it exists; otherwise
#' reticulate's default Python.
#'
#' PyTorch is installed first so that pip does not pull a CUDA build as a dependency. On machines without
#' a local PyTorch wheel, pass PyTorch's CPU wheel index as `extra_index_url` to avoid the large CUDA build.
#'
#' @param envname Name (or path) of the virtual environment.
#' @param path Where the Python package comes from: the root of the mlnpe repository (the directory with
#'   `pyproject.toml`), a wheel, or anything else `pip install` accepts. By default the environment variable
#'   `MLNPE_PYTHON_SOURCE`, else the current directory when it holds the mlnpe repository.
#' @param python The Python interpreter to build the environment from (default: reticulate's choice).
#' @param torch The PyTorch version to install (`NULL` skips it).
#' @param extra_index_url Extra package index for pip, e.g. PyTorch's CPU wheel index.
#' @param new_env Remove an existing environment of that name first.
#' @return The path of the environment's Python, invisibly.
#' @examples
#' \dontrun{
#' install_mlnpe(path = "~/src/mlnpe")
#' }
#' @export
install_mlnpe <- function(envname = "r-mlnpe", path = Sys.getenv("MLNPE_PYTHON_SOURCE", default_source()),
                          python = NULL, torch = "2.13.0", extra_index_url = NULL, new_env = FALSE) {
  if (reticulate::py_available(initialize = FALSE)) {
    mlnpe_abort("Python is already running in this R session; restart R and call install_mlnpe() first.",
                "mlnpe_install_error")
  }
  if (!nzchar(path)) {
    mlnpe_abort(c("`path` is empty: tell install_mlnpe() where the mlnpe Python package is.",
                  i = "Pass the root of the mlnpe repository, e.g. install_mlnpe(path = \"~/src/mlnpe\")."),
                "mlnpe_install_error")
  }
  # R prepends its own and the system library directories to LD_LIBRARY_PATH; pip's Python inherits them and
  # may then load another Python's libpython (e.g. a pyenv Python picks Debian's libpython3.11 and loses ssl).
  old_ld <- Sys.getenv("LD_LIBRARY_PATH", unset = NA)
  on.exit(if (is.na(old_ld)) Sys.unsetenv("LD_LIBRARY_PATH") else Sys.setenv(LD_LIBRARY_PATH = old_ld), add = TRUE)
  Sys.setenv(LD_LIBRARY_PATH = subprocess_ld_path(old_ld))
  if (new_env && reticulate::virtualenv_exists(envname)) reticulate::virtualenv_remove(envname, confirm = FALSE)
  # packages = NULL: reticulate 1.28's default "numpy" would install NumPy 2
  reticulate::virtualenv_create(envname, python = python, packages = NULL)
  opts <- if (is.null(extra_index_url)) character() else c("--extra-index-url", extra_index_url)
  if (!is.null(torch)) reticulate::virtualenv_install(envname, paste0("torch==", torch), pip_options = opts)
  reqs <- readLines(system.file("python", "requirements.txt", package = "mlnpe"))
  reqs <- trimws(reqs[nzchar(trimws(reqs)) & !startsWith(trimws(reqs), "#")])
  reticulate::virtualenv_install(envname, reqs, pip_options = opts)
  # The requirements also constrain mlnpe's own dependencies: otherwise pip upgrades NumPy to 2.x for the
  # newest pandas or matplotlib.
  constraints <- tempfile("mlnpe-constraints-", fileext = ".txt")
  on.exit(unlink(constraints), add = TRUE)
  writeLines(reqs, constraints)
  reticulate::virtualenv_install(envname, normalizePath(path, mustWork = FALSE),
                                 pip_options = c(opts, "--constraint", constraints))
  message("Installed mlnpe into the virtualenv '", envname, "'. Restart R; mlnpe will find it by itself.")
  invisible(reticulate::virtualenv_python(envname))
}

# LD_LIBRARY_PATH for the Python and pip subprocesses: without R's library directory, Java's and the default
# system directories (the loader searches those last anyway, after a binary's own RUNPATH).
subprocess_ld_path <- function(value = Sys.getenv("LD_LIBRARY_PATH")) {
  if (is.na(value) || !nzchar(value)) return("")
  dirs <- strsplit(value, ":", fixed = TRUE)[[1L]]
  system_dirs <- c("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib",
                   Sys.glob(c("/lib/*-linux-gnu", "/usr/lib/*-linux-gnu")))
  drop <- !nzchar(dirs) | sub("/+$", "", dirs) %in% c(R.home("lib"), system_dirs) |
    grepl("/jvm/", dirs, fixed = TRUE)
  paste(dirs[!drop], collapse = ":")
}

default_source <- function() {
  if (file.exists("pyproject.toml") && dir.exists(file.path("python", "mlnpe"))) normalizePath(".") else ""
}

# Before Python starts: RETICULATE_PYTHON wins; otherwise prefer the r-mlnpe virtualenv when it exists.
prefer_mlnpe_env <- function(envname = "r-mlnpe") {
  if (nzchar(Sys.getenv("RETICULATE_PYTHON")) || reticulate::py_available(initialize = FALSE)) {
    return(invisible(FALSE))
  }
  found <- tryCatch(reticulate::virtualenv_exists(envname), error = function(e) FALSE)
  if (isTRUE(found)) reticulate::use_virtualenv(envname, required = FALSE)
  invisible(found)
}

#' Is the Python side of mlnpe available?
#'
#' Starts Python if needed (binding this R session to it) and checks that the `mlnpe` Python package can be
#' imported.
#'
#' @return `TRUE` or `FALSE`.
#' @export
mlnpe_available <- function() {
  if (isTRUE(.mlnpe$available)) return(TRUE)
  prefer_mlnpe_env()
  ok <- tryCatch(reticulate::py_module_available("mlnpe.interop"), error = function(e) FALSE)
  if (isTRUE(ok)) .mlnpe$available <- TRUE
  isTRUE(ok)
}

#' Situation report: which Python mlnpe uses and what is installed
#'
#' Prints the Python that mlnpe uses, the versions of Python, mlnpe, PyTorch and NumPy, the cache of trained
#' amortizers, and what to do when something is missing.
#'
#' @return A list with the same information, invisibly.
#' @export
mlnpe_sitrep <- function() {
  cat("mlnpe R package ", format(utils::packageVersion("mlnpe")), " (reticulate ",
      format(utils::packageVersion("reticulate")), ")\n", sep = "")
  env <- Sys.getenv("RETICULATE_PYTHON")
  cat("RETICULATE_PYTHON: ", if (nzchar(env)) env else "(not set)", "\n", sep = "")
  venv <- tryCatch(reticulate::virtualenv_exists("r-mlnpe"), error = function(e) FALSE)
  cat("virtualenv 'r-mlnpe': ", if (isTRUE(venv)) "found" else "not found", "\n", sep = "")
  if (!mlnpe_available()) {
    config <- tryCatch(reticulate::py_config(), error = function(e) NULL)
    cat("Python: ", if (is.null(config)) "none found" else config$python, "\n", sep = "")
    cat("The Python package 'mlnpe' is NOT available.\n",
        "Install it with install_mlnpe(path = \"<mlnpe repository>\"), or set RETICULATE_PYTHON to a Python\n",
        "that has it, then restart R.\n", sep = "")
    return(invisible(list(available = FALSE, python = config$python)))
  }
  info <- py_sitrep()
  v <- info$versions
  cat("Python: ", info$executable, " (", v$python, ")\n", sep = "")
  cat("mlnpe (Python): ", v$mlnpe, " at ", info$mlnpe_path, "\n", sep = "")
  cat("torch ", v$torch, " (", info$torch_threads, " threads); numpy ", v$numpy, "\n", sep = "")
  cat("Cache of trained amortizers: ", info$cache_dir, "\n", sep = "")
  invisible(c(list(available = TRUE), info))
}
