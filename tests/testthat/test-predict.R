test_that("prediction methods return draws x observations matrices", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  expect_equal(dim(posterior_predict(fit)), c(200L, 80L))
  expect_equal(dim(posterior_predict(fit, ndraws = 10)), c(10L, 80L))
  expect_equal(dim(posterior_epred(fit, draw_ids = 1:5)), c(5L, 80L))
  expect_equal(dim(log_lik(fit)), c(200L, 80L))
  lin <- posterior_linpred(fit)
  expect_equal(lin, posterior_epred(fit))  # identity link
  expect_equal(dim(fitted(fit)), c(80L, 4L))
  expect_equal(colnames(predict(fit, ndraws = 20)), c("Estimate", "Est.Error", "Q2.5", "Q97.5"))
  expect_equal(dim(residuals(fit, summary = FALSE)), c(200L, 80L))
})

test_that("predictions agree with the draws: epred = b_Intercept + b_x x + r", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  d <- as_draws_df(fit)
  x <- fit$data$x[1]
  expected <- d$b_Intercept + d$b_x * x + d$`r_g[s.1,Intercept]` + d$`r_g[s.1,x]` * x
  expect_equal(posterior_epred(fit)[, 1], expected, tolerance = 1e-10)
  fixed_only <- posterior_epred(fit, re_formula = NA)[, 1]
  expect_equal(fixed_only, d$b_Intercept + d$b_x * x, tolerance = 1e-10)
  same_seed <- posterior_predict(fit, seed = 4)
  expect_identical(same_seed, posterior_predict(fit, seed = 4))
})

test_that("log_lik matches the gaussian density of the draws", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  d <- as_draws_df(fit)
  y <- fit$data$y[1]
  mu <- posterior_epred(fit)[, 1]
  expect_equal(log_lik(fit)[, 1], dnorm(y, mu, d$sigma, log = TRUE), tolerance = 1e-8)
})

test_that("newdata: new levels need allow_new_levels, the response is optional", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  nd <- data.frame(x = c(0, 1), g = c("s 1", "brand new"))
  expect_error(posterior_epred(fit, newdata = nd), "allow_new_levels", class = "mlnpe_data_error")
  p <- posterior_epred(fit, newdata = nd, allow_new_levels = TRUE)
  expect_equal(dim(p), c(200L, 2L))
  expect_equal(p[, 1], posterior_epred(fit)[, 1] + (0 - fit$data$x[1]) * as_draws_df(fit)$b_x -
                 as_draws_df(fit)$`r_g[s.1,x]` * fit$data$x[1], tolerance = 1e-10)
  expect_equal(dim(posterior_predict(fit, newdata = data.frame(x = 2), re_formula = NA)), c(200L, 1L))
  expect_error(log_lik(fit, newdata = nd[1, ]), "'y'", class = "mlnpe_data_error")
})

test_that("loo(), pp_check() and logo() work on fits", {
  skip_if_no_mlnpe_python()
  skip_if_missing_package("loo")
  fit <- tiny_fit()
  l <- suppressWarnings(loo::loo(fit))
  expect_s3_class(l, "psis_loo")
  expect_equal(dim(l$pointwise)[1], 80L)
  lg <- logo(fit, ndraws = 50, nsim = 4, seed = 1)
  expect_s3_class(lg, c("logo", "loo"))
  expect_equal(rownames(lg$pointwise), fit$levels)
  expect_equal(length(lg$diagnostics$pareto_k), 8L)
  expect_true(all(is.finite(lg$pointwise[, "elpd_logo"])))
  expect_identical(lg$pointwise, logo(fit, ndraws = 50, nsim = 4, seed = 1)$pointwise)
  other <- quietly(update(fit, formula. = ~ . - x, ndraws = 50))
  cmp <- loo::loo_compare(lg, logo(other, ndraws = 50, nsim = 4, seed = 1))
  expect_equal(nrow(cmp), 2L)
  skip_if_missing_package("bayesplot")
  expect_s3_class(suppressMessages(bayesplot::pp_check(fit)), "ggplot")
  expect_s3_class(bayesplot::pp_check(fit, type = "stat_grouped", ndraws = 20), "ggplot")
})
