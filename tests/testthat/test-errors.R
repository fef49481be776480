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

test_that("Python checks every train, network and refine_control setting before building a model", {
  skip_if_no_mlnpe_python()
  d <- tiny_data(J = 4, n = 3)
  bad <- list(
    list(train = list(steps = 2.5), "`train`: TrainConfig `steps` must be a positive number of steps, got 2.5."),
    list(train = list(steps = -10), "`train`: TrainConfig `steps` must be a positive number of steps, got -10.0."),
    list(train = list(learning_rate = 2), "`train`: TrainConfig `learning_rate` must be a learning rate in (0, 1)"),
    list(train = list(progress = "no"), "`train`: TrainConfig `progress` must be True or False"),
    list(train = list(steps = c(10, 20)), "`train`: TrainConfig `steps` must be a positive number of steps, got [10.0, 20.0]."),
    list(train = list(stepz = 10), "`train`: TrainConfig got unknown keys ['stepz']"),
    list(network = list(summary = list(hiden = 16)), "`network`: SummaryConfig got unknown keys ['hiden']"),
    list(network = list(global_flow = list(hidden = c(64, 2.5))), "FlowConfig `hidden` must be integers >= 1"),
    list(network = list(summary = list(hidden = 0)), "SummaryConfig `hidden` must be an integer >= 1, got 0."),
    list(refine_control = list(chains = 2.5), "`refine_control`: RefineConfig `chains` must be an integer >= 2, got 2.5."),
    list(refine_control = list(chainz = 4), "`refine_control` has unknown settings ['chainz']")
  )
  for (case in bad) {
    args <- c(list(y ~ x + (1 | g), d, cache = FALSE), case[-length(case)])
    expect_error(do.call(mlnpe, args), case[[length(case)]], fixed = TRUE, class = "mlnpe_config_error")
  }
})

test_that("R's whole numbers (doubles) reach Python as integers", {
  skip_if_no_mlnpe_python()
  control <- mlnpe:::interop()$FitControl$from_r(
    list(train = list(steps = 1000, seed = 3, num_threads = 1), ndraws = 1000, seed = 7L, groups = c(2, 10),
         refine_control = list(chains = 8), network = list(global_flow = list(hidden = c(64, 32))))
  )
  expect_identical(control$train$steps, 1000L)
  expect_identical(control$train$seed, 3L)
  expect_identical(control$ndraws, 1000L)
  expect_identical(control$refine_control$chains, 8L)
  expect_identical(unlist(control$groups), c(2L, 10L))
})
