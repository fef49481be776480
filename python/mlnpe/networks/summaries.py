"""Mask-aware summary networks.

Summary-network interface (any ``nn.Module`` that follows it plugs in):

- ``forward(x: (sets, items, features), mask: (sets, items)) -> (sets, out_features)``, where every set has at
  least one real item, and the module has an integer attribute ``out_features``.
- Optional: ``forward_packed(rows: (items, features), owner: (items,), sets: int)``, the same from the real
  items only (the estimator then skips the padding).
- Optional: an integer attribute ``fixed_features``, or a list ``fixed_columns``: the last ``fixed_features``
  outputs (or those columns) of a local summary are fixed functions of the rows (no trained weights), such as
  per-group least-squares estimates (`fixed_columns`). The estimator's regression shift (`ShiftConfig`) then
  also regresses the global parameters on their mean and log variance over groups, and each group's local
  parameters on them, the globals and their products (`mlnpe.networks.shift.LocalShift`).
- Optional: a list ``group_estimates`` of (estimate column, log sampling variance column) pairs among the fixed
  outputs: a per-group estimate of a local parameter on a linear scale and the log of its sampling variance. The
  regression shift then also uses, per pair, the estimate's variance over groups minus the mean sampling
  variance (signed log; a moment estimate of the group-level variance) and the log of that mean.

The local summary sees one set per real group (its rows); the global summary sees one set per dataset (its
groups' local summaries). Outputs must not depend on padded items, and for exchangeable data not on their
order.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = [
    "MLP",
    "DeepSet",
    "SufficientSummary",
    "SetTransformer",
    "RecurrentSummary",
    "build_summary",
    "fixed_columns",
]


class MLP(nn.Sequential):
    """Linear layers with SiLU activations between them."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int):
        sizes = [in_features, *hidden, out_features]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.SiLU())
        super().__init__(*layers)


