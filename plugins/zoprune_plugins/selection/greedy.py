"""The one lazy greedy engine of coverage, divprune, mmr and cdpruner: a weight per token, a redundancy per token
against the kept set, a gain that falls as the redundancy grows, one pick at a time (see :func:`lazy_greedy`)."""

from __future__ import annotations

from typing import Callable, Literal

import torch

from zoprune_plugins.selection.geometry import unit_rows


def greedy_max_cosine(s: torch.Tensor, embeddings: torch.Tensor, k: int, first: int,
                      fusion: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "product",
                      hot: int = 256, promote: int = 64, rows: int = 1024) -> torch.Tensor:
    """Greedy selection by ``gain_i = s_i * (1 - max_{j kept} cos(z_i, z_j))``: :func:`lazy_greedy` with the
    max-cosine redundancy (coverage, divprune and mmr); see there."""
    return lazy_greedy(s, embeddings, k, first, fusion, "max_cosine", hot, promote, rows)


def lazy_greedy(s: torch.Tensor, embeddings: torch.Tensor, k: int, first: int,
                fusion: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "product",
                redundancy: Literal["max_cosine", "span"] = "max_cosine",
                hot: int = 256, promote: int = 64, rows: int = 1024,
                exhausted: Literal["raise", "stop"] = "raise") -> torch.Tensor:
    """Greedy selection by ``gain_i = s_i * (1 - max_{j kept} cos(z_i, z_j))`` (``s_i + (1 - max cos)`` for
    ``fusion='sum'``, or ``fusion(s, max_cos)`` for any gain that does not rise with ``max_cos``), starting from
    ``first``; returns the k indices sorted ascending.

    Exact lazy greedy with a small "hot" set. A token's gain can only fall as the kept set grows, so a gain computed
    against an older kept set bounds the current one from above (a "stale bound"). The ``hot`` tokens that compete
    for the top are kept up to date after every pick with one (hot, d) x (d,) product; every other ("cold") token
    keeps its stale bound. A hot token wins when no cold bound beats its exact gain (ties: the lower index, as with
    ``argmax``); otherwise the ``promote`` highest cold bounds are brought up to date against the kept tokens they
    have not seen (a few large products, bucketed by staleness) and replace the weakest hot tokens, which go back
    to the cold set with their exact gain as bound. This picks what the plain loop (one pass over all N tokens per
    pick, :func:`~zoprune_plugins.selectors.coverage.coverage_select_dense`) picks, up to float rounding in near-ties.

    Every op per pick touches O(hot d + N) numbers; the larger products come in batches of ``promote`` rows, so
    the ~1600 picks of k = 10% of 16,384 cost a few thousand ops, not tens of thousands. The process's torch
    thread settings are left alone: on cores shared with other work, every multi-threaded op waits for a thread to
    be scheduled (a full time slice: ~16 ms measured), so call ``torch.set_num_threads(1)`` yourself there
    (docs/speed.md).

    Memory: O(N) state, the k kept rows normalised (k x d), ``hot x d`` and ``rows x d`` scratch; the (N, d)
    embeddings are read in place, never copied whole. Used by ``divprune`` too (``s`` all ones).

    The one selection core (docs/methods/cdpruner.md): every selector here is "a weight per token, a redundancy
    per token against the kept set, a gain that falls as the redundancy grows, one pick at a time". The redundancy
    is a per-token state brought up to date by products with the newly kept rows:

    - ``"max_cosine"`` (coverage, divprune, mmr): the state is ``max_{j kept} cos(z_i, z_j)`` and the kept rows are
      the picked tokens normalised; the state only rises, so ``fusion(s, state)`` must not rise with it.
    - ``"span"`` (cdpruner's DPP): the kept rows are an orthonormal basis ``Q`` of the picked tokens' span (one
      Gram-Schmidt step per pick, done twice for float32 accuracy) and the state is the squared distance of the
      normalised token to that span, ``1 - ||Q u_i||^2``; it only falls, so ``fusion(s, state)`` must not rise as
      it falls (``s * state`` with ``s = r^2``: Chen et al.'s DPP marginal gain ``d_i^2``).

    ``exhausted``: what to do when no candidate has a finite gain left ("raise": a ValueError; "stop": return the
    picks so far, fewer than k, sorted).
    """
    span = redundancy == "span"
    n, d = embeddings.shape
    device = embeddings.device
    ninf = float("-inf")
    s = s.float().to(device)
    kept_rows = torch.empty(k, d, dtype=torch.float32, device=device)  # the kept tokens, normalised
    chosen = torch.empty(k, dtype=torch.long, device=device)
    chosen[0] = first
    kept_rows[0] = unit_rows(embeddings[first:first + 1])[0]
    if span:
        kept_rows[0] = _orthonormal(kept_rows[0], kept_rows[:0])
    max_cos = torch.empty(n, dtype=torch.float32, device=device)  # of cold tokens, against kept_rows[:seen]
    for start in range(0, n, rows):  # the one pass over all tokens
        if span:  # squared distance to the span of the first pick: |u|^2 - (u . q)^2 (|u| = 0 for zero rows)
            block = unit_rows(embeddings[start:start + rows])
            max_cos[start:start + rows] = block.square().sum(dim=1) - (block @ kept_rows[0]).square()
        else:
            max_cos[start:start + rows] = unit_rows(embeddings[start:start + rows]) @ kept_rows[0]
    seen = torch.ones(n, dtype=torch.long, device=device)
    bound = _gain(s, max_cos, fusion)  # (N,) upper bounds of cold tokens' gains; -inf: hot or kept
    bound[first] = ninf
    positions = torch.arange(n, device=device)
    hot = max(2, min(hot, n))
    promote = max(1, min(promote, hot - 1))  # < hot: the current winner is never evicted by a promotion
    hot_rows = torch.zeros(hot, d, dtype=torch.float32, device=device)  # (hot, d) normalised
    hot_index = torch.full((hot,), -1, dtype=torch.long, device=device)  # -1: a free slot
    hot_cos = torch.zeros(hot, dtype=torch.float32, device=device)  # max cosine to all kept tokens
    hot_s = torch.zeros(hot, dtype=torch.float32, device=device)
    hot_gain = torch.full((hot,), ninf, dtype=torch.float32, device=device)  # exact; -inf for free slots
    top, highest = None, ninf  # the highest cold bounds: they only change when tokens move (_promote)
    for t in range(1, k):  # t tokens kept so far
        while True:
            best = float(hot_gain.max())
            key = torch.where(hot_gain == best, hot_index, n)  # (hot,): the tokens of the best gain, by index
            slot = int(key.argmin())
            winner = int(key[slot]) if best > ninf else n
            if top is None:
                top = torch.topk(bound, min(promote, n))
                highest = float(top.values[0])
            if highest < best:
                break
            if highest == ninf:  # and best too: nothing left to pick
                if exhausted == "stop":
                    return torch.sort(chosen[:t]).values
                raise ValueError("coverage selection ran out of candidates (non-finite scores?)")
            if highest == best:  # exact ties: only a cold token of lower index can still win
                contenders = torch.nonzero((bound == best) & (positions < winner)).flatten()
                if contenders.numel() == 0:
                    break
                incoming = contenders[:promote]
            else:
                # the stale cold bounds at the top, plus the next highest ones (they are likely to be needed
                # soon, and one product over more rows reads the kept rows once for all of them)
                incoming = top.indices[top.values > ninf]
            _promote(incoming, t, embeddings, kept_rows, max_cos, seen, bound, s, fusion,
                     hot_rows, hot_index, hot_cos, hot_s, hot_gain, span)
            top = None
        chosen[t] = winner
        kept_rows[t] = _orthonormal(hot_rows[slot], kept_rows[:t]) if span else hot_rows[slot]
        hot_index[slot] = -1
        if t + 1 < k:
            if span:  # (hot,): every hot token stays exact
                hot_cos -= (hot_rows @ kept_rows[t]).square()
            else:
                torch.maximum(hot_cos, hot_rows @ kept_rows[t], out=hot_cos)
            hot_gain = torch.where(hot_index >= 0, _gain(hot_s, hot_cos, fusion), ninf)
    return torch.sort(chosen).values


