"""Adaptive pooling of the patch grid down to the budget: the "pool" baseline of UniPruneBench (``pool_pre_llm``,
which average-pools InternVL's projected tokens of each tile to 2x2, 4x4 or 5x5) and of VTC-Bench's finding that
plain downsampling beats many published methods.

The k output tokens are cells of the ``rows x cols`` patch grid (``ImageTokens.grid``), in raster order:

* the grid is cut into ``r`` bands of rows, ``r = round(sqrt(k * rows / cols))`` (so cells are about square),
  at least ``ceil(k / cols)`` and at most ``min(rows, k)``;
* band i is cut into ``c_i`` columns: ``ceil(k / r)`` for the first ``k mod r`` bands, ``floor(k / r)`` for the
  others, so the cells add up to exactly k;
* row and column edges are adaptive pooling's (``floor(i * size / out)`` to ``ceil((i + 1) * size / out)``), so
  when ``r`` divides ``k`` the k tokens are exactly ``torch.nn.functional.adaptive_avg_pool2d`` to ``(r, k / r)``
  (a square k on a square grid: ``sqrt(k) x sqrt(k)``, UniPruneBench's setting).

Tokens without a grid (LLaVA-NeXT's ``global`` entry, which spans several views) are pooled along their order into
k runs (``adaptive_avg_pool1d``); under LLaVA-NeXT's ``budget_policy: per_tile`` every view has its own grid and is
pooled in 2-D, as UniPruneBench pools each tile. Qwen's grid is the merged (rows, cols) grid of the image.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Merge, Selector, hookimpl


class PoolConfig(ComponentConfig):
    """UniPruneBench's defaults: average pooling of the projected tokens."""

    mode: Literal["avg", "max"] = Field(default="avg", description="average ('avg') or max pooling of each cell")
    space: Literal["embeddings", "features"] = Field(
        default="embeddings", description="pool the projector's output ('embeddings', as UniPruneBench pools "
        "InternVL's projected tokens) or its input, then project the pooled rows ('features')")


class Pool(Selector):
    """k tokens, each the average (or maximum) of one cell of the patch grid (see the module docstring). Keeps no
    original token: a merging selector whose :class:`~zoprune.Merge` holds 0 kept tokens and k pooled ones."""

    name = "pool"
    Config = PoolConfig
    merges = True
    needs_scores = False

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> Merge:
        rows = tokens.embeddings if self.config.space == "embeddings" else tokens.features
        pooled, groups = pool_tokens(rows, tokens.grid, k, self.config.mode)
        if self.config.space == "features":
            pooled = tokens.projector(pooled)
        kept = torch.zeros(0, dtype=torch.long, device=rows.device)
        return Merge(kept, pooled, groups)


def band_layout(grid: tuple[int, int], k: int) -> list[int]:
    """The cells per band of rows, ``[c_1, ..., c_r]`` summing to k (see the module docstring)."""
    rows, cols = grid
    r = round(math.sqrt(k * rows / cols))
    r = max(math.ceil(k / cols), min(rows, k, max(1, r)))
    wide, narrow = k % r, r - k % r
    return [k // r + 1] * wide + [k // r] * narrow


def _edges(size: int, out: int, i: int) -> tuple[int, int]:
    """Adaptive pooling's bin i of ``out`` over ``size``: ``[floor(i size / out), ceil((i + 1) size / out))``."""
    return (i * size) // out, -((-(i + 1) * size) // out)


def pool_tokens(rows: torch.Tensor, grid: tuple[int, int] | None, k: int,
                mode: str = "avg") -> tuple[torch.Tensor, torch.Tensor]:
    """``(pooled (k, d), groups (N,))``: the k cells of ``rows`` (N, d) pooled, and the cell of each token (by the
    non-overlapping cut ``floor(index * out / size)``: adaptive bins may share an edge row or column)."""
    n, d = rows.shape
    pool1d = F.adaptive_avg_pool1d if mode == "avg" else F.adaptive_max_pool1d
    if grid is None:
        pooled = pool1d(rows.T[None].float(), k)[0].T  # (k, d)
        groups = torch.arange(n, device=rows.device) * k // n
        return pooled.to(rows.dtype), groups
    height, width = grid
    image = rows.reshape(height, width, d).permute(2, 0, 1).float()  # (d, rows, cols)
    pool2d = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    layout = band_layout(grid, k)
    bands = len(layout)
    band_of_row = torch.arange(height, device=rows.device) * bands // height  # (rows,) floor(row * r / rows)
    out, groups, first = [], torch.empty(height, width, dtype=torch.long, device=rows.device), 0
    for i, cells in enumerate(layout):
        start, end = _edges(height, bands, i)
        out.append(pool2d(image[:, start:end], (1, cells))[:, 0].T)  # (cells, d)
        groups[band_of_row == i] = first + torch.arange(width, device=rows.device) * cells // width
        first += cells
    return torch.cat(out).to(rows.dtype), groups.flatten()


@hookimpl
def register_selectors(register):
    register(Pool)
