"""The Qwen3-VL adapter (Qwen3-VL, Qwen3.5 and their MoE variants) and the GLM-4V adapter on tiny random models:
exact with every token kept (float32 and bf16, images and a video, left padding), deepstack features pruned with
the main features' kept indices, kept tokens at their unpruned 3-D positions, pruned generation."""

import pytest
import torch

import zoprune
from tiny_generic import qwen3_batch, tiny_glm4v, tiny_qwen3_vl

GREEDY = {"max_new_tokens": 4, "do_sample": False}
PROMPTS = [[7, 8, 9], [10], [11, 12]]
VISUALS = [[("image", (1, 4, 6)), ("video", (2, 4, 4))], [("image", (1, 6, 4))], []]


@pytest.fixture(scope="module")
def model():
    return tiny_qwen3_vl()


@pytest.fixture(scope="module")
def inputs(model):
    return qwen3_batch(model, PROMPTS, VISUALS)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen3_5"])
@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("dtype, attn", [(torch.float32, "eager"), (torch.bfloat16, "eager"), (torch.float32, "sdpa")],
                         ids=["float32", "bf16", "sdpa"])
def test_keep_all_is_exact(family, moe, dtype, attn):
    """Qwen3-VL, Qwen3-VL-MoE, Qwen3.5 (no deepstack, linear attention) and Qwen3.5-MoE."""
    model = tiny_qwen3_vl(moe=moe, dtype=dtype, family=family, attn_implementation=attn)
    inputs = qwen3_batch(model, PROMPTS, VISUALS)
    pruned = zoprune.prune(model, budget=10_000)
    assert pruned.adapter.name == "qwen3_vl"
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.equal(pruned(**inputs).logits, expected)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))


def _language_model_inputs(model, call):
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append({k: kwargs.get(k) for k in
                                                  ("deepstack_visual_embeds", "visual_pos_masks", "position_ids")}),
        with_kwargs=True)
    try:
        with torch.no_grad():
            call()
    finally:
        handle.remove()
    return seen[0]


def test_deepstack_and_positions_follow_the_kept_tokens(model, inputs):
    """Every deepstack layer gets the rows of exactly the kept tokens, at the kept tokens' positions, and the kept
    tokens keep their unpruned 3-D positions."""
    full = _language_model_inputs(model, lambda: model(**inputs))
    pruned = zoprune.prune(model, budget=3)
    short = pruned.prepare(**inputs)
    cut = _language_model_inputs(model, lambda: model(**short))
    visual = full["visual_pos_masks"]  # (B, L): image and video positions of the unpruned prompt
    kept = torch.zeros_like(visual)  # (B, L): the kept tokens' columns, from the selection
    for tokens, selection in zip(pruned._extract(inputs), pruned.last_selection):
        kept[tokens.sample, tokens.source.columns[tokens.packed[selection.kept]]] = True
    columns = [((inputs["attention_mask"][b].bool() & ~visual[b]) | kept[b]).nonzero().squeeze(-1)
               for b in range(visual.shape[0])]  # text and kept visual columns, in order
    assert int(cut["visual_pos_masks"].sum()) == int(kept.sum()) == sum(s.num_kept for s in pruned.last_selection)
    for full_layer, cut_layer in zip(full["deepstack_visual_embeds"], cut["deepstack_visual_embeds"]):
        assert torch.equal(cut_layer, full_layer[kept[visual]])  # same rows, same order
    for b, row in enumerate(columns):
        short_real = short["attention_mask"][b].bool()
        # the last three rows are (temporal, height, width); the pruned call adds a text row in front
        assert torch.equal(cut["position_ids"][-3:, b, short_real], full["position_ids"][-3:, b, row])


def test_pruned_generate(model, inputs):
    pruned = zoprune.prune(model, budget=3, adapter={"name": "qwen3_vl", "video_policy": "per_frame"})
    output = pruned.generate(**inputs, **GREEDY)
    length = inputs["input_ids"].shape[1]
    assert output.shape == (3, length + GREEDY["max_new_tokens"])
    assert torch.equal(output[:, :length], inputs["input_ids"])
    assert [s.num_kept for s in pruned.last_selection] == [3, 2, 1, 3]  # the video's 3 shared by its 2 slices


def test_pruning_inside_the_language_model_is_refused_by_name(model, inputs):
    with pytest.raises(zoprune.UnsupportedModelError, match="qwen3_vl.*cannot prune inside the language model"):
        zoprune.prune(model, budget=3, scorer=None, selector={"name": "fastv", "layer": 1})(**inputs)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_glm4v_keep_all_is_exact_and_prunes(moe, dtype):
    """GLM-4V and GLM-4V-MoE, images: the merger's input as features, the merger as projector."""
    model = tiny_glm4v(moe=moe, dtype=dtype)
    inputs = qwen3_batch(model, PROMPTS, [[("image", (1, 4, 6)), ("image", (1, 4, 4))], [("image", (1, 6, 4))], []])
    pruned = zoprune.prune(model, budget=10_000)
    assert pruned.adapter.name == "glm4v"
    with torch.no_grad():
        expected = model(**inputs).logits
        assert torch.equal(pruned(**inputs).logits, expected)
        assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))
        for tokens in pruned._extract(inputs):
            assert torch.allclose(model.model.visual.merger(tokens.features.to(dtype)), tokens.model_embeddings)
    small = zoprune.prune(model, budget=3)
    output = small.generate(**inputs, **GREEDY)
    assert torch.equal(output[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert [s.num_kept for s in small.last_selection] == [3, 3, 3]