def _promote(incoming: torch.Tensor, t: int, embeddings: torch.Tensor, kept_rows: torch.Tensor,
             max_cos: torch.Tensor, seen: torch.Tensor, bound: torch.Tensor, s: torch.Tensor,
             fusion: str | Callable,
             hot_rows: torch.Tensor, hot_index: torch.Tensor, hot_cos: torch.Tensor, hot_s: torch.Tensor,
             hot_gain: torch.Tensor, span: bool = False) -> None:
    """Bring the cold tokens ``incoming`` up to date against kept_rows[:t] and move them into the hot set in place
    of its weakest tokens, which go back to the cold set with their exact gains as bounds."""
    normalised = unit_rows(embeddings[incoming])  # (p, d)
    if span:
        _catch_up_span(incoming, normalised, t, kept_rows, max_cos, seen)
    else:
        _catch_up(incoming, normalised, t, kept_rows, max_cos, seen)
    # evict the lowest gains, and among equal gains the highest indices (free slots, -inf, go first): so the
    # lowest-index token of the best gain stays, and tie resolution always makes progress
    order = torch.sort(hot_index, descending=True, stable=True).indices
    order = order[torch.sort(hot_gain[order], stable=True).indices]
    slots = order[:incoming.numel()]
    leaving = slots[hot_index[slots] >= 0]
    out = hot_index[leaving]
    max_cos[out] = hot_cos[leaving]
    seen[out] = t
    bound[out] = hot_gain[leaving]
    hot_index[slots] = incoming
    hot_rows[slots] = normalised
    hot_cos[slots] = max_cos[incoming]
    hot_s[slots] = s[incoming]
    hot_gain[slots] = _gain(s[incoming], max_cos[incoming], fusion)
    bound[incoming] = float("-inf")


