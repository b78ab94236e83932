"""``positions: original``: after pre-LLM pruning, the kept tokens keep the rotary positions they had in the
unpruned prompt (1-D RoPE families), generation continues from the unpruned length, and left padding still works.
Qwen's M-RoPE keeps its 3-D positions under either setting."""

import pytest
import torch

import zoprune
from zoprune.errors import ConfigError
from tiny_families import language_model_calls, llava_next_batch, qwen_batch, tiny_llava_next, tiny_qwen2_vl
from tiny_generic import batch, tiny_model
from tiny_models import IMAGE_TOKEN_ID, llava_batch, tiny_llava, tokens_per_image

GREEDY = {"max_new_tokens": 4, "do_sample": False}
PROMPTS, IMAGES = [[6, 7, 8, 9, 10, 19], [6, 19], [7]], [1, 2, 1]  # left padded, 1-2 images per prompt


def pruned(model, budget, positions, selector="divprune"):
    return zoprune.prune(model, scorer=None, selector=selector, budget=budget, positions=positions)


@pytest.fixture(scope="module")
def llava():
    return tiny_llava(attn_implementation="sdpa")


def real_rows(logits, mask):
    """Each row's logits at its real (unpadded) tokens: the pruned batch may drop padding every row shares."""
    return [logits[row, -int(m.sum()):] for row, m in enumerate(mask.bool())]


def assert_same_as_stock(model, inputs, pipeline):
    with torch.no_grad():
        expected = model(**inputs).logits
    got = pipeline(**inputs).logits
    for ours, theirs, m in zip(real_rows(got, inputs["attention_mask"]), expected, inputs["attention_mask"].bool()):
        torch.testing.assert_close(ours, theirs[m], rtol=0, atol=1e-5)
    assert torch.equal(pipeline.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))


@pytest.mark.parametrize("positions", ["contiguous", "original"])
def test_keep_all_equals_the_stock_model_llava(llava, positions):
    inputs = llava_batch(llava, PROMPTS, IMAGES)
    assert_same_as_stock(llava, inputs, pruned(llava, tokens_per_image(llava), positions))


@pytest.mark.parametrize("positions", ["contiguous", "original"])
def test_keep_all_equals_the_stock_model_llava_next(positions):
    model = tiny_llava_next()
    inputs = llava_next_batch(model, [[8, 9], [10]], [[(30, 20)], [(16, 16)]])
    assert_same_as_stock(model, inputs, pruned(model, 10_000, positions))


@pytest.mark.parametrize("name", ["internvl", "mistral3", "paligemma", "smolvlm"])
def test_keep_all_equals_the_stock_model_generic(name):
    model = tiny_model(name)
    inputs = batch(model, name, [[8, 9], [10]], [1, 1])
    assert "original" in zoprune.prune(model, scorer=None, selector="divprune").adapter.position_modes
    assert_same_as_stock(model, inputs, pruned(model, 10_000, "original"))


def unpruned_positions(inputs):
    mask = inputs["attention_mask"]
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def test_the_language_model_receives_the_unpruned_positions(llava):
    inputs = llava_batch(llava, PROMPTS, IMAGES)
    budget = 3
    pipeline = pruned(llava, budget, "original")
    with language_model_calls(llava) as calls:
        output = pipeline.generate(**inputs, **GREEDY)
    assert output.shape[1] == inputs["input_ids"].shape[1] + GREEDY["max_new_tokens"]
    selections = iter(pipeline.last_selection)
    full = unpruned_positions(inputs)
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    n = tokens_per_image(llava)
    prefill = calls[0]["position_ids"]
    for row in range(len(PROMPTS)):
        keep = mask[row].clone()  # the prompt's real columns, minus the dropped image tokens
        image_columns = (ids[row] == IMAGE_TOKEN_ID).nonzero().squeeze(-1)
        for image in range(IMAGES[row]):
            selection = next(selections)
            dropped = torch.ones(n, dtype=torch.bool)
            dropped[selection.kept] = False
            keep[image_columns[image * n:(image + 1) * n][dropped]] = False
        expected = full[row, keep]
        assert prefill[row, -expected.numel():].tolist() == expected.tolist()
        # decode steps continue from the unpruned length, not from the pruned one
        for step, call in enumerate(calls[1:]):
            assert call["position_ids"][row].tolist() == [int(mask[row].sum()) + step]
    # contiguous numbers the pruned prompt densely: the last prompt token sits earlier
    with language_model_calls(llava) as dense:
        pruned(llava, budget, "contiguous").generate(**inputs, **GREEDY)
    short = dense[0]["attention_mask"][0].bool()
    assert int(prefill[0, -1]) - int(short.sum() - 1) == IMAGES[0] * (n - budget)


