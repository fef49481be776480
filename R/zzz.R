# The Python side is imported lazily: library(mlnpe) never starts Python, so that users can still choose one
# (RETICULATE_PYTHON, reticulate::use_virtualenv()) before the first fit.
.mlnpe <- new.env(parent = emptyenv())

.onLoad <- function(libname, pkgname) {
  .mlnpe$interop <- reticulate::import(
    "mlnpe.interop",
    delay_load = list(before_load = function() prefer_mlnpe_env())
  )
}
