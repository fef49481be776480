test_that("mlnpe() trains once, fits, and names the draws as brms does", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  expect_s3_class(fit, "mlnpefit")
  expect_equal(variables(fit)[1:6], c("b_Intercept", "b_x", "sd_g__Intercept", "sd_g__x", "cor_g__Intercept__x",
                                      "sigma"))
  expect_equal(variables(fit)[7:8], c("r_g[s.1,Intercept]", "r_g[s.2,Intercept]"))
  expect_equal(ndraws(fit), 200L)
  expect_equal(fit$levels, sprintf("s %d", 1:8))
  expect_true(all(as_draws_df(fit)$sigma > 0))
  expect_true(is.finite(fit$diagnostics$pareto_k))
  expect_true(dir.exists(fit$amortizer$path))
  expect_equal(dimnames(ranef(fit)$g)[[1]], sprintf("s %d", 1:8))
  expect_equal(nrow(posterior::summarise_draws(fit)), nvariables(fit))
  expect_output(print(fit), "Population-Level Effects")
  expect_true(fit$amortizer$training$stopped %in% c("steps", "certificate"))
  expect_output(print(fit), "Train: ")
})

test_that("an identical call loads the amortizer from the cache and gives the same draws", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  again <- quietly(mlnpe(y ~ x + (1 + x | g), data = tiny_data(), train = tiny_train, network = tiny_network,
                         cache = tiny_cache(), ndraws = 200, seed = 1, refine = FALSE))
  expect_true(again$amortizer$from_cache)
  expect_equal(again$amortizer$path, fit$amortizer$path)
  expect_identical(as_draws_matrix(again), as_draws_matrix(fit))
})

test_that("seeds: set.seed() makes fits reproducible, different seeds differ", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  a <- quietly(update(fit, seed = 7))
  b <- quietly(update(fit, seed = 7))
  c <- quietly(update(fit, seed = 8))
  expect_identical(as_draws_matrix(a), as_draws_matrix(b))
  expect_false(identical(as_draws_matrix(a), as_draws_matrix(c)))
  set.seed(3); d <- quietly(update(fit))
  set.seed(3); e <- quietly(update(fit))
  expect_identical(as_draws_matrix(d), as_draws_matrix(e))
})

test_that("update(newdata =) refits instantly with the trained amortizer", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  new <- tiny_data(seed = 2, J = 6)
  refit <- quietly(update(fit, newdata = new, ndraws = 50))
  expect_equal(refit$amortizer$path, fit$amortizer$path)
  expect_equal(refit$levels, sprintf("s %d", 1:6))
  expect_equal(ndraws(refit), 50L)
  expect_equal(nobs(refit), 60L)
  expect_equal(refit$data_name, "new")
  expect_lt(refit$seconds, 10)
})

test_that("save_amortizer() and load_amortizer() round-trip and refit identically", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  dir <- file.path(tempdir(), "saved-amortizer")
  expect_equal(save_amortizer(fit, dir), normalizePath(dir))
  amortizer <- load_amortizer(dir)
  expect_s3_class(amortizer, "mlnpe_amortizer")
  expect_output(print(amortizer), "Trained: groups")
  again <- quietly(update(amortizer, newdata = tiny_data(), ndraws = 200, seed = 1, refine = FALSE))
  expect_identical(as_draws_matrix(again), as_draws_matrix(fit))
  expect_equal(prior_summary(again)$prior, prior_summary(fit)$prior)
})

test_that("cache = FALSE trains into a temporary directory", {
  skip_if_no_mlnpe_python()
  d <- tiny_data(J = 5, n = 4)
  fit <- quietly(mlnpe(y ~ 1 + (1 | g), data = d, train = list(steps = 5, batch_size = 4, progress = FALSE),
                       network = tiny_network, cache = FALSE, ndraws = 20, seed = 1, refine = FALSE))
  expect_false(fit$amortizer$from_cache)
  expect_true(startsWith(fit$amortizer$path, normalizePath(tempdir())) ||
                startsWith(fit$amortizer$path, tempdir()))
  expect_equal(variables(fit)[1:3], c("b_Intercept", "sd_g__Intercept", "sigma"))
})

test_that("families, priors and factor predictors go through", {
  skip_if_no_mlnpe_python()
  d <- tiny_data(J = 5, n = 6)
  d$f <- factor(rep(c("lo", "hi"), length.out = nrow(d)), levels = c("lo", "hi"))
  tr <- list(steps = 5, batch_size = 4, progress = FALSE)
  pois <- quietly(mlnpe(count ~ x + f + (1 | g), d, family = poisson(), train = tr, network = tiny_network,
                        cache = tiny_cache(), ndraws = 20, seed = 1, refine = FALSE,
                        prior = mlnpe_prior(normal(0, 1), class = b) + mlnpe_prior(normal(0.3, 1), class = Intercept)))
  expect_equal(variables(pois)[1:4], c("b_Intercept", "b_x", "b_fhi", "sd_g__Intercept"))
  ps <- prior_summary(pois)
  expect_equal(ps$prior[ps$class == "b"], c("normal(0, 1)", "normal(0, 1)"))
  expect_equal(family(pois)$family, "poisson")
  skip_if_missing_package("brms")
  nb <- quietly(mlnpe(count ~ x + (1 | g), d, family = brms::negbinomial(), train = tr, network = tiny_network,
                      cache = tiny_cache(), ndraws = 20, seed = 1, refine = FALSE,
                      prior = brms::prior(gamma(2, 0.5), class = shape)))
  expect_true("shape" %in% variables(nb))
  expect_equal(rownames(summary(nb)$spec_pars), "shape")
})

