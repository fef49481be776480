"""`Bijector`: the product of supports, concatenated along the last axis.

A model's global (or local) parameters form one flat vector; `Bijector` maps it block by block. It is a
`Support` itself, so it shares ``check_and_inverse``, the dict form and equality with its blocks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mlnpe.errors import SpecError

from .base import Support, check_tensor, support_from_dict
from .resolve import get_support

__all__ = ["Bijector"]


class Bijector(Support):
    """Concatenation of supports: maps a flat unconstrained vector to a flat constrained vector.

    Unconstrained vectors have shape ``(..., D_u)``, constrained ones ``(..., D_c)``; each block occupies a
    contiguous slice, in the order of ``supports``. The dict form is ``{"name": "product", "supports":
    [support.to_dict(), ...]}``.

    Args:
        supports: The blocks, in order; each a `Support` or anything `get_support` accepts.

    Raises:
        SpecError: If ``supports`` is empty or holds an invalid spec.
    """

    name = "product"
    param_names = ("supports",)

    def __init__(self, supports: Sequence[Support | str | Mapping[str, Any]]) -> None:
        is_list = isinstance(supports, Sequence) and not isinstance(supports, str)
        if not is_list or not supports:
            raise SpecError(
                f"supports must be a non-empty list of supports, got {supports!r}; "
                f"pass e.g. [Real(), Positive(), Correlation(3)] or ['real', 'positive', 'correlation:3']."
            )
        self.supports: tuple[Support, ...] = tuple(get_support(s) for s in supports)
        self._u_sizes = [s.unconstrained_dim() for s in self.supports]
        self._c_sizes = [s.constrained_dim() for s in self.supports]

    def params(self) -> dict[str, Any]:
        """The blocks, in dict form.

        Returns:
            ``{"supports": [support.to_dict(), ...]}``.
        """
        return {"supports": [s.to_dict() for s in self.supports]}

    def unconstrained_dim(self) -> int:
        """Total number of unconstrained scalars ``D_u``."""
        return sum(self._u_sizes)

    def constrained_dim(self) -> int:
        """Total number of constrained scalars ``D_c``."""
        return sum(self._c_sizes)

    @property
    def unconstrained_sizes(self) -> list[int]:
        """Unconstrained size of each block, in order."""
        return list(self._u_sizes)

    @property
    def constrained_sizes(self) -> list[int]:
        """Constrained size of each block, in order."""
        return list(self._c_sizes)

    def __len__(self) -> int:
        return len(self.supports)

    def __repr__(self) -> str:
        return f"Bijector({list(self.supports)!r})"

    def spec(self) -> str:
        """A product has no string form.

        Raises:
            SpecError: Always; describe a product by its blocks' specs or by `to_dict`.
        """
        raise SpecError(
            f"{self!r} has no string form; pass Bijector a list of its blocks, or serialize it with to_dict()."
        )

    def _blockwise(self, method: str, x: Tensor, sizes: list[int], arg_name: str) -> list[Tensor]:
        """Validates ``x`` of shape ``(..., sum(sizes))``, splits its last dim and applies each block's ``method``."""
        check_tensor(x, sum(sizes), arg_name, repr(self))
        parts = torch.split(x, sizes, dim=-1)
        return [getattr(s, method)(p) for s, p in zip(self.supports, parts)]

    def forward(self, u: Tensor) -> Tensor:
        """Applies each block's ``forward``.

        Args:
            u: Tensor of shape ``(..., D_u)``.

        Returns:
            Tensor of shape ``(..., D_c)``.
        """
        return torch.cat(self._blockwise("forward", u, self._u_sizes, "u"), dim=-1)

    def inverse(self, theta: Tensor) -> Tensor:
        """Applies each block's ``inverse``; NaN or inf where ``theta`` is outside the support.

        Args:
            theta: Tensor of shape ``(..., D_c)``.

        Returns:
            Tensor of shape ``(..., D_u)``.
        """
        return torch.cat(self._blockwise("inverse", theta, self._c_sizes, "theta"), dim=-1)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """Sum of the blocks' log |det Jacobian|.

        Args:
            u: Tensor of shape ``(..., D_u)``.

        Returns:
            Tensor of shape ``(...,)``.
        """
        terms = self._blockwise("log_abs_det_jacobian", u, self._u_sizes, "u")
        return torch.stack(terms, dim=-1).sum(-1)

    def check(self, theta: Tensor) -> Tensor:
        """Whether every block lies inside its support.

        Args:
            theta: Tensor of shape ``(..., D_c)``.

        Returns:
            Bool tensor of shape ``(...,)``.
        """
        return torch.stack(self._blockwise("check", theta, self._c_sizes, "theta"), dim=-1).all(-1)

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Bijector:
        """Rebuilds a bijector from `to_dict` output (the ``"name"`` key may be left out).

        Args:
            d: Mapping with a ``"supports"`` list of support dicts.

        Returns:
            The bijector.

        Raises:
            SpecError: If ``d`` is malformed.
        """
        if not isinstance(d, Mapping) or "supports" not in d or not isinstance(d["supports"], list):
            raise SpecError(
                f"a bijector dict must be a mapping with a 'supports' list, got {d!r}; "
                f"pass Bijector.to_dict() output."
            )
        return Bijector([support_from_dict(s) for s in d["supports"]])
