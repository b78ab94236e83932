"""ZOO-Prune's selection: greedy picks that are both sensitive and unlike what is already kept (method.md, step 2)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl


class CoverageConfig(ComponentConfig):
    """How sensitivity and diversity combine; the paper's default is the product."""

    fusion: Literal["product", "sum"] = Field(
        default="product", description="gain = s * (1 - max cos) ('product', the paper's) or s + (1 - max cos)"
    )


class Coverage(Selector):
    """Start from the most sensitive token; then add ``argmax_i s_i * (1 - max_{j kept} cos(z_i, z_j))``.

    ``s`` is the score min-max normalised per image; ``z`` are the projected features. The state is one running
    maximum cosine per token: O(N) memory and O(N d) work per pick, never an N x N matrix.
    """

    name = "coverage"
    Config = CoverageConfig

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        return coverage_select(scores, tokens.embeddings, k, self.config.fusion)


def minmax(scores: torch.Tensor) -> torch.Tensor:
    """Scores scaled to [0, 1] per image (the authors add 1e-8 to the range, so constant scores give zeros)."""
    scores = scores.float()
    return (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)


def coverage_select(scores: torch.Tensor, embeddings: torch.Tensor, k: int,
                    fusion: str = "product") -> torch.Tensor:
    """Indices (k,) sorted ascending. ``scores``: (N,); ``embeddings``: (N, d), any dtype, never copied whole."""
    s = minmax(scores).to(embeddings.device)
    return greedy_max_cosine(s, embeddings, k, int(torch.argmax(s)), fusion)


def greedy_max_cosine(s: torch.Tensor, embeddings: torch.Tensor, k: int, first: int,
                      fusion: str = "product", batch: int = 8, rows: int = 1024) -> torch.Tensor:
    """Greedy selection by ``gain_i = s_i * (1 - max_{j kept} cos(z_i, z_j))`` (``s_i + (1 - max cos)`` for
    ``fusion='sum'``), starting from ``first``; returns the k indices sorted ascending.

    Exact lazy evaluation: a token's gain can only fall as the kept set grows, so a gain computed against an
    older kept set bounds the current one from above. After each pick, the ``batch`` tokens with the highest
    bounds are brought up to date against the kept tokens they have not seen; when the highest bound is then
    current, no other token can beat it (ties go to the lower index, as with ``argmax``) and it is picked;
    otherwise the next ``batch`` are updated. This picks what the plain loop (one pass over all N tokens per pick,
    :func:`coverage_select_dense`) picks, up to float rounding in near-ties, touching only the tokens that compete
    for the top.

    Memory: O(N) state, the k kept rows normalised (k x d) and ``rows x d`` scratch; the (N, d) embeddings are
    read in place, never copied whole. Used by ``divprune`` too (``s`` all ones).
    """
    if embeddings.device.type == "cpu" and torch.get_num_threads() > 1:
        # every op after the first pass touches a few rows: threads only add synchronisation, which costs
        # milliseconds per op when the cores are shared with other work
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return greedy_max_cosine(s, embeddings, k, first, fusion, batch, rows)
        finally:
            torch.set_num_threads(previous)
    n, d = embeddings.shape
    device = embeddings.device
    kept_rows = torch.empty(k, d, dtype=torch.float32, device=device)  # the kept tokens, normalised
    chosen = torch.empty(k, dtype=torch.long, device=device)
    chosen[0] = first
    kept_rows[0] = _normalised(embeddings[first:first + 1])[0]
    max_cos = torch.empty(n, dtype=torch.float32, device=device)
    inv_norm = torch.empty(n, dtype=torch.float32, device=device)
    for start in range(0, n, rows):  # the one pass over all tokens: their norms and cosine to the first pick
        block = embeddings[start:start + rows].float()
        inv_norm[start:start + rows] = 1 / torch.linalg.vector_norm(block, dim=-1).clamp_min(1e-12)
        max_cos[start:start + rows] = (block @ kept_rows[0]) * inv_norm[start:start + rows]
    seen = torch.ones(n, dtype=torch.long, device=device)  # how many kept tokens max_cos[i] accounts for
    s = s.float()
    bound = _gain(s, max_cos, fusion)
    bound[first] = float("-inf")
    batch = min(batch, n)
    for t in range(1, k):  # t tokens kept so far
        while True:
            pick = int(torch.argmax(bound))
            if int(seen[pick]) == t:
                break
            top = torch.topk(bound, batch, sorted=False).indices
            stale = top[(seen[top] < t) & (bound[top] > float("-inf"))]
            if not bool((stale == pick).any()):  # more ties at the top than `batch`
                stale = torch.cat([stale, stale.new_tensor([pick])])
            _refresh(stale, t, embeddings, inv_norm, kept_rows, max_cos, seen)
            bound[stale] = _gain(s[stale], max_cos[stale], fusion)
        chosen[t] = pick
        kept_rows[t] = _normalised(embeddings[pick:pick + 1])[0]
        bound[pick] = float("-inf")
    return torch.sort(chosen).values


def _refresh(stale: torch.Tensor, t: int, embeddings: torch.Tensor, inv_norm: torch.Tensor,
             kept_rows: torch.Tensor, max_cos: torch.Tensor, seen: torch.Tensor) -> None:
    # bucket the tokens by how many kept tokens they missed (within a factor 2), so a token that missed 2 is not
    # multiplied against the 1000 another one missed
    missing = t - seen[stale]
    bucket = torch.floor(torch.log2(missing.float())).long()
    for level in torch.unique(bucket).tolist():
        rows = stale[bucket == level]
        oldest = max(0, t - 2 ** (level + 1))
        cos = (embeddings[rows].float() @ kept_rows[oldest:t].T) * inv_norm[rows, None]  # (b, t - oldest)
        cos = cos.amax(dim=1)
        max_cos[rows] = torch.maximum(max_cos[rows], cos)
        seen[rows] = t


def _normalised(rows: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(rows.float(), dim=-1)


def _gain(s: torch.Tensor, max_cos: torch.Tensor, fusion: str) -> torch.Tensor:
    return s * (1 - max_cos) if fusion == "product" else s + (1 - max_cos)


def coverage_select_dense(scores: torch.Tensor, embeddings: torch.Tensor, k: int,
                          fusion: str = "product") -> torch.Tensor:
    """The plain loop (one pass over all N normalised tokens per pick); ``coverage_select`` picks the same tokens.
    Kept as the reference for tests and benchmarks."""
    s = minmax(scores)
    z = torch.nn.functional.normalize(embeddings.float(), dim=-1)  # (N, d)
    n = z.shape[0]
    chosen = torch.empty(k, dtype=torch.long, device=z.device)
    taken = torch.zeros(n, dtype=torch.bool, device=z.device)
    first = int(torch.argmax(s))
    chosen[0] = first
    taken[first] = True
    max_cos = z @ z[first]  # (N,) running max cosine similarity to the kept set
    for step in range(1, k):
        diversity = 1 - max_cos
        gain = s * diversity if fusion == "product" else s + diversity
        gain = gain.masked_fill(taken, float("-inf"))
        pick = int(torch.argmax(gain))
        chosen[step] = pick
        taken[pick] = True
        max_cos = torch.maximum(max_cos, z @ z[pick])
    return torch.sort(chosen).values


@hookimpl
def register_selectors(register):
    register(Coverage)
