#!/usr/bin/env bash
# Installs R and the R packages mlnpe needs from Debian (CRAN is unreachable here), if they are missing,
# and the BH shadow library that lets Debian's rstan find Boost (see ../shared/notes/R-CONVENTIONS.md §0.4).
set -euo pipefail
PKGS="r-base-core r-base-dev r-cran-reticulate r-cran-posterior r-cran-testthat r-cran-brms r-cran-rstan
r-cran-lme4 r-cran-loo r-cran-bayesplot r-cran-knitr r-cran-rmarkdown r-cran-roxygen2 r-cran-rtdists
r-cran-bit64 r-cran-haven r-cran-tibble"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  echo "installing R packages:$missing"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
command -v Rscript >/dev/null || { echo "ERROR: Rscript not found after installing R" >&2; exit 1; }
# Debian's r-cran-bh ships no headers; rstan needs BH/include/boost.
lib="${MLNPE_BH_LIB:-$HOME/R/bh-shadow}"
if [ ! -e "$lib/BH/include/boost" ]; then
  mkdir -p "$lib"
  rm -rf "$lib/BH" && cp -r /usr/lib/R/site-library/BH "$lib/"
  mkdir -p "$lib/BH/include" && ln -sfn /usr/include/boost "$lib/BH/include/boost"
fi
echo "R ready: $(R --version | head -1); BH shadow library at $lib"