def _pack(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(sets, items, d), (sets, items) -> the real items (R, d) and the set of each (R,)."""
    sets, items, d = x.shape
    flat_mask = mask.reshape(-1)
    owner = torch.arange(sets, device=x.device).repeat_interleave(items)[flat_mask]
    return x.reshape(-1, d)[flat_mask], owner


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """(sets, items, d), (sets, items) -> (sets, d): mean over real items only."""
    weights = mask.to(values.dtype)[..., None]
    return (values * weights).sum(-2) / weights.sum(-2).clamp_min(1.0)


class DeepSet(nn.Module):
    """Masked deep set: rho(mean_i phi(x_i)), plus the set's raw first two moments and log size.

    Rows are processed packed (only real items go through phi), so padding costs no compute. The raw moments
    and log(n) are appended to the output: the means and variances ("diag"), or the means and the whole
    covariance matrix ("full": for rows [y, covariates] these are the sufficient statistics of a linear model).
    The networks then need not learn to multiply inputs, which plain MLPs learn slowly. "full" also appends the
    within-set least-squares fit of the first column (the response) on the others: its intercept and slopes
    (signed-log compressed, with a small ridge for sets with fewer rows than columns) and log(v + 1e-3), where v
    is the residual variance (the variance itself when there are no other columns). Group-level spreads and
    residual scales (sd_g, a gaussian sigma) are then nearly linear functions of the pooled summaries, which
    flows locate precisely.

    Arguments:
        in_features: item dimension d.
        summary_dim: dimension of the learned part of the output.
        hidden: width of phi and rho.
        depth: number of hidden layers of phi and rho.
        moments: "diag", "full" or "none" (True means "diag"): which raw moments to append.
        item_hidden: width of phi, which runs once per item (default: hidden).
        attention: number of attention-weighted pools of the raw moments (0: none). Pool k is
            sum_i softmax_i(a_k(x_i)) [x_i, x_i^2]: a learned weighting of items (e.g. by their precision) that a
            plain mean cannot express. Computed on the padded tensor, so use it for small sets (groups).
        extremes: also append each column's minimum and maximum over the set's items. A parameter that bounds
            the data (a non-decision time below every reaction time) is pinned down by an extreme, which no
            mean of item features approximates well.
        repeated: items repeat across the batch (covariate rows resampled from the data): phi runs once per
            distinct item. The output is the same; the per-row cost is then a lookup, not the MLP.
    """

    def __init__(
        self,
        in_features: int,
        summary_dim: int = 16,
        hidden: int = 64,
        depth: int = 2,
        moments: bool | str = True,
        item_hidden: int | None = None,
        attention: int = 0,
        extremes: bool = False,
        repeated: bool = False,
    ):
        super().__init__()
        self.extremes, self.repeated = bool(extremes), bool(repeated)
        moments = {True: "diag", False: "none"}.get(moments, moments)
        if moments not in ("diag", "full", "none"):
            raise ConfigError(f"DeepSet `moments` must be 'diag', 'full' or 'none', got {moments!r}.")
        self.moments = moments
        pairs = torch.triu_indices(in_features, in_features) if moments == "full" else torch.zeros(2, 0, dtype=torch.long)
        self.register_buffer("pair_a", pairs[0], persistent=False)
        self.register_buffer("pair_b", pairs[1], persistent=False)
        # phi runs once per item (row), rho once per set: a narrow phi keeps the per-row cost low.
        item_hidden = item_hidden or hidden
        self.phi = MLP(in_features, [item_hidden] * depth, item_hidden)
        n_moments = {"diag": 2 * in_features, "full": 2 * in_features + self.pair_a.numel() + 1, "none": 0}[moments]
        self.in_features = in_features
        extra = n_moments + 1 + (2 * in_features if self.extremes else 0)
        self.scores = MLP(in_features, [hidden], attention) if attention else None
        pools = 2 * in_features * attention
        self.rho = MLP(item_hidden + extra + pools, [hidden] * depth, summary_dim)
        self.out_features = summary_dim + extra + pools
        self.fixed_columns = list(range(summary_dim, summary_dim + extra))  # the moments and log n (not the pools)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (sets, items, d), mask: (sets, items) -> (sets, out_features)."""
        pools = self._attention_pools(x, mask) if self.scores is not None else None
        return self._summarize(*_pack(x, mask), x.shape[0], pools)

    def forward_packed(self, rows: Tensor, owner: Tensor, sets: int) -> Tensor:
        """The same from the real items only: rows (items, d), owner (items,) the set of each -> (sets, out)."""
        if self.scores is not None:
            raise ConfigError("a DeepSet with attention pools needs the padded input; call it with (x, mask).")
        return self._summarize(rows, owner, sets, None)

    def _summarize(self, rows: Tensor, owner: Tensor, sets: int, pools: Tensor | None) -> Tensor:
        counts = torch.bincount(owner, minlength=sets).to(rows.dtype).clamp_min(1.0)[:, None]
        items = self._phi_distinct(rows) if self.repeated else self.phi(rows)
        pooled = rows.new_zeros(sets, self.phi[-1].out_features).index_add_(0, owner, items) / counts
        features = [torch.log(counts)]
        if self.moments != "none":
            features.insert(0, self._moments(rows, owner, counts, sets))
        if self.extremes:
            index = owner[:, None].expand(-1, rows.shape[-1])
            low = rows.new_full((sets, rows.shape[-1]), math.inf).scatter_reduce(0, index, rows, "amin")
            high = rows.new_full((sets, rows.shape[-1]), -math.inf).scatter_reduce(0, index, rows, "amax")
            features += [low, high]
        if pools is not None:
            features.append(pools)
        extra = torch.cat(features, -1)
        return torch.cat([self.rho(torch.cat([pooled, extra], -1)), extra], -1)

    def _phi_distinct(self, rows: Tensor) -> Tensor:
        """phi of every row, run once per distinct row: simulated designs resample the data's covariate rows, so a
        batch of 10^5-10^6 rows holds only as many distinct ones as the data. Rows are keyed exactly (each column's
        rank among its distinct values, combined as the digits of one integer); where the key would overflow, phi
        runs on every row."""
        key, size = torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device), 1
        for column in rows.unbind(-1):
            values, code = torch.unique(column, return_inverse=True)
            if size * len(values) >= 2**62:
                return self.phi(rows)
            key, size = key + code * size, size * len(values)
        distinct, inverse = torch.unique(key, return_inverse=True)
        first = torch.empty(len(distinct), dtype=torch.long, device=rows.device)
        first.scatter_(0, inverse, torch.arange(len(inverse), device=rows.device))  # any row of each key
        return self.phi(rows[first])[inverse]

    def _moments(self, rows: Tensor, owner: Tensor, counts: Tensor, sets: int) -> Tensor:
        """Per set: means and centred second moments (variances, or the covariance upper triangle).

        Centring about the set's mean avoids the cancellation in mean(x^2) - mean(x)^2 that would otherwise
        hide a small within-group spread (a residual sd) under a large mean.
        """
        mean = rows.new_zeros(sets, rows.shape[-1]).index_add_(0, owner, rows) / counts
        dev = rows - mean[owner]
        second = dev * dev if self.moments == "diag" else dev[:, self.pair_a] * dev[:, self.pair_b]
        cov = rows.new_zeros(sets, second.shape[-1]).index_add_(0, owner, second) / counts
        if self.moments == "diag":
            return torch.cat([mean, cov], -1)
        return torch.cat([mean, cov, self._least_squares(mean, cov, sets)], -1)

    def _least_squares(self, mean: Tensor, upper: Tensor, sets: int) -> Tensor:
        """Per set, the fit of column 0 on the others: (sets, d) means, (sets, pairs) covariance upper triangles
        -> (sets, d + 1) [intercept, slopes (d - 1), log(residual variance + 1e-3)]."""
        d = self.in_features
        cov = upper.new_zeros(sets, d, d)
        cov[:, self.pair_a, self.pair_b] = upper
        cov[:, self.pair_b, self.pair_a] = upper
        if d == 1:
            return torch.cat([mean, torch.log(cov[:, 0, :1] + 1e-3)], -1)
        # A ridge keeps sets with fewer rows than covariates (singular C_xx) finite.
        cxx = cov[:, 1:, 1:] + 1e-2 * torch.eye(d - 1, dtype=cov.dtype, device=cov.device)
        cx0 = cov[:, 1:, :1]
        slopes = torch.linalg.solve(cxx, cx0)  # (sets, d - 1, 1)
        residual = (cov[:, 0, :1] - (cx0 * slopes).sum(-2)).clamp_min(0.0)
        slopes = slopes[..., 0]
        intercept = mean[:, :1] - (slopes * mean[:, 1:]).sum(-1, keepdim=True)
        fit = torch.cat([intercept, slopes], -1)
        return torch.cat([torch.sign(fit) * torch.log1p(fit.abs()), torch.log(residual + 1e-3)], -1)

    def _attention_pools(self, x: Tensor, mask: Tensor) -> Tensor:
        """(sets, items, d), (sets, items) -> (sets, attention * 2d) softmax-weighted raw moments."""
        scores = self.scores(x).masked_fill(~mask[..., None], float("-inf"))
        weights = torch.softmax(scores, dim=1)  # (sets, items, K); every set has a real item
        values = torch.cat([x, x * x], -1)
        return torch.einsum("snk,snv->skv", weights, values).flatten(1)


