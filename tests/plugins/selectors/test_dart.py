"""DART: pivots by key L1 norm in layer K-1, each claiming the image tokens least similar to it; pruned from layer K on
(the hook point of FastV, tiny LLaVA's 3-layer Llama with K = 2; LLaVA-NeXT and Qwen with K = 1)."""

import pytest
import torch

import zoprune
from zoprune.errors import ConfigError, InputError, UnsupportedModelError
from zoprune_plugins.selectors.dart import dart_select
from test_fastv_families import MAKERS, SPECIAL, batch, dropped_columns, greedy_reference
from tiny_generic import batch as generic_batch, tiny_model
from tiny_models import llava_batch, tiny_llava, tokens_per_image

GREEDY = {"max_new_tokens": 4, "do_sample": False}


def dart(model, budget, **params):
    return zoprune.prune(model, scorer=None, selector={"name": "dart", **params}, budget=budget)


def reference_dart(key_norm, states, text_norm, text_states, k, image_pivots, text_pivots):
    """DART's selection as the paper and the official ``get_retained_image_token`` describe it, in plain Python:
    the top image and text tokens by key L1 norm are pivots; each pivot in turn adds to the kept set the candidates
    with the lowest cosine similarity to it and removes them from the candidates; image pivots are kept, text pivots
    are not. The pivot order (image pivots, then text pivots, each by decreasing norm; ties to the lower index) and
    the per-pivot counts (the budget after the image pivots, split as evenly as possible, the first pivots taking
    the remainder) are zoprune's, where the official code iterates a Python set and keeps ~k + 4 tokens."""
    n, t = len(key_norm), len(text_norm)
    image = sorted(range(n), key=lambda i: (-float(key_norm[i]), i))[:min(image_pivots, k)]
    text = sorted(range(t), key=lambda i: (-float(text_norm[i]), i))[:text_pivots]
    retained = set(image)
    candidates = [i for i in range(n) if i not in retained]
    vectors = [states[i] for i in image] + [text_states[i] for i in text]
    budget = k - len(image)
    for p, pivot in enumerate(vectors if budget else []):
        claim = budget // len(vectors) + (1 if p < budget % len(vectors) else 0)
        similarity = [(torch.nn.functional.cosine_similarity(pivot, states[c], dim=0, eps=1e-12).item(), c)
                      for c in candidates]
        chosen = [c for _, c in sorted(similarity)[:claim]]
        retained.update(chosen)
        candidates = [c for c in candidates if c not in chosen]
    return sorted(retained)


def random_case(seed, n, t, d=16, clustered=False):
    g = torch.Generator().manual_seed(seed)
    if clustered:  # a few tight clusters: many near-duplicates, as real image tokens have
        centres = torch.randn(5, d, generator=g, dtype=torch.float64)
        states = centres[torch.randint(5, (n,), generator=g)] + 0.05 * torch.randn(n, d, generator=g,
                                                                                   dtype=torch.float64)
    else:
        states = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (torch.rand(n, generator=g, dtype=torch.float64), states, torch.rand(t, generator=g, dtype=torch.float64),
            torch.randn(t, d, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("clustered", [False, True])
@pytest.mark.parametrize("n, t, k, image_pivots, text_pivots",
                         [(144, 9, 64, 4, 4), (144, 9, 16, 4, 4), (144, 2, 16, 4, 4), (50, 0, 11, 4, 4),
                          (50, 5, 3, 4, 4), (50, 5, 4, 4, 4), (50, 5, 10, 0, 3), (50, 5, 49, 2, 1),
                          (576, 20, 64, 4, 4)])
def test_identical_to_the_reference(n, t, k, image_pivots, text_pivots, clustered):
    for seed in range(3):
        case = random_case(seed, n, t, clustered=clustered)
        kept = dart_select(*case, k, image_pivots, text_pivots)
        assert kept.tolist() == reference_dart(*case, k, image_pivots, text_pivots)
        assert kept.numel() == k


def test_one_pivot_keeps_the_tokens_least_similar_to_it():
    """The defining property with a single pivot: the largest key norm is kept, and every other kept token is less
    similar to it than every dropped token."""
    key_norm, states, _, _ = random_case(7, 100, 0)
    kept = dart_select(key_norm, states, key_norm[:0], states[:0], 20, 1, 0)
    pivot = int(key_norm.argmax())
    assert pivot in kept.tolist()
    similarity = torch.nn.functional.cosine_similarity(states, states[pivot][None], dim=-1)
    others = [i for i in kept.tolist() if i != pivot]
    dropped = [i for i in range(100) if i not in kept.tolist()]
    assert similarity[others].max() < similarity[dropped].min()


def test_duplicates_of_the_pivots_are_dropped():
    """DART's premise: tokens that duplicate a pivot add nothing and go first; with 60 of 80 tokens copies of the
    image pivot (the only pivot), the other 19 kept tokens are all among the 20 distinct ones."""
    g = torch.Generator().manual_seed(0)
    states = torch.randn(80, 16, generator=g)
    states[20:] = states[0]
    key_norm = torch.rand(80, generator=g)
    key_norm[0] = 2.0  # token 0 is the image pivot
    kept = dart_select(key_norm, states, key_norm[:0], states[:0], 20, 1, 0)
    assert kept.tolist() == list(range(20))


def test_every_pivot_count_is_validated():
    with pytest.raises(ConfigError, match="at least one pivot"):
        zoprune.PipelineConfig(scorer=None, selector={"name": "dart", "image_pivots": 0, "text_pivots": 0})
    with pytest.raises(InputError, match="no pivot"):
        dart_select(torch.rand(5), torch.randn(5, 3), torch.rand(0), torch.randn(0, 3), 2, 0, 4)


# -- on a model


@pytest.fixture(scope="module")
def models():
    return {attn: tiny_llava(attn_implementation=attn) for attn in ("eager", "sdpa")}


BATCH = ([[6, 7, 8, 9, 10, 19], [6, 19], [7]], [1, 2, 1])  # left padded, several images per prompt


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_keep_all_equals_the_unpruned_model(models, attn):
    model = models[attn]
    inputs = llava_batch(model, *BATCH)
    pruned = dart(model, tokens_per_image(model))
    with torch.no_grad():
        expected = model(**inputs).logits
    logits = pruned(**inputs).logits
    for row, mask in enumerate(inputs["attention_mask"].bool()):
        torch.testing.assert_close(logits[row, -int(mask.sum()):], expected[row, mask], rtol=0, atol=1e-5)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))


