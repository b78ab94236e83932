"""An example zoprune plugin, written as a third party would write one.

It adds the ``contrast`` scorer (how far each token's projected feature is from the image's typical token), the
``stratified`` selector (the best-scoring token of each of k equal slices of the image, so the kept tokens spread
over the whole picture) and the ``contrast-stratified`` method that combines them. The ``# --8<--`` comments mark
the parts that docs/guides/writing-a-plugin.md includes: in order, they are the whole module.
"""

# --8<-- [start:imports]
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

import zoprune
# --8<-- [end:imports]


# --8<-- [start:scorer]
class ContrastConfig(zoprune.ComponentConfig):
    """Parameters of the contrast scorer."""

    center: Literal["mean", "median"] = Field(default="mean", description="what 'typical token' means")
    power: float = Field(default=1.0, gt=0, le=4, description="scores are distances raised to this power")


class Contrast(zoprune.Scorer):
    """Distance of each projected token from the image's mean (or median) token: unusual tokens score high."""

    name = "contrast"
    Config = ContrastConfig

    def score(self, tokens: zoprune.ImageTokens, ctx: zoprune.Context) -> torch.Tensor:
        z = tokens.embeddings.float()  # (N, d)
        center = z.mean(0) if self.config.center == "mean" else z.median(0).values  # (d,)
        return (z - center).norm(dim=-1) ** self.config.power  # (N,)
# --8<-- [end:scorer]


# --8<-- [start:selector]
class StratifiedConfig(zoprune.ComponentConfig):
    """Parameters of the stratified selector."""

    order: Literal["raster", "column"] = Field(
        default="raster", description="slice the image along rows ('raster') or along columns ('column')"
    )


class Stratified(zoprune.Selector):
    """Cut the tokens into k equal slices (in raster or column order) and keep the best-scoring token of each."""

    name = "stratified"
    Config = StratifiedConfig

    def select(self, scores: torch.Tensor | None, tokens: zoprune.ImageTokens, k: int,
               ctx: zoprune.Context) -> torch.Tensor:
        n = tokens.num_tokens
        order = torch.arange(n)
        if self.config.order == "column" and tokens.grid is not None:
            rows, cols = tokens.grid
            order = order.view(rows, cols).T.reshape(-1)  # token indices visited column by column
        bounds = torch.linspace(0, n, k + 1).round().long().tolist()
        kept = []
        for start, stop in zip(bounds[:-1], bounds[1:]):
            members = order[start:stop]
            kept.append(members[torch.argmax(scores[members])])
        return torch.sort(torch.stack(kept)).values
# --8<-- [end:selector]


# --8<-- [start:hooks]
@zoprune.hookimpl
def register_scorers(register):
    register(Contrast)


@zoprune.hookimpl
def register_selectors(register):
    register(Stratified)


@zoprune.hookimpl
def register_methods(register):
    # a named pipeline, so `zoprune eval --method contrast-stratified` works; the budget comes from the command
    register("contrast-stratified", {"scorer": "contrast", "selector": "stratified"},
             "example plugin: the most unusual token of each slice of the image")
# --8<-- [end:hooks]
