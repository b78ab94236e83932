"""HoloV ("Don't Just Chase 'Highlighted Tokens' in MLLMs: Revisiting Visual Holistic Context Retention", NeurIPS
2025, arXiv 2510.02912) as a budget allocator around any scorer: the image's budget is split over spatial regions
("crops") by how salient and how varied each region is, and each region keeps its own highest-scored tokens.

The rule, as the authors' code (``obananas/HoloV``, ``HoloV()`` in ``llava/model/utils.py``) computes it, with
``a`` = the scorer's scores (the paper: [CLS] attention, mean over heads) and ``x`` = the projected tokens:

* the N tokens are split into P regions; the official code cuts the raster order into P contiguous chunks of
  ``N // P`` tokens, the first ``N % P`` one token longer (``regions: chunks``, P = 16 by default);
* in a region of m tokens, ``C = cos(x_i, x_j)`` with the diagonal set to 0, ``mu_i = sum_j C_ij / (m - 1)`` and
  ``v_i = sum_j (C_ij - mu_i)^2 / (m - 1)`` (the zeroed diagonal counts in the sum, as in the code);
  ``s_i = alpha * 1e3 * a_i + beta * v_i * mean|1e3 a| / (mean|v| + 1e-6)`` (alpha = 1, beta = 0.09); the region's
  score is ``mean_i s_i``;
* the weights ``w_c = score_c / (sum score + 1e-6)`` give ``floor(w_c * k)`` tokens to region c, and the tokens
  left over go one each to the regions of the largest weights;
* each region keeps its top tokens by ``a``.

Deliberate differences, each because the language model must get exactly k real tokens in their original order:
a region given more tokens than it holds keeps all of them and the surplus is shared again between the other regions
by the same rule (the authors' code pads the image with zero vectors instead); kept tokens are in raster order (the
code concatenates each region's tokens in score order); a one-token region scores ``alpha * 1e3 * a`` (the code
leaves out the 1e3 there, which makes such a region almost worthless); scores below 0 (a scorer other than
attention) are shifted to start at 0 so that region weights are non-negative; ties go to the earlier region and
the earlier token.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl

#: the authors' constants: attention is scaled by 1e3 before the variance term is matched to it; eps in divisions
ATTENTION_SCALE = 1e3
EPS = 1e-6


class HoloVConfig(ComponentConfig):
    """The authors' defaults: 16 raster chunks, alpha = 1, beta = 0.09, similarity of the projected tokens."""

    crops: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default=16, description="P, the number of regions (the authors' LLaVA code: 16). 'auto': "
        "max(1, int(16/9 * N / k)), the authors' Qwen2.5-VL rule (16 at 576 tokens kept to 64)")
    regions: Literal["chunks", "tiles"] = Field(
        default="chunks", description="'chunks' (the authors' code): P contiguous runs of the raster order; "
        "'tiles': a near-square lattice of about P rectangles of the patch grid (tokens without a grid: chunks)")
    alpha: float = Field(default=1.0, ge=0, description="weight of the saliency term of a token's score")
    beta: float = Field(default=0.09, ge=0, description="weight of the similarity-variance term")
    space: Literal["embeddings", "features"] = Field(
        default="embeddings", description="similarity of the projector's output ('embeddings', the authors' "
        "code) or of its input ('features')")

    def crops_for(self, n: int, k: int) -> int:
        """P for N tokens kept to k (never more regions than tokens)."""
        p = self.crops if self.crops != "auto" else max(1, int(1024 / 576 * n / k))
        return max(1, min(p, n))


class HoloV(Selector):
    """Per-region budgets from saliency x internal variety, then each region's top tokens by score (see the module
    docstring). Composes with any scorer: ``cls_attention+holov`` is the paper's method (``--method holov``),
    ``zo_sensitivity+holov`` allocates ZO-Prune's sensitivity over the same regions."""

    name = "holov"
    Config = HoloVConfig

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        rows = tokens.embeddings if self.config.space == "embeddings" else tokens.features
        region = region_ids(tokens.num_tokens, self.config.crops_for(tokens.num_tokens, k), self.config.regions,
                            tokens.grid, rows.device)
        return holov_select(scores.to(rows.device), rows, region, k, self.config.alpha, self.config.beta)