class SufficientSummary(nn.Module):
    """Local summary that sees a group's response only through an exponential family's sufficient statistics.

    Rows are [y, covariates]. For a GLM with a canonical link the likelihood of a group depends on y only
    through sum_i y_i x_i over the columns x of its linear predictor (and, for a gaussian, sum_i y_i^2): the
    exact posterior is a function of these statistics and the design. A summary that is a function of the same
    statistics makes the amortized posterior one too, so a dataset that the model does not describe (overdispersed
    counts, skewed residuals) gets the posterior that Stan would give, instead of an extrapolation from simulated
    datasets unlike it. Covariates, which are the design and not random, go through a deep set of their own.

    Features (signed-log compressed where unbounded): the mean of y, its covariances with the linear-predictor
    covariates, the least-squares fit of y on them (intercept and slopes; ridge 1e-2), log(mean y + 1e-3) when
    `square` is False (responses >= 0, standardized by scale only: a log-scale estimate for counts and
    proportions), and with `square` the log variance and log residual variance of y; log n; the design deep set.
    The output is rho(features) beside the features.

    Arguments:
        in_features: row dimension d (column 0 the response).
        summary_dim, hidden, depth, item_hidden: sizes of rho and of the design deep set.
        square: whether sum y^2 is a sufficient statistic (gaussian) or not (poisson, bernoulli, binomial).
        design_only: covariate columns (>= 1) that are not in the linear predictor (binomial trials): the
            summary uses them as design but never multiplies them with y.
        floor: added to the variances before their log (on the scale the summary sees).
        origin: take the intercept at covariate values set by `set_origin` (a buffer) instead of at 0.
    """

    def __init__(
        self,
        in_features: int,
        summary_dim: int = 16,
        hidden: int = 64,
        depth: int = 2,
        item_hidden: int | None = None,
        square: bool = True,
        design_only: Sequence[int] = (),
        floor: float = 1e-3,
        origin: bool = False,
    ):
        super().__init__()
        self.floor = float(floor)
        if any(not 1 <= c < in_features for c in design_only):
            raise ConfigError(f"`design_only` columns {list(design_only)} must index covariates 1..{in_features - 1}.")
        self.square = bool(square)
        self.in_features = in_features
        self.covariates = list(range(1, in_features))
        self.products = [c for c in self.covariates if c not in set(design_only)]
        k = len(self.products)
        self.design = (
            DeepSet(len(self.covariates), summary_dim, hidden, depth, "full", item_hidden=item_hidden, repeated=True)
            if self.covariates else None
        )
        n_stats = 1 + k + 1 + k + (2 if self.square else 1) + 1
        design_out = self.design.out_features if self.design is not None else 0
        self.rho = MLP(n_stats + design_out, [hidden] * depth, summary_dim)
        self.out_features = summary_dim + n_stats + design_out
        self.fixed_columns = list(range(summary_dim, summary_dim + n_stats))  # the statistics (see the module doc)
        if origin:  # where the intercept is taken, in the covariates' coordinates: see `set_origin`
            self.register_buffer("origin", torch.zeros(k))
        else:
            self.origin = None

    def set_origin(self, origin: Tensor) -> None:
        """Takes each group's intercept at covariates `origin` (one value per column in the linear predictor, on
        the scale the summary sees), instead of at 0: the standardized image of the data's zero, where brms places
        group-level intercepts. Needs `origin=True`."""
        if self.origin is None:
            raise ConfigError("this SufficientSummary was built without `origin=True`.")
        self.origin.copy_(origin.to(self.origin.dtype))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (sets, items, d), mask: (sets, items) -> (sets, out_features)."""
        return self.forward_packed(*_pack(x, mask), x.shape[0])

    def forward_packed(self, rows: Tensor, owner: Tensor, sets: int) -> Tensor:
        """The same from the real rows only: rows (items, d), owner (items,) the group of each -> (sets, out).
        Groups of very different sizes then cost their real rows, not the largest group's."""
        n = torch.bincount(owner, minlength=sets).to(rows.dtype).clamp_min(1.0)

        def group_sum(v: Tensor) -> Tensor:
            return v.new_zeros(sets, *v.shape[1:]).index_add_(0, owner, v)

        y = rows[:, 0]
        mean_y = group_sum(y) / n
        yc = y - mean_y[owner]
        if self.products:
            xs = rows[:, self.products]
            mean_x = group_sum(xs) / n[:, None]
            xc = xs - mean_x[owner]
            cov_xy = group_sum(xc * yc[:, None]) / n[:, None]
            cov_xx = group_sum(xc[:, :, None] * xc[:, None, :]) / n[:, None, None]
            eye = torch.eye(len(self.products), dtype=rows.dtype, device=rows.device)
            slopes = torch.linalg.solve(cov_xx + 1e-2 * eye, cov_xy[..., None])[..., 0]
            at = mean_x if self.origin is None else mean_x - self.origin.to(mean_x.dtype)
            intercept = mean_y - (slopes * at).sum(-1)
        else:
            cov_xy = slopes = rows.new_zeros(sets, 0)
            intercept = mean_y
        linear = torch.cat([mean_y[:, None], cov_xy, intercept[:, None], slopes], -1)
        stats = [torch.sign(linear) * torch.log1p(linear.abs())]
        if self.square:
            var_y = group_sum(yc * yc) / n
            residual = (var_y - (cov_xy * slopes).sum(-1)).clamp_min(0.0)
            stats.append(torch.log(torch.stack([var_y, residual], -1) + self.floor))
        else:
            stats.append(torch.log(mean_y.clamp_min(0.0) + 1e-3)[:, None])
        stats.append(torch.log(n)[:, None])
        if self.design is not None:
            stats.append(self.design.forward_packed(rows[:, self.covariates], owner, sets))
        features = torch.cat(stats, -1)
        return torch.cat([self.rho(features), features], -1)


