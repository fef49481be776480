"""Hand-made statistics of grouped data: pooled within- and between-group moments, REML profiles of group-level
sds, separate fits per group and one-step GLM slopes (`PooledStatistics`), and the robust moments that
standardize the networks' inputs and parameters.

Rows arrive packed: the real rows (R, d), standardized, and each row's group among the B * J slots of the batch
(R,). Every statistic ignores padding.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .config import StatisticsConfig

__all__ = [
    "PooledStatistics",
    "PROFILE_POINTS",
    "SHRINK_POINTS",
    "signed_log",
    "group_moments",
    "masked_moments",
    "regress",
    "slope_profile",
    "group_fits",
    "data_zero",
]

PROFILE_POINTS = 16
# log sampling variances (standardized rows) at which `profile_average`'s shrinkage features turn over
SHRINK_POINTS = (-6.0, -4.0, -2.0, 0.0, 2.0)


def signed_log(v: Tensor) -> Tensor:
    """sign(v) log(1 + |v|)."""
    return torch.sign(v) * torch.log1p(v.abs())


def group_moments(h: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance over the real groups: h (B, J, k), real (B, J) -> (B, k), (B, k)."""
    w = real.to(h.dtype)[..., None]
    count = w.sum(1).clamp_min(1.0)
    mean = (h * w).sum(1) / count
    return mean, (((h - mean[:, None]) * w) ** 2).sum(1) / count


