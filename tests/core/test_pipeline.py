"""prune(model, config) on tiny random LLaVA models: exactness with every token kept, batches, several images,
budgets, and clear errors on bad input."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import zoprune
from zoprune.errors import ConfigError, InputError, UnsupportedModelError
from tiny_models import IMAGE_TOKEN_ID, llava_batch, tiny_llava, tokens_per_image

GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.fixture(scope="module")
def model():
    return tiny_llava()


def keep_all(model, **config):
    return zoprune.prune(model, budget=tokens_per_image(model), **config)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("prompts, images", [
    ([[6, 7, 8, 9, 19]], [1]),  # one prompt, one image
    ([[6, 7, 8, 9, 10, 19], [6, 19]], [1, 1]),  # two prompts of different lengths, left padded
    ([[6, 7, 8]], [2]),  # two images in one prompt
    ([[6, 7, 8, 9], [6, 19], [7]], [2, 0, 1]),  # different numbers of images per prompt, one without
])
def test_keep_all_is_exact(prompts, images, attn):
    model = tiny_llava(attn_implementation=attn)
    inputs = llava_batch(model, prompts, images)
    pruned = keep_all(model)
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.equal(pruned(**inputs).logits, expected)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))
    assert [(s.sample, s.image) for s in pruned.last_selection] == [
        (sample, image) for sample, count in enumerate(images) for image in range(count)]


def test_beam_search_and_several_sequences(model):
    inputs = llava_batch(model, [[6, 7, 8, 9, 10, 19], [6, 19]], [1, 2])
    beams = {"max_new_tokens": 4, "num_beams": 2, "num_return_sequences": 2, "do_sample": False}
    assert torch.equal(keep_all(model).generate(**inputs, **beams), model.generate(**inputs, **beams))
    output = zoprune.prune(model, budget=4).generate(**inputs, **beams, return_dict_in_generate=True)
    length = inputs["input_ids"].shape[1]
    assert output.sequences.shape == (4, length + 4)
    assert torch.equal(output.sequences[:, :length], inputs["input_ids"].repeat_interleave(2, dim=0))


def test_model_is_left_untouched(model):
    before = {name: p.clone() for name, p in model.state_dict().items()}
    inputs = llava_batch(model, [[6, 7]], [1])
    zoprune.prune(model, budget=4).generate(**inputs, **GREEDY)
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert model.generate(**inputs, **GREEDY).shape[1] == inputs["input_ids"].shape[1] + GREEDY["max_new_tokens"]


def test_pruned_generate_keeps_k_per_image_and_returns_callers_prompt(model):
    inputs = llava_batch(model, [[6, 7, 8, 9, 10], [6]], [2, 1])
    pruned = zoprune.prune(model, budget=5)
    output = pruned.generate(**inputs, **GREEDY)
    length = inputs["input_ids"].shape[1]
    assert output.shape == (2, length + GREEDY["max_new_tokens"])
    assert torch.equal(output[:, :length], inputs["input_ids"])
    assert [s.kept.numel() for s in pruned.last_selection] == [5, 5, 5]
    logits = pruned(**inputs).logits
    # the language model saw 5 image positions per image instead of 16
    assert logits.shape[1] == length - 2 * (tokens_per_image(model) - 5)


def test_pruned_forward_equals_a_model_given_only_the_kept_tokens(model):
    """The language model must see exactly the kept features, in order, at the remaining placeholders."""
    inputs = llava_batch(model, [[6, 7, 8]], [1])
    pruned = zoprune.prune(model, budget=6)
    logits = pruned(**inputs).logits
    (selection,) = pruned.last_selection
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output[0]
        ids = inputs["input_ids"][0]
        n = tokens_per_image(model)
        start = int((ids == IMAGE_TOKEN_ID).nonzero()[0])
        keep = torch.ones_like(ids, dtype=torch.bool)
        dropped = torch.ones(n, dtype=torch.bool)
        dropped[selection.kept] = False
        keep[start:start + n] = ~dropped
        embeds = model.get_input_embeddings()(ids[keep])
        embeds[start:start + 6] = features[selection.kept]
        expected = model(inputs_embeds=embeds[None]).logits
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_budget_larger_than_tokens_keeps_all(model):
    inputs = llava_batch(model, [[6, 7]], [1])
    pruned = zoprune.prune(model, budget=10_000)
    with torch.no_grad():
        assert torch.equal(pruned(**inputs).logits, model(**inputs).logits)
    assert pruned.last_selection[0].kept.tolist() == list(range(tokens_per_image(model)))


def test_ratio_budget(model):
    pruned = zoprune.prune(model, budget={"ratio": 0.25})
    pruned.select(**llava_batch(model, [[6]], [1]))
    assert pruned.last_selection[0].kept.numel() == tokens_per_image(model) // 4


def test_same_seed_same_selection_other_seed_differs(model):
    inputs = llava_batch(model, [[6, 7]], [2])

    def kept(seed):
        pruned = zoprune.prune(model, budget=4, seed=seed, selector="topk",
                               scorer={"name": "zo_sensitivity", "directions": 4})
        return [s.kept.tolist() for s in pruned.select(**inputs)], [s.scores for s in pruned.last_selection]

    (a, scores_a), (b, _), (_, scores_c) = kept(1), kept(1), kept(2)
    assert a == b
    assert not torch.equal(scores_a[0], scores_c[0])


def test_text_only_inputs_pass_through(model):
    inputs = llava_batch(model, [[6, 7, 8]], [0])
    output = zoprune.prune(model, budget=4).generate(**inputs, **GREEDY)
    assert torch.equal(output, model.generate(**inputs, **GREEDY))


@pytest.mark.parametrize("budget", [0, -1])
def test_bad_budget(model, budget):
    with pytest.raises(ConfigError, match="budget.keep"):
        zoprune.prune(model, budget=budget)


@pytest.mark.parametrize("ratio", [0.0, 1.2, -0.5])
def test_bad_ratio(model, ratio):
    with pytest.raises(ConfigError, match=r"budget.ratio"):
        zoprune.prune(model, budget={"ratio": ratio})


def test_not_a_vlm():
    text_model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM.*LlavaForConditionalGeneration"):
        zoprune.prune(text_model)
    with pytest.raises(UnsupportedModelError, match="adapter 'llava' does not support LlamaForCausalLM"):
        zoprune.prune(text_model, adapter="llava")
    with pytest.raises(UnsupportedModelError, match="str"):
        zoprune.prune("llava-hf/llava-1.5-7b-hf")


def test_missing_images(model):
    inputs = llava_batch(model, [[6, 7]], [1])
    del inputs["pixel_values"]
    with pytest.raises(InputError, match="no `pixel_values`"):
        zoprune.prune(model, budget=4).generate(**inputs)


def test_images_without_placeholders(model):
    inputs = llava_batch(model, [[6, 7]], [1])
    inputs["pixel_values"] = torch.cat([inputs["pixel_values"]] * 2)
    with pytest.raises(InputError, match="placeholders for 1 images but `pixel_values` holds 2"):
        zoprune.prune(model, budget=4).generate(**inputs)


def test_truncated_placeholders(model):
    inputs = llava_batch(model, [[6, 7]], [1])
    inputs["input_ids"][0, 2] = 6
    with pytest.raises(InputError, match="not a multiple"):
        zoprune.prune(model, budget=4).generate(**inputs)


def test_config_from_file_and_overrides(model, tmp_path):
    path = tmp_path / "pipeline.yaml"
    path.write_text("selector: topk\nbudget: 3\nscorer:\n  name: zo_sensitivity\n  directions: 4\n")
    pruned = zoprune.prune(model, path, seed=5)
    assert pruned.config.seed == 5 and pruned.config.selector.name == "topk"
    pruned.select(**llava_batch(model, [[6]], [1]))
    assert pruned.last_selection[0].kept.numel() == 3
    with pytest.raises(ConfigError, match="seed"):
        zoprune.prune(model, path, seed="x")


def test_budget_twins_score_each_input_once(model, monkeypatch):
    from zoprune_plugins.scorers.zo_sensitivity import ZOSensitivity

    calls = []
    real = ZOSensitivity.score
    monkeypatch.setattr(ZOSensitivity, "score", lambda self, tokens, ctx: calls.append(1) or real(self, tokens, ctx))
    inputs = llava_batch(model, [[6, 7], [8]], [1, 1])
    base = zoprune.prune(model, budget=8, scorer={"name": "zo_sensitivity", "directions": 4})
    twins = [base.at_budget(b) for b in (8, 4, 2)]
    selections = [[s.kept for s in twin.select(**inputs)] for twin in twins]
    assert len(calls) == 2  # two images, scored once for three budgets
    assert [twin.config.budget.keep for twin in twins] == [8, 4, 2]
    for twin, kept in zip(twins, selections):  # the same selections as pipelines built from scratch
        fresh = zoprune.prune(model, twin.config).select(**inputs)
        assert all(torch.equal(a, f.kept) for a, f in zip(kept, fresh))
    before = len(calls)
    twins[1].select(**inputs)
    assert len(calls) == before  # still the same inputs
    inputs["pixel_values"].mul_(2)  # changed in place: scored again
    twins[0].select(**inputs)
    assert len(calls) == before + 2


def _batch_independence_configs() -> list[dict]:
    """Every registered method that selects before the language model, every registered scorer (with topk) and every
    registered selector that needs no scores: whatever draws from the seeded generator is among them."""
    from zoprune.registry import load_registry

    registry = load_registry()
    configs = [dict(m.config) for name, m in sorted(registry.methods.items()) if registry.method_available(name) is None
               and registry.get("selector", m.config["selector"] if isinstance(m.config["selector"], str)
                                else m.config["selector"]["name"]).cls.stage == "pre_llm"]
    configs += [{"scorer": name, "selector": "topk"} for name in registry.names("scorer")]
    configs += [{"scorer": None, "selector": name} for name in registry.names("selector")
                if not registry.get("selector", name).cls.needs_scores
                and registry.get("selector", name).cls.stage == "pre_llm"]
    unique = []
    for config in configs:
        selector = config["selector"] if isinstance(config["selector"], str) else config["selector"]["name"]
        if registry.get("selector", selector).cls.resizes_images:
            continue  # downsample cannot run on the LLaVA here (test_downsample checks it per image on Qwen)
        if config not in unique:
            unique.append(config)
    return unique


def _label(config: dict) -> str:
    selector = config["selector"]
    name = selector if isinstance(selector, str) else selector["name"] + "-" + selector["fusion"]
    return f"{config['scorer']}+{name}"


@pytest.mark.parametrize("config", _batch_independence_configs(), ids=_label)
def test_an_images_selection_does_not_depend_on_its_batch_neighbours(model, config):
    # the same image alone, then three times in a batch of two prompts with another image among them: every copy
    # gets the same scores and kept tokens as the image alone (each image's generator is seeded afresh)
    image = llava_batch(model, [[6]], [1], seed=3)["pixel_values"]
    other = llava_batch(model, [[6]], [1], seed=4)["pixel_values"]
    alone = llava_batch(model, [[6, 7]], [1])
    alone["pixel_values"] = image
    batch = llava_batch(model, [[6, 7], [8, 9, 10]], [2, 2])
    batch["pixel_values"] = torch.cat([image, other, image, image])
    pruned = zoprune.prune(model, {**config, "budget": 5, "seed": 11})
    (reference,) = pruned.select(**alone)
    # a selector that reads the prompt (text_embeddings, e.g. cdpruner) is compared with the image alone under the
    # same prompt text as its copy
    asks = pruned.selector.requires | (pruned.scorer.requires if pruned.scorer is not None else frozenset())
    references = {0: reference}
    if "text_embeddings" in asks:
        alone_second = llava_batch(model, [[8, 9, 10]], [1])
        alone_second["pixel_values"] = image
        (references[1],) = pruned.select(**alone_second)
    selections = pruned.select(**batch)
    assert [(s.sample, s.image) for s in selections] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for copy in (selections[0], selections[2], selections[3]):
        reference = references.get(copy.sample, references[0])
        assert torch.equal(copy.kept, reference.kept)
        if reference.scores is not None:
            # the vision tower runs batched, so its attention may differ in the last bit (measured: 1.2e-7
            # relative, cls_attention); the draws must not differ at all
            torch.testing.assert_close(copy.scores, reference.scores, rtol=5e-7, atol=1e-9)
        if reference.merged is not None:
            torch.testing.assert_close(copy.merged, reference.merged, rtol=5e-7, atol=1e-9)
