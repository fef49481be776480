# Python for the end-to-end tests. Set RETICULATE_PYTHON to a Python with the mlnpe package (the tests never
# change it). With MLNPE_STRICT=1 a missing Python or mlnpe is a test failure instead of a skip, so CI cannot
# pass by skipping.

mlnpe_strict <- function() identical(Sys.getenv("MLNPE_STRICT"), "1")

skip_if_no_mlnpe_python <- function() {
  ok <- requireNamespace("reticulate", quietly = TRUE) && mlnpe::mlnpe_available()
  if (!ok) {
    if (mlnpe_strict()) {
      stop("MLNPE_STRICT=1 but the Python package 'mlnpe' is not available to reticulate; ",
           "set RETICULATE_PYTHON to a Python that has it.", call. = FALSE)
    }
    testthat::skip("Python package 'mlnpe' not available (set RETICULATE_PYTHON)")
  }
}

# A dependency of a test (an R package): a failure under MLNPE_STRICT=1, else a skip.
skip_if_missing_package <- function(pkg) {
  if (requireNamespace(pkg, quietly = TRUE)) return(invisible(TRUE))
  if (mlnpe_strict()) stop("MLNPE_STRICT=1 but the R package '", pkg, "' is not installed.", call. = FALSE)
  testthat::skip(paste0("R package '", pkg, "' not installed"))
}

skip_if_not_slow <- function() {
  if (!identical(Sys.getenv("MLNPE_SLOW_TESTS"), "1")) testthat::skip("slow test: set MLNPE_SLOW_TESTS=1")
}

# A small dataset: J groups of n rows, one covariate, a factor with a space in its levels.
tiny_data <- function(seed = 1, J = 8, n = 10) {
  withr::with_seed(seed, {
    g <- rep(sprintf("s %d", seq_len(J)), each = n)
    x <- stats::rnorm(J * n)
    u <- stats::rnorm(J, 0, 0.5)[rep(seq_len(J), each = n)]
    data.frame(g = g, x = x, y = 1 + 0.5 * x + u + stats::rnorm(J * n, 0, 0.7),
               count = stats::rpois(J * n, exp(0.3 + 0.2 * x)), stringsAsFactors = FALSE)
  })
}

# Training settings of the end-to-end tests: a few seconds of training; the draws are meaningless, which the
# Pareto k-hat says with a warning that the tests silence.
tiny_train <- list(steps = 40, batch_size = 16, progress = FALSE)
tiny_network <- list(summary = list(hidden = 16, row_hidden = 8), global_flow = list(hidden = c(32, 32), transforms = 2),
                     local_flow = list(hidden = c(16, 16), transforms = 1))
tiny_cache <- function() file.path(tempdir(), "mlnpe-test-cache")

quietly <- function(expr) {
  withCallingHandlers(suppressMessages(expr), mlnpe_pareto_k_warning = function(w) invokeRestart("muffleWarning"))
}

tiny_fit_memo <- new.env()

# One trained tiny amortizer and its fit, shared by the test files (the cache makes refits cheap).
tiny_fit <- function() {
  if (is.null(tiny_fit_memo$fit)) {
    tiny_fit_memo$fit <- quietly(mlnpe(y ~ x + (1 + x | g), data = tiny_data(), train = tiny_train,
                                       network = tiny_network, cache = tiny_cache(), ndraws = 200, seed = 1,
                                       refine = FALSE))
  }
  tiny_fit_memo$fit
}