def masked_moments(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Robust centre and scale over the real entries: values (..., d), mask (...) -> (d,), (d,).

    The median, and the interquartile range / 1.349 (the sd of a normal), falling back to the sd for columns
    whose quartiles coincide (a rare level of a binary column). Pilot simulations under vague priors (brms's
    student_t(3, ...) scales, or explosive AR(1) draws) have a few huge values that would inflate a sd and
    squash every typical dataset and parameter into a sliver around zero.
    """
    real = values[mask]
    if real.shape[0] > 2**20:  # torch.quantile's size limit; an even thinning keeps the quantiles
        real = real[:: -(-real.shape[0] // 2**20)]
    q25, median, q75 = torch.quantile(real, torch.tensor([0.25, 0.5, 0.75], dtype=real.dtype), dim=0)
    iqr = (q75 - q25) / 1.349
    scale = torch.where(iqr > 0, iqr, real.std(0))
    return median, scale.clamp_min(1e-6)


def data_zero(row_loc: Tensor, row_scale: Tensor, columns: Sequence[int]) -> Tensor:
    """The standardized image of the data's zero in row `columns` (signed-log inputs map 0 to 0 as well)."""
    return -(row_loc / row_scale)[list(columns)]


def regress(cov: Tensor, dof: Tensor) -> tuple[Tensor, Tensor]:
    """Least squares of column 0 on the others from a covariance (B, d, d) with `dof` (B,) degrees of freedom.

    Returns the slopes (B, d - 1) (ridge 1e-2) and the residual variance (B,) on its own degrees of freedom.
    """
    d = cov.shape[-1]
    if d == 1:
        return cov.new_zeros(cov.shape[0], 0), cov[:, 0, 0]
    cxx = cov[:, 1:, 1:] + 1e-2 * torch.eye(d - 1, dtype=cov.dtype, device=cov.device)
    cx0 = cov[:, 1:, :1]
    slopes = torch.linalg.solve(cxx, cx0)[..., 0]
    residual = (cov[:, 0, 0] - (cx0[..., 0] * slopes).sum(-1)).clamp_min(0.0)
    return slopes, residual * dof / (dof - (d - 1)).clamp_min(1.0)


def slope_profile(dev: Tensor, owner: Tensor, real: Tensor, residual: Tensor, cols: Sequence[int]) -> Tensor:
    """For each covariate in `cols`, the REML profile of a group-level sd of its slope: every group's least-squares
    slope of the response on it (within the group), with sampling variance sigma^2 / S_xx, at sd / sigma ratios
    of 0.01 to 30; then the weighted mean slope at the best ratio (signed log). Groups in which the covariate
    does not vary carry no information and are left out.

    Arguments:
        dev: (R, d) rows minus their group means; owner: (R,) each row's group; real: (B, J) real groups;
        residual: (B,) pooled residual variance.
    Returns:
        (B, (`PROFILE_POINTS` + 1) * len(cols)).
    """
    b, j = real.shape
    cols = list(cols)
    sums = dev.new_zeros(b * j, 2 * len(cols)).index_add_(
        0, owner, torch.cat([dev[:, cols] ** 2, dev[:, cols] * dev[:, :1]], -1)
    ).reshape(b, j, 2, len(cols))
    sxx, sxy = sums[:, :, 0], sums[:, :, 1]  # (B, J, C)
    informative = real[..., None] * (sxx > 1e-6).to(dev.dtype)
    slope = sxy / sxx.clamp_min(1e-6)
    grid = torch.logspace(-2, math.log10(30.0), PROFILE_POINTS, dtype=dev.dtype, device=dev.device)
    sigma2 = residual.clamp_min(1e-6)[:, None, None, None]
    var = sigma2 * (grid**2 + 1.0 / sxx.clamp_min(1e-6)[..., None])  # (B, J, C, K)
    w = informative[..., None] / var
    total = w.sum(1).clamp_min(1e-12)  # (B, C, K)
    mean = (w * slope[..., None]).sum(1) / total
    r = slope[..., None] - mean[:, None]
    ll = -0.5 * ((informative[..., None] * torch.log(var)).sum(1) + (w * r * r).sum(1) + torch.log(total))
    best = ll.argmax(-1, keepdim=True)
    out = torch.cat([(ll - ll.amax(-1, keepdim=True)).clamp_min(-50.0), signed_log(mean.gather(-1, best))], -1)
    return out.flatten(1)


def group_fits(
    dev: Tensor, owner: Tensor, mean_j: Tensor, n_j: Tensor, cols: Sequence[int], origin: Tensor, floor: float
) -> Tensor:
    """Separate least-squares fits of column 0 on the covariates `cols` in every group with more rows than
    coefficients. A covariate without spread within a group (a group-level covariate) is left out of that
    group's fit; intercepts are taken at `origin` (the standardized data's zero of the covariates), where brms's
    group-level intercepts are.

    Arguments:
        dev: (R, d) rows minus their group means; owner: (R,); mean_j: (B, J, d) group means; n_j: (B, J, 1) rows
        per group; origin: (len(cols),); floor: added to variances before their log.
    Returns:
        (B, 1 + 2 (1 + p)): the log residual variance pooled over these groups (the sum of residual sums of
        squares over the sum of their degrees of freedom), then per coefficient the signed log of its variance
        over groups (after a ridge regression on the groups' covariate means, which takes out group-level
        covariates) minus its mean sampling variance, a moment estimate of the group-level variance under random
        slopes, which the group means mix up with the slopes; and the log of that variance.
    """
    b, j = mean_j.shape[:2]
    cols = list(cols)
    p, d = len(cols), mean_j.shape[-1]
    v = torch.cat([dev[:, :1], dev[:, cols]], -1)
    cross = v.new_zeros(b * j, p + 1, p + 1).index_add_(0, owner, v[:, :, None] * v[:, None, :])
    n = n_j.reshape(-1).clamp_min(1.0)
    sxx = cross[:, 1:, 1:]
    varies = (torch.diagonal(sxx, dim1=-2, dim2=-1) > 1e-8 * n[:, None]).to(v.dtype)  # (BJ, p)
    eye = torch.eye(p, dtype=v.dtype, device=v.device)
    # covariates without spread: an identity block, so their slope is 0 and they add no sampling variance
    kept = sxx * varies[:, :, None] * varies[:, None, :] + torch.diag_embed(1.0 - varies)
    inverse = torch.linalg.inv(kept + 1e-6 * n[:, None, None] * eye) * varies[:, :, None] * varies[:, None, :]
    slopes = (inverse @ cross[:, 1:, :1])[..., 0]  # (BJ, p)
    sse = (cross[:, 0, 0] - (cross[:, 1:, 0] * slopes).sum(-1)).clamp_min(0.0)
    dof = (n_j.reshape(-1) - 1.0 - varies.sum(-1)).clamp_min(0.0)
    fitted = (dof > 0).to(v.dtype)
    sigma2 = (sse * fitted).reshape(b, j).sum(1) / dof.reshape(b, j).sum(1).clamp_min(1.0)
    origin = origin.to(v.dtype)
    means = mean_j.reshape(-1, d)[:, cols]
    at = (means - origin) * varies  # (BJ, p) the group's covariate means from the data's zero
    intercept = mean_j.reshape(-1, d)[:, 0] - (slopes * at).sum(-1)
    unit_var = torch.cat([(1.0 / n + torch.einsum("rp,rpq,rq->r", at, inverse, at))[:, None],
                          torch.diagonal(inverse, dim1=-2, dim2=-1)], -1).reshape(b, j, p + 1)
    coef = torch.cat([intercept[:, None], slopes], -1).reshape(b, j, p + 1)
    w = (fitted[:, None] * torch.cat([torch.ones_like(varies[:, :1]), varies], -1)).reshape(b, j, p + 1)
    count = w.sum(1)  # (B, p + 1)
    # the coefficients' spread after a ridge regression on the covariates' group means, per coefficient
    x = means.reshape(b, j, p)
    rows = w[..., :1]  # the groups with a fit
    x = x - (rows * x).sum(1, keepdim=True) / rows.sum(1, keepdim=True).clamp_min(1.0)
    gram = torch.einsum("bjp,bjq->bpq", rows * x, x) + (1e-2 * rows.sum(1)[..., None] + 1e-6) * eye  # no fit: 0
    centre = (w * coef).sum(1) / count.clamp_min(1.0)
    centred = (coef - centre[:, None]) * w
    beta = torch.linalg.solve(gram, torch.einsum("bjp,bjk->bpk", rows * x, centred))
    residual = (centred - torch.einsum("bjp,bpk->bjk", x, beta)) * w
    spread = (residual**2).sum(1) / (count - 1.0 - p).clamp_min(1.0)
    noise = sigma2[:, None] * (w * unit_var).sum(1) / count.clamp_min(1.0)
    return torch.cat([torch.log(sigma2 + floor)[:, None], signed_log(spread - noise), torch.log(spread + floor)], -1)


class PooledStatistics(nn.Module):
    """The pooled statistics of a dataset (see `StatisticsConfig`): fixed functions of its standardized rows.

    Arguments:
        row_features: d, the row columns (responses, then covariates).
        config: which statistics.
        family: the sufficient summary's family ("none", "gaussian", "poisson" or "binomial"). For "poisson" and
            "binomial" the response is linear (standardized by its scale only): terms with y^2 are left out, and
            the profile works on the link scale.
        design_only: covariate columns outside the linear predictor (binomial trials).
        log_inputs: row columns the networks see on a signed-log scale (to recover raw trials).

    Attributes:
        out_features: F, the number of statistics.
    """

    def __init__(
        self,
        row_features: int,
        config: StatisticsConfig,
        family: str = "none",
        design_only: Sequence[int] = (),
        log_inputs: Sequence[int] = (),
    ):
        super().__init__()
        self.config, self.family, self.design_only, self.log_inputs = config, family, tuple(design_only), list(log_inputs)
        self.linear_response = family in ("poisson", "binomial")
        pairs = torch.triu_indices(row_features, row_features)
        self.register_buffer("pair_a", pairs[0], persistent=False)
        self.register_buffer("pair_b", pairs[1], persistent=False)
        dim = row_features + pairs.shape[1] + row_features + 2
        self.between = config.between
        if self.between:
            dim += pairs.shape[1] + row_features - 1 + 3
        self.profile = config.profile
        self.slope_columns = [c for c in range(1, row_features) if c not in set(self.design_only)]
        if self.profile:
            n_coef = row_features - len(set(self.design_only))
            dim += PROFILE_POINTS + n_coef
            if config.profile_average:
                dim += (2 + len(SHRINK_POINTS)) * n_coef + 1
            if not self.linear_response:
                dim += (PROFILE_POINTS + 1) * len(self.slope_columns)
        self.glm_slopes = config.glm_slopes and self.linear_response and bool(self.slope_columns)
        if self.glm_slopes:
            dim += 2 * len(self.slope_columns)
        self.floor = config.floor
        self.group_fits = config.group_fits and not self.linear_response and row_features > 1
        if self.group_fits:
            dim += 3 + 2 * len(self.slope_columns)
        self.out_features = dim

    def padded(self, rows: Tensor, row_mask: Tensor, row_loc: Tensor, row_scale: Tensor) -> Tensor:
        """The statistics of padded standardized rows (B, J, N, d) with their mask (B, J, N): (B, F).

        Arguments:
            row_loc, row_scale: (d,) the rows' standardization (the data's zero and raw trials depend on it).
        Returns:
            (B, d + pairs + d + 2 [+ pairs + d + 2] ...): grand mean, signed-log within-group covariance (upper
            triangle), signed-log slopes of column 0 on the others (ridge 1e-2: a covariate constant within
            groups has no within variance), log(residual variance + floor), log(sum N_j - J + 1), log J; then,
            with `between`, the same covariance, slopes and log residual variance for the group means across
            groups, log(noise + floor) with noise = residual variance * mean(1 / N_j), and
            signed_log(between residual variance - noise); then the profile, GLM slopes and group fits.
        """
        b, j, n, d = rows.shape
        flat = row_mask.reshape(-1).nonzero().squeeze(1)
        packed = rows.reshape(b * j * n, d).index_select(0, flat)
        return self(packed, torch.div(flat, n, rounding_mode="floor"), b, j, row_loc, row_scale)

    def forward(self, packed: Tensor, owner: Tensor, b: int, j: int, row_loc: Tensor, row_scale: Tensor) -> Tensor:
        """`padded` from the real rows (R, d) and each row's group among the B * J (R,): (B, F)."""
        d = packed.shape[-1]
        n_j = torch.bincount(owner, minlength=b * j).to(packed.dtype).reshape(b, j, 1)
        mean_j = packed.new_zeros(b * j, d).index_add_(0, owner, packed).reshape(b, j, d) / n_j.clamp_min(1.0)
        dev = packed - mean_j.reshape(-1, d)[owner]
        dataset = owner // j
        within = packed.new_zeros(b, d, d).index_add_(0, dataset, dev[:, :, None] * dev[:, None, :])
        n_total = n_j.sum((1, 2))
        real = (n_j[..., 0] > 0).to(packed.dtype)  # (B, J)
        n_groups = real.sum(1)
        dof = n_total - n_groups
        cov = within / dof.clamp_min(1.0)[:, None, None]
        grand = (mean_j * n_j).sum(1) / n_total.clamp_min(1.0)[:, None]
        if self.design_only:  # sum y * trials is not a sufficient statistic
            cov = cov.clone()
            cols = list(self.design_only)
            cov[:, 0, cols] = 0.0
            cov[:, cols, 0] = 0.0
        slopes, residual = regress(cov, dof)
        profile = None
        if self.profile:
            profile = self._profile(packed, owner, mean_j, n_j[..., 0], real, residual, row_loc, row_scale)
            if not self.linear_response and self.slope_columns:
                profile = torch.cat([profile, slope_profile(dev, owner, real, residual, self.slope_columns)], -1)
        if self.linear_response:  # terms with sum y^2 are not sufficient statistics: leave them out
            cov = cov.clone()
            cov[:, 0, 0] = 0.0
            residual = torch.zeros_like(residual)
        upper = cov[:, self.pair_a, self.pair_b]
        floor = self.floor
        features = [grand, signed_log(upper), signed_log(slopes), torch.log(residual + floor)[:, None],
                    torch.log1p(dof.clamp_min(0.0))[:, None], torch.log(n_groups.clamp_min(1.0))[:, None]]
        if self.between:
            centre = (mean_j * real[..., None]).sum(1) / n_groups.clamp_min(1.0)[:, None]
            dev_b = (mean_j - centre[:, None]) * real[..., None]
            dof_b = n_groups - 1.0
            cov_b = torch.einsum("bjd,bje->bde", dev_b, dev_b) / dof_b.clamp_min(1.0)[:, None, None]
            slopes_b, residual_b = regress(cov_b, dof_b)
            inv_n = (real / n_j[..., 0].clamp_min(1.0)).sum(1) / n_groups.clamp_min(1.0)
            noise = residual * inv_n  # 0 for a linear response: its noise follows from the mean instead
            features += [signed_log(cov_b[:, self.pair_a, self.pair_b]), signed_log(slopes_b),
                         torch.log(residual_b + floor)[:, None], torch.log(noise + floor)[:, None],
                         signed_log(residual_b - noise)[:, None]]
        if profile is not None:
            features.append(profile)
        if self.glm_slopes:
            features.append(self._glm_slopes(packed, owner, dataset, b, j, row_loc, row_scale))
        if self.group_fits:
            origin = data_zero(row_loc, row_scale, self.slope_columns)
            features.append(group_fits(dev, owner, mean_j, n_j, self.slope_columns, origin, floor))
        # a statistic of a degenerate design (no within-group spread at all, say) must not reach the networks as NaN
        return torch.nan_to_num(torch.cat(features, -1), nan=0.0, posinf=50.0, neginf=-50.0)

    def raw_trials(self, packed: Tensor, row_loc: Tensor, row_scale: Tensor) -> Tensor:
        """(R,) each row's binomial trials on the data's scale (1 without a trials column)."""
        if not self.design_only:
            return torch.ones_like(packed[:, 0])
        c = min(self.design_only)
        raw = packed[:, c] * row_scale[c] + row_loc[c]
        if c in self.log_inputs:
            raw = torch.sign(raw) * torch.expm1(raw.abs())
        return raw

    def _glm_slopes(
        self, packed: Tensor, owner: Tensor, dataset: Tensor, b: int, j: int, row_loc: Tensor, row_scale: Tensor
    ) -> Tensor:
        """(B, 2 p): the signed-log one-step link-scale slopes of the p = `slope_columns` and log of the diagonal
        of their Fisher information (see `StatisticsConfig.glm_slopes`)."""
        y = packed[:, 0] * row_scale[0]  # the raw response (its loc is 0)
        trials = self.raw_trials(packed, row_loc, row_scale) if self.family == "binomial" else torch.ones_like(y)
        x = packed[:, self.slope_columns]

        def group_sum(v: Tensor) -> Tensor:
            return v.new_zeros(b * j, *v.shape[1:]).index_add_(0, owner, v)

        total = group_sum(trials).clamp_min(1e-8)
        rate = (group_sum(y) / total)[owner]  # the group's fitted mean per trial (no slopes)
        xc = x - (group_sum(trials[:, None] * x) / total[:, None])[owner]
        if self.family == "binomial":
            rate = rate.clamp(0.0, 1.0)
            weight = trials * rate * (1.0 - rate)
        else:
            weight = rate
        score = x.new_zeros(b, x.shape[1]).index_add_(0, dataset, xc * (y - trials * rate)[:, None])
        info = x.new_zeros(b, x.shape[1], x.shape[1]).index_add_(0, dataset, weight[:, None, None] * xc[:, :, None] * xc[:, None, :])
        diag = torch.diagonal(info, dim1=-2, dim2=-1)
        ridge = 1e-6 + 1e-4 * diag.mean(-1)
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        slopes = torch.linalg.solve(info + ridge[:, None, None] * eye, score[..., None])[..., 0]
        return torch.cat([signed_log(slopes), torch.log(diag + 1e-6)], -1)

    def _profile(
        self, packed: Tensor, owner: Tensor, mean_j: Tensor, n_j: Tensor, real: Tensor, residual: Tensor,
        row_loc: Tensor, row_scale: Tensor,
    ) -> Tensor:
        """REML profile of the group-level sd (see `StatisticsConfig.profile`): (B, `PROFILE_POINTS` + p), each
        row's log-likelihoods minus their maximum, clamped at -50, then the p = 1 + covariates weighted
        least-squares coefficients at the maximum (signed log); with `profile_average`, the averaged features."""
        mode = self.family
        n = n_j.clamp_min(1.0)
        design_only = set(self.design_only)
        products = [c for c in range(1, mean_j.shape[-1]) if c not in design_only]
        if mode in ("poisson", "binomial"):
            s = (mean_j[..., 0] * row_scale[0] * n).clamp_min(0.0)  # sum of the raw response (loc is 0)
            if mode == "poisson":
                est, base = torch.log((s + 0.5) / n), 1.0 / (s + 0.5)
            else:
                if design_only:
                    raw = self.raw_trials(packed, row_loc, row_scale)
                    trials = raw.new_zeros(n.numel()).index_add_(0, owner, raw).reshape(n.shape)
                else:
                    trials = n
                f = (trials - s).clamp_min(0.0)
                est, base = torch.log((s + 0.5) / (f + 0.5)), 1.0 / (s + 0.5) + 1.0 / (f + 0.5)
            grid = torch.logspace(-2, math.log10(5.0), PROFILE_POINTS, dtype=packed.dtype, device=packed.device)
            var = grid**2 + base[..., None]  # (B, J, K)
        else:
            grid = torch.logspace(-2, math.log10(30.0), PROFILE_POINTS, dtype=packed.dtype, device=packed.device)
            est = mean_j[..., 0]
            var = residual.clamp_min(1e-6)[:, None, None] * (grid**2 + 1.0 / n[..., None])
        x = torch.cat([torch.ones_like(est)[..., None], mean_j[..., products]], -1)  # (B, J, p)
        w = real[..., None] / var
        xtwx = torch.einsum("bjp,bjk,bjq->bkpq", x, w, x)
        # a ridge relative to the information too: covariates whose group means coincide in every group (the same
        # design per group) leave xtwx singular, and float32 cancellation would make its determinant negative
        ridge = 1e-4 + 1e-5 * torch.diagonal(xtwx, dim1=-2, dim2=-1).mean(-1)
        xtwx = xtwx + ridge[..., None, None] * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        beta = torch.linalg.solve(xtwx, torch.einsum("bjp,bjk,bj->bkp", x, w, est)[..., None])[..., 0]
        r = est[..., None] - torch.einsum("bjp,bkp->bjk", x, beta)
        ll = -0.5 * ((real[..., None] * torch.log(var)).sum(1) + (w * r * r).sum(1) + torch.logdet(xtwx))
        best = ll.argmax(-1)  # the coefficients at the best sd: on the link scale for counts and proportions
        coef = beta[torch.arange(beta.shape[0], device=beta.device), best]
        out = [(ll - ll.amax(-1, keepdim=True)).clamp_min(-50.0), signed_log(coef)]
        if self.config.profile_average:
            weight = torch.softmax(ll, -1)  # (B, K)
            var = torch.diagonal(torch.linalg.inv(xtwx), dim1=-2, dim2=-1)  # (B, K, p)
            mean = (weight[..., None] * beta).sum(1)
            log_var = torch.log((weight[..., None] * var).sum(1).clamp_min(1e-12))
            points = torch.tensor(SHRINK_POINTS, dtype=mean.dtype, device=mean.device)
            shrunk = mean[..., None] * torch.sigmoid(points - log_var[..., None])  # (B, p, points)
            out += [mean, log_var, shrunk.flatten(1), (weight * torch.log(grid)).sum(-1, keepdim=True)]
        return torch.cat(out, -1)
