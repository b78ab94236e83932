"""The spatially uniform baseline: keep a regular grid of patches (or evenly spaced tokens when there is no grid)."""

from __future__ import annotations

import math

import torch

from zoprune import Context, ImageTokens, Selector, hookimpl


class Uniform(Selector):
    """A regular ``r x c`` lattice over the ``tokens.grid`` patch grid, ``r * c <= k`` as close to the grid's
    aspect ratio as fits; the ``k - r * c`` tokens left over are spread evenly over the remaining tokens in
    raster order. Without a grid: k evenly spaced indices."""

    name = "uniform"
    needs_scores = False

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        device = tokens.features.device
        if tokens.grid is None:
            return evenly_spaced(tokens.num_tokens, k, device)
        return grid_select(tokens.grid, k, device)


def evenly_spaced(n: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """k indices (k,) at the centres of k equal segments of ``range(n)``: distinct because ``n / k >= 1``."""
    return torch.div((2 * torch.arange(k, device=device) + 1) * n, 2 * k, rounding_mode="floor")


def grid_select(grid: tuple[int, int], k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sorted indices (k,) into a raster-ordered ``rows x cols`` grid (see :class:`Uniform`)."""
    rows, cols = grid
    # r / c follows rows / cols so the lattice spacing is about the same along both axes
    r = max(1, min(rows, k, math.floor(math.sqrt(k * rows / cols))))
    c = max(1, min(cols, k // r))
    lattice = (evenly_spaced(rows, r, device)[:, None] * cols + evenly_spaced(cols, c, device)[None, :]).flatten()
    extra = k - lattice.numel()
    if extra == 0:
        return torch.sort(lattice).values
    taken = torch.zeros(rows * cols, dtype=torch.bool, device=device)
    taken[lattice] = True
    rest = (~taken).nonzero().squeeze(-1)  # (rows*cols - r*c,) in raster order
    return torch.sort(torch.cat([lattice, rest[evenly_spaced(rest.numel(), extra, device)]])).values


@hookimpl
def register_selectors(register):
    register(Uniform)
