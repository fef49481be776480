"""Parameter supports: bijections between an unconstrained space and the constrained parameter space.

Normalizing flows model densities on the unconstrained space ``R^D_u``; users see parameters in their
constrained space (standard deviations are positive, correlations form a correlation matrix, ...). A
`Support` describes one block of parameters and the smooth bijection between the two spaces:

* `Real` - identity, 1 scalar.
* `Positive` - ``softplus`` / its inverse, 1 scalar.
* `UnitInterval` - ``sigmoid`` / ``logit``, 1 scalar.
* `Interval` - ``low + (high - low) * sigmoid``, 1 scalar.
* `Correlation` - the ``k(k-1)/2`` strictly upper-triangular entries (row-major: ``r12, r13, ..., r23, ...``)
  of a ``k x k`` correlation matrix, through canonical partial correlations (Stan's construction).
* `Bijector` - the product of supports: maps a flat unconstrained vector to a flat constrained vector.

Conventions: every map works on arbitrary leading batch dims, in float32 and float64, and is
differentiable. ``forward`` contains numerical guards (clamps) so that it never returns values on the
boundary of the support (0, 1, inf, |r| = 1) for moderate inputs; ``log_abs_det_jacobian`` is the exact,
numerically stable log-Jacobian of the mathematical (unclamped) bijection. ``inverse`` of a value outside
the support returns NaN or inf; use ``check`` or ``check_and_inverse`` to validate user input.

Modules, lowest first: `base` (the `Support` interface, validation, `support_from_dict`), `scalar`,
`correlation`, `resolve` (`get_support` from strings and dicts), `product` (`Bijector`).
"""

from .base import Support, support_from_dict
from .correlation import Correlation, cholesky_from_unconstrained, corr_matrix_to_vector, corr_vector_to_matrix
from .product import Bijector
from .resolve import SUPPORT_SPECS, get_support
from .scalar import Interval, Positive, Real, UnitInterval

__all__ = [
    "Support",
    "Real",
    "Positive",
    "UnitInterval",
    "Interval",
    "Correlation",
    "Bijector",
    "SUPPORT_SPECS",
    "get_support",
    "support_from_dict",
    "corr_vector_to_matrix",
    "corr_matrix_to_vector",
    "cholesky_from_unconstrained",
]