class _MAB(nn.Module):
    """Multihead attention block: H = LN(Q + attn(Q, K)); out = LN(H + FF(H))."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff = MLP(dim, [dim], dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, q: Tensor, k: Tensor, key_mask: Tensor | None) -> Tensor:
        padding = None if key_mask is None else ~key_mask
        h = self.norm1(q + self.attn(q, k, k, key_padding_mask=padding, need_weights=False)[0])
        return self.norm2(h + self.ff(h))


class _ISAB(nn.Module):
    """Induced set attention block: inducing points attend to the real items, items attend back."""

    def __init__(self, dim: int, heads: int, inducing: int):
        super().__init__()
        self.points = nn.Parameter(torch.randn(1, inducing, dim) / dim**0.5)
        self.mab1, self.mab2 = _MAB(dim, heads), _MAB(dim, heads)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        h = self.mab1(self.points.expand(x.shape[0], -1, -1), x, mask)
        return self.mab2(x, h, None)


class SetTransformer(nn.Module):
    """Set transformer (Lee et al. 2019) with masked attention: embedding, ISAB blocks, PMA pooling.

    Padded items never act as keys; since pooling by multihead attention (PMA) attends only to real items,
    the output is invariant to padding and to the order of items. log(n) is appended to the output.

    Arguments:
        in_features: item dimension d.
        summary_dim: output dimension (before log n).
        dim: attention width.
        heads: attention heads.
        blocks: number of ISAB blocks.
        inducing: inducing points per ISAB.
        seeds: PMA seed vectors.
    """

    def __init__(
        self,
        in_features: int,
        summary_dim: int = 16,
        dim: int = 64,
        heads: int = 4,
        blocks: int = 2,
        inducing: int = 16,
        seeds: int = 1,
    ):
        super().__init__()
        if dim % heads:
            raise ConfigError(f"SetTransformer `dim` ({dim}) must be divisible by `heads` ({heads}).")
        self.embed = MLP(in_features, [dim], dim)
        self.blocks = nn.ModuleList(_ISAB(dim, heads, inducing) for _ in range(blocks))
        self.seeds = nn.Parameter(torch.randn(1, seeds, dim) / dim**0.5)
        self.pool = _MAB(dim, heads)
        self.head = MLP(seeds * dim + 1, [dim], summary_dim)
        self.out_features = summary_dim + 1

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (sets, items, d), mask: (sets, items) -> (sets, out_features)."""
        h = self.embed(x)
        for block in self.blocks:
            h = block(h, mask)
        pooled = self.pool(self.seeds.expand(x.shape[0], -1, -1), h, mask).flatten(1)
        log_n = torch.log(mask.sum(-1, keepdim=True).to(x.dtype).clamp_min(1.0))
        return torch.cat([self.head(torch.cat([pooled, log_n], -1)), log_n], -1)


