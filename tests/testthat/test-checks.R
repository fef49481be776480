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
  expect_error(mlnpe(y ~ x + (1 | g), data = d), "'y' \\(row 2\\), 'x' \\(row 3\\)", class = "mlnpe_data_error")
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

# ---- every argument: type, NA, length, fractions, range (R's checks; no Python needed) ---------------------------

tiny_frame <- function() data.frame(y = c(1, 2, 3, 4), g = c("a", "a", "b", "b"))

test_that("counts accept R's whole-number doubles and reject everything else, naming the argument", {
  expect_identical(mlnpe:::check_count(1000, "ndraws"), 1000L)
  expect_identical(mlnpe:::check_count(1000L, "ndraws"), 1000L)
  expect_identical(mlnpe:::check_seed(3), 3L)
  expect_identical(mlnpe:::check_range(c(2, 10), "groups"), c(2L, 10L))
  bad <- list(2.5, NA, NA_real_, c(10, 20), "100", TRUE, -1, 0, Inf, 1e10, numeric(0), factor("5"), list(5))
  for (v in bad) {
    expect_error(mlnpe(y ~ 1 + (1 | g), tiny_frame(), ndraws = v), "^`ndraws` must be a whole number >= 1, not ",
                 class = "mlnpe_config_error")
    expect_error(mlnpe:::check_count(v, "nsim"), "`nsim`", class = "mlnpe_argument_error")
  }
  expect_error(mlnpe:::check_count(2.5, "ndraws"), "not 2.5.", fixed = TRUE)
  expect_error(mlnpe:::check_count(c(1, 2, 3, 4), "ndraws"), "not a double vector of length 4.", fixed = TRUE)
})

test_that("seeds, flags, focus, ranges and cache are checked with the argument's name", {
  d <- tiny_frame()
  for (v in list(-1, 2.5, NA, "1", c(1, 2), 2^31)) {
    expect_error(mlnpe(y ~ 1 + (1 | g), d, seed = v), "`seed` must be a whole number >= 0", class = "mlnpe_config_error")
  }
  for (v in list(NA, "yes", c(TRUE, FALSE), 1, NULL)) {
    expect_error(mlnpe(y ~ 1 + (1 | g), d, psis = v), "`psis` must be TRUE or FALSE", class = "mlnpe_argument_error")
  }
  for (v in list(NA, "yes", 1, c(TRUE, TRUE))) {
    expect_error(mlnpe(y ~ 1 + (1 | g), d, refine = v), "`refine` must be TRUE, FALSE or \"auto\"",
                 class = "mlnpe_config_error")
    expect_error(mlnpe(y ~ 1 + (1 | g), d, resample = v), "`resample`", class = "mlnpe_config_error")
  }
  for (v in list(NA, -1, 6, 0.5, "1", c(0, 1))) {
    expect_error(mlnpe(y ~ 1 + (1 | g), d, focus = v), "`focus` must be a whole number of focusing rounds",
                 class = "mlnpe_config_error")
  }
  for (v in list(c(2, NA), c(2, Inf), c(0, 3), c(2.5, 4), 5, c(1, 2, 3), "2:5")) {
    expect_error(mlnpe(y ~ 1 + (1 | g), d, groups = v), "`groups` must be NULL or c\\(min, max\\)",
                 class = "mlnpe_config_error")
  }
  expect_error(mlnpe(y ~ 1 + (1 | g), d, rows = c(3, 1)), "`rows`", class = "mlnpe_config_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, cache = c(TRUE, FALSE)), "`cache`", class = "mlnpe_config_error")
})

test_that("settings lists: NA, unnamed, repeated and non-plain values are errors naming the setting", {
  d <- tiny_frame()
  expect_error(mlnpe(y ~ 1 + (1 | g), d, train = list(steps = NA)), "`train\\$steps` is NA",
               class = "mlnpe_config_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, train = list(steps = NA_integer_)), "`train\\$steps` is NA")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, train = list(device = NA_character_)), "`train\\$device` is NA")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, network = list(global_flow = list(hidden = c(64, NA)))),
               "`network\\$global_flow\\$hidden` is NA", class = "mlnpe_config_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, network = list(summary = list(64))), "`network\\$summary` must be a named list",
               class = "mlnpe_config_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, train = list(steps = 10, steps = 20)), "names 'steps' more than once",
               class = "mlnpe_config_error")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, train = list(device = factor("cpu"))),
               "`train\\$device` must be a number, TRUE/FALSE, a string .* not an object of class <factor>")
  if (requireNamespace("bit64", quietly = TRUE)) {
    expect_error(mlnpe(y ~ 1 + (1 | g), d, train = list(steps = bit64::as.integer64(10))),
                 "`train\\$steps` is an integer64")
    expect_identical(mlnpe:::check_count(bit64::as.integer64(10), "ndraws"), 10L)
  }
  expect_error(mlnpe(y ~ 1 + (1 | g), d, train = list(steps = numeric(0))), "`train\\$steps` is empty")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, refine_control = list(chains = mean)), "`refine_control\\$chains`")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, train = c(steps = 10)), "`train` must be a named list, not c\\(steps = 10\\)")
  expect_error(mlnpe(y ~ 1 + (1 | g), d, network = "small"), "`network` must be a named list",
               class = "mlnpe_config_error")
  # plain values (vectors, NULL, FALSE for parts) pass to Python, which checks names and ranges
  expect_identical(mlnpe:::check_settings(list(summary = list(hidden = 16), global_flow = list(hidden = c(8, 8)),
                                               shift = FALSE, statistics = NULL), "network")$shift, FALSE)
})

