"""``PrunedModel.embed``: per image, exactly the rows ``generate`` feeds the language model, for every method that
prunes before the language model and every family; methods that prune inside it are refused."""

import pytest
import torch

import zoprune
from zoprune.errors import ConfigError
from zoprune.methods import available_methods, resolve_method
from tiny_families import (language_model_calls, llava_next_batch, qwen_batch, tiny_llava_next, tiny_qwen2_5_vl,
                           tiny_qwen2_vl)
from tiny_models import llava_batch, tiny_llava


def _llava(dtype=torch.float32):
    model = tiny_llava(dtype=dtype)
    inputs = llava_batch(model, [[6, 7, 8], [9]], [2, 1])
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return model, inputs, {"budget": 8}  # 8 of 16 tokens: VisionZip merges 1 of them


def _llava_next(policy="global", budget=8):
    def make():
        model = tiny_llava_next()
        inputs = llava_next_batch(model, [[7, 8, 9], [10]], [[(30, 20), (16, 16)], [(20, 30)]])
        return model, inputs, {"adapter": {"name": "llava_next", "budget_policy": policy}, "budget": budget}
    return make


def _qwen(build):
    def make():
        model = build()
        inputs = qwen_batch(model, [[7, 8, 9], [10]], [[("image", (1, 4, 6)), ("video", (2, 4, 4))],
                                                       [("image", (1, 6, 4))]])
        return model, inputs, {"budget": 3}  # of 6 and 8 tokens
    return make


FAMILIES = {"llava": _llava, "llava_bf16": lambda: _llava(torch.bfloat16), "llava_next": _llava_next(),
            "llava_next_per_tile": _llava_next("per_tile", 24), "qwen2_vl": _qwen(tiny_qwen2_vl),
            "qwen2_5_vl": _qwen(tiny_qwen2_5_vl)}
PRE_LLM = [name for name in available_methods() if resolve_method(name)[1].component("selector")[0].stage == "pre_llm"]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return (request.param, *FAMILIES[request.param]())


def _token_ids(model) -> dict[str, int]:
    ids = {"image": model.config.image_token_id}
    if getattr(model.config, "video_token_id", None) is not None:
        ids["video"] = model.config.video_token_id
    return ids


def _unpruned(model, inputs) -> dict[str, list[torch.Tensor]]:
    """Per kind, each input's unpruned embeddings (L_i, d_l) as the model's own feature functions compute them."""
    with torch.no_grad():
        if "image_grid_thw" in inputs:
            out = {"image": list(model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"],
                                                                return_dict=True).pooler_output)}
            if "video_grid_thw" in inputs:
                out["video"] = list(model.model.get_video_features(
                    inputs["pixel_values_videos"], inputs["video_grid_thw"], return_dict=True).pooler_output)
            return out
        extra = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"], **extra)
        features = getattr(features, "pooler_output", features)
        return {"image": list(features)}


def test_the_methods_under_test_cover_the_pre_llm_ones():
    assert {"zoo-prune", "zoo-prune-fast", "divprune", "visionzip", "random"} <= set(PRE_LLM)
    assert "fastv" not in PRE_LLM


@pytest.mark.parametrize("method", PRE_LLM)
def test_embed_returns_what_generate_feeds_the_language_model(family, method):
    name, model, inputs, extra = family
    config = {**resolve_method(method)[1].to_dict(), **extra}
    try:
        generating = zoprune.prune(model, config)
        with language_model_calls(model) as calls:
            feeding = []
            hook = model.register_forward_pre_hook(
                lambda module, args, kwargs: feeding.append(kwargs.get("input_ids")), with_kwargs=True)
            try:
                generating.generate(**inputs, max_new_tokens=2, do_sample=False)
            finally:
                hook.remove()
    except ConfigError as error:  # a method the family cannot run: for a stated reason only
        assert (name.startswith("qwen") and any(reason in str(error) for reason in (
            "cannot place merged tokens", "cannot provide", "Linear-activation-Linear"))) or (
            name.startswith("llava") and "fixed-resolution encoder" in str(error)), error
        return
    embedded = zoprune.prune(model, config).embed(**inputs)  # a separate pipeline: nothing is shared

    prefill_ids, prefill_embeds = feeding[0], calls[0]["inputs_embeds"]  # (B, L'), (B, L', d_l)
    assert embedded and all(e.embeddings.dtype == model.dtype for e in embedded)
    merging = zoprune.prune(model, config).selector.merges
    assert any(e.num_merged for e in embedded) == merging  # merged rows are really under test for VisionZip
    for kind, token_id in _token_ids(model).items():
        for sample in range(prefill_ids.shape[0]):
            fed = prefill_embeds[sample][prefill_ids[sample] == token_id]  # the rows the model received
            ours = [e.embeddings for e in embedded if e.sample == sample and e.kind == kind]
            assert torch.equal(torch.cat(ours) if ours else fed[:0], fed), (kind, sample)
    if generating.selector.resizes_images:  # downsample: the rows come from the shrunk image, not the unpruned one
        return
    unpruned = _unpruned(model, inputs)
    for kind in unpruned:
        mine = [e for e in embedded if e.kind == kind]
        assert len(mine) == len(unpruned[kind])
        for e, full in zip(mine, unpruned[kind]):  # the kept rows are the unpruned rows at ``kept``
            assert e.num_tokens == full.shape[0]
            assert e.embeddings.shape[0] == e.kept.numel() + e.num_merged
            assert torch.equal(e.embeddings[:e.kept.numel()], full[e.kept])


def test_embed_numbers_images_per_prompt_and_fills_last_selection():
    model, inputs, _ = _llava()
    pruned = zoprune.prune(model, budget=5)
    embedded = pruned.embed(**inputs)
    assert [(e.sample, e.image, e.kind) for e in embedded] == [(0, 0, "image"), (0, 1, "image"), (1, 0, "image")]
    assert all(e.embeddings.shape == (5, model.config.text_config.hidden_size) for e in embedded)
    assert [torch.equal(e.kept, s.kept) for e, s in zip(embedded, pruned.last_selection)] == [True] * 3


def test_embed_without_images_is_empty():
    model = tiny_llava()
    inputs = llava_batch(model, [[6, 7]], [0])
    assert zoprune.prune(model, budget=4).embed(**inputs) == []


def test_embed_refuses_a_method_that_prunes_inside_the_language_model():
    model, inputs, _ = _llava()
    pruned = zoprune.prune(model, {"scorer": None, "selector": {"name": "fastv", "layer": 1}, "budget": 4})
    with pytest.raises(ConfigError, match="inside the language model"):
        pruned.embed(**inputs)
