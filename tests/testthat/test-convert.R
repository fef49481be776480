test_that("data are encoded as plain vectors and factor codes in R's level order", {
  d <- data.frame(y = c(1L, 2L, 3L), x = c(0.5, 1, 2), g = c("b", "a", "b"),
                  f = factor(c("lo", "hi", "lo"), levels = c("lo", "hi", "unused")), ok = c(TRUE, FALSE, TRUE))
  enc <- mlnpe:::encode_data(d, c("y", "x", "g", "f", "ok"), response = "y")
  expect_identical(enc$y, c(1, 2, 3))
  expect_identical(enc$x, c(0.5, 1, 2))
  expect_equal(enc$g, list(codes = c(1L, 0L, 1L), levels = c("a", "b")))
  expect_equal(enc$f, list(codes = c(0L, 1L, 0L), levels = c("lo", "hi")))  # unused levels dropped, as brms
  expect_identical(enc$ok, c(TRUE, FALSE, TRUE))
})

test_that("responses become numbers; a two-level factor only for bernoulli", {
  expect_identical(mlnpe:::encode_response(c(TRUE, FALSE), "y"), c(1, 0))
  bern <- mlnpe_family("bernoulli")
  expect_identical(mlnpe:::encode_response(factor(c("no", "yes", "no")), "y", bern), c(0, 1, 0))
  expect_error(mlnpe:::encode_response(factor(c("a", "b")), "y", mlnpe_family("gaussian")), "must be numeric",
               class = "mlnpe_data_error")
  expect_error(mlnpe:::encode_data(data.frame(t = Sys.Date() + 0:1), "t"), "cannot use",
               class = "mlnpe_data_error")
})

test_that("draws survive the round trip through the column-major bridge format", {
  m <- matrix(c(1, 2, 3, 4, 5, 6), 3, 2, dimnames = list(NULL, c("b_Intercept", "r_g[a b,Intercept]")))
  d <- posterior::as_draws_df(m)
  wire <- mlnpe:::draws_to_py(d)
  expect_equal(wire$shape, list(3L, 2L))
  expect_equal(wire$data, c(1, 2, 3, 4, 5, 6))
  back <- mlnpe:::draws_from_py(list(variables = wire$variables, shape = wire$shape, data = as.list(wire$data)))
  expect_equal(posterior::variables(back), colnames(m))
  expect_equal(unname(unclass(posterior::as_draws_matrix(back))[, 2]), c(4, 5, 6))
})

test_that("Python's error envelopes become classed R conditions", {
  err <- list(type = "DataError", message = "`data`: 'x' has 1 missing value.", mlnpe = TRUE, traceback = "tb")
  e <- tryCatch(mlnpe:::abort_from_python(err), error = identity)
  expect_s3_class(e, c("mlnpe_data_error", "mlnpe_python_error", "mlnpe_error"))
  expect_equal(conditionMessage(e), "`data`: 'x' has 1 missing value.")
  expect_equal(e$python_traceback, "tb")
  internal <- tryCatch(mlnpe:::abort_from_python(list(type = "KeyError", message = "'k'", mlnpe = FALSE)),
                       error = identity)
  expect_s3_class(internal, "mlnpe_python_error")
  expect_match(conditionMessage(internal), "KeyError in mlnpe's Python code")
  expect_warning(mlnpe:::emit_python_warnings(list(list(type = "ParetoKWarning", message = "k-hat high"))),
                 "k-hat high", class = "mlnpe_pareto_k_warning")
  expect_warning(mlnpe:::emit_python_warnings(list(list(type = "RangeWarning", message = "J"))),
                 class = "mlnpe_range_warning")
})