test_that("logo(), update(), sbc() and the summaries check their arguments", {
  fit <- fake_fit()
  expect_error(logo(fit, ndraws = 2.5), "`ndraws` must be a whole number >= 1, not 2.5", class = "mlnpe_config_error")
  expect_error(logo(fit, nsim = NA), "`nsim`", class = "mlnpe_argument_error")
  expect_error(logo(fit, seed = "1"), "`seed`", class = "mlnpe_argument_error")
  expect_error(update(fit, newdata = fit$data, ndraws = c(1, 2)), "`ndraws`", class = "mlnpe_argument_error")
  expect_error(update(fit, newdata = fit$data, seed = -3), "`seed`", class = "mlnpe_argument_error")
  expect_error(update(fit, newdata = fit$data, psis = NA), "`psis`", class = "mlnpe_argument_error")
  expect_error(update(fit, train = list(steps = NA)), "`train\\$steps` is NA", class = "mlnpe_argument_error")
  expect_error(sbc(fit, ndatasets = 5), "`ndatasets` must be a whole number >= 10, not 5",
               class = "mlnpe_argument_error")
  expect_error(sbc(fit, ndraws = 1), "`ndraws` must be a whole number >= 2", class = "mlnpe_argument_error")
  expect_error(sbc(fit, prob = 1), "`prob` must be a number in \\(0, 1\\), not 1.", class = "mlnpe_argument_error")
  expect_error(sbc(fit, prob = NA), "`prob`", class = "mlnpe_argument_error")
  expect_error(summary(fit, prob = NA), "`prob` must be a number in \\(0, 1\\)", class = "mlnpe_argument_error")
  expect_error(summary(fit, robust = "yes"), "`robust` must be TRUE or FALSE", class = "mlnpe_argument_error")
  expect_error(fixef(fit, summary = NA), "`summary` must be TRUE or FALSE", class = "mlnpe_argument_error")
  expect_error(ranef(fit, probs = c(0.1, 1.5)), "`probs` must be one or more probabilities in \\[0, 1\\]",
               class = "mlnpe_argument_error")
  expect_error(coef(fit, probs = "a"), "`probs`", class = "mlnpe_argument_error")
  expect_error(VarCorr(fit, robust = NA), "`robust`", class = "mlnpe_argument_error")
})

test_that("prediction arguments are checked before Python is asked", {
  fit <- fake_fit()
  expect_error(posterior_predict(fit, ndraws = 2.5), "`ndraws` must be a whole number", class = "mlnpe_argument_error")
  expect_error(posterior_epred(fit, draw_ids = c(1, 2.5)), "`draw_ids` must be whole numbers from 1 to 100",
               class = "mlnpe_argument_error")
  expect_error(log_lik(fit, draw_ids = 0), "`draw_ids`", class = "mlnpe_argument_error")
  expect_error(posterior_linpred(fit, allow_new_levels = NA), "`allow_new_levels` must be TRUE or FALSE",
               class = "mlnpe_argument_error")
  expect_error(posterior_predict(fit, seed = 1.5), "`seed` must be a whole number >= 0",
               class = "mlnpe_argument_error")
  expect_error(fitted(fit, summary = "yes"), "`summary` must be TRUE or FALSE", class = "mlnpe_argument_error")
  expect_error(fitted(fit, scale = "link"), "`scale` must be \"response\" or \"linear\"", class = "mlnpe_argument_error")
  expect_error(predict(fit, summary = c(TRUE, FALSE)), "`summary`", class = "mlnpe_argument_error")
  expect_error(posterior_predict(fit, re_formula = "none"), "`re_formula`", class = "mlnpe_argument_error")
})
