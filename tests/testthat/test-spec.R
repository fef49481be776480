test_that("formulas become text with their variables", {
  s <- mlnpe:::formula_spec(y ~ x + (1 + x | g))
  expect_equal(s$text, "y ~ x + (1 + x | g)")
  expect_equal(s$response, "y")
  expect_false(s$trials)
  expect_setequal(s$vars, c("y", "x", "g"))
  b <- mlnpe:::formula_spec("succ | trials(n) ~ x + (1 | g)")
  expect_true(b$trials)
  expect_equal(b$lhs, c("succ", "n"))
  expect_error(mlnpe:::formula_spec(~ x), "two-sided", class = "mlnpe_formula_error")
  expect_error(mlnpe:::formula_spec(42), "two-sided", class = "mlnpe_formula_error")
})

test_that("brms formulas are accepted when brms is installed", {
  skip_if_missing_package("brms")
  s <- mlnpe:::formula_spec(brms::bf(y ~ x + (1 | g)))
  expect_equal(s$text, "y ~ x + (1 | g)")
  expect_error(mlnpe:::formula_spec(brms::bf(y ~ x + (1 | g), sigma ~ x)), "distributional",
               class = "mlnpe_formula_error")
})

test_that("stats families, brms families and names map to mlnpe's families", {
  expect_equal(unclass(mlnpe_family(gaussian())), list(family = "gaussian", link = "identity"))
  expect_equal(mlnpe_family(poisson)$family, "poisson")
  expect_equal(mlnpe_family("gamma")$family, "Gamma")
  expect_equal(mlnpe_family(binomial())$family, "binomial")
  expect_message(f <- mlnpe:::family_spec(binomial(), trials = FALSE), "bernoulli")
  expect_equal(f$family, "bernoulli")
  expect_message(g <- mlnpe_family(Gamma()), "log link")
  expect_equal(g$link, "log")
  expect_s3_class(mlnpe_family("student"), "family")
})

test_that("unsupported families and links are clear errors", {
  expect_error(mlnpe_family(quasipoisson()), "not supported", class = "mlnpe_family_error")
  expect_error(mlnpe_family("weibull"), "Supported families", class = "mlnpe_family_error")
  expect_error(mlnpe_family(gaussian(link = "log")), "only the 'identity' link", class = "mlnpe_family_error")
  expect_error(mlnpe_family(poisson(link = "sqrt")), "poisson\\(link = \"log\"\\)", class = "mlnpe_family_error")
  expect_error(mlnpe_family(1), "family object or name", class = "mlnpe_family_error")
})

test_that("brms families convert", {
  skip_if_missing_package("brms")
  expect_equal(mlnpe_family(brms::bernoulli())$family, "bernoulli")
  expect_equal(mlnpe_family(brms::negbinomial())$family, "negbinomial")
  expect_equal(mlnpe_family(brms::lognormal())$family, "lognormal")
  expect_equal(mlnpe_family(brms::student())$family, "student")
  expect_error(mlnpe_family(brms::bernoulli(link = "probit")), "logit", class = "mlnpe_family_error")
})

test_that("mlnpe_prior() builds brms-shaped prior rows", {
  p <- mlnpe_prior(normal(0, 1), class = b, coef = x) + mlnpe_prior("student_t(3, 0, 2)", class = "sd", lb = 0)
  expect_s3_class(p, c("mlnpe_prior", "data.frame"))
  expect_equal(p$prior, c("normal(0, 1)", "student_t(3, 0, 2)"))
  expect_equal(p$class, c("b", "sd"))
  expect_equal(p$coef, c("x", ""))
  rows <- mlnpe:::prior_rows(p)
  expect_equal(rows[[1]], list(prior = "normal(0, 1)", class = "b", coef = "x", group = "", lb = NULL, ub = NULL))
  expect_equal(rows[[2]]$lb, 0)
  dist <- "cauchy(0, 1)"
  expect_equal(mlnpe_prior(dist, class = "sigma")$prior, "cauchy(0, 1)")
  expect_output(print(p), "normal\\(0, 1\\)")
})

test_that("brms prior objects convert, flat and distributional priors do not", {
  skip_if_missing_package("brms")
  p <- brms::prior(normal(0, 5), class = b) + brms::set_prior("lkj_corr_cholesky(2)", class = "L")
  rows <- mlnpe:::prior_rows(p)
  expect_equal(rows[[1]]$prior, "normal(0, 5)")
  expect_equal(rows[[2]][c("prior", "class")], list(prior = "lkj(2)", class = "cor"))
  expect_error(mlnpe:::prior_rows(brms::set_prior("", class = "b")), "flat", class = "mlnpe_prior_error")
  expect_error(mlnpe:::prior_rows(brms::prior(normal(0, 1), class = b, dpar = sigma)), "dpar",
               class = "mlnpe_prior_error")
  expect_equal(length(mlnpe:::prior_rows(list(p, mlnpe_prior(normal(0, 1), class = sd)))), 3L)
})

test_that("bad prior objects are errors naming the argument", {
  expect_error(mlnpe:::prior_rows("normal(0, 1)"), "`prior` must be NULL", class = "mlnpe_prior_error")
  expect_error(mlnpe:::prior_rows(data.frame(p = 1)), "columns 'prior' and 'class'", class = "mlnpe_prior_error")
  expect_equal(mlnpe:::prior_rows(NULL), list())
})

test_that("offsets and brms's 0 + Intercept reach Python intact", {
  s <- mlnpe:::formula_spec(count ~ 0 + Intercept + x + offset(log(area * years)) + (1 | g))
  expect_equal(s$text, "count ~ 0 + Intercept + x + offset(log(area * years)) + (1 | g)")
  expect_setequal(s$vars, c("count", "x", "area", "years", "g"))  # Intercept is no column; offset columns are sent
  d <- data.frame(count = 1:4, x = c(0.1, 0.2, 0.3, 0.4), area = c(1, 2, 3, 4), years = c(2, 2, 1, 1),
                  g = c("a", "a", "b", "b"))
  sent <- mlnpe:::encode_data(d, s$vars, s$response, mlnpe_family("poisson"), s$groups)
  expect_equal(sent$area, d$area)
  expect_equal(sent$years, d$years)
  expect_error(mlnpe:::check_columns(d[c("count", "x", "g", "area")], s$vars, "newdata"), "'years'",
               class = "mlnpe_data_error")
  expect_equal(mlnpe:::formula_spec("y ~ x + offset(-z/2) + (1 | g)")$text, "y ~ x + offset(-z/2) + (1 | g)")
})
