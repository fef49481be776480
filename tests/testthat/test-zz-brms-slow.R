# Slow (MLNPE_SLOW_TESTS=1): one brms model compiled with rstan (~70 s, ~2 GB) and an amortizer trained for
# a few minutes. On Debian 12, rstan needs the BH workaround of helper-bh.R.

brms_data <- function() {
  withr::with_seed(11, {
    J <- 10; n <- 10
    g <- rep(sprintf("g%02d", seq_len(J)), each = n)
    x <- stats::rnorm(J * n)
    data.frame(g = g, x = x, y = 2 + 0.8 * x + stats::rnorm(J)[rep(seq_len(J), each = n)] + stats::rnorm(J * n))
  })
}

test_that("mlnpe agrees with brms (rstan) on a small gaussian model", {
  skip_if_not_slow()
  skip_if_no_mlnpe_python()
  skip_if_missing_package("brms")
  skip_if_missing_package("rstan")
  use_bh_shadow()
  d <- brms_data()
  pr <- brms::prior(normal(0, 2), class = b)
  bfit <- suppressMessages(brms::brm(y ~ x + (1 | g), data = d, prior = pr, backend = "rstan", chains = 2,
                                     iter = 2000, refresh = 0, seed = 1, silent = 2))
  # A short training budget leaves the raw draws too wide (Pareto k-hat about 0.5: usable importance
  # weights), so the comparison uses the PSIS-resampled draws.
  fit <- quietly(mlnpe(y ~ x + (1 | g), data = d, prior = pr, cache = tiny_cache(), ndraws = 4000, seed = 1,
                       resample = TRUE,
                       train = list(steps = 1500, batch_size = 64, learning_rate = 0.002, progress = FALSE)))
  expect_lt(fit$diagnostics$pareto_k, 0.7)

  # The same variables in the same order (brms adds lprior and lp__).
  bvars <- setdiff(posterior::variables(bfit), c("lprior", "lp__"))
  expect_equal(variables(fit), bvars)

  # The same default priors where brms's are proper.
  bp <- as.data.frame(brms::prior_summary(bfit))
  mp <- prior_summary(fit)
  for (cls in c("Intercept", "sigma")) {
    expect_equal(mp$prior[mp$class == cls], bp$prior[bp$class == cls & bp$coef == "" & bp$group == ""])
  }
  expect_equal(mp$prior[mp$class == "sd"], bp$prior[bp$class == "sd" & bp$group == ""])

  # Given brms's own draws, mlnpe's numerics (centring, names, likelihood) reproduce brms's predictions.
  shadow <- fit
  shadow$draws <- posterior::subset_draws(posterior::as_draws_df(bfit), variable = bvars)
  shadow$ndraws <- posterior::ndraws(shadow$draws)
  expect_equal(log_lik(shadow), brms::log_lik(bfit), tolerance = 1e-8, ignore_attr = TRUE)
  expect_equal(posterior_epred(shadow), brms::posterior_epred(bfit), tolerance = 1e-8, ignore_attr = TRUE)
  expect_equal(fixef(shadow), brms::fixef(bfit), tolerance = 1e-8)
  expect_equal(ranef(shadow)$g, brms::ranef(bfit)$g, tolerance = 1e-8)

  # The (resampled) amortized posterior is close to Stan's: means within half a posterior SD, SDs within a
  # factor of 1.5 for the population-level effects and sigma; group-level effects correlate.
  ours <- posterior::summarise_draws(fit, "mean", "sd")
  stan <- posterior::summarise_draws(posterior::subset_draws(posterior::as_draws_df(bfit), variable = bvars),
                                     "mean", "sd")
  for (v in c("b_Intercept", "b_x", "sigma")) {
    i <- match(v, stan$variable)
    expect_lt(abs(ours$mean[i] - stan$mean[i]), 0.5 * stan$sd[i], label = paste("mean of", v))
    expect_lt(abs(log(ours$sd[i] / stan$sd[i])), log(1.5), label = paste("sd of", v))
  }
  r <- grep("^r_g", stan$variable)
  expect_gt(stats::cor(ours$mean[r], stan$mean[r]), 0.9)
})