def test_signals_are_the_keys_and_states_of_layer_k_minus_1(models):
    """llm_key_norm is the L1 norm of layer K-1's cached (post-RoPE) keys; llm_states its output through the final
    norm; the selection is dart_select on them."""
    model = models["sdpa"]
    inputs = llava_batch(model, [[6, 7, 8, 9, 10, 19]], [1])
    with torch.no_grad():
        full = model(**inputs, use_cache=True, output_hidden_states=True)
    keys = full.past_key_values.layers[1].keys[0]  # (Hkv, L, hd), layer K-1 = 1
    norms = keys.abs().sum(dim=(0, 2))
    states = model.model.language_model.norm(full.hidden_states[2])[0]  # layer 1's output, final-normed
    captured = []
    pipeline = dart(model, 5)
    original = pipeline._select

    def spy(images, *args, **kwargs):
        captured.extend(images)
        return original(images, *args, **kwargs)

    pipeline._select = spy
    pipeline(**inputs)
    (tokens,) = captured
    ids = inputs["input_ids"][0]
    columns = (ids == model.config.image_token_id).nonzero().squeeze(-1)
    after = torch.arange(ids.numel()) > columns.max()
    torch.testing.assert_close(tokens.extras["llm_key_norm"], norms[columns], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens.extras["llm_states"], states[columns], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens.extras["llm_text_key_norm"], norms[after], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens.extras["llm_text_states"], states[after], rtol=1e-5, atol=1e-5)
    expected = dart_select(norms[columns], states[columns], norms[after], states[after], 5, 4, 4)
    assert pipeline.last_selection[0].kept.tolist() == expected.tolist()


def test_sdpa_stays_on(models, monkeypatch):
    """Every decoder layer runs SDPA's kernel during the pruned prefill: DART reads keys, never attention weights."""
    model = models["sdpa"]
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape[-2])
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    inputs = llava_batch(model, [[6, 7, 8]], [1])
    dart(model, 4)(**inputs)
    text_layers = model.config.text_config.num_hidden_layers
    assert model.config.text_config._attn_implementation == "sdpa"
    assert len(calls[-text_layers:]) == text_layers
    length = inputs["input_ids"].shape[1]
    assert calls[-text_layers:] == [length, length, length - (tokens_per_image(model) - 4)]


def test_left_padded_batch_equals_one_by_one(models):
    model = models["sdpa"]
    inputs = llava_batch(model, *BATCH)
    pipeline = dart(model, 3)
    together = pipeline.generate(**inputs, **GREEDY)[:, -GREEDY["max_new_tokens"]:]
    kept_together = [s.kept.tolist() for s in pipeline.last_selection]
    first, kept_alone = 0, []
    for row, count in enumerate(BATCH[1]):
        real = inputs["attention_mask"][row].bool()
        alone = {"input_ids": inputs["input_ids"][row, real][None], "attention_mask": torch.ones(1, int(real.sum())),
                 "pixel_values": inputs["pixel_values"][first:first + count]}
        first += count
        answer = pipeline.generate(**alone, **GREEDY)[:, -GREEDY["max_new_tokens"]:]
        kept_alone += [s.kept.tolist() for s in pipeline.last_selection]
        assert together[row].tolist() == answer[0].tolist()
    assert kept_together == kept_alone


def test_pruning_changes_the_output(models):
    model = models["eager"]
    inputs = llava_batch(model, [[6, 7, 8]], [1])
    with torch.no_grad():
        expected = model(**inputs).logits[0, -1]
    assert not torch.allclose(dart(model, 2)(**inputs).logits[0, -1], expected, atol=1e-4)


@pytest.mark.parametrize("family", list(MAKERS))
def test_families_generate_equals_the_masked_reference(family):
    """LLaVA-NeXT (newlines kept), Qwen2-VL and Qwen2.5-VL (M-RoPE, an image and a video in one prompt), left padded:
    generation equals the whole unpruned model with DART's dropped tokens masked from layer K on."""
    model = MAKERS[family](attn_implementation="eager")
    inputs = batch(family, model)
    keep_all = dart(model, 10_000, layer=1)
    assert torch.equal(keep_all.generate(**inputs, **GREEDY, suppress_tokens=SPECIAL),
                       model.generate(**inputs, **GREEDY, suppress_tokens=SPECIAL))
    pruned = dart(model, 3, layer=1)
    output = pruned.generate(**inputs, **GREEDY, suppress_tokens=SPECIAL)
    assert [s.kept.numel() for s in pruned.last_selection] == [3] * len(pruned.last_selection)
    drop = dropped_columns(family, model, inputs, pruned.last_selection)
    assert torch.equal(output, greedy_reference(model, inputs, drop, GREEDY["max_new_tokens"]))


def test_refused_where_fastv_is():
    model = tiny_model("internvl")
    with pytest.raises(UnsupportedModelError, match="cannot prune inside the language model"):
        dart(model, 3, layer=1).select(**generic_batch(model, "internvl", [[8]], [1]))