def _missed_buckets(index: torch.Tensor, t: int, seen: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
    """The tokens ``index`` that missed some of the t kept rows, bucketed by how many they missed (within a factor
    2), so that a token that missed 2 is not multiplied against the 1000 another one missed: per bucket, its
    positions in ``index`` and the oldest kept row one of them missed (one product per bucket)."""
    missing = (t - seen[index]).tolist()
    levels: dict[int, list[int]] = {}
    for position, count in enumerate(missing):
        if count > 0:
            levels.setdefault(count.bit_length() - 1, []).append(position)
    return [(torch.tensor(members, device=index.device), t - max(missing[m] for m in members))
            for members in levels.values()]


def _catch_up(index: torch.Tensor, normalised: torch.Tensor, t: int, kept_rows: torch.Tensor,
              max_cos: torch.Tensor, seen: torch.Tensor) -> None:
    """max_cos[index] against all t kept rows. ``normalised``: the tokens' rows (p, d), normalised."""
    for member, oldest in _missed_buckets(index, t, seen):
        cos = (normalised[member] @ kept_rows[oldest:t].T).amax(dim=1)  # (b,)
        which = index[member]
        max_cos[which] = torch.maximum(max_cos[which], cos)
    seen[index] = t


def _catch_up_span(index: torch.Tensor, normalised: torch.Tensor, t: int, basis: torch.Tensor,
                   residual: torch.Tensor, seen: torch.Tensor) -> None:
    """residual[index] (squared distance to the span of the kept tokens) against all t rows of the orthonormal
    ``basis``: each token subtracts the squared projections on the basis rows it has not seen yet (unlike a
    maximum, a sum must not count a row twice, so the rows a token saw are masked out of its bucket's product)."""
    for member, oldest in _missed_buckets(index, t, seen):
        which = index[member]
        projections = normalised[member] @ basis[oldest:t].T  # (b, t - oldest)
        unseen = torch.arange(oldest, t, device=index.device)[None, :] >= seen[which][:, None]
        residual[which] = residual[which] - (projections.square() * unseen).sum(dim=1)
    seen[index] = t


def _orthonormal(row: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``row`` (d,) unit, made orthogonal to the orthonormal ``basis`` (t, d) and normalised: the next basis row.
    Classical Gram-Schmidt, done a second time when the first pass removed more than half of the row's norm (Kahan
    and Parlett's "twice is enough" criterion), so the basis stays orthonormal in float32 at the cost of one pass
    over the basis on most picks."""
    if basis.shape[0]:
        before = row.norm()
        row = row - basis.T @ (basis @ row)
        if bool(row.norm() < before / 2 ** 0.5):
            row = row - basis.T @ (basis @ row)
    return row / row.norm().clamp_min(1e-30)


def _gain(s: torch.Tensor, max_cos: torch.Tensor, fusion: str | Callable) -> torch.Tensor:
    if callable(fusion):  # any gain that falls as max_cos rises (MMR's), so stale bounds stay upper bounds
        return fusion(s, max_cos)
    return s * (1 - max_cos) if fusion == "product" else s + (1 - max_cos)
