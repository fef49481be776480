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
  expect_error(mlnpe:::encode_data(data.frame(t = Sys.Date() + 0:1), "t"), "is a date",
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

# ---- every input type a brms user may give, through mlnpe()'s conversion ----------------------------------------

enc <- function(data, formula = y ~ x + (1 | g), family = "gaussian", arg = "data") {
  spec <- mlnpe:::formula_spec(formula)
  mlnpe:::encode_data(data, spec$vars, spec$response, mlnpe_family(family), spec$groups, arg)
}

base_frame <- function() {
  data.frame(y = c(1.5, 2, 3, 4.5, 5, 6), x = c(0.1, 0.2, 0.3, 0.4, 0.5, 0.6), g = rep(c("b", "a", "c"), 2),
             stringsAsFactors = FALSE)
}

test_that("a tibble is a data frame", {
  skip_if_missing_package("tibble")
  d <- base_frame()
  expect_identical(enc(tibble::as_tibble(d)), enc(d))
  expect_s3_class(mlnpe:::select_columns(tibble::as_tibble(d), c("y", "g")), "data.frame")
  expect_identical(names(mlnpe:::select_columns(tibble::as_tibble(d), c("y", "g"))), c("y", "g"))
})

test_that("grouping variables become factors labelled as R prints them, whatever their type", {
  skip_if_missing_package("bit64")
  d <- base_frame()
  expect_equal(enc(d)$g, list(codes = c(1L, 0L, 2L, 1L, 0L, 2L), levels = c("a", "b", "c")))
  d$g <- factor(d$g, levels = c("c", "b", "a", "unused"))
  expect_equal(enc(d)$g$levels, c("c", "b", "a"))  # a factor's level order, unused levels dropped
  d$g <- rep(c(10, 2, 1e5), 2)
  expect_equal(enc(d)$g, list(codes = c(1L, 0L, 2L, 1L, 0L, 2L), levels = c("2", "10", "1e+05")))
  d$g <- rep(c(TRUE, FALSE, TRUE), 2)
  expect_equal(enc(d)$g$levels, c("FALSE", "TRUE"))
  d$g <- rep(as.Date("2024-03-01") + c(1, 0, 31), 2)
  expect_equal(enc(d)$g$levels, c("2024-03-01", "2024-03-02", "2024-04-01"))
  d$g <- bit64::as.integer64(c("9007199254740993", "12", "9007199254740993", "7", "12", "7"))
  expect_equal(enc(d)$g, list(codes = c(2L, 1L, 2L, 0L, 1L, 0L), levels = c("7", "12", "9007199254740993")))
  d$g <- rep(c(0.3, 0.1 + 0.2, 1), 2)
  expect_error(enc(d), "distinct numbers that print alike \\('0.3'\\)", class = "mlnpe_data_error")
})

test_that("a stray string in a numeric-looking character column is an error naming the rows", {
  d <- base_frame()
  d$g <- c("1", "2", "3", "1", "x", "3")
  e <- expect_error(enc(d), "Column 'g' of `data` mixes numbers and text \\(row 5: 'x'\\)",
                    class = "mlnpe_data_error")
  expect_match(conditionMessage(e), "factor(data$g)", fixed = TRUE)
  d <- base_frame()
  d$x <- c("0.1", "0.2", "NA", "0.4", ".", "0.6")
  expect_error(enc(d), "'x' of `data` mixes numbers and text \\(row 3: 'NA', row 5: '.'\\)")
  d$x <- c("lo", "hi", "lo", "hi", "lo", "hi")  # all labels: a factor predictor, as in brms
  expect_equal(enc(d)$x, list(codes = c(1L, 0L, 1L, 0L, 1L, 0L), levels = c("hi", "lo")))
  d$g <- factor(c("1", "2", "3", "1", "x", "3"))  # an explicit factor is the user's choice
  expect_equal(enc(d)$g$levels, c("1", "2", "3", "x"))
})

test_that("integer64 columns are numbers when exact, else an error", {
  skip_if_missing_package("bit64")
  d <- base_frame()
  d$x <- bit64::as.integer64(c(1, 2, 3, 4, 5, 2^53))
  expect_identical(enc(d)$x, c(1, 2, 3, 4, 5, 2^53))
  d$x[6] <- bit64::as.integer64("9007199254740993")
  expect_error(enc(d), "'x' of `data` is an integer64 with values beyond 2\\^53 \\(row 6: 9007199254740993\\)",
               class = "mlnpe_data_error")
  d$y <- bit64::as.integer64(c(1, 2, NA, 4, 5, 6))
  d$x <- 1:6
  expect_error(enc(d), "missing values \\(NA\\) in 'y' \\(row 3\\)", class = "mlnpe_data_error")
})

test_that("labelled columns are their values; SPSS user-missing values are missing", {
  skip_if_missing_package("haven")
  d <- base_frame()
  d$x <- haven::labelled(c(1, 2, 1, 2, 1, 2), labels = c(low = 1, high = 2), label = "dose")
  d$y <- haven::labelled(d$y, label = "response")
  out <- enc(d)
  expect_identical(out$x, c(1, 2, 1, 2, 1, 2))
  expect_identical(out$y, base_frame()$y)
  d$g <- haven::labelled(c("s1", "s2", "s1", "s2", "s3", "s3"), labels = c(first = "s1"))
  expect_equal(enc(d)$g$levels, c("s1", "s2", "s3"))
  d$x <- haven::labelled_spss(c(1, 2, -99, 2, 1, -99), labels = c(missing = -99), na_values = -99)
  expect_error(enc(d), "'x' \\(rows 3, 6\\)", class = "mlnpe_data_error")
})

test_that("factor, character and logical responses follow brms's bernoulli rule: the first level is failure", {
  d <- base_frame()
  d$y <- factor(c("yes", "no", "no", "yes", "no", "yes"), levels = c("yes", "no"))
  expect_identical(enc(d, family = "bernoulli")$y, c(0, 1, 1, 0, 1, 0))
  d$y <- c("yes", "no", "no", "yes", "no", "yes")  # R's sort order: "no" first
  expect_identical(enc(d, family = "bernoulli")$y, c(1, 0, 0, 1, 0, 1))
  d$y <- c(TRUE, FALSE, FALSE, TRUE, FALSE, TRUE)
  expect_identical(enc(d, family = "bernoulli")$y, c(1, 0, 0, 1, 0, 1))
  d$y <- factor(rep("no", 6), levels = c("no", "yes"))  # one used level of two: still "no" = 0
  expect_identical(enc(d, family = "bernoulli")$y, rep(0, 6))
  d$y <- rep("yes", 6)
  expect_error(enc(d, family = "bernoulli"), "has 1 value \\('yes'\\); it needs two", class = "mlnpe_data_error")
  d$y <- factor(c("a", "b", "c", "a", "b", "c"))
  expect_error(enc(d, family = "bernoulli"), "has 3 values", class = "mlnpe_data_error")
  expect_error(enc(d), "The response 'y' must be numeric for the gaussian family, not a factor",
               class = "mlnpe_data_error")
  d$y <- c("1.5", "2", "3", "4", "5", "6")
  expect_error(enc(d), "convert them with as.numeric\\(data\\$y\\)", class = "mlnpe_data_error")
})

test_that("missing values in any used column are an error naming the column, the rows and the fix", {
  d <- base_frame()
  d$unused <- NA  # columns the formula does not use may hold anything
  d$y[c(2, 5)] <- NA
  d$g[1] <- NA
  e <- expect_error(enc(d), class = "mlnpe_data_error")
  expect_match(conditionMessage(e), "`data` has missing values (NA) in 'y' (rows 2, 5), 'g' (row 1).", fixed = TRUE)
  expect_match(conditionMessage(e), "na.omit(data[c(\"y\", \"x\", \"g\")])", fixed = TRUE)
  expect_match(conditionMessage(e), "tidyr::drop_na(data, y, x, g)", fixed = TRUE)
  d <- base_frame()
  d$g[4] <- NA
  d$g <- addNA(factor(d$g))  # NA as a level: is.na() is FALSE, but the value is still missing
  expect_false(anyNA(d$g))
  expect_error(enc(d), "'g' \\(row 4\\)", class = "mlnpe_data_error")
  d <- base_frame()
  d$x[3] <- NaN
  expect_error(enc(d, arg = "newdata"), "`newdata` has missing values \\(NA\\) in 'x' \\(row 3\\)")
  d$x[3] <- -Inf
  expect_error(enc(d), "`data` has infinite values in 'x' \\(row 3\\)", class = "mlnpe_data_error")
  big <- base_frame()[rep(1:6, 3), ]
  big$x[c(1, 3, 5, 7, 9, 11, 13)] <- NA
  expect_error(enc(big), "'x' \\(rows 1, 3, 5, 7, 9 and 2 more\\)")
})

test_that("dates, time differences, list and matrix columns are errors that say how to convert them", {
  d <- base_frame()
  d$x <- as.Date("2024-01-01") + 0:5
  expect_error(enc(d), "Column 'x' of `data` is a date \\(<Date>\\).*as.numeric\\(data\\$x - min\\(data\\$x\\)\\)",
               class = "mlnpe_data_error")
  d$x <- as.POSIXct("2024-01-01", tz = "UTC") + 0:5
  expect_error(enc(d), "is a date \\(<POSIXct>\\)", class = "mlnpe_data_error")
  d$x <- as.difftime(1:6, units = "hours")
  expect_error(enc(d), "is a time difference in hours.*units = \"days\"", class = "mlnpe_data_error")
  d$x <- I(as.list(1:6))
  expect_error(enc(d), "'x' of `data` is a list column", class = "mlnpe_data_error")
  d$x <- cbind(1:6, 6:1)
  expect_error(enc(d), "'x' of `data` holds 2 columns", class = "mlnpe_data_error")
  d$x <- scale(1:6)  # an n x 1 matrix with attributes: its values
  expect_equal(enc(d)$x, as.numeric(scale(1:6)))
  d$x <- I(c(1, 2, 3, 4, 5, 6))
  expect_identical(enc(d)$x, c(1, 2, 3, 4, 5, 6))
  d$x <- complex(real = 1:6)
  expect_error(enc(d), "has class <complex>|cannot use", class = "mlnpe_data_error")
  d$x <- ordered(c("lo", "mid", "hi", "lo", "mid", "hi"), levels = c("lo", "mid", "hi"))
  expect_error(enc(d), "ordered factor, which brms codes by polynomial contrasts", class = "mlnpe_data_error")
  d$x <- c(TRUE, FALSE, TRUE, FALSE, TRUE, TRUE)  # a logical predictor: brms's xTRUE
  expect_identical(enc(d)$x, c(TRUE, FALSE, TRUE, FALSE, TRUE, TRUE))
})

test_that("mlnpe() rejects bad data frames before Python starts", {
  skip_if_missing_package("tibble")
  d <- base_frame()
  expect_error(mlnpe(y ~ x + (1 | g), d[0, ]), "`data` has no rows", class = "mlnpe_data_error")
  expect_error(mlnpe(y ~ x + (1 | g), tibble::as_tibble(d)[0, ]), "`data` has no rows", class = "mlnpe_data_error")
  expect_error(mlnpe(y ~ x + (1 | g), data.frame()), "`data` has no rows", class = "mlnpe_data_error")
  dup <- d
  names(dup)[2] <- "y"
  expect_error(mlnpe(y ~ 1 + (1 | g), dup), "more than one column named 'y'", class = "mlnpe_data_error")
  odd <- d
  names(odd) <- c("my y", "x 1", "g")
  e <- expect_error(mlnpe(`my y` ~ `x 1` + (1 | g), odd), class = "mlnpe_formula_error")
  expect_match(conditionMessage(e), "`my y`, `x 1`, which mlnpe cannot parse")
  expect_match(conditionMessage(e), "names(data)[names(data) == \"my y\"] <- \"my.y\"", fixed = TRUE)
  d$x[2] <- NA
  expect_error(mlnpe(y ~ x + (1 | g), tibble::as_tibble(d)), "'x' \\(row 2\\)", class = "mlnpe_data_error")
  d$x <- as.Date("2024-01-01") + 0:5
  expect_error(mlnpe(y ~ x + (1 | g), d), "is a date", class = "mlnpe_data_error")
})

test_that("formula_spec() knows the grouping variables", {
  expect_identical(mlnpe:::formula_spec(y ~ x + (1 + x | g))$groups, "g")
  expect_identical(mlnpe:::formula_spec(y ~ x + (1 | a / b))$groups, c("a", "b"))
  expect_identical(mlnpe:::formula_spec(y ~ x + (1 + x || s:t))$groups, c("s", "t"))
  expect_identical(mlnpe:::formula_spec(y ~ x)$groups, character())
})

test_that("every input type reaches Python's design as a brms user expects (no training)", {
  for (pkg in c("tibble", "haven", "bit64")) skip_if_missing_package(pkg)
  skip_if_no_mlnpe_python()
  design <- function(data, formula, family = "gaussian") {
    spec <- mlnpe:::formula_spec(formula)
    encoded <- mlnpe:::encode_data(data, spec$vars, spec$response, mlnpe_family(family), spec$groups)
    frame <- reticulate::import("mlnpe.interop")$`_frame`(encoded)
    terms <- reticulate::import("mlnpe.formula.terms")$parse_formula(spec$text)
    d <- reticulate::import("mlnpe.formula.design")$build_design(terms, frame)
    list(x_names = unlist(d$x_names), levels = unlist(d$levels), y = unlist(d$y$tolist()))
  }
  d <- tibble::tibble(
    y = haven::labelled(c(0, 1, 1, 0, 1, 1), labels = c(no = 0, yes = 1)),
    n = bit64::as.integer64(c(3, 4, 5, 3, 4, 5)),
    ok = c(TRUE, FALSE, TRUE, TRUE, FALSE, FALSE),
    sex = factor(c("m", "f", "f", "m", "m", "f")),
    day = as.Date("2024-01-01") + c(0, 0, 1, 1, 2, 2)
  )
  out <- design(d, y ~ n + ok + sex + (1 | day), "bernoulli")
  expect_identical(out$x_names, c("n", "okTRUE", "sexm"))
  expect_identical(out$levels, c("2024-01-01", "2024-01-02", "2024-01-03"))
  expect_identical(out$y, c(0, 1, 1, 0, 1, 1))
  d$y <- factor(c("dead", "alive", "alive", "dead", "alive", "alive"), levels = c("dead", "alive"))
  expect_identical(design(d, y ~ n + (1 | sex), "bernoulli")$y, c(0, 1, 1, 0, 1, 1))
})
