"""The spatially uniform baseline: keep a regular grid of patches (or evenly spaced tokens when there is no grid)."""

from __future__ import annotations

import torch

from zoprune import Context, ImageTokens, Selector, hookimpl
from zoprune_plugins.selection.lattice import lattice_select


class Uniform(Selector):
    """A regular ``r x c`` lattice over the ``tokens.grid`` patch grid, ``r * c <= k`` as close to the grid's
    aspect ratio as fits; the ``k - r * c`` tokens left over are spread evenly over the remaining tokens in
    raster order. Without a grid: k evenly spaced indices."""

    name = "uniform"
    needs_scores = False

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        return lattice_select(tokens, k)


@hookimpl
def register_selectors(register):
    register(Uniform)
