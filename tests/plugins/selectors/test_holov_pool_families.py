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