def region_ids(n: int, crops: int, kind: str = "chunks", grid: tuple[int, int] | None = None,
               device: torch.device | str = "cpu") -> torch.Tensor:
    """(N,) long: the region of each token, numbered in raster order of the regions.

    ``chunks``: P contiguous runs, the first ``N % P`` of ``N // P + 1`` tokens, the rest of ``N // P``.
    ``tiles``: an ``r x c`` lattice of rectangles over the ``grid`` (r / c as rows / cols, r * c <= P), cut at
    ``floor(i * rows / r)``; without a grid, chunks.
    """
    if kind == "tiles" and grid is not None:
        rows, cols = grid
        r = max(1, min(rows, crops, math.floor(math.sqrt(crops * rows / cols))))
        c = max(1, min(cols, crops // r))
        row_band = torch.arange(rows, device=device) * r // rows  # (rows,) band of each grid row
        col_band = torch.arange(cols, device=device) * c // cols  # (cols,)
        return (row_band[:, None] * c + col_band[None, :]).flatten()
    size, longer = divmod(n, crops)
    lengths = torch.tensor([size + 1] * longer + [size] * (crops - longer), device=device)
    return torch.repeat_interleave(torch.arange(crops, device=device), lengths)


def region_scores(a: torch.Tensor, rows: torch.Tensor, region: torch.Tensor, alpha: float = 1.0,
                  beta: float = 0.09) -> torch.Tensor:
    """(R,) float32: each region's mean token score ``alpha * 1e3 * a + beta * scaled variance of its
    similarities`` (the module docstring). ``a``: (N,) non-negative saliency; ``rows``: (N, d)."""
    count = int(region.max()) + 1
    out = torch.zeros(count, dtype=torch.float32, device=rows.device)
    for c in range(count):
        members = (region == c).nonzero().squeeze(-1)
        m = members.numel()
        attention = a[members] * ATTENTION_SCALE  # (m,)
        if m <= 1:
            out[c] = alpha * attention.sum()
            continue
        x = rows[members].float()
        x = x / (x.norm(dim=1, keepdim=True) + EPS)
        sim = (x @ x.T) * (1 - torch.eye(m, device=x.device))  # (m, m), diagonal zeroed
        mean = sim.sum(dim=1) / (m - 1)
        var = ((sim - mean[:, None]) ** 2).sum(dim=1) / (m - 1)  # (m,)
        scaling = attention.abs().mean() / (var.abs().mean() + EPS)
        out[c] = (alpha * attention + beta * (var * scaling)).mean()
    return out


def allocate(weights: torch.Tensor, capacity: torch.Tensor, k: int) -> torch.Tensor:
    """(R,) long budgets summing to ``k`` with ``budget_c <= capacity_c`` (``k <= sum capacity``).

    Round 1 is HoloV's: ``floor(w_c / (sum w + 1e-6) * k)``, then one more token each to the regions of the
    largest weights until k are given. Regions given more than their capacity keep all their tokens and the surplus
    goes through the same rule again over the regions with room left. So a region with a larger weight never gets
    fewer tokens than one with a smaller weight, unless it is kept whole. Zero weights share equally.
    """
    weights = weights.float().clamp_min(0)
    capacity = capacity.to(torch.long)
    budget = torch.zeros_like(capacity)
    order = torch.sort(weights, descending=True, stable=True).indices  # ties: the earlier region
    remaining = k
    while remaining > 0:
        open_ = budget < capacity
        w = torch.where(open_, weights, torch.zeros_like(weights))
        if float(w.sum()) <= 0:  # no preference left: equal shares of what remains
            w = open_.float()
        share = torch.floor(w / (w.sum() + EPS) * remaining).to(torch.long)
        left = remaining - int(share.sum())
        ranked = order[open_[order]]  # open regions, largest weight first
        while left > 0:
            extra = ranked[:left]
            share[extra] += 1
            left -= extra.numel()
        budget += share
        surplus = (budget - capacity).clamp_min(0)
        budget -= surplus
        remaining = int(surplus.sum())
    return budget


def holov_select(scores: torch.Tensor, rows: torch.Tensor, region: torch.Tensor, k: int, alpha: float = 1.0,
                 beta: float = 0.09) -> torch.Tensor:
    """Sorted indices (k,): region budgets by :func:`allocate` from :func:`region_scores`, then each region's
    top-budget tokens by ``scores`` (ties: the earlier token)."""
    a = scores.float()
    if bool((a < 0).any()):
        a = a - a.min()
    weights = region_scores(a, rows, region, alpha, beta)
    count = weights.numel()
    sizes = torch.bincount(region, minlength=count)  # (R,)
    budget = allocate(weights, sizes, k)
    order = torch.sort(a, descending=True, stable=True).indices  # (N,) best first
    grouped = order[torch.sort(region[order], stable=True).indices]  # (N,) by region, best first within each
    starts = torch.cumsum(sizes, 0) - sizes  # (R,) where each region's run begins in ``grouped``
    rank = torch.empty_like(order)  # (N,) each token's place among its region's, best first
    rank[grouped] = torch.arange(order.numel(), device=order.device) - starts[region[grouped]]
    return (rank < budget[region]).nonzero().squeeze(-1)


@hookimpl
def register_selectors(register):
    register(HoloV)
