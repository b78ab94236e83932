"""SCOPE (saliency x coverage): greedy picks that maximise the facility-location coverage gain of the kept set,
weighted by each token's saliency (Deng et al., "SCOPE: Saliency-Coverage Oriented Token Pruning", 2025)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl
from zoprune_plugins.selectors.coverage import unit_rows


class ScopeConfig(ComponentConfig):
    """The official defaults: product combination, alpha = 1, similarity of the projector's input features."""

    alpha: float = Field(default=1.0, ge=0, description="saliency exponent: score = gain * saliency^alpha")
    combine: Literal["product", "sum"] = Field(
        default="product",
        description="gain * saliency^alpha ('product', the official default) or gain + saliency^alpha",
    )
    space: Literal["features", "embeddings"] = Field(
        default="features", description="similarity of the projector's input ('features', the official code's "
        "vision hidden states) or of its output ('embeddings', AngelSlim's port)"
    )


class Scope(Selector):
    """Pick ``argmax_j gain_j * a_j^alpha`` k times, where ``gain_j = sum_i max(0, cos(x_i, x_j) - cur_i)`` and
    ``cur_i`` is token i's best cosine to the kept set so far (0 at the start): the facility-location gain of adding
    token j. ``a`` is the scorer's output (SCOPE uses [CLS] attention: method ``scope``); any non-negative scorer
    works, and negative scores are shifted to start at 0.

    The gain of a token can only fall as the kept set grows (the objective is submodular) and ``a`` is fixed, so the
    selection is lazy: stale scores bound the exact ones from above, and each pick brings only the highest bounds up
    to date (:func:`scope_select`). Picks equal the official dense loop's (which costs O(k N^2) and holds the N x N
    similarity), up to float rounding in near-ties.
    """

    name = "scope"
    Config = ScopeConfig

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        rows = tokens.features if self.config.space == "features" else tokens.embeddings
        return scope_select(scores, rows, k, self.config.alpha, self.config.combine)


def saliency_weights(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """``a^alpha`` in float32; scores below 0 are shifted so that the smallest is 0 (a power of a negative number
    has no meaning here)."""
    a = scores.float()
    if bool((a < 0).any()):
        a = a - a.min()
    return a.pow(alpha)


def scope_select(scores: torch.Tensor, rows: torch.Tensor, k: int, alpha: float = 1.0, combine: str = "product",
                 batch: int = 32, block: int = 1024) -> torch.Tensor:
    """Indices (k,) sorted ascending. ``scores``: (N,) saliency; ``rows``: (N, d) tokens compared by cosine.

    Memory O(N d) for the normalised rows plus a (block, N) scratch; never an N x N matrix. Each pick computes the
    exact gains of the ``batch`` highest bounds with one (batch, d) x (d, N) product, and again with the next ones
    while a stale bound could still beat the best exact score.
    """
    z = unit_rows(rows)  # (N, d)
    n = z.shape[0]
    weight = saliency_weights(scores, alpha).to(z.device)  # (N,)
    cur = torch.zeros(n, dtype=torch.float32, device=z.device)  # best cosine of each token to the kept set
    gain = torch.empty(n, dtype=torch.float32, device=z.device)
    for start in range(0, n, block):  # the first gains: sum_i max(0, cos(x_i, x_j)), by blocks of rows i
        part = (z[start:start + block] @ z.T).clamp_min_(0).sum(dim=0)  # (N,)
        gain = part if start == 0 else gain + part
    bound = _combine(gain, weight, combine)  # (N,): exact now, upper bounds once the kept set grows
    fresh = torch.ones(n, dtype=torch.bool, device=z.device)  # bounds computed against the current kept set
    taken = torch.zeros(n, dtype=torch.bool, device=z.device)  # their bounds stay -inf: never refreshed
    chosen = torch.empty(k, dtype=torch.long, device=z.device)
    ninf = float("-inf")
    for t in range(k):
        while True:
            top = torch.topk(bound, min(batch, n))
            best = float(top.values[0])
            if best == ninf:
                raise ValueError("scope selection ran out of candidates (non-finite scores?)")
            # bounds outside the top are at most its last value, so once the top is exact the best is exact too;
            # a stale bound equal to the best could still tie, and ties go to the lowest index, as argmax's do
            stale = top.indices[~fresh[top.indices]]
            if not stale.numel():
                ties = torch.nonzero(bound == best).flatten()
                stale = ties[~fresh[ties]]
                if not stale.numel():
                    winner = int(ties.min())
                    break
            exact = (z @ z[stale].T - cur[:, None]).clamp_min_(0).sum(dim=0)  # (s,) the gains now
            bound[stale] = _combine(exact, weight[stale], combine)
            fresh[stale] = True
        chosen[t] = winner
        bound[winner] = ninf
        taken[winner] = True
        torch.maximum(cur, z @ z[winner], out=cur)
        fresh.copy_(taken)
    return torch.sort(chosen).values


def _combine(gain: torch.Tensor, weight: torch.Tensor, combine: str) -> torch.Tensor:
    return gain * weight if combine == "product" else gain + weight


@hookimpl
def register_selectors(register):
    register(Scope)
