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

import torch

from zoprune import Context, ImageTokens, Selector, hookimpl
from zoprune_plugins.selection.lattice import lattice_select


class Downsample(Selector):
    """Keep k of the shrunk image's tokens on a regular lattice, ``uniform``'s rule (all of them when it has
    exactly k)."""

    name = "downsample"
    needs_scores = False
    resizes_images = True

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        return lattice_select(tokens, k)


@hookimpl
def register_selectors(register):
    register(Downsample)
