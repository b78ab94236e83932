"""Property-based tests (hypothesis) of what must hold for any input: configs validate or raise ConfigError,
every built-in selector returns k distinct sorted indices, and malformed input batches raise InputError.

The runs are derandomised (the same cases in every CI run); ``python -m pytest tests/core/test_properties.py
--hypothesis-show-statistics`` prints how many cases each property ran (docs/reliability.md records them).
"""

import math

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import zoprune
from zoprune import Context, ImageTokens, Merge
from zoprune.errors import ConfigError, InputError, ZopruneError
from tiny_models import IMAGE_TOKEN_ID, PAD_ID, tiny_llava, tokens_per_image



def cases(count):
    """Settings of a property that runs ``count`` generated cases, the same ones in every run."""
    return settings(max_examples=count, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

# -- configs: any mapping (any keys, types, nesting) validates or raises ConfigError

KEYS = ["adapter", "scorer", "selector", "budget", "seed", "scoring_dtype", "name", "keep", "ratio", "fusion",
        "directions", "step", "mode", "chunk", "contextual", "layer", "query", "similarity", "product_dtype"]
NAMES = ["zo_sensitivity", "coverage", "topk", "divprune", "visionzip", "fastv", "norm", "cls_attention", "llava",
         "none", "None", "", "random", "uniform", "jacobian_norm"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=8), st.sampled_from(NAMES), st.sampled_from(["float32", "model", "bfloat16"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner,
                                                 max_size=4)), max_leaves=12)
mappings = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), values, max_size=6)


@cases(300)
@given(data=mappings)
@example(data={"seed": 2**64})
@example(data={"budget": float("nan")})
@example(data={"selector": {"name": "coverage", "fusion": ["product"]}})
@example(data={"scorer": {"directions": 3}})
@example(data={"scorer": [], "selector": {}})
def test_any_mapping_validates_or_raises_config_error(data):
    try:
        config = zoprune.PipelineConfig.from_dict(data)
    except ConfigError as error:
        assert str(error)
        event("ConfigError")
        return
    event("valid")
    assert zoprune.PipelineConfig.from_dict(config.to_dict()) == config  # what validates round-trips


@pytest.fixture(scope="module")
def model():
    return tiny_llava()


def component_params(kind):
    """Parameters for a component: none (half the time), or keys of any component (its own or not, sometimes an
    unknown one) with values of any type."""
    return st.one_of(st.just({}), st.dictionaries(st.sampled_from(KEYS[7:] + ["bogus"]), scalars, max_size=3))


pipelines = st.fixed_dictionaries({
    "scorer": st.one_of(st.none(), st.builds(lambda name, params: {"name": name, **params},
                                             st.sampled_from(["zo_sensitivity", "norm", "cls_attention",
                                                              "jacobian_norm"]), component_params("scorer"))),
    "selector": st.builds(lambda name, params: {"name": name, **params},
                          st.sampled_from(["coverage", "topk", "divprune", "random", "uniform", "visionzip",
                                           "fastv"]), component_params("selector")),
    "budget": st.one_of(st.integers(-3, 40), st.floats(-0.5, 1.5), st.just({"ratio": 0.5})),
    "seed": st.one_of(st.integers(0, 1000), st.integers(-2**64, 2**65)),
    "scoring_dtype": st.sampled_from(["float32", "float32", "model", "float64", "bfloat16"]),
})


@cases(60)
@given(config=pipelines)
def test_a_config_that_validates_prunes_or_raises_a_zoprune_error(model, config):
    """From a config mapping to a selection on a real (tiny) model: only zoprune's errors, never another type."""
    if isinstance(config["scorer"], dict) and config["scorer"].get("directions", 1) not in range(1, 65):
        config["scorer"]["directions"] = 4  # validated elsewhere; large values only make the test slow
    from tiny_models import llava_batch

    try:
        pruned = zoprune.prune(model, config)
        selection = pruned.select(**llava_batch(model, [[6, 7]], [1]))
    except ZopruneError as error:
        assert str(error)
        event(type(error).__name__)
        return
    event("pruned")
    assert len(selection) == 1 and 1 <= selection[0].num_kept <= tokens_per_image(model)


