"""Per-token geometry the selectors share: rows scaled to unit norm, scores scaled to [0, 1], the all-identical
check, and each token's distance to its nearest neighbour with the most isolated token (DivPrune's first pick, also
coverage's when every score is equal)."""

from __future__ import annotations

import torch


def unit_rows(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` (n, d) scaled to unit L2 norm, in float32 (a copy of these rows only)."""
    return torch.nn.functional.normalize(rows.float(), dim=-1)


def minmax(scores: torch.Tensor) -> torch.Tensor:
    """Scores scaled to [0, 1] per image (the authors add 1e-8 to the range, so constant scores give zeros)."""
    scores = scores.float()
    return (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)


def identical_rows(embeddings: torch.Tensor) -> bool:
    """Whether all N rows (N, d) are equal (a blank image's tokens at the extreme): then every similarity is 1 and
    every greedy pick a tie."""
    return bool((embeddings == embeddings[:1]).all())


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
