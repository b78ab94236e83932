"""The downsampling baseline (VTC-Bench: "simple image downsampling consistently outperforms many advanced
compression methods"): the image itself is made smaller, so the vision tower emits about k tokens for it.

The resizing happens before the vision tower, in the adapter (:meth:`zoprune.ModelAdapter.downsample`, called by the
pipeline for a selector with ``resizes_images``): on Qwen2-VL and Qwen2.5-VL each image becomes the ``r x c`` grid
of merged tokens with ``r * c >= k`` as small as its aspect ratio allows. This selector then keeps k of those
``r * c`` tokens on a regular lattice (``uniform``'s rule), so the language model gets exactly k, as with every
method. Fixed-resolution families (LLaVA-1.5, LLaVA-NeXT's tiles) cannot do this: ``prune`` refuses them with a
ConfigError that names ``pool``.
"""

from __future__ import annotations

import math

from zoprune import hookimpl
from zoprune_plugins.selectors.uniform import Uniform


class Downsample(Uniform):
    """Keep k of the shrunk image's tokens on a regular lattice, ``uniform``'s rule (all of them when it has
    exactly k)."""

    name = "downsample"
    resizes_images = True


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


@hookimpl
def register_selectors(register):
    register(Downsample)
