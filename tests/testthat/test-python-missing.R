test_that("a missing Python side is a clear error that points to install_mlnpe()", {
  e <- tryCatch(mlnpe:::abort_python_missing(), error = identity)
  expect_s3_class(e, c("mlnpe_python_missing", "mlnpe_error"))
  expect_match(conditionMessage(e), "install_mlnpe\\(")
  expect_match(conditionMessage(e), "RETICULATE_PYTHON")
})

test_that("the installer refuses to run once Python is running", {
  skip_if_no_mlnpe_python()
  expect_error(install_mlnpe(path = "."), "restart R", class = "mlnpe_install_error")
})

test_that("mlnpe_sitrep() reports the Python side", {
  skip_if_no_mlnpe_python()
  out <- capture.output(info <- mlnpe_sitrep())
  expect_true(info$available)
  expect_true(any(grepl("^mlnpe \\(Python\\): ", out)))
  expect_true(any(grepl("^Cache of trained amortizers: ", out)))
  expect_named(info$versions, c("python", "mlnpe", "torch", "numpy", "pandas"), ignore.order = TRUE)
})
