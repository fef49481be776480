test_that("simulate_study() summarizes bias, coverage and power per grid point and design", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  slope <- mean(posterior::as_draws_matrix(fit)[, "b_x"])
  study <- simulate_study(fit, grid = list(b_x = slope), ngroups = c(4, 8), nrows = 10, ndatasets = 5,
                          ndraws = 50, seed = 2, progress = FALSE)
  expect_s3_class(study, "mlnpe_study")
  s <- study$summary
  expect_setequal(unique(s$parameter), posterior::variables(fit)[!grepl("^r_", posterior::variables(fit))])
  expect_equal(nrow(s), 2L * length(unique(s$parameter)))
  expect_equal(sort(unique(s$n_groups)), c(4L, 8L))
  expect_equal(s$truth[s$parameter == "b_x"], rep(slope, 2), tolerance = 1e-6)
  expect_true(all(s$power_interval >= 0 & s$power_interval <= 1))
  expect_true(all(s$coverage_50 <= s$coverage_95 + 1e-12))
  expect_equal(nrow(study$datasets), 10L)
  expect_type(study$datasets$khat, "double")
  expect_output(print(study), "Simulation study: 10 datasets")
  grDevices::pdf(NULL)
  on.exit(grDevices::dev.off(), add = TRUE)
  expect_invisible(plot(study, parameter = "b_x"))
  expect_error(plot(study, parameter = "b_z"), "'b_z' is not in the study", class = "mlnpe_argument_error")
})

test_that("simulate_study() stops at grid points and sizes the amortizer was not trained for", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  expect_error(simulate_study(fit, grid = list(b_z = 1), ndatasets = 2, progress = FALSE),
               "b_z.*global parameters", class = "mlnpe_config_error")
  expect_error(simulate_study(fit, grid = list(b_x = 1e4), ndatasets = 2, progress = FALSE),
               "focus = 0", class = "mlnpe_range_error")
  expect_error(simulate_study(fit, ngroups = 5000, ndatasets = 2, progress = FALSE),
               "`ngroups`.*trained range", class = "mlnpe_range_error")
  expect_error(simulate_study(fit, grid = c(b_x = 1)), "named list", class = "mlnpe_argument_error")
  expect_error(simulate_study(fit, nrows = 2.5), "`nrows`", class = "mlnpe_argument_error")
})

test_that("simulate_study() runs its cells on local workers and resumes from a checkpoint", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  checkpoint <- file.path(tempdir(), "mlnpe-study-checkpoint")
  unlink(checkpoint, recursive = TRUE)
  here <- simulate_study(fit, ngroups = c(4, 8), nrows = 6, ndatasets = 4, ndraws = 40, seed = 5, progress = FALSE)
  spread <- simulate_study(fit, ngroups = c(4, 8), nrows = 6, ndatasets = 4, ndraws = 40, seed = 5, progress = FALSE,
                           workers = 2, checkpoint = checkpoint)
  expect_equal(spread$summary, here$summary, tolerance = 1e-5)  # float32 sums over other thread counts
  expect_length(list.files(checkpoint, pattern = "^cell-"), 2L)
  resumed <- simulate_study(fit, ngroups = c(4, 8), nrows = 6, ndatasets = 4, ndraws = 40, seed = 5,
                            progress = FALSE, checkpoint = checkpoint)
  expect_equal(resumed$summary, here$summary, tolerance = 1e-5)
  expect_error(simulate_study(fit, workers = 0), "`workers`", class = "mlnpe_argument_error")
})
