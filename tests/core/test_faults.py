"""Faults inside the model and misbehaving components: each gives the documented outcome (docs/reliability.md), a
clear error naming the image and the component, or a defined fallback; never a silent arbitrary selection."""

import pytest
import torch

import zoprune
from zoprune.errors import InputError, NumericalError, PluginError
from zoprune.registry import reload_registry
from zoprune_plugins.selection.lattice import evenly_spaced
from zoprune_plugins.selectors.coverage import coverage_select, coverage_select_dense
from zoprune_plugins.selectors.divprune import divprune_select
from tiny_models import llava_batch, tiny_llava, tokens_per_image


@pytest.fixture(scope="module")
def model():
    return tiny_llava()


def two_prompts(model):
    return llava_batch(model, [[6, 7], [8]], [2, 1])


def test_nan_in_the_vision_features_names_the_image_and_the_component(model):
    pruned = zoprune.prune(model, budget=4)
    real = pruned.adapter.vision_features

    def poisoned(inputs, outputs=None):
        features = real(inputs, outputs).clone()
        features[1, 5, 0] = float("nan")  # the second image of prompt 0
        return features

    pruned.adapter.vision_features = poisoned
    with pytest.raises(NumericalError, match=r"1 non-finite values .* in the vision features \(the projector's input\) "
                                             r"for image 1 of prompt 0 \(float32\); nothing was pruned"):
        pruned.generate(**two_prompts(model), max_new_tokens=2)
    assert pruned.last_selection == []


def test_float16_overflow_in_the_projector_is_named():
    """A float16 model whose projector overflows (outputs above 65504 become inf)."""
    half = tiny_llava(dtype=torch.float16)
    projector = half.model.multi_modal_projector
    with torch.no_grad():
        projector.linear_1.weight.mul_(100)
        projector.linear_2.weight.mul_(20000)
    inputs = llava_batch(half, [[6, 7], [8]], [1, 1])
    inputs["pixel_values"] = inputs["pixel_values"].half()
    with pytest.raises(NumericalError, match=r"in the projector's output for image 0 of prompt 0 \(float16\) "
                                             r"\(float16 overflow is the usual cause"):
        zoprune.prune(half, budget=4).select(**inputs)


def test_inf_in_the_language_models_hidden_states_is_named_for_in_llm_selection(model):
    pruned = zoprune.prune(model, {"scorer": None, "selector": "fastv", "budget": 4})
    layer = model.model.language_model.layers[0]
    handle = layer.register_forward_hook(lambda module, args, output: output.index_fill(1, torch.tensor([3]),
                                                                                        float("inf")))
    try:
        with pytest.raises(NumericalError, match="language model's hidden states at the selector's layer for "
                                                 "image 0 of prompt 0"):
            pruned(**llava_batch(model, [[6, 7]], [1]))
    finally:
        handle.remove()


def registered(*classes, distribution="acme-plugins"):
    class Plugin:
        @staticmethod
        @zoprune.hookimpl
        def register_scorers(register):
            for cls in classes:
                if issubclass(cls, zoprune.Scorer):
                    register(cls)

        @staticmethod
        @zoprune.hookimpl
        def register_selectors(register):
            for cls in classes:
                if issubclass(cls, zoprune.Selector):
                    register(cls)

    zoprune.get_registry().register_plugin(Plugin, "acme", distribution)


@pytest.fixture
def fresh_registry():
    yield
    reload_registry()


def scorer_returning(name, make):
    return type(f"S_{name}", (zoprune.Scorer,), {"name": name, "score": lambda self, tokens, ctx: make(tokens)})


def test_a_scorer_returning_nan_is_named_with_its_distribution_and_the_image(model, fresh_registry):
    def nan_on_second_image(tokens):
        scores = tokens.embeddings.norm(dim=-1)
        return scores.index_fill(0, torch.tensor([2]), float("nan")) if tokens.image == 1 else scores

    registered(scorer_returning("test_nan", nan_on_second_image))
    pruned = zoprune.prune(model, scorer="test_nan", budget=4)
    with pytest.raises(NumericalError, match=r"scorer 'test_nan' \(from distribution 'acme-plugins'\) returned 1 "
                                             r"non-finite scores .* for image 1 of prompt 0"):
        pruned.select(**two_prompts(model))
    # the built-in components keep working next to it
    assert len(zoprune.prune(model, budget=4).select(**two_prompts(model))) == 3


@pytest.mark.parametrize("name, make, message", [
    ("test_shape", lambda t: torch.zeros(t.num_tokens, 1), r"scores of shape \(16, 1\), expected \(16,\)"),
    ("test_dtype", lambda t: torch.zeros(t.num_tokens, dtype=torch.long), "dtype torch.int64, expected a floating"),
    ("test_device", lambda t: torch.zeros(t.num_tokens, device="meta"), "device meta, expected the tokens' device"),
    ("test_list", lambda t: [0.0] * t.num_tokens, "a list instead of a tensor"),
    ("test_raises", lambda t: 1 / 0, "failed on image 0 of prompt 0: ZeroDivisionError"),
])
def test_a_misbehaving_scorer_is_a_plugin_error_naming_it(model, fresh_registry, name, make, message):
    registered(scorer_returning(name, make))
    pruned = zoprune.prune(model, scorer=name, selector="topk", budget=4)
    with pytest.raises(PluginError, match=rf"scorer '{name}' \(from distribution 'acme-plugins'\).*{message}"):
        pruned.generate(**two_prompts(model), max_new_tokens=2)
    assert pruned.last_selection == []


def selector_returning(name, make):
    return type(f"Sel_{name}", (zoprune.Selector,), {"name": name, "needs_scores": False,
                                                     "select": lambda self, scores, tokens, k, ctx: make(k)})


