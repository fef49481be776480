"""Conditional spline flows with a fast, fused inverse for sampling."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import zuko
from torch import Tensor, nn

from ..errors import ConfigError
from .summaries import MLP

__all__ = ["ConditionalFlow", "SplineTransform"]


def _softmax_last(x: Tensor) -> Tensor:
    """Softmax over a short last dimension (spline bins): torch's kernel is slow there on CPUs."""
    e = torch.exp(x - x.amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


class SplineTransform(zuko.transforms.MonotonicRQSTransform):
    """zuko's monotonic rational-quadratic spline with the knots computed by `_softmax_last`.

    Same parametrization and bounds as the parent (bin sizes from a softmax of the squashed raw values, knot
    slopes from their exponential); only the construction of the knots differs, because sampling builds it for
    every draw and group.
    """

    def __init__(self, widths: Tensor, heights: Tensor, derivatives: Tensor, bound: float = 5.0, slope: float = 1e-3):
        zuko.transforms.Transform.__init__(self)
        log_slope = math.log(slope)
        widths = widths / (1 + torch.abs(2 * widths / log_slope))
        heights = heights / (1 + torch.abs(2 * heights / log_slope))
        derivatives = derivatives / (1 + torch.abs(derivatives / log_slope))
        pad = torch.nn.functional.pad
        self.horizontal = bound * (2 * torch.cumsum(pad(_softmax_last(widths), (1, 0)), -1) - 1)
        self.vertical = bound * (2 * torch.cumsum(pad(_softmax_last(heights), (1, 0)), -1) - 1)
        self.derivatives = torch.exp(pad(derivatives, (1, 1)))


def _linear_parts(weight: Tensor, bias: Tensor | None, parts: Sequence[Tensor]) -> Tensor:
    """A linear layer applied to the concatenation of `parts` along the last dimension, without building it:
    sum_k parts[k] @ W_k^T + b, where W_k are the matching columns. Parts broadcast against each other (a
    group's summary (B, J, h) and a draw's globals (S, B, 1, G)), so a part shared by many rows is multiplied
    once, and only the final sum has the full size."""
    start, terms = 0, []
    for part in parts:
        terms.append(part @ weight[:, start : start + part.shape[-1]].T)
        start += part.shape[-1]
    if start != weight.shape[1]:
        raise ConfigError(f"context parts have {start} features in all; the layer expects {weight.shape[1]}.")
    terms.sort(key=lambda t: t.numel())
    out = terms[0] if bias is None else terms[0] + bias
    for term in terms[1:]:
        out = out + term
    return out


def _layer_weight(layer: nn.Linear) -> Tensor:
    mask = getattr(layer, "mask", None)  # zuko's MaskedLinear
    return layer.weight if mask is None else mask * layer.weight


def _activate(layer: nn.Module, h: Tensor) -> Tensor:
    """A layer of an MLP; activations work in place when no gradient is recorded (sampling)."""
    if not torch.is_grad_enabled():
        if isinstance(layer, nn.ReLU):
            return h.relu_()
        if isinstance(layer, nn.SiLU):
            return torch.nn.functional.silu(h, inplace=True)
    return layer(h)


_KNOT_MAPS: dict[tuple[int, float, torch.dtype], tuple[Tensor, Tensor, Tensor, Tensor]] = {}


def _knot_map(bins: int, log_slope: float, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Constants of `_rqs_knots` and `_rqs_inverse`, built once: each raw parameter's squash factor; a
    (3 bins - 1, 3 (bins + 1)) matrix and offset that take exp(squashed raw parameters) to the unnormalized
    horizontal and vertical knots (cumulative sums of the bin sizes, from 0) and the knot slopes (1 at both ends),
    one matrix product instead of sums over strided slices, which are slow on CPUs; the gather offsets of a bin's
    two ends in each of the three."""
    key = (bins, log_slope, dtype)
    if key not in _KNOT_MAPS:
        k = bins + 1
        squash = torch.full((3 * bins - 1,), 2 / log_slope, dtype=dtype)
        squash[2 * bins :] = 1 / log_slope
        matrix = torch.zeros(3 * bins - 1, 3 * k, dtype=dtype)
        upper = torch.ones(bins, k, dtype=dtype).triu(1)  # bin i counts in knot c > i
        matrix[:bins, :k] = upper
        matrix[bins : 2 * bins, k : 2 * k] = upper
        matrix[2 * bins :, 2 * k + 1 : 3 * k - 1] = torch.eye(bins - 1, dtype=dtype)
        offset = torch.zeros(3 * k, dtype=dtype)
        offset[2 * k] = offset[3 * k - 1] = 1.0
        ends = torch.tensor([0, 1, k, k + 1, 2 * k, 2 * k + 1])
        _KNOT_MAPS[key] = (squash, matrix, offset, ends)
    return _KNOT_MAPS[key]


def _rqs_knots(phi: Tensor, bins: int, log_slope: float) -> Tensor:
    """zuko's monotonic RQS parametrization (`SplineTransform`) from raw parameters phi (..., 3 bins - 1):
    (..., 3 (bins + 1)) the unnormalized horizontal knots (c_0 = 0, ..., c_K), the same for the vertical knots,
    and the knot slopes. Knot i lies at bound (2 c_i / c_K - 1)."""
    squash, matrix, offset, _ = _knot_map(bins, log_slope, phi.dtype)
    # After the squash |phi| < |log_slope| / 2 for widths and heights, so exp needs no max subtraction.
    if torch.is_grad_enabled():
        e = torch.exp(phi / (1 + torch.abs(phi * squash)))
    else:  # in place: one allocation instead of four (sampling)
        e = (phi * squash).abs_().add_(1.0)
        e = torch.div(phi, e, out=e).exp_()
    return torch.addmm(offset, e.reshape(-1, e.shape[-1]), matrix).reshape(*e.shape[:-1], -1)


def _rqs_inverse(
    phi: Tensor, y: Tensor, bins: int, bound: float = 5.0, slope: float = 1e-3, log_det: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Inverse of zuko's monotonic rational-quadratic spline with raw parameters phi (..., 3 bins - 1) at y (...)
    (phi broadcasts against y); returns x and, with `log_det`, log|dx/dy|. Identity outside [-bound, bound], as
    in zuko.

    Works in the unnormalized knot units of `_rqs_knots` (the solution z of the bin's quadratic does not depend on
    the units of y), so that only the bin's ends are converted."""
    k1 = bins + 1
    log_slope = math.log(slope)
    knots = _rqs_knots(phi, bins, log_slope)  # (..., 3 (bins + 1))
    shape = torch.broadcast_shapes(knots.shape[:-1], y.shape)
    total_x, total_y = knots[..., bins], knots[..., 2 * bins + 1]
    inside = torch.abs(y) < bound
    # y in vertical knot units: c_K (y + B) / 2B
    level = torch.addcmul(total_y * 0.5, torch.clamp(y, -bound, bound), total_y, value=0.5 / bound)
    k = (knots[..., k1 + 1 : 2 * k1 - 1] < level.unsqueeze(-1)).sum(-1, keepdim=True)
    ends = knots.expand(*shape, 3 * k1).gather(-1, k + _knot_map(bins, log_slope, phi.dtype)[3])
    cx0, cx1, cy0, cy1, d0, d1 = ends.unbind(-1)
    width, height = cx1 - cx0, cy1 - cy0
    s = height / width * (total_x / total_y)  # the bin's slope, in the spline's units
    y_ = level - cy0
    t = torch.add(d0 + d1, s, alpha=-2.0)
    yt = y_ * t
    a = torch.addcmul(yt, height, s - d0)
    b = torch.addcmul(-yt, height, d0)
    sy = s * y_
    root = torch.addcmul(b * b, a, sy, value=4.0).clamp_min(0.0).sqrt()
    z = 2 * sy / (b + root)  # the bin's quadratic: 2c / (-b - sqrt(b^2 - 4ac)) with c = -s y_
    x = torch.where(inside, torch.addcmul(cx0, z, width) * (2 * bound / total_x) - bound, y)
    if not log_det:
        return x, None
    zz = z * (1 - z)
    dydx = s * s * (2 * s * zz + d0 * (1 - z) ** 2 + d1 * z * z) / (s + t * zz) ** 2
    return x, torch.where(inside, -torch.log(dydx), 0.0)


def _inverse_transform(
    transform: nn.Module, y: Tensor, parts: Sequence[Tensor], log_det: bool = True
) -> tuple[Tensor, Tensor | None]:
    """Inverse of one zuko autoregressive (or element-wise) spline transform of a MAF at y (..., F), given the
    context as broadcastable `parts`; returns x (..., F) and, with `log_det`, log|det dx/dy| (...).

    Equal to zuko's `transform(context).inv(y)`, but: the context's share of the first layer is computed once
    per distinct context (not once per draw); the features of the first rank depend on the context alone, so
    their spline parameters are computed once per context too; each later rank runs the conditioner once, for
    its own outputs only (zuko runs the whole network F times)."""
    layers = list(transform.hyper)
    bins = transform.shapes[0][0]
    total = transform.total
    n_features = y.shape[-1]
    weight = _layer_weight(layers[0])
    autoregressive = weight.shape[1] > sum(p.shape[-1] for p in parts)
    x_weight = weight[:, :n_features] if autoregressive else None
    context_pre = _linear_parts(weight[:, n_features:] if autoregressive else weight, layers[0].bias, parts)
    last = layers[-1]
    last_weight = _layer_weight(last)
    ranks = transform.order.tolist() if autoregressive else [0] * n_features
    x, log_det_sum = None, None
    order = sorted(set(ranks))
    for position, rank in enumerate(order):
        features = [i for i, r in enumerate(ranks) if r == rank]
        # The first rank sees no feature (its inputs are masked out): its parameters depend on the context only.
        if position == 0:
            h = context_pre.clone() if len(order) > 1 else context_pre  # activations may work in place
        else:
            h = (x @ x_weight.T).add_(context_pre)
        for layer in layers[1:-1]:
            h = _activate(layer, h)
        rows = [f * total + i for f in features for i in range(total)]
        phi = torch.nn.functional.linear(h, last_weight[rows], last.bias[rows])
        if len(features) == n_features:
            x, ladj = _rqs_inverse(phi.unflatten(-1, (n_features, total)), y, bins, log_det=log_det)
        else:
            index = torch.tensor(features)
            x_f, ladj = _rqs_inverse(
                phi.unflatten(-1, (len(features), total)), y.index_select(-1, index), bins, log_det=log_det
            )
            x = (torch.zeros_like(x_f.expand(*x_f.shape[:-1], n_features)) if x is None else x).index_copy(-1, index, x_f)
        if log_det:
            ladj = ladj.sum(-1)
            log_det_sum = ladj if log_det_sum is None else log_det_sum + ladj
    return x, log_det_sum


class ConditionalFlow(nn.Module):
    """Conditional neural spline flow (zuko NSF) on a standardized unconstrained vector.

    theta_u (features) is standardized with fixed buffers `loc`, `scale` (set from prior simulations by
    `set_standardization`) before it enters the flow, and log densities include that affine Jacobian.

    With `affine`, a conditional elementwise affine map z = (theta_std - m(c)) exp(-s(c)) comes first, with
    m and s from a small network of the context. The splines then only shape a roughly standard variable:
    a posterior much narrower than the prior (a residual sd pinned down by many rows) would otherwise need
    steep spline segments, which a few minutes of training place only coarsely. The log scale is
    soft-clamped to (-`max_log_scale`, `max_log_scale`) so that early training stays stable.

    Arguments:
        features: dimension of theta_u.
        context: dimension of the condition.
        transforms: number of spline transforms.
        hidden: hidden layer widths of each transform's conditioner.
        bins: spline bins.
        affine: put the conditional affine map before the splines.
        max_log_scale: bound of the affine log scale.
    """

    def __init__(
        self,
        features: int,
        context: int,
        transforms: int = 4,
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        affine: bool = False,
        max_log_scale: float = 7.0,
    ):
        super().__init__()
        self.features = features
        # zuko's NSF with a faster spline construction (`SplineTransform`).
        self.flow = zuko.flows.MAF(
            features,
            context,
            transforms=transforms,
            hidden_features=list(hidden),
            univariate=SplineTransform,
            shapes=[(bins,), (bins,), (bins - 1,)],
        )
        self.affine = MLP(context, list(hidden), 2 * features) if affine else None
        if self.affine is not None:  # start near the identity map (not exactly: gradients must reach every layer)
            with torch.no_grad():
                self.affine[-1].weight.mul_(0.01)
                self.affine[-1].bias.zero_()
        self.max_log_scale = float(max_log_scale)
        self.register_buffer("loc", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def set_standardization(self, loc: Tensor, scale: Tensor) -> None:
        self.loc.copy_(loc)
        self.scale.copy_(scale.clamp_min(1e-6))

    def _shift_scale(self, context: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """context (..., c), or broadcastable parts of it -> shift (..., features), log scale (..., features)."""
        if isinstance(context, Tensor):
            raw = self.affine(context)
        else:
            layers = list(self.affine)
            raw = _linear_parts(layers[0].weight, layers[0].bias, context)
            for layer in layers[1:]:
                raw = _activate(layer, raw)
        shift, raw = raw.chunk(2, -1)
        bound = self.max_log_scale
        return shift, bound * torch.tanh(raw / bound)

    def log_prob(self, theta_u: Tensor, context: Tensor) -> Tensor:
        """theta_u: (..., features), context: (..., context) -> (...)."""
        z = (theta_u - self.loc) / self.scale
        log_det = -torch.log(self.scale).sum()
        if self.affine is not None:
            shift, log_scale = self._shift_scale(context)
            z = (z - shift) * torch.exp(-log_scale)
            log_det = log_det - log_scale.sum(-1)
        return self.flow(context).log_prob(z) + log_det

    def sample(self, context: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One draw per context row: context (..., context) -> (..., features)."""
        noise = torch.randn(*context.shape[:-1], self.features, generator=generator, dtype=context.dtype)
        return self.from_noise(noise, context)

    def from_noise(
        self, noise: Tensor, context: Tensor | Sequence[Tensor], log_det: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The flow's map from its standard normal base: noise (..., features) -> theta_u (..., features).

        `context` is a tensor (..., context) or a sequence of tensors whose concatenation along the last dimension
        is the context and that broadcast against each other and the noise (a group's summary (B, J, h) and each
        draw's globals (S, B, 1, G)): each part then enters the first layers once. With `log_det`, also returns
        log|det d theta_u / d noise| (...). Differentiable in `noise`; `sample` is this map at fresh noise
        (mlnpe.inference.refine runs HMC through it). Equal to zuko's inverse of the flow (tests check it), computed
        without zuko's repeated passes (`_inverse_transform`).
        """
        parts = (context,) if isinstance(context, Tensor) else tuple(context)
        z, ladj = noise, 0.0
        for transform in reversed(self.flow.transform.transforms):
            z, step = _inverse_transform(transform, z, parts, log_det)
            ladj = ladj + step if log_det else ladj
        if self.affine is not None:
            shift, log_scale = self._shift_scale(parts)
            z = z * torch.exp(log_scale) + shift
            ladj = ladj + log_scale.sum(-1) if log_det else ladj
        theta_u = z * self.scale + self.loc
        if not log_det:
            return theta_u
        return theta_u, ladj + torch.log(self.scale).sum()
