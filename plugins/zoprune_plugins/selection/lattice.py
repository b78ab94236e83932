"""Regular lattices of tokens: k evenly spaced indices, a regular grid of patches, the uniform rule over an image's
tokens that the ``uniform`` and ``downsample`` selectors share, and the grid an image shrinks to for a budget (the
Qwen adapters' ``downsample``)."""

from __future__ import annotations

import math

import torch

from zoprune import ImageTokens


def lattice_select(tokens: ImageTokens, k: int) -> torch.Tensor:
    """The uniform rule: k tokens on a regular lattice of ``tokens.grid`` (:func:`grid_select`), or k evenly spaced
    indices when there is no grid."""
    device = tokens.features.device
    if tokens.grid is None:
        return evenly_spaced(tokens.num_tokens, k, device)
    return grid_select(tokens.grid, k, device)


def evenly_spaced(n: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """k indices (k,) at the centres of k equal segments of ``range(n)``: distinct because ``n / k >= 1``."""
    return torch.div((2 * torch.arange(k, device=device) + 1) * n, 2 * k, rounding_mode="floor")


def grid_select(grid: tuple[int, int], k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Sorted indices (k,) into a raster-ordered ``rows x cols`` grid (see :func:`lattice_select`)."""
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


def downsampled_grid(rows: int, cols: int, k: int) -> tuple[int, int]:
    """``(r, c)``: the grid of merged tokens a ``rows x cols`` image shrinks to for a budget of k, ``r <= rows``,
    ``c <= cols``, ``r * c >= min(k, rows * cols)``: both sides scaled by ``sqrt(k / (rows * cols))`` and rounded,
    then the side that keeps the aspect ratio closest grown by one until the grid holds k."""
    if k >= rows * cols:
        return rows, cols
    scale = math.sqrt(k / (rows * cols))
    r, c = min(rows, max(1, round(rows * scale))), min(cols, max(1, round(cols * scale)))
    aspect = rows / cols
    while r * c < k:
        taller = abs(math.log((r + 1) / c / aspect)) <= abs(math.log(r / (c + 1) / aspect))
        if r < rows and (taller or c >= cols):
            r += 1
        else:
            c += 1
    return r, c