# -- selectors: k distinct sorted indices for any N, k, d, duplicates, zero rows, tied scores


@st.composite
def selector_inputs(draw):
    n = draw(st.one_of(st.integers(1, 200), st.integers(1, 200), st.integers(1, 200), st.integers(201, 5000)))
    k = draw(st.one_of(st.integers(1, min(n, 64)), st.integers(1, n)))
    d = draw(st.integers(1, 64))
    seed = draw(st.integers(0, 2**32 - 1))
    g = torch.Generator().manual_seed(seed)
    distinct = draw(st.integers(1, n))  # how many different rows: the others are duplicates of them
    rows = torch.randn(distinct, d, generator=g)
    z = rows[torch.randint(distinct, (n,), generator=g)] if distinct < n else rows
    zero = draw(st.floats(0, 1))  # fraction of zero rows
    z[torch.rand(n, generator=g) < zero] = 0.0
    levels = draw(st.integers(1, 5))  # distinct score values: few levels mean many ties
    scores = torch.randint(levels, (n,), generator=g).float() if draw(st.booleans()) else torch.rand(n, generator=g)
    side = math.isqrt(n)
    grid = (side, side) if side * side == n and draw(st.booleans()) else None
    return n, k, z, scores, grid


SELECTORS = {
    "coverage": {}, "coverage-sum": {"fusion": "sum"}, "topk": {}, "random": {}, "uniform": {}, "divprune": {},
    "visionzip": {"similarity": "features"}, "visionzip-keys": {"contextual": 3}, "fastv": {},
    "fastv-text": {"query": "text"}, "scope": {}, "scope-sum": {"combine": "sum", "space": "embeddings"},
    "vispruner": {}, "vispruner-all-important": {"important_ratio": 1.0}, "mmr": {}, "mmr-diverse": {"lam": 0.0},
    "cdpruner": {}, "cdpruner-theta": {"theta": 0.5, "negate": False},
    "dart": {}, "dart-image-only": {"text_pivots": 0}, "dart-text-only": {"image_pivots": 0, "text_pivots": 2},
}
SELECTORS.update({"holov": {}, "holov-tiles": {"regions": "tiles", "crops": "auto", "space": "features"},
                  "pool": {}, "pool-max": {"mode": "max", "space": "features"}, "downsample": {}})


def test_the_property_covers_every_built_in_selector():
    built_in = {name for name, reg in zoprune.get_registry().components["selector"].items()
                if reg.distribution == "zoprune"}
    assert built_in == {label.split("-")[0] for label in SELECTORS}


def build_selector(label):
    registry = zoprune.get_registry()
    cls = registry.get("selector", label.split("-")[0]).cls
    return cls(cls.Config(**SELECTORS[label]))


