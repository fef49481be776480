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

test_that("sbc() checks calibration in brms's names and writes the plots", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  dir <- file.path(tempdir(), "mlnpe-sbc")
  s <- sbc(fit, ndatasets = 20, ndraws = 30, seed = 3, plot_dir = dir)
  expect_s3_class(s, c("mlnpe_sbc", "data.frame"))
  expect_equal(s$parameter, c("b_Intercept", "b_x", "sd_g__Intercept", "sd_g__x", "cor_g__Intercept__x", "sigma",
                              "r_g[,Intercept]", "r_g[,x]"))
  expect_equal(s$kind, rep(c("global", "local"), c(6L, 2L)))
  expect_type(s$inside_band, "logical")
  expect_true(all(is.na(s$pooled_inside_band[s$kind == "global"])))
  expect_true(all(!is.na(s$pooled_inside_band[s$kind == "local"])))
  expect_true(all(s$coverage >= 0 & s$coverage <= 1))
  expect_equal(basename(attr(s, "plots")), c("sbc_ecdf.png", "recovery_global.png", "recovery_local.png"))
  expect_true(all(file.exists(attr(s, "plots"))))
  expect_identical(s$pvalue, sbc(fit, ndatasets = 20, ndraws = 30, seed = 3)$pvalue)
  expect_output(print(s), "Simulation-based calibration: 20 datasets")
  expect_error(sbc(fit, ndatasets = 5), "ndatasets", class = "mlnpe_argument_error")
  expect_error(sbc(fit, prob = 2), "prob", class = "mlnpe_argument_error")
  expect_error(sbc(list()), "mlnpefit or an mlnpe_amortizer", class = "mlnpe_argument_error")
})

test_that("pooling_factor() is Var(r_j) / E[sd^2] per group and coefficient", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  k <- pooling_factor(fit)
  expect_equal(dim(k), c(8L, 2L))
  expect_equal(colnames(k), c("Intercept", "x"))
  expect_equal(rownames(k), gsub(" ", ".", fit$levels, fixed = TRUE))
  d <- as_draws_df(fit)
  expect_equal(k["s.1", "x"], var(d$`r_g[s.1,x]`) / mean(d$sd_g__x^2), tolerance = 1e-12)
  expect_equal(pooling_factor(fit, coef = "x")[, 1], k[, "x"])
  expect_error(pooling_factor(as_draws_df(fit)), "group", class = "mlnpe_argument_error")
  expect_error(pooling_factor(fit, coef = "z"), "sd_g__z", class = "mlnpe_argument_error")
})
