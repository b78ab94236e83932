"""holov and pool through prune + generate on the tiny LLaVA-NeXT, Qwen2-VL and Qwen2.5-VL models: exactly k tokens
per entry, what the language model gets is what the selection says."""

import pytest
import torch
import torch.nn.functional as F

import zoprune
from zoprune.errors import ConfigError
from tiny_families import llava_next_batch, qwen_batch, tiny_llava_next, tiny_qwen2_5_vl, tiny_qwen2_vl

NEXT_SIZES = [[(16, 32)], [(32, 32), (16, 16)]]
QWEN_VISUALS = [[("image", (1, 8, 12))], [("image", (1, 4, 4))]]
GREEDY = {"max_new_tokens": 2, "do_sample": False}


@pytest.mark.parametrize("policy", ["global", "per_tile"])
@pytest.mark.parametrize("method", ["holov", "zo_sensitivity+holov"])
def test_holov_on_llava_next(method, policy):
    from zoprune.methods import resolve_method

    model = tiny_llava_next()
    inputs = llava_next_batch(model, [[7, 8], [9]], NEXT_SIZES)
    _, config = resolve_method(method)
    pruned = zoprune.prune(model, config, budget=12, adapter={"name": "llava_next", "budget_policy": policy})
    out = pruned.generate(**inputs, **GREEDY)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    per_image: dict[tuple[int, int], int] = {}
    for s in pruned.last_selection:
        per_image[(s.sample, s.image)] = per_image.get((s.sample, s.image), 0) + s.num_kept
    assert list(per_image.values()) == [12, 12, 12]


@pytest.mark.parametrize("family", [tiny_qwen2_vl, tiny_qwen2_5_vl])
def test_holov_with_any_scorer_on_qwen(family):
    model = family()
    inputs = qwen_batch(model, [[7, 8], [9]], QWEN_VISUALS)
    pruned = zoprune.prune(model, {"scorer": "norm", "selector": {"name": "holov", "regions": "tiles"}}, budget=6)
    out = pruned.generate(**inputs, **GREEDY)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    assert [s.num_kept for s in pruned.last_selection] == [6, 4]  # the 2 x 2 image keeps its 4 tokens
    assert pruned.last_selection[0].grid == (4, 6)


def test_holov_needs_cls_attention_where_there_is_none():
    with pytest.raises(ConfigError, match="cls_attention"):
        zoprune.prune(tiny_qwen2_vl(), "configs/holov.yaml")


def test_pool_on_llava_next_per_tile_pools_each_view_grid():
    model = tiny_llava_next()
    inputs = llava_next_batch(model, [[7]], [[(16, 32)]])  # a base view and 2 crops of 4 x 4 tokens
    pruned = zoprune.prune(model, {"scorer": None, "selector": "pool"}, budget=12,
                           adapter={"name": "llava_next", "budget_policy": "per_tile"})
    out = pruned.generate(**inputs, **GREEDY)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    selection = pruned.last_selection
    assert [s.grid for s in selection] == [(4, 4)] * 3 and [s.num_kept for s in selection] == [4, 4, 4]
    embedded = pruned.embed(**inputs)[0].embeddings  # the image's rows: kept (none) + newlines, then merged
    tokens = pruned.adapter.extract(inputs, pruned.adapter.projector(), torch.float32)
    expected = [F.adaptive_avg_pool2d(t.model_embeddings.reshape(4, 4, -1).permute(2, 0, 1), (2, 2)).flatten(1).T
                for t in tokens]
    torch.testing.assert_close(embedded[-12:], torch.cat(expected))


def test_pool_on_llava_next_global_pools_runs_of_the_packed_tokens():
    model = tiny_llava_next()
    inputs = llava_next_batch(model, [[7, 8], [9]], NEXT_SIZES)
    pruned = zoprune.prune(model, {"scorer": None, "selector": "pool"}, budget=10)
    out = pruned.generate(**inputs, **GREEDY)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    assert [s.num_kept for s in pruned.last_selection] == [10, 10, 10]
    assert all(s.grid is None for s in pruned.last_selection[:2])  # several views: no single grid


@pytest.mark.parametrize("family", [tiny_qwen2_vl, tiny_qwen2_5_vl])
def test_pool_on_qwen_places_each_cell_at_its_centre(family):
    """Qwen's merged grid (rows, cols) is pooled in 2-D; each pooled token goes after the image's kept ones (none)
    at the rounded mean 3-D rotary position of its cell's tokens, and the text keeps its unpruned positions."""
    from tiny_families import IMAGE_TOKEN_ID, language_model_calls

    model = family()
    inputs = qwen_batch(model, [[7, 8]], [[("image", (1, 8, 12))]])  # a 4 x 6 grid of merged tokens
    pruned = zoprune.prune(model, {"scorer": None, "selector": "pool"}, budget=6)  # 2 x 3 cells of 2 x 2 tokens
    with language_model_calls(model) as calls:
        out = pruned.generate(**inputs, **GREEDY)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 2
    assert pruned.last_selection[0].grid == (4, 6) and pruned.last_selection[0].num_kept == 6
    full = pruned.adapter.rope_positions(inputs)[:, 0]  # (3, L): the unpruned prompt's positions
    image = (inputs["input_ids"][0] == IMAGE_TOKEN_ID).nonzero().squeeze(-1)  # (24,) columns, raster order
    cells = full[:, image].T.reshape(2, 2, 3, 2, 3).permute(0, 2, 1, 3, 4).reshape(6, 4, 3)  # (cell, member, 3)
    expected = cells.float().mean(dim=1).round().long()  # (6, 3)
    prefill = calls[0]["position_ids"][1:, 0]  # (3, L'): the rope rows of the pruned prompt
    pruned_ids = pruned.prepare(**inputs)["input_ids"][0]
    slots = (pruned_ids == IMAGE_TOKEN_ID).nonzero().squeeze(-1)
    assert torch.equal(prefill[:, slots].T, expected)
    text = full[:, image[-1] + 1:]  # everything after the image keeps its unpruned positions
    assert torch.equal(prefill[:, slots[-1] + 1:], text)
    # and the rows are the pooled projector outputs of the grid
    embedded = pruned.embed(**inputs)[0]
    tokens = pruned.adapter.extract(inputs, pruned.adapter.projector(), torch.float32)[0]
    grid = tokens.model_embeddings.reshape(4, 6, -1).permute(2, 0, 1)
    torch.testing.assert_close(embedded.embeddings, F.adaptive_avg_pool2d(grid, (2, 3)).flatten(1).T.to(
        embedded.embeddings.dtype))
