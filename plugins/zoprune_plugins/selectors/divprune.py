"""DivPrune (Alvar et al., CVPR 2025): greedy max-min diversity over the projected features, cosine distance.

Follows the ``DivPrune`` function of the official code (vbdi/divprune, ``LLaVA/llava/model/llava_arch.py``),
rewritten so memory stays O(N) besides the input: the official code builds the N x N distance matrix ``1 - cos``.
"""

from __future__ import annotations

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Selector, hookimpl
from zoprune_plugins.selectors.coverage import greedy_max_cosine, identical_rows, unit_rows
from zoprune_plugins.selectors.uniform import evenly_spaced


class DivPruneConfig(ComponentConfig):
    """DivPrune has no parameters besides the budget; ``chunk`` only bounds the memory of the first pick."""

    chunk: int = Field(default=1024, ge=1, description="rows and columns of the distance matrix formed at once "
                       "for the first pick; memory O(chunk^2 + chunk d)")


class DivPrune(Selector):
    """First pick: the token whose nearest neighbour is farthest; then, k - 1 times, the token whose minimum
    cosine distance to the kept set is largest.

    State: one running minimum distance per token, brought up to date lazily (only for the tokens that compete
    for the top), so the selection needs O(N) memory besides the k kept rows; the first pick compares all N^2
    pairs by definition, but bounds spare most of them on image tokens (:func:`most_isolated`).
    """

    name = "divprune"
    Config = DivPruneConfig
    needs_scores = False

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        return divprune_select(tokens.embeddings, k, self.config.chunk)


def nearest_neighbour_distance(z: torch.Tensor, chunk: int = 1024,
                               columns: torch.Tensor | None = None) -> torch.Tensor:
    """For the rows of ``z`` (N, d): the second smallest value of each column of ``D = 1 - cos(z_i, z_j)``, (N,);
    with ``columns`` (c,) long, for those columns only, (c,).

    The self-distance (about 0) is normally the smallest, so this is the distance to the nearest other token,
    computed exactly as the official ``topk(D, 2, dim=0, largest=False).values[1]`` but from (chunk, chunk) blocks
    of rows normalised on the fly: memory O(N + chunk d + chunk^2), never a normalised copy of ``z``. The work is
    still all N^2 pairs (N^2 d multiply-adds: 1.1 T at N = 16,384, d = 4096), as in DivPrune's definition.
    """
    n = z.shape[0]
    wanted = torch.arange(n, device=z.device) if columns is None else columns
    out = torch.empty(wanted.shape[0], dtype=torch.float32, device=z.device)
    for start in range(0, wanted.shape[0], chunk):
        cols = unit_rows(z[wanted[start:start + chunk]])  # (c, d)
        two = None  # (2, c): the two smallest distances of each column so far
        for row in range(0, n, chunk):
            block = 1.0 - unit_rows(z[row:row + chunk]) @ cols.T  # (r, c): rows row.., the columns of this pass
            block = torch.topk(block, min(2, block.shape[0]), dim=0, largest=False).values
            two = block if two is None else torch.topk(torch.cat([two, block]), 2, dim=0, largest=False).values
        out[start:start + chunk] = two[1]
    return out


def most_isolated(z: torch.Tensor, chunk: int = 1024, sample: int = 512, batch: int = 64,
                  slack: float = 1e-4) -> int:
    """``argmax`` of :func:`nearest_neighbour_distance` (ties: the lower index) without computing it for every
    token where a bound rules a token out.

    The second smallest distance of a column over a subset of the rows is at least the one over all rows: an upper
    bound. Rows at ``sample`` evenly spaced tokens give every token its bound (N x sample products); tokens are then
    computed exactly in order of falling bound, ``batch`` at a time, until the best exact value exceeds every
    remaining bound (by ``slack``, far above float rounding). On real image tokens few need computing; on tokens with
    no structure (Gaussian noise) nearly all do, and the cost is the full N^2 comparison plus the sample's.
    """
    n = z.shape[0]
    if n <= 2 * sample:
        return int(torch.argmax(nearest_neighbour_distance(z, chunk)))
    rows = torch.linspace(0, n - 1, sample, device=z.device).round().long().unique()
    in_sample = torch.zeros(n, dtype=torch.bool, device=z.device)
    in_sample[rows] = True
    sampled = unit_rows(z[rows])  # (s, d)
    bound = torch.empty(n, dtype=torch.float32, device=z.device)  # (N,): >= each token's exact value
    for start in range(0, n, chunk):
        cols = unit_rows(z[start:start + chunk])  # (c, d)
        distances = 1.0 - sampled @ cols.T  # (s, c)
        # a token outside the sample also has its own distance (about 0) in its column
        self_distance = 1.0 - (cols * cols).sum(-1)
        outside = ~in_sample[start:start + chunk]
        distances = torch.cat([distances, torch.where(outside, self_distance, torch.inf)[None]])
        bound[start:start + chunk] = torch.topk(distances, 2, dim=0, largest=False).values[1]
    order = torch.argsort(bound, descending=True, stable=True)
    best_value, best_index = -torch.inf, n
    for start in range(0, n, batch):
        candidates = order[start:start + batch]
        if float(bound[candidates[0]]) + slack < best_value:
            break  # no token left can reach the best, let alone tie with it
        exact = nearest_neighbour_distance(z, chunk, candidates)
        top = exact.max()
        index = int(candidates[exact == top].min())
        if float(top) > best_value or (float(top) == best_value and index < best_index):
            best_value, best_index = float(top), index
    return best_index


def divprune_select(embeddings: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Indices (k,) sorted ascending. ``embeddings``: (N, d) projected features, N >= 2, read in place.

    After the first pick, ``argmax_i min_{j kept} (1 - cos(z_i, z_j))`` is ``argmax_i 1 * (1 - max cos)``: the
    coverage selector's greedy with all sensitivities 1 (exact lazy evaluation, O(N) state; see
    :func:`~zoprune_plugins.selectors.coverage.greedy_max_cosine`). Kept tokens are not picked again: the official
    code does not exclude them (their self-distance is ~0, so they only come back when duplicates leave nothing
    farther); excluding them guarantees k distinct tokens. When all N tokens are identical every pick is a tie
    (the official code's would be tokens 0..k-1): k evenly spaced tokens are kept instead.
    """
    n = embeddings.shape[0]
    if identical_rows(embeddings):
        return evenly_spaced(n, k, embeddings.device)
    # ties go to the earlier token, as torch.argmax does in the official code
    first = most_isolated(embeddings, chunk)
    ones = torch.ones(n, dtype=torch.float32, device=embeddings.device)
    return greedy_max_cosine(ones, embeddings, k, first, "product")


@hookimpl
def register_selectors(register):
    register(DivPrune)