class RecurrentSummary(nn.Module):
    """LSTM or GRU over ordered rows of varying length; the last real step's state summarizes the set.

    Real rows must come first in each set (as `collate` and the simulators lay them out).

    Arguments:
        in_features: row dimension d.
        summary_dim: output dimension (before log n).
        hidden: recurrent state size.
        cell: "lstm" or "gru".
    """

    def __init__(self, in_features: int, summary_dim: int = 16, hidden: int = 64, cell: str = "lstm"):
        super().__init__()
        cells = {"lstm": nn.LSTM, "gru": nn.GRU}
        if cell not in cells:
            raise ConfigError(f"RecurrentSummary `cell` must be 'lstm' or 'gru', got {cell!r}.")
        self.rnn = cells[cell](in_features, hidden, batch_first=True)
        self.head = MLP(hidden + 1, [hidden], summary_dim)
        self.out_features = summary_dim + 1

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (sets, steps, d), mask: (sets, steps) -> (sets, out_features)."""
        # The cell is causal and real steps come first, so the state at the last real step ignores the padding.
        # Running the padded tensor is several times faster to train on a CPU than a packed sequence, whose
        # backward pass zero-fills a gradient buffer of all packed steps once per time step.
        lengths = mask.sum(-1).clamp_min(1)
        states, _ = self.rnn(x)  # (sets, steps, hidden)
        last = states[torch.arange(x.shape[0], device=x.device), lengths - 1]
        log_n = torch.log(lengths.to(x.dtype))[:, None]
        return torch.cat([self.head(torch.cat([last, log_n], -1)), log_n], -1)


def build_summary(
    kind: str,
    in_features: int,
    summary_dim: int,
    hidden: int,
    depth: int,
    item_hidden: int | None = None,
    attention: int = 0,
    moments: str = "diag",
    extremes: bool = False,
) -> nn.Module:
    """A summary network by name: "deepset", "set_transformer", "lstm" or "gru"."""
    if extremes and kind != "deepset":
        raise ConfigError(f"per-set extremes need a 'deepset' summary, got {kind!r}.")
    if kind == "deepset":
        return DeepSet(
            in_features, summary_dim, hidden, depth, moments, item_hidden=item_hidden, attention=attention,
            extremes=extremes,
        )
    if kind == "set_transformer":
        return SetTransformer(in_features, summary_dim, hidden, blocks=depth)
    if kind in ("lstm", "gru"):
        return RecurrentSummary(in_features, summary_dim, hidden, kind)
    raise ConfigError(
        f"unknown summary network {kind!r}; choose 'deepset', 'set_transformer', 'lstm' or 'gru', or pass a "
        "module that follows the interface in mlnpe.networks.summaries."
    )


def fixed_columns(summary: nn.Module, width: int) -> list[int]:
    """The columns of a local summary's output (`width` wide) that are fixed functions of the rows (see the module
    docstring): `fixed_columns` if it has them, else its last `fixed_features` columns, else none."""
    columns = getattr(summary, "fixed_columns", None)
    if columns is not None:
        return [int(c) for c in columns]
    k = int(getattr(summary, "fixed_features", 0))
    return list(range(width - k, width))