test_that("refine = TRUE replaces the amortized draws by HMC draws with Stan's diagnostics", {
  skip_if_no_mlnpe_python()
  fit <- tiny_fit()
  expect_false(fit$diagnostics$refined)
  ref <- suppressWarnings(quietly(update(fit, refine = TRUE, ndraws = 40, seed = 3,
                                         refine_control = list(chains = 4, warmup = 20, pool = 64))))
  expect_true(ref$diagnostics$refined)
  expect_false(ref$diagnostics$resampled)
  expect_equal(ndraws(ref), 40L)
  expect_equal(variables(ref), variables(fit))
  expect_true(all(as_draws_df(ref)$sigma > 0))
  expect_equal(ref$diagnostics$refine$chains, 4L)
  expect_true(is.finite(ref$diagnostics$refine$rhat_max))
  expect_output(print(ref), "HMC: 4 chains, max R-hat")
  expect_true(is.finite(ref$diagnostics$pareto_k))  # of the amortized draws it replaced
  expect_error(update(fit, refine = "yes"), "`refine` must be TRUE, FALSE or \"auto\"", class = "mlnpe_argument_error")
  expect_error(quietly(update(fit, refine = TRUE, refine_control = list(chainz = 4))), "unknown settings",
               class = "mlnpe_config_error")
  expect_error(quietly(update(fit, refine = TRUE, refine_control = list(chains = 1))), "`chains`",
               class = "mlnpe_config_error")
})

test_that("offsets and 0 + Intercept go through fits and predictions", {
  skip_if_no_mlnpe_python()
  d <- tiny_data(J = 5, n = 6)
  d$expo <- withr::with_seed(2, stats::runif(nrow(d), 0.5, 3))
  tr <- list(steps = 5, batch_size = 4, progress = FALSE)
  fit <- quietly(mlnpe(count ~ 0 + Intercept + x + offset(log(expo)) + (1 | g), d, family = poisson(), train = tr,
                       network = tiny_network, cache = tiny_cache(), ndraws = 20, seed = 1, refine = FALSE, focus = 0,
                       prior = mlnpe_prior(normal(0, 1), class = b, coef = Intercept)))
  expect_equal(variables(fit)[1:3], c("b_Intercept", "b_x", "sd_g__Intercept"))
  ps <- prior_summary(fit)
  expect_equal(ps$class[ps$coef == "Intercept"], c("b", "sd"))
  expect_equal(ps$prior[ps$class == "b"][1], "normal(0, 1)")
  expect_false("Intercept" %in% ps$class)
  new <- d[1:4, ]
  doubled <- transform(new, expo = 2 * expo)
  expect_equal(posterior_epred(fit, newdata = doubled), 2 * posterior_epred(fit, newdata = new), tolerance = 1e-10)
  expect_error(posterior_epred(fit, newdata = new[setdiff(names(new), "expo")]), "'expo'", class = "mlnpe_data_error")
  bad <- transform(new, expo = c(0, 1, 1, 1))
  expect_error(posterior_epred(fit, newdata = bad), "offset\\(log\\(expo\\)\\) takes log\\(\\)", class = "mlnpe_data_error")
})

test_that("crossed and nested grouping factors: brms names, every factor's methods, predictions, errors", {
  skip_if_no_mlnpe_python()
  d <- withr::with_seed(4, data.frame(y = stats::rnorm(48), subj = rep(sprintf("s%d", 1:8), each = 6),
                                      item = rep(c("i1", "i2", "i3"), 16), school = rep(c("A", "B"), each = 24)))
  tr <- list(steps = 5, batch_size = 4, progress = FALSE)
  fit <- quietly(mlnpe(y ~ 1 + (1 | item) + (1 | subj), d, train = tr, network = tiny_network, cache = tiny_cache(),
                       ndraws = 20, seed = 1, refine = FALSE, focus = 0))
  expect_equal(fit$group, "subj")  # the factor with the most levels is the primary one
  expect_equal(variables(fit)[1:7], c("b_Intercept", "sd_subj__Intercept", "sd_item__Intercept", "sigma",
                                      "r_item[i1,Intercept]", "r_item[i2,Intercept]", "r_item[i3,Intercept]"))
  expect_named(ranef(fit), c("subj", "item"))
  expect_named(VarCorr(fit), c("subj", "item", "residual__"))
  expect_equal(dim(posterior_epred(fit, newdata = d[1:5, ])), c(20L, 5L))
  bad <- d[1:2, ]
  bad$item <- "i9"
  expect_error(posterior_epred(fit, newdata = bad), "crossed grouping factor 'item'", class = "mlnpe_data_error")
  nested <- quietly(mlnpe(y ~ 1 + (1 | school/subj), d, train = tr, network = tiny_network, cache = tiny_cache(),
                          ndraws = 20, seed = 1, refine = FALSE, focus = 0))
  expect_equal(nested$group, "school:subj")
  expect_true("r_school:subj[A_s1,Intercept]" %in% variables(nested))
  expect_true("sd_school__Intercept" %in% variables(nested))
  # leave out the levels of either factor; a school's subjects all go with it (predicted as new groups)
  by_item <- logo(fit, ndraws = 20, nsim = 5, seed = 1, group = "item")
  expect_equal(rownames(by_item$pointwise), c("i1", "i2", "i3"))
  expect_equal(by_item$group, "item")
  expect_equal(sum(by_item$nobs), nrow(d))
  expect_true(all(is.finite(by_item$pointwise[, "elpd_logo"])))
  by_school <- logo(nested, ndraws = 20, nsim = 5, seed = 1, group = "school")
  expect_equal(rownames(by_school$pointwise), c("A", "B"))
  expect_true(all(is.finite(by_school$pointwise[, "elpd_logo"])))
  expect_error(logo(fit, group = "plate"), "no grouping factor of this fit", class = "mlnpe_argument_error")
})
