test_that("data must be a non-empty data frame", {
  expect_error(mlnpe:::check_data(list(y = 1)), class = "mlnpe_data_error")
  expect_error(mlnpe:::check_data(data.frame()), "no rows", class = "mlnpe_error")
  expect_error(mlnpe(y ~ x + (1 | g), data = matrix(1:4, 2)), "must be a data frame", class = "mlnpe_data_error")
})

test_that("variables missing from the data are named", {
  d <- data.frame(y = 1:3, g = c("a", "b", "c"))
  expect_error(mlnpe(y ~ x + z + (1 | g), data = d), "'x', 'z'", class = "mlnpe_data_error")
  expect_snapshot(mlnpe(y ~ x + (1 | g), data = d), error = TRUE)
})

test_that("missing values are an error, never dropped", {
  d <- data.frame(y = c(1, NA, 3), x = c(1, 2, NA), g = c("a", "b", "c"))
  expect_error(mlnpe(y ~ x + (1 | g), data = d), "'y' \\(1\\), 'x' \\(1\\)", class = "mlnpe_data_error")
})

test_that("settings are checked with the argument's name", {
  d <- data.frame(y = 1:4, g = c("a", "a", "b", "b"))
  expect_error(mlnpe(y ~ 1 + (1 | g), d, ndraws = 0), "`ndraws`", class = "mlnpe_argument_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, ndraws = 1.5), "`ndraws`", class = "mlnpe_argument_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, seed = -1), "`seed`", class = "mlnpe_argument_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, train = list(100)), "`train` must be a named list",
               class = "mlnpe_argument_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, groups = c(5, 2)), "`groups`", class = "mlnpe_argument_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, cache = NA), "`cache`", class = "mlnpe_argument_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, psis = "yes"), "`psis`", class = "mlnpe_argument_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, resample = "yes"), "`resample` must be TRUE, FALSE or \"auto\"",
               class = "mlnpe_argument_error")
  expect_silent(mlnpe:::check_resample("auto"))
  expect_error(mlnpe(y ~ 1 + (1 | g), d, focus = 1.5), "`focus` must be a whole number of focusing rounds",
               class = "mlnpe_argument_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, focus = 9), "`focus`", class = "mlnpe_argument_error")
  expect_identical(mlnpe:::check_focus(TRUE), 1L)
  expect_identical(mlnpe:::check_focus(0), 0L)
})

test_that("brms sampling arguments are ignored with a warning", {
  expect_warning(mlnpe:::check_dots(list(chains = 4, iter = 2000)), "'chains', 'iter'",
                 class = "mlnpe_ignored_argument")
  expect_error(mlnpe:::check_dots(list(4)), "must be named", class = "mlnpe_argument_error")
})

test_that("conditions carry mlnpe_error and format bullets", {
  e <- tryCatch(mlnpe:::mlnpe_abort(c("Main.", i = "Hint."), "mlnpe_test_error"), error = identity)
  expect_s3_class(e, c("mlnpe_test_error", "mlnpe_error", "error", "condition"))
  expect_equal(conditionMessage(e), "Main.\ni Hint.")
  expect_null(conditionCall(e))
})

test_that("escape_regex() makes any name a literal pattern", {
  names <- c("I(x^2)", "a.b[c]", "x+y*z", "s 1|2", "back\\slash")
  for (x in names) expect_true(grepl(paste0("^", mlnpe:::escape_regex(x), "$"), x))
  expect_false(grepl(mlnpe:::escape_regex("a.b"), "axb"))
})
