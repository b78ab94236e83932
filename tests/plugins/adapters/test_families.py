"""What every model family shares: auto-detection of the adapter, the error for unsupported models, and every
registered scorer and selector running on every family without knowing which one it is."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import zoprune
from zoprune.errors import ConfigError, UnsupportedModelError
from tiny_families import llava_next_batch, qwen_batch, tiny_llava_next, tiny_qwen2_5_vl, tiny_qwen2_vl


def _llava_next():
    model = tiny_llava_next()
    return model, llava_next_batch(model, [[7, 8, 9], [10]], [[(30, 20), (16, 16)], [(20, 30)]])


def _qwen(build):
    def make():
        model = build()
        return model, qwen_batch(model, [[7, 8, 9], [10]], [[("image", (1, 4, 6)), ("video", (2, 4, 4))],
                                                           [("image", (1, 6, 4))]])
    return make


FAMILIES = {"llava_next": _llava_next, "qwen2_vl": _qwen(tiny_qwen2_vl), "qwen2_5_vl": _qwen(tiny_qwen2_5_vl)}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    return (request.param, *FAMILIES[request.param]())


def test_adapter_is_detected_from_the_model_class(family):
    name, model, _ = family
    assert zoprune.prune(model).adapter.name == name


def test_an_adapter_for_another_family_is_refused(family):
    name, model, _ = family
    other = "qwen2_vl" if name != "qwen2_vl" else "llava_next"
    with pytest.raises(UnsupportedModelError, match=type(model).__name__):
        zoprune.prune(model, adapter=other)


def test_text_only_model_names_the_supported_classes():
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    with pytest.raises(UnsupportedModelError) as error:
        zoprune.prune(LlamaForCausalLM(config))
    message = str(error.value)
    assert "LlamaForCausalLM" in message
    for cls in ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration",
                "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration"):
        assert cls in message


@pytest.mark.parametrize("adapter", [{"name": "llava_next", "budget_policy": "per_crop"},
                                     {"name": "llava_next", "newlines": "sometimes"},
                                     {"name": "qwen2_vl", "video_policy": "per_second"}])
def test_bad_adapter_options_are_config_errors(adapter):
    key = next(k for k in adapter if k != "name")
    with pytest.raises(ConfigError, match=f"adapter.{key}"):
        zoprune.PipelineConfig(adapter=adapter)


def _run(model, inputs, k, **config):
    """select() with ``config``; returns the selections, or the ConfigError when the combination cannot work."""
    spec = config.get("selector", "coverage")
    selector = zoprune.get_registry().get("selector", spec["name"] if isinstance(spec, dict) else spec).cls
    if selector.stage == "in_llm":
        config = {**config, "scorer": None}  # such selectors rank by the language model's own signal
    try:
        pruned = zoprune.prune(model, budget=k, **config)
        return pruned.select(**inputs)
    except ConfigError as error:
        return error


@pytest.mark.parametrize("scorer", zoprune.get_registry().names("scorer"))
def test_every_scorer_runs_on_every_family(family, scorer):
    """Each scorer either scores every token of every image (k kept per input) or says clearly why it cannot."""
    name, model, inputs = family
    result = _run(model, inputs, 3, scorer=scorer, selector="coverage")
    if isinstance(result, ConfigError):  # e.g. [CLS] attention on Qwen (no [CLS]), Jacobian of a non-MLP merger
        assert scorer in str(result)
        adapter = zoprune.prune(model).adapter
        cls = zoprune.get_registry().get("scorer", scorer).cls
        assert not cls.requires <= adapter.provides or name.startswith("qwen")
        return
    assert result and all(s.kept.numel() == 3 and s.scores.shape == (s.num_tokens,) for s in result)
    assert all(torch.isfinite(s.scores).all() for s in result)


@pytest.mark.parametrize("selector", zoprune.get_registry().names("selector"))
def test_every_selector_runs_on_every_family(family, selector):
    name, model, inputs = family
    cls = zoprune.get_registry().get("selector", selector).cls
    if cls.stage == "in_llm":  # e.g. fastv; the tiny language models have 2 layers: prune from layer 1
        result = _run(model, inputs, 3, selector={"name": selector, "layer": 1})
    else:
        result = _run(model, inputs, 3, selector=selector)
    if cls.resizes_images and not name.startswith("qwen"):  # downsample: only Qwen's tower takes any resolution
        assert isinstance(result, ConfigError) and "fixed-resolution encoder" in str(result)
        return
    if selector == "visionzip" and name.startswith("qwen"):  # its default key similarity: Qwen provides no keys
        assert isinstance(result, ConfigError) and "vision_keys" in str(result)
        return
    assert not isinstance(result, ConfigError), result
    assert result and all(s.num_kept == 3 for s in result)
    assert all(bool((s.kept[1:] > s.kept[:-1]).all()) and (not s.kept.numel() or int(s.kept.max()) < s.num_tokens)
               for s in result)  # pool keeps no original token, only merged ones


def _bf16_llava(attn):
    from tiny_models import llava_batch, tiny_llava

    model = tiny_llava(dtype=torch.bfloat16, attn_implementation=attn)
    inputs = llava_batch(model, [[6, 7, 8, 9], [6, 19]], [2, 1])
    return model, {**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}


def _bf16_llava_next(attn):
    model = tiny_llava_next(dtype=torch.bfloat16, attn_implementation=attn)
    return model, llava_next_batch(model, [[7, 8, 9], [10]], [[(30, 20), (16, 16)], [(20, 30)]])


def _bf16_qwen(build):
    def make(attn):
        model = build(dtype=torch.bfloat16, attn_implementation=attn)
        return model, qwen_batch(model, [[7, 8, 9], [10]], [[("image", (1, 4, 6)), ("video", (2, 4, 4))],
                                                           [("image", (1, 6, 4))]])
    return make


BF16_FAMILIES = {"llava": _bf16_llava, "llava_next": _bf16_llava_next, "qwen2_vl": _bf16_qwen(tiny_qwen2_vl),
                 "qwen2_5_vl": _bf16_qwen(tiny_qwen2_5_vl)}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("name", list(BF16_FAMILIES))
def test_keep_all_is_exact_in_bfloat16(name, attn):
    # real checkpoints run in bf16 while the scorers work in float32: the language model must get the model's own
    # bf16 embeddings, not the float32 scoring ones rounded back (on a float32 model the two are the same tensor)
    model, inputs = BF16_FAMILIES[name](attn)
    pruned = zoprune.prune(model, budget=10_000)
    assert pruned.config.torch_dtype(model.dtype) == torch.float32  # the scoring dtype differs from the model's
    greedy = {"max_new_tokens": 5, "do_sample": False}
    with torch.no_grad():
        expected = model(**inputs).logits
    logits = pruned(**inputs).logits
    assert logits.dtype == torch.bfloat16 and torch.equal(logits, expected)
    assert torch.equal(pruned.generate(**inputs, **greedy), model.generate(**inputs, **greedy))
    assert all(s.kept.numel() == s.num_tokens for s in pruned.last_selection)
