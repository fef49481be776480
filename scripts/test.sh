#!/usr/bin/env bash
# Sets up everything (Python venv, R from Debian, the R package) and runs the whole test suite: pytest, then
# testthat, then builds the vignette. MLNPE_STRICT=1 turns "dependency missing" skips into failures in both suites, so no part can be
# skipped silently; MLNPE_SLOW_TESTS=1 includes the slow comparisons (Stan compiles).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_r.sh
. .venv/bin/activate
# The R bridge test drives R through rpy2 where rpy2 is installed (system Python: rpy2==3.5.17, as rpy2 3.6
# needs R >= 4.4) and through Rscript otherwise: in this venv rpy2 and reticulate abort on the GIL, so CI uses
# Rscript, which exercises the same R code and the same bridge.
export MLNPE_STRICT=1 MLNPE_SLOW_TESTS=1 NOT_CRAN=true  # NOT_CRAN: run the snapshot tests too
export RETICULATE_PYTHON="$PWD/.venv/bin/python"
export MLNPE_CACHE_DIR="${MLNPE_CACHE_DIR:-$(mktemp -d)}"
rlib="$PWD/.Rlib"
mkdir -p "$rlib"
export R_LIBS="${MLNPE_BH_LIB:-$HOME/R/bh-shadow}:$rlib"
R CMD INSTALL --no-multiarch --library="$rlib" . >"$rlib/install.log" 2>&1 || { cat "$rlib/install.log"; exit 1; }

echo "== Python tests"
python -m pytest tests/python "$@"

echo "== R tests"
Rscript -e '
  res <- as.data.frame(testthat::test_dir("tests/testthat", package = "mlnpe", load_package = "installed",
                                          reporter = "summary", stop_on_failure = FALSE))
  bad <- res$failed > 0 | res$error
  skipped <- !bad & res$skipped
  cat(sprintf("\ntestthat: %d passed, %d failed, %d skipped\n", sum(!bad & !skipped), sum(bad), sum(skipped)))
  if (any(bad) || any(skipped)) quit(status = 1)
'

echo "== Vignette"
# Same environment as the tests (MLNPE_STRICT=1 makes a missing Python an error in the vignette too). It trains
# the sleepstudy amortizer on the default budget into $MLNPE_CACHE_DIR and takes 5-8 minutes on 2 cores (seconds when the
# cache has it: about 1.5 minutes, most of it in logo()).
vig_out="$(mktemp -d)"
Rscript -e 'rmarkdown::render("vignettes/getting-started.Rmd", output_dir = commandArgs(TRUE)[1],
                              intermediates_dir = tempdir(), quiet = TRUE)' "$vig_out" \
  || { echo "ERROR: building vignettes/getting-started.Rmd failed" >&2; exit 1; }
echo "vignette built: $vig_out/getting-started.html"
