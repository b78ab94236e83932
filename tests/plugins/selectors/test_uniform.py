"""The spatially uniform baseline: a regular lattice over the patch grid, exactly k tokens, evenly spaced without
a grid."""

import pytest
import torch

import zoprune
from zoprune import Context, ImageTokens
from zoprune_plugins.selection.lattice import evenly_spaced, grid_select
from zoprune_plugins.selectors.uniform import Uniform
from tiny_models import llava_batch, tiny_llava


def tokens(n, grid=None):
    z = torch.zeros(n, 4)
    return ImageTokens(features=z, embeddings=z, model_embeddings=z, projector=lambda x: x, sample=0, image=0,
                       grid=grid)


@pytest.mark.parametrize("k, stride, offset", [(16, 6, 3), (64, 3, 1), (144, 2, 1), (36, 4, 2)])
def test_square_budgets_give_a_regular_lattice(k, stride, offset):
    kept = Uniform().select(None, tokens(576, (24, 24)), k, Context(torch.Generator()))
    rows, cols = kept // 24, kept % 24
    side = int(k ** 0.5)
    assert kept.numel() == k
    expected = torch.arange(offset, 24, stride)
    assert torch.equal(rows.unique(), expected) and torch.equal(cols.unique(), expected)
    assert torch.equal(torch.bincount(rows)[expected], torch.full((side,), side))  # every row of the lattice full


# every budget a selector can be given (1 <= k <= n: the pipeline keeps all tokens itself otherwise), n included
GRID_BUDGETS = [(grid, k) for grid in [(24, 24), (6, 10), (1, 7), (9, 2)]
                for k in sorted({1, 2, 5, 13, 17, grid[0] * grid[1]}) if k <= grid[0] * grid[1]]


@pytest.mark.parametrize("grid, k", GRID_BUDGETS)
def test_any_budget_gives_k_distinct_sorted(grid, k):
    n = grid[0] * grid[1]
    kept = grid_select(grid, k)
    assert kept.dtype == torch.long and kept.numel() == k and len(set(kept.tolist())) == k
    assert torch.equal(kept, kept.sort().values) and int(kept.max()) < n
    if k == n:
        assert torch.equal(kept, torch.arange(n))


def test_lattice_follows_the_aspect_ratio():
    kept = grid_select((8, 32), 16)  # a wide grid: 2 rows x 8 columns, not 4 x 4
    assert (kept // 32).unique().numel() == 2 and (kept % 32).unique().numel() == 8


def test_without_grid_evenly_spaced():
    kept = Uniform().select(None, tokens(100), 10, Context(torch.Generator()))
    assert kept.tolist() == list(range(5, 100, 10))
    assert torch.equal(evenly_spaced(7, 7), torch.arange(7))


def test_runs_through_prune():
    model = tiny_llava()  # 4 x 4 patches
    inputs = llava_batch(model, [[6, 7, 8]], [1])
    pruned = zoprune.prune(model, {"scorer": None, "selector": "uniform", "budget": 4})
    pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert pruned.last_selection[0].kept.tolist() == [5, 7, 13, 15]  # rows 1 and 3, columns 1 and 3
