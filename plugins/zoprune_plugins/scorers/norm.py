"""The feature-norm scorer: the L2 norm of each token's projected feature, a free stand-in for sensitivity.

An independent reproduction found ZO sensitivity ranking tokens almost exactly like this norm (method.md); ship it
so users can measure how much the perturbation adds on their own model (:func:`spearman`).
"""

from __future__ import annotations

import torch

from zoprune import Context, ImageTokens, Scorer, hookimpl


class Norm(Scorer):
    """``S(i) = ||z_i||_2`` with ``z_i`` the projector's output for token i (``tokens.embeddings``)."""

    name = "norm"

    def score(self, tokens: ImageTokens, ctx: Context) -> torch.Tensor:
        return tokens.embeddings.float().norm(dim=-1)  # (N, d_l) -> (N,)


def ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks (N,) from 1 to N in float64, tied values getting the mean of their ranks (as scipy's rankdata)."""
    values = values.double().flatten()
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    # runs of equal values: each token's rank is the mean of the positions its run covers
    starts = torch.ones_like(sorted_values, dtype=torch.bool)
    starts[1:] = sorted_values[1:] != sorted_values[:-1]
    run = torch.cumsum(starts, 0) - 1  # (N,) run id of each sorted position
    positions = torch.arange(1, values.numel() + 1, dtype=torch.float64)
    run_mean = torch.zeros(int(run[-1]) + 1, dtype=torch.float64).index_add_(0, run, positions)
    run_mean /= torch.bincount(run).double()
    out = torch.empty_like(values)
    out[order] = run_mean[run]
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two score vectors (N,): Pearson's correlation of their ranks."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


@hookimpl
def register_scorers(register):
    register(Norm)