def test_left_padded_batch_equals_one_by_one(llava):
    pipeline = pruned(llava, 3, "original")
    inputs = llava_batch(llava, PROMPTS, IMAGES)
    together = pipeline.generate(**inputs, **GREEDY)[:, -GREEDY["max_new_tokens"]:]
    first = 0
    for row, count in enumerate(IMAGES):
        real = inputs["attention_mask"][row].bool()
        alone = {"input_ids": inputs["input_ids"][row, real][None], "attention_mask": torch.ones(1, int(real.sum())),
                 "pixel_values": inputs["pixel_values"][first:first + count]}  # the same prompt and images, unpadded
        first += count
        answer = pipeline.generate(**alone, **GREEDY)[:, -GREEDY["max_new_tokens"]:]
        assert together[row].tolist() == answer[0].tolist()


def test_original_positions_change_the_answer(llava):
    inputs = llava_batch(llava, [[6, 7, 8, 9, 10, 19]], [1])
    dense = pruned(llava, 3, "contiguous")(**inputs).logits[0, -1]
    kept = pruned(llava, 3, "original")(**inputs).logits[0, -1]
    assert not torch.allclose(dense, kept, atol=1e-4)


def test_caller_position_ids_are_the_ones_kept(llava):
    inputs = llava_batch(llava, [[6, 7, 8]], [1])
    shifted = torch.arange(inputs["input_ids"].shape[1])[None] + 100
    pipeline = pruned(llava, 3, "original")
    prepared = pipeline.prepare(**inputs, position_ids=shifted)
    assert prepared["position_ids"][0, 0] == 100 and prepared["position_ids"][0, -1] == shifted[0, -1]


def test_qwen_m_rope_is_the_same_under_both_settings():
    model = tiny_qwen2_vl()
    inputs = qwen_batch(model, [[8, 9], [10]], [[("image", (1, 4, 6))], [("image", (1, 4, 4))]])
    dense, kept = (pruned(model, 3, p).prepare(**inputs) for p in ("contiguous", "original"))
    assert dense.keys() == kept.keys()
    for key, value in dense.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, kept[key]), key
    assert dense["position_ids"].shape[0] == 4  # the text row and the 3-D rotary rows of the kept columns


def test_in_llm_selectors_keep_original_positions_either_way(llava):
    inputs = llava_batch(llava, PROMPTS, IMAGES)
    outputs = [pruned(llava, 3, p, selector="fastv").generate(**inputs, **GREEDY) for p in ("contiguous", "original")]
    assert torch.equal(*outputs)


def test_embed_refuses_original_positions(llava):
    inputs = llava_batch(llava, [[6, 7, 8]], [1])
    with pytest.raises(ConfigError, match="numbers their positions itself"):
        pruned(llava, 3, "original").embed(**inputs)
    assert pruned(llava, 3, "contiguous").embed(**inputs)[0].embeddings.shape[0] == 3


def test_refused_with_merged_tokens(llava):
    with pytest.raises(ConfigError, match="merged tokens have no position"):
        zoprune.prune(llava, "configs/visionzip.yaml", positions="original")


def test_refused_by_an_adapter_that_cannot_honour_it(llava, monkeypatch):
    from zoprune_plugins.adapters.llava import LlavaAdapter

    monkeypatch.setattr(LlavaAdapter, "position_modes", frozenset({"contiguous"}))
    with pytest.raises(ConfigError, match="positions: 'original' is not supported by adapter 'llava'"):
        pruned(llava, 3, "original")
    pruned(llava, 3, "contiguous")


def test_unknown_value_is_a_config_error():
    with pytest.raises(ConfigError, match="positions"):
        zoprune.PipelineConfig(positions="shifted")
