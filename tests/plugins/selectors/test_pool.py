"""pool: adaptive pooling of the patch grid to exactly k tokens; equal to torch's adaptive pooling when the cells
form an r x c lattice."""

import pytest
import torch
import torch.nn.functional as F

import zoprune
from zoprune import Context, ImageTokens, Merge
from zoprune_plugins.selectors.pool import Pool, PoolConfig, band_layout
from tiny_models import llava_batch, tiny_llava


def select(x, k, grid, projector=lambda v: v, **config):
    tokens = ImageTokens(features=x, embeddings=projector(x), model_embeddings=projector(x), projector=projector,
                         sample=0, image=0, grid=grid)
    return Pool(PoolConfig(**config)).select(None, tokens, k, Context(torch.Generator()))


def as_image(x, grid):
    return x.reshape(*grid, -1).permute(2, 0, 1)[None]  # (1, d, rows, cols)


@pytest.mark.parametrize("grid, k, shape", [((24, 24), 64, (8, 8)), ((24, 24), 16, (4, 4)), ((24, 24), 25, (5, 5)),
                                            ((24, 24), 4, (2, 2)), ((7, 7), 9, (3, 3)), ((12, 20), 15, (3, 5)),
                                            ((24, 24), 576, (24, 24))])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_equals_adaptive_pooling_on_a_lattice(grid, k, shape, mode):
    x = torch.randn(grid[0] * grid[1], 6, generator=torch.Generator().manual_seed(k))
    out = select(x, k, grid, mode=mode)
    assert isinstance(out, Merge) and out.kept.numel() == 0 and out.embeddings.shape == (k, 6)
    pool = F.adaptive_avg_pool2d if mode == "avg" else F.adaptive_max_pool2d
    expected = pool(as_image(x, grid), shape)[0].flatten(1).T  # (k, d) in raster order of the cells
    torch.testing.assert_close(out.embeddings, expected)


@pytest.mark.parametrize("grid", [(24, 24), (5, 9), (1, 30), (30, 1), (3, 3)])
def test_exactly_k_tokens_for_every_k(grid):
    n = grid[0] * grid[1]
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    for k in range(1, n + 1):
        layout = band_layout(grid, k)
        assert sum(layout) == k and max(layout) <= grid[1] and len(layout) <= grid[0]
        out = select(x, k, grid)
        assert out.embeddings.shape == (k, 3)
        groups = out.groups
        assert groups.shape == (n,) and int(groups.min()) == 0 and int(groups.max()) == k - 1
        assert torch.bincount(groups, minlength=k).min() >= 1  # every cell holds a token
    # k = N: every cell is one token, in raster order
    assert torch.equal(select(x, n, grid).embeddings, x)


def test_a_k_that_is_no_lattice_uses_bands():
    assert band_layout((24, 24), 10) == [4, 3, 3]  # round(sqrt(10)) = 3 bands of rows
    assert band_layout((24, 24), 64) == [8] * 8
    x = torch.randn(576, 4, generator=torch.Generator().manual_seed(0))
    out = select(x, 10, (24, 24))
    image = as_image(x, (24, 24))
    torch.testing.assert_close(out.embeddings[:4], F.adaptive_avg_pool2d(image[:, :, 0:8], (1, 4))[0, :, 0].T)
    torch.testing.assert_close(out.embeddings[4:7], F.adaptive_avg_pool2d(image[:, :, 8:16], (1, 3))[0, :, 0].T)


def test_without_a_grid_it_pools_runs_of_tokens():
    x = torch.randn(100, 5, generator=torch.Generator().manual_seed(1))
    out = select(x, 7, None)
    torch.testing.assert_close(out.embeddings, F.adaptive_avg_pool1d(x.T[None], 7)[0].T)


def test_features_are_pooled_before_the_projector():
    projector = torch.nn.Linear(6, 4)
    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = select(x, 4, (8, 8), projector=projector, space="features")
        expected = projector(F.adaptive_avg_pool2d(as_image(x, (8, 8)), (2, 2))[0].flatten(1).T)
    torch.testing.assert_close(out.embeddings, expected)


def test_pool_generates_on_llava_with_k_tokens_per_image():
    model = tiny_llava()
    pruned = zoprune.prune(model, "configs/pool.yaml", budget=4)
    batch = llava_batch(model, [[6, 7], [9]], [1, 2])
    out = pruned.generate(**batch, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == batch["input_ids"].shape[1] + 2
    selection = pruned.last_selection
    assert [s.num_kept for s in selection] == [4, 4, 4] and all(s.kept.numel() == 0 for s in selection)
    # what the language model gets is the pooled projector output (2 x 2 cells of the 4 x 4 grid)
    embedded = pruned.embed(**batch)
    tokens = pruned.adapter.extract(batch, pruned.adapter.projector(), torch.float32)
    for rows, entry in zip(embedded, tokens):
        expected = F.adaptive_avg_pool2d(as_image(entry.model_embeddings, (4, 4)), (2, 2))[0].flatten(1).T
        torch.testing.assert_close(rows.embeddings, expected)
        assert rows.num_merged == 4 and rows.kept.numel() == 0
