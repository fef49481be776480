# Errors raised in Python reach R as conditions of class mlnpe_error with the Python message and no traceback.

test_that("improper and ill-fitting priors are mlnpe_spec_error", {
  skip_if_no_mlnpe_python()
  d <- tiny_data(J = 4, n = 3)
  expect_error(
    mlnpe(y ~ x + (1 | g), d, prior = mlnpe_prior(beta(1, 1), class = b), train = list(steps = 1)),
    "real-valued", class = "mlnpe_spec_error"
  )
  e <- tryCatch(mlnpe(y ~ x + (1 | g), d, prior = mlnpe_prior(normal(0, 1), class = b, coef = z),
                      train = list(steps = 1)), error = identity)
  expect_s3_class(e, c("mlnpe_spec_error", "mlnpe_python_error", "mlnpe_error"))
  expect_match(conditionMessage(e), "matches no parameter")
  expect_false(grepl("Traceback", conditionMessage(e)))
  expect_match(e$python_traceback, "Traceback")
})

test_that("unsupported formulas and data are classed errors naming the problem", {
  skip_if_no_mlnpe_python()
  d <- tiny_data(J = 4, n = 3)
  expect_error(mlnpe(y ~ log(x) + (1 | g), d, train = list(steps = 1)), "Only variables",
               class = "mlnpe_spec_error")
  expect_error(mlnpe(y ~ x, d, train = list(steps = 1)), "group-level term", class = "mlnpe_error")
  expect_error(mlnpe(count ~ x + (1 | g), transform(d, count = -count - 1), family = poisson(),
                     train = list(steps = 1)), class = "mlnpe_data_error")
  expect_error(mlnpe(y ~ x + (1 | g), d, train = list(stepz = 1)), "unknown keys", class = "mlnpe_config_error")
})

test_that("a vanished amortizer is an mlnpe_load_error", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  fit$amortizer$path <- file.path(tempdir(), "no-such-amortizer")
  expect_error(posterior_predict(fit), "no saved amortizer", class = "mlnpe_load_error")
  expect_error(load_amortizer(file.path(tempdir(), "nope")), "existing directory", class = "mlnpe_load_error")
})

test_that("refits outside the trained range of groups are classed errors", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  big <- tiny_data(seed = 3, J = 40, n = 2)
  expect_error(quietly(update(fit, newdata = big)), class = "mlnpe_range_error")
})
