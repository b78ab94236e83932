"""SCOPE (saliency x coverage): greedy picks that maximise the facility-location coverage gain of the kept set,
weighted by each token's saliency (Deng et al., "SCOPE: Saliency-Coverage Oriented Token Pruning", 2025)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl
from zoprune_plugins.selection.geometry import unit_rows


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
    selection is lazy: stale scores bound the exact ones from above; the gains of the tokens that compete for the
    top are lowered incrementally after each pick, and others are brought up to date only when their bound could
    win (:func:`scope_select`). Picks equal the official dense loop's (which costs O(k N^2) and holds the N x N
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
                 batch: int = 128, block: int = 1024, hot: int = 1024) -> torch.Tensor:
    """Indices (k,) sorted ascending. ``scores``: (N,) saliency; ``rows``: (N, d) tokens compared by cosine.

    Exact lazy greedy on incrementally updated gains:

    - The first gains ``sum_i max(0, cos(x_i, x_j))`` come from the (block, block) tiles on and above the diagonal
      of the symmetric cosine matrix (:func:`first_gains`): N^2 d / 2 multiply-adds, the floor (every token's first
      gain needs every other token), O(block^2) scratch.
    - After each pick w, one (N, d) x (d,) product gives ``cos(., x_w)``; only the tokens A whose ``cur`` it raises
      change any gain: token j's gain falls by ``sum_{i in A} clamp(C_ij, cur_i, cur'_i) - cur_i``, one
      (|A|, d) x (d, hot) product for the ``hot`` tokens that compete for the top, whose gains so stay exact. Late
      picks raise ``cur`` for a handful of tokens.
    - A token's gain only falls (the objective is submodular) and the saliency is fixed, so a stale gain bounds the
      exact one from above. When a stale bound beats (or ties from a lower
      index) the best hot score, the ``batch`` highest are computed exactly (one (N, d) x (d, batch) product) and
      replace the weakest hot tokens, which keep their exact gain as bound.

    Picks equal the dense loop's up to float rounding in near-ties (gains are accumulated in float64).
    Memory: the normalised rows (N x d, float32), O(N) vectors, (block, block) and (N, batch) scratch.

    The floor is the first gains (N^2 d) plus one column per pick; in practice the promotions dominate: the gains
    of facility location fall for most tokens at every early pick, so stale bounds are loose (docs/speed.md).
    """
    z = unit_rows(rows)  # (N, d)
    n = z.shape[0]
    device = z.device
    ninf = float("-inf")
    weight = saliency_weights(scores, alpha).to(device).double()  # (N,)
    cur = torch.zeros(n, dtype=torch.float32, device=device)  # best cosine of each token to the kept set
    gain = first_gains(z, block).double()  # (N,): exact for hot tokens, an upper bound for the others
    is_hot = torch.zeros(n, dtype=torch.bool, device=device)
    taken = torch.zeros(n, dtype=torch.bool, device=device)
    hot = max(1, min(hot, n))
    batch = max(1, min(batch, hot))
    positions = torch.arange(n, device=device)
    chosen = torch.empty(k, dtype=torch.long, device=device)
    for t in range(k):
        while True:
            score = _combine(gain, weight, combine)  # (N,) float64
            hot_score = score.masked_fill(~is_hot, ninf)
            best = float(hot_score.max())
            winner = int(torch.nonzero(hot_score == best).min()) if best > ninf else n
            bound = score.masked_fill(is_hot | taken, ninf)
            highest = float(bound.max())
            if highest < best:
                break
            if highest == ninf:  # and best too: nothing left to pick
                raise ValueError("scope selection ran out of candidates (non-finite scores?)")
            if highest == best:  # exact ties: only a cold token of lower index can still win
                incoming = torch.nonzero((bound == best) & (positions < winner)).flatten()[:batch]
                if incoming.numel() == 0:
                    break
            else:
                top = torch.topk(bound, min(batch, n))
                incoming = top.indices[top.values > ninf]
            gain[incoming] = (z @ z[incoming].T - cur[:, None]).clamp_min_(0).sum(dim=0).double()  # exact now
            is_hot[incoming] = True
            members = torch.nonzero(is_hot).flatten()
            if members.numel() > hot:  # the weakest go cold (lowest scores; among equal ones the highest index)
                order = torch.sort(members, descending=True, stable=True).indices
                order = order[torch.sort(_combine(gain, weight, combine)[members[order]], stable=True).indices]
                is_hot[members[order[:members.numel() - hot]]] = False
        chosen[t] = winner
        taken[winner] = True
        is_hot[winner] = False
        if t + 1 == k:
            break
        similarity = z @ z[winner]  # (N,)
        raised = torch.nonzero(similarity > cur).flatten()  # A: the tokens whose best coverage rises
        update = torch.nonzero(is_hot).flatten()
        for part in range(0, raised.numel() if update.numel() else 0, block):  # (block, block) tiles
            a = raised[part:part + block]
            # token i of A adds max(0, C_ij - cur_i) - max(0, C_ij - cur'_i) = clamp(C_ij, cur_i, cur'_i) - cur_i
            before, after, rows_a = cur[a][:, None], similarity[a][:, None], z[a]  # (a, 1), (a, 1), (a, d)
            for start in range(0, update.numel(), block):
                which = update[start:start + block]
                c = torch.clamp(rows_a @ z[which].T, before, after)  # (a, m)
                gain[which] -= (c.sum(dim=0) - before.sum()).double()
        torch.maximum(cur, similarity, out=cur)
    return torch.sort(chosen).values


def first_gains(z: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """(N,) float32: ``sum_i max(0, cos(x_i, x_j))`` for every token j, from the unit rows ``z`` (N, d). The cosine
    matrix is symmetric, so only its (block, block) tiles on and above the diagonal are computed, each adding to
    the gains of its columns and (off the diagonal) of its rows: N^2 d / 2 multiply-adds, O(block^2) scratch."""
    n = z.shape[0]
    out = torch.zeros(n, dtype=torch.float32, device=z.device)
    for row in range(0, n, block):
        rows = z[row:row + block]
        for col in range(row, n, block):
            tile = (rows @ z[col:col + block].T).clamp_min_(0)  # (block, block)
            out[col:col + block] += tile.sum(dim=0)
            if col != row:
                out[row:row + block] += tile.sum(dim=1)
    return out


def _combine(gain: torch.Tensor, weight: torch.Tensor, combine: str) -> torch.Tensor:
    return gain * weight if combine == "product" else gain + weight


@hookimpl
def register_selectors(register):
    register(Scope)
