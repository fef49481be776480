# rstan on Debian 12: r-cran-bh ships no headers, so brm() fails with "Boost not found". The brms comparison
# test therefore builds a user library whose BH shadows Debian's, with BH/include/boost pointing to
# /usr/include/boost (libboost-dev), puts it first on .libPaths() and tells rstan about it. Outside the tests,
# do the same once by hand:
#   lib=$HOME/R/bh-shadow; mkdir -p $lib && cp -r /usr/lib/R/site-library/BH $lib/
#   mkdir -p $lib/BH/include && ln -s /usr/include/boost $lib/BH/include/boost   # then R_LIBS=$lib
use_bh_shadow <- function() {
  bh <- system.file(package = "BH")
  if (nzchar(bh) && dir.exists(file.path(bh, "include", "boost"))) return(invisible(file.path(bh, "include")))
  if (!dir.exists("/usr/include/boost") || !nzchar(bh)) {
    testthat::skip("Boost headers not found (install libboost-dev or BH with headers)")
  }
  lib <- file.path(tempdir(), "bh-shadow")
  if (!dir.exists(file.path(lib, "BH", "include", "boost"))) {
    dir.create(lib, showWarnings = FALSE, recursive = TRUE)
    file.copy(bh, lib, recursive = TRUE)
    dir.create(file.path(lib, "BH", "include"), showWarnings = FALSE)
    file.symlink("/usr/include/boost", file.path(lib, "BH", "include", "boost"))
  }
  .libPaths(c(lib, .libPaths()))
  include <- file.path(lib, "BH", "include")
  rstan::rstan_options(boost_lib = include)
  invisible(include)
}
