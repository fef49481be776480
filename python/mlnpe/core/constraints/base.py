"""The `Support` interface: one block of parameters, its bijection, its checks and its dict form.

A support maps unconstrained values ``u`` of shape ``(..., d_u)`` to constrained values ``theta`` of shape
``(..., d_c)`` and back. This module also holds what every support shares: input validation
(`check_tensor`), the error for values outside the support, and `support_from_dict`, which rebuilds any
subclass that sets a ``name`` (subclasses register themselves when they are defined).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

from torch import Tensor

from mlnpe.errors import DataError, SpecError

__all__ = ["Support", "support_from_dict", "check_tensor"]


def check_tensor(x: Any, dim: int, arg_name: str, owner: str) -> None:
    """Validates that ``x`` is a floating-point tensor of shape ``(..., dim)``.

    Args:
        x: The object to validate.
        dim: Required size of the last dimension.
        arg_name: Name of the argument, used in the error message.
        owner: Description of the support or bijector, used in the error message.

    Raises:
        DataError: If ``x`` is not a tensor, not floating point, or has the wrong last dimension.
    """
    if not isinstance(x, Tensor):
        raise DataError(
            f"{arg_name} of {owner} must be a torch.Tensor, got {type(x).__name__}; "
            f"convert it with torch.as_tensor(..., dtype=torch.float32)."
        )
    if not x.is_floating_point():
        raise DataError(
            f"{arg_name} of {owner} must be a floating-point tensor, got dtype {x.dtype}; "
            f"convert it with .float() or .double()."
        )
    if x.dim() == 0 or x.shape[-1] != dim:
        raise DataError(
            f"{arg_name} of {owner} must have shape (..., {dim}), got shape {tuple(x.shape)}; "
            f"pass a tensor whose last dimension has size {dim}."
        )


def _raise_outside(inside: Tensor, theta: Tensor, arg_name: str, owner: str) -> None:
    """Raises SpecError when some rows of ``theta`` are outside the support.

    Args:
        inside: Bool tensor of shape ``(...,)`` from ``check``.
        theta: The checked tensor of shape ``(..., d_c)``.
        arg_name: Name of the argument, used in the error message.
        owner: Description of the support or bijector, used in the error message.

    Raises:
        SpecError: If any entry of ``inside`` is False.
    """
    if bool(inside.all()):
        return
    bad = (~inside).nonzero()
    first = tuple(int(i) for i in bad[0])
    n_bad = bad.shape[0]
    value = theta[first].tolist()
    raise SpecError(
        f"{arg_name} has {n_bad} value(s) outside the support of {owner}; the first is at batch index "
        f"{first}: {value}; pass values inside the support (use check() to find them)."
    )


class Support(ABC):
    """A block of parameters and the bijection between its unconstrained and constrained spaces.

    Subclasses define ``name``, ``param_names`` (with `params`), the dims, the four maps and ``check``.
    Instances are immutable value objects: two supports are equal when their ``to_dict()`` are equal.
    """

    #: The ``"name"`` of the dict form; every subclass that sets it can be rebuilt by `support_from_dict`.
    name: ClassVar[str] = ""
    #: The constructor arguments that `params` returns, in order.
    param_names: ClassVar[tuple[str, ...]] = ()
    _registry: ClassVar[dict[str, type[Support]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Registers a subclass that sets its own ``name`` for `support_from_dict`."""
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            Support._registry[cls.name] = cls

    @abstractmethod
    def constrained_dim(self) -> int:
        """Number of constrained scalars this block occupies."""

    @abstractmethod
    def unconstrained_dim(self) -> int:
        """Number of unconstrained scalars this block occupies."""

    @abstractmethod
    def forward(self, u: Tensor) -> Tensor:
        """Maps unconstrained values to the support.

        Args:
            u: Tensor of shape ``(..., d_u)``.

        Returns:
            Tensor of shape ``(..., d_c)``, inside the support.
        """

    @abstractmethod
    def inverse(self, theta: Tensor) -> Tensor:
        """Maps constrained values to the unconstrained space; NaN or inf outside the support.

        Args:
            theta: Tensor of shape ``(..., d_c)``.

        Returns:
            Tensor of shape ``(..., d_u)``.
        """

    @abstractmethod
    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """Log absolute determinant of the Jacobian of ``forward`` at ``u``.

        Args:
            u: Tensor of shape ``(..., d_u)``.

        Returns:
            Tensor of shape ``(...,)``.
        """

    @abstractmethod
    def check(self, theta: Tensor) -> Tensor:
        """Whether each constrained value lies inside the support.

        Args:
            theta: Tensor of shape ``(..., d_c)``.

        Returns:
            Bool tensor of shape ``(...,)``.
        """

    def check_and_inverse(self, theta: Tensor, arg_name: str = "theta") -> Tensor:
        """Validates ``theta`` and maps it to the unconstrained space.

        Args:
            theta: Tensor of shape ``(..., d_c)``.
            arg_name: Name of the argument in the caller, used in the error message.

        Returns:
            Tensor of shape ``(..., d_u)``.

        Raises:
            SpecError: If any value lies outside the support.
        """
        _raise_outside(self.check(theta), theta, arg_name, repr(self))
        return self.inverse(theta)

    def params(self) -> dict[str, Any]:
        """The constructor arguments of this support.

        Returns:
            A JSON-serializable dict (empty for parameter-free supports).
        """
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable description, inverted by `Support.from_dict`.

        Returns:
            ``{"name": name, **params}``.
        """
        return {"name": self.name, **self.params()}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Support:
        """Rebuilds a support of any registered class from `to_dict` output; see `support_from_dict`."""
        return support_from_dict(d)

    def spec(self) -> str:
        """The string form accepted by `get_support`, e.g. ``"correlation:3"``.

        Returns:
            The spec string.
        """
        return ":".join([self.name, *(repr(v) for v in self.params().values())])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Support) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(self.to_dict()))

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.params().items())
        return f"{type(self).__name__}({args})"


def support_from_dict(d: Mapping[str, Any]) -> Support:
    """Rebuilds a support from `Support.to_dict` output.

    Args:
        d: Mapping with a ``"name"`` key and the support's parameters.

    Returns:
        The support.

    Raises:
        SpecError: If ``d`` is not a mapping, the name is unknown, or parameters are missing or unexpected.
    """
    if not isinstance(d, Mapping):
        raise SpecError(
            f"a support dict must be a mapping, got {type(d).__name__}: {d!r}; pass Support.to_dict() output."
        )
    name = d.get("name")
    if name not in Support._registry:
        raise SpecError(
            f"support dict has unknown name {name!r} (in {dict(d)!r}); "
            f"valid names are {sorted(Support._registry)}."
        )
    cls = Support._registry[name]
    expected = set(cls.param_names)
    given = set(d) - {"name"}
    if given != expected:
        raise SpecError(
            f"support dict for {name!r} must have keys {sorted(expected | {'name'})}, got {sorted(d)}; "
            f"pass Support.to_dict() output."
        )
    return cls(**{key: d[key] for key in cls.param_names})