@pytest.mark.parametrize("name, make, message", [
    ("test_duplicates", lambda k: torch.zeros(k, dtype=torch.long), "not distinct and sorted"),
    ("test_unsorted", lambda k: torch.arange(k).flip(0), "not distinct and sorted"),
    ("test_out_of_range", lambda k: torch.arange(k) + 100, r"indices outside \[0, 16\)"),
    ("test_count", lambda k: torch.arange(k + 1), r"\(5,\) indices, expected 4"),
    ("test_float", lambda k: torch.arange(k).float(), "indices of dtype torch.float32"),
    ("test_none", lambda k: None, "returned a NoneType .* expected a tensor of indices"),
    ("test_select_raises", lambda k: [][k], "failed on image 0 of prompt 0: IndexError"),
])
def test_a_misbehaving_selector_is_a_plugin_error_naming_it(model, fresh_registry, name, make, message):
    registered(selector_returning(name, make))
    pruned = zoprune.prune(model, scorer=None, selector=name, budget=4)
    with pytest.raises(PluginError, match=rf"selector '{name}' \(from distribution 'acme-plugins'\).*{message}"):
        pruned.select(**two_prompts(model))
    assert len(zoprune.prune(model, budget=4).select(**two_prompts(model))) == 3  # the others keep working


def identical_features(pruned):
    """Every visual token of every image made identical (an extreme blank image)."""
    real = pruned.adapter.vision_features

    def flat(inputs, outputs=None):
        features = real(inputs, outputs)
        return features[:, :1].expand_as(features).contiguous()

    pruned.adapter.vision_features = flat


@pytest.mark.parametrize("config", [{}, {"selector": "divprune", "scorer": None},
                                    {"scorer": "norm", "selector": {"name": "coverage", "fusion": "sum"}}])
def test_identical_tokens_keep_an_even_spread_through_the_pipeline(model, config):
    pruned = zoprune.prune(model, config, budget=4)
    identical_features(pruned)
    n = tokens_per_image(model)
    for selection in pruned.select(**two_prompts(model)):
        assert selection.kept.tolist() == evenly_spaced(n, 4).tolist() == [2, 6, 10, 14]


def test_equal_scores_through_the_pipeline_select_what_divprune_selects(model, fresh_registry):
    registered(scorer_returning("test_constant", lambda t: torch.ones(t.num_tokens)))
    inputs = two_prompts(model)
    constant = zoprune.prune(model, scorer="test_constant", budget=5).select(**inputs)
    divprune = zoprune.prune(model, scorer=None, selector="divprune", budget=5).select(**inputs)
    assert [s.kept.tolist() for s in constant] == [s.kept.tolist() for s in divprune]
    assert all(s.kept.tolist() != list(range(5)) for s in constant)


def test_zero_norm_embeddings_count_as_unlike_every_token():
    """A zero row has cosine 0 with every row (torch's normalize leaves it 0): deterministic, and kept early by the
    diversity term like any token orthogonal to the kept ones."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(40, 8, generator=g) + 3.0  # all in one cone: pairwise cosines well above 0
    z[[5, 17]] = 0.0
    scores = torch.rand(40, generator=g)
    for k in (3, 10):
        kept = coverage_select(scores, z, k)
        assert torch.equal(kept, coverage_select_dense(scores, z, k))
        assert torch.equal(kept, coverage_select(scores, z, k))
    assert {5, 17} <= set(coverage_select(torch.ones(40), z, 3).tolist())
    assert {5, 17} <= set(divprune_select(z, 3).tolist())


def test_nothing_is_pruned_from_non_finite_tokens_when_every_token_is_kept(model):
    """With k = N there is no selection to protect: the tokens go to the model untouched, as unpruned."""
    pruned = zoprune.prune(model, budget=tokens_per_image(model))
    real = pruned.adapter.vision_features
    pruned.adapter.vision_features = lambda inputs, outputs=None: real(inputs, outputs).clone().fill_(float("nan"))
    assert [s.kept.numel() for s in pruned.select(**two_prompts(model))] == [16, 16, 16]


@pytest.mark.parametrize("change, message", [
    (lambda x: x.update(input_ids=x["input_ids"].tolist()), "`input_ids` must be a tensor"),
    (lambda x: x.update(input_ids=x["input_ids"].float()), "integer token ids, got dtype torch.float32"),
    (lambda x: x.update(input_ids=x["input_ids"][0]), r"\(batch, length\), got shape"),
    (lambda x: x.update(input_ids=x["input_ids"][:, :0], attention_mask=x["attention_mask"][:, :0]),
     "empty batch or empty prompts"),
    (lambda x: x.update(attention_mask=x["attention_mask"][:, 1:]), "`attention_mask` must have the shape"),
    (lambda x: x["attention_mask"][1].zero_(), "prompt 1 is empty"),
    (lambda x: x.update(pixel_values=x["pixel_values"].long()), "`pixel_values` must be floating point"),
    (lambda x: x.update(pixel_values=x["pixel_values"][:0]), "holds no pixels"),
    (lambda x: x.update(pixel_values=x["pixel_values"][:2]), "placeholders for 3 images but `pixel_values` holds 2"),
])
@pytest.mark.parametrize("selector", ["coverage", "fastv"])
def test_malformed_inputs_are_input_errors(model, change, message, selector):
    pruned = zoprune.prune(model, {"scorer": None, "selector": "fastv"} if selector == "fastv" else {}, budget=4)
    inputs = two_prompts(model)
    change(inputs)
    with pytest.raises(InputError, match=message):
        pruned.generate(**inputs, max_new_tokens=2)