@pytest.mark.parametrize("label", list(SELECTORS))
@cases(20)
@given(case=selector_inputs())
@example(case=(1, 1, torch.ones(1, 3), torch.ones(1), (1, 1)))
@example(case=(64, 64, torch.zeros(64, 4), torch.zeros(64), (8, 8)))
@example(case=(5000, 1, torch.ones(5000, 2), torch.ones(5000), None))
def test_every_selector_returns_k_distinct_sorted_indices(label, case):
    n, k, z, scores, grid = case
    event("N > 200" if n > 200 else "N <= 200")
    event("k = N" if k == n else "k < N")
    selector = build_selector(label)
    g = torch.Generator().manual_seed(1)
    # the prompt's text tokens after the image (DART's text pivots; with no image pivots DART needs one)
    text = int(torch.randint(1 if label == "dart-text-only" else 0, 4, (), generator=g))
    extras = {"vision_keys": torch.randn(n, 4, generator=g), "llm_attention": scores.clone(),
              "llm_attention_text": scores.flip(0), "llm_key_norm": scores.clone(), "llm_states": z,
              "llm_text_key_norm": torch.rand(text, generator=g), "llm_text_states": torch.randn(text, z.shape[1],
                                                                                                generator=g),
              "text_embeddings": torch.randn(int(scores[0] * 3) % 4, z.shape[1], generator=g)}  # 0 to 3 tokens
    tokens = ImageTokens(features=z, embeddings=z, model_embeddings=z, projector=lambda x: x, sample=0, image=0,
                         grid=grid, extras=extras)
    out = selector.select(scores if selector.needs_scores or label.startswith("visionzip") else None, tokens, k,
                          Context(torch.Generator().manual_seed(0)))
    kept, merged = (out.kept, out.embeddings.shape[0]) if isinstance(out, Merge) else (out, 0)
    assert kept.dtype == torch.long and kept.ndim == 1
    assert kept.numel() + merged == k
    assert bool((kept[1:] > kept[:-1]).all())  # distinct and sorted
    assert kept.numel() == 0 or (0 <= int(kept.min()) and int(kept.max()) < n)
    if isinstance(out, Merge):
        assert out.groups.shape == (n,) and set(out.groups[kept].tolist()) <= {-1}


# -- input batches: consistent ones prune, malformed ones raise InputError


@st.composite
def batches(draw, model):
    n = tokens_per_image(model)
    size = model.config.vision_config.image_size
    b = draw(st.integers(0, 3))
    images = draw(st.lists(st.integers(0, 2), min_size=b, max_size=b))
    texts = draw(st.lists(st.lists(st.integers(4, 25), max_size=4), min_size=b, max_size=b))
    rows = [[IMAGE_TOKEN_ID] * (n * count) + text for count, text in zip(images, texts)]
    # faults, each with some probability: a placeholder more or less, an image more or less, wrong dtypes
    if rows and draw(st.booleans()):
        row = draw(st.integers(0, len(rows) - 1))
        if draw(st.booleans()):
            rows[row] = rows[row] + [IMAGE_TOKEN_ID]
        elif IMAGE_TOKEN_ID in rows[row]:
            rows[row].remove(IMAGE_TOKEN_ID)
    width = max((len(r) for r in rows), default=0)
    ids = torch.tensor([[PAD_ID] * (width - len(r)) + r for r in rows], dtype=torch.long).reshape(b, width)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], dtype=torch.long).reshape(b, width)
    total = sum(images) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    inputs = {"input_ids": ids.to(draw(st.sampled_from([torch.long, torch.long, torch.int32, torch.float32,
                                                          torch.bool]))),
              "attention_mask": mask}
    if total > 0 or draw(st.booleans()):
        pixels = torch.randn(max(total, 0), 3, size, size)
        inputs["pixel_values"] = pixels.to(draw(st.sampled_from([torch.float32, torch.float32, torch.float64,
                                                                  torch.int64, torch.uint8])))
    return inputs


@pytest.fixture(scope="module")
def pruned_models(model):
    return {"coverage": zoprune.prune(model, scorer={"name": "zo_sensitivity", "directions": 4}, budget=4),
            "fastv": zoprune.prune(model, scorer=None, selector="fastv", budget=4)}


@pytest.mark.parametrize("method", ["coverage", "fastv"])
@cases(60)
@given(data=st.data())
def test_any_input_batch_prunes_or_raises_input_error(model, pruned_models, method, data):
    inputs = data.draw(batches(model))
    pruned = pruned_models[method]
    try:
        selection = pruned.select(**inputs)
    except InputError as error:
        assert str(error)
        event("InputError")
        return
    event("pruned")
    # it went through: then the batch was consistent, and every image kept min(4, N) tokens
    ids = inputs["input_ids"]
    assert not ids.dtype.is_floating_point and ids.dtype != torch.bool and ids.numel() > 0
    images = int((ids == IMAGE_TOKEN_ID).sum()) // tokens_per_image(model)
    assert len(selection) == images
    assert all(s.kept.numel() == 4 for s in selection)
