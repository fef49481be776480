# Python-dependent tests need the Python package 'mlnpe': set RETICULATE_PYTHON to a Python that has it (or
# create the r-mlnpe virtualenv with install_mlnpe()). MLNPE_STRICT=1 turns "Python missing" skips into
# failures; MLNPE_SLOW_TESTS=1 adds the comparison with brms (compiles a Stan model: ~70 s, ~2 GB).
library(testthat)
library(mlnpe)

test_check("mlnpe")
