# Slow (MLNPE_SLOW_TESTS=1): install_mlnpe() end to end. A fresh virtualenv in a temporary WORKON_HOME gets
# torch (CPU), NumPy < 2 and the Python core of this repository; then a new R session without
# RETICULATE_PYTHON finds that environment by itself and trains a tiny model. Both steps run in child R
# processes: this session's Python is already started, and install_mlnpe() refuses to run then.
# Needs the repository (MLNPE_PYTHON_SOURCE, or tests run from inside it) and a pip that can reach a torch
# 2.13.0 CPU wheel (this machine keeps one on local disk; elsewhere pass PyTorch's CPU index).

repo_root <- function() {
  source <- Sys.getenv("MLNPE_PYTHON_SOURCE")
  if (nzchar(source)) return(normalizePath(source))
  dir <- normalizePath(testthat::test_path("."))
  for (i in 1:4) {
    if (file.exists(file.path(dir, "pyproject.toml")) && dir.exists(file.path(dir, "python", "mlnpe"))) return(dir)
    dir <- dirname(dir)
  }
  ""
}

# Runs R code in a child Rscript with the given environment; returns its output (stdout and stderr).
run_r <- function(code, env) {
  script <- tempfile(fileext = ".R")
  writeLines(code, script)
  out <- suppressWarnings(system2(file.path(R.home("bin"), "Rscript"), shQuote(script), stdout = TRUE,
                                  stderr = TRUE, env = env))
  structure(out, status = attr(out, "status") %||% 0L)
}

`%||%` <- function(x, y) if (is.null(x)) y else x

test_that("install_mlnpe() builds a working environment that a new session finds by itself", {
  skip_if_not_slow()
  repo <- repo_root()
  if (!nzchar(repo)) {
    if (mlnpe_strict()) stop("MLNPE_STRICT=1 but the mlnpe repository was not found; set MLNPE_PYTHON_SOURCE.")
    skip("the mlnpe repository (Python source) was not found; set MLNPE_PYTHON_SOURCE")
  }
  home <- tempfile("workon-")
  dir.create(home)
  on.exit(unlink(home, recursive = TRUE), add = TRUE)
  libs <- paste(.libPaths(), collapse = ":")
  # env for system2: unset RETICULATE_PYTHON, so that discovery has to find the new virtualenv
  env <- c(sprintf("WORKON_HOME=%s", home), sprintf("R_LIBS=%s", libs), "RETICULATE_PYTHON=",
           sprintf("MLNPE_CACHE_DIR=%s", file.path(home, "cache")))

  install <- run_r(c(
    "Sys.unsetenv('RETICULATE_PYTHON')",
    sprintf("py <- mlnpe::install_mlnpe(path = %s)", deparse(repo)),
    "cat('PYTHON=', py, '\\n', sep = '')"
  ), env)
  expect_equal(attr(install, "status"), 0L, info = paste(utils::tail(install, 30), collapse = "\n"))
  venv_python <- file.path(home, "r-mlnpe", "bin", "python")
  expect_true(file.exists(venv_python))

  check <- run_r(c(
    "Sys.unsetenv('RETICULATE_PYTHON')",
    "library(mlnpe)",
    "info <- mlnpe_sitrep()",
    "stopifnot(isTRUE(info$available))",
    "cat('EXECUTABLE=', info$executable, '\\n', sep = '')",
    "cat('TORCH=', info$versions$torch, '\\n', 'NUMPY=', info$versions$numpy, '\\n', sep = '')",
    "d <- data.frame(g = rep(letters[1:6], each = 5), y = rnorm(30))",
    "fit <- suppressWarnings(mlnpe(y ~ 1 + (1 | g), data = d, ndraws = 50, seed = 1,",
    "  train = list(steps = 20, batch_size = 8, progress = FALSE, num_threads = 1),",
    "  network = list(summary = list(hidden = 16), global_flow = list(transforms = 1),",
    "    local_flow = list(transforms = 1))))",
    "cat('VARIABLES=', paste(variables(fit)[1:3], collapse = ','), '\\n', sep = '')"
  ), env)
  expect_equal(attr(check, "status"), 0L, info = paste(utils::tail(check, 30), collapse = "\n"))
  line <- function(key) sub(paste0("^", key, "="), "", grep(paste0("^", key, "="), check, value = TRUE))
  expect_equal(line("EXECUTABLE"), venv_python)
  expect_match(line("TORCH"), "^2\\.13\\.0\\+cpu$")
  expect_match(line("NUMPY"), "^1\\.")
  expect_equal(line("VARIABLES"), "b_Intercept,sd_g__Intercept,sigma")
})
