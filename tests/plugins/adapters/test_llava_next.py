"""The LLaVA-NeXT adapter on tiny random models: exactness with every token kept, AnyRes views, newline tokens,
the global and per_tile budget policies, batches with several images of different sizes."""

import pytest
import torch

import zoprune
from zoprune_plugins.adapters.common import share_evenly
from tiny_families import IMAGE_TOKEN_ID, language_model_calls, llava_next_batch, tiny_llava_next

GREEDY = {"max_new_tokens": 5, "do_sample": False}
# prompts of different lengths, two images of different shapes in one prompt, one prompt without an image
PROMPTS = [[7, 8, 9], [10], [11, 12, 13, 14]]
SIZES = [[(30, 20), (16, 16)], [(20, 30)], []]


@pytest.fixture(scope="module")
def model():
    return tiny_llava_next()


@pytest.fixture(scope="module")
def inputs(model):
    return llava_next_batch(model, PROMPTS, SIZES)


def packed_features(model, inputs):
    """What the model itself puts at each image's placeholders: [(L_i, d_l)]."""
    with torch.no_grad():
        return model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                              image_sizes=inputs["image_sizes"]).pooler_output


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("policy", ["global", "per_tile"])
def test_keep_all_is_exact(attn, policy):
    model = tiny_llava_next(attn_implementation=attn)
    inputs = llava_next_batch(model, PROMPTS, SIZES)
    pruned = zoprune.prune(model, budget=10_000, adapter={"name": "llava_next", "budget_policy": policy})
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.equal(pruned(**inputs).logits, expected)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))
    assert sorted({(s.sample, s.image) for s in pruned.last_selection}) == [(0, 0), (0, 1), (1, 0)]


def test_tokens_are_the_models_own(model, inputs):
    """model_embeddings are bit-identical to the model's; features map to them through the projector."""
    pruned = zoprune.prune(model, budget=10_000)
    images = pruned._extract(inputs)
    packed = packed_features(model, inputs)
    newline = model.model.image_newline
    for i, tokens in enumerate(images):
        image = packed[i]
        is_newline = (image == newline).all(-1)
        assert int(is_newline.sum()) > 0  # AnyRes images have newline tokens, and they are not scored
        assert torch.equal(tokens.model_embeddings, image[~is_newline])
        assert torch.allclose(model.model.multi_modal_projector(tokens.features), tokens.embeddings, atol=1e-6)
        assert tokens.num_tokens == image.shape[0] - int(is_newline.sum())


def test_per_tile_views_partition_the_image(model, inputs):
    pruned = zoprune.prune(model, budget=10_000, adapter={"name": "llava_next", "budget_policy": "per_tile"})
    images = pruned._extract(inputs)
    packed = packed_features(model, inputs)
    n = (model.config.vision_config.image_size // model.config.vision_config.patch_size) ** 2
    for i, image in enumerate(packed):
        views = [t for t in images if t.source.index == i]
        assert views[0].num_tokens == n and views[0].grid == (4, 4)  # the base view comes first, whole
        assert [v.view for v in views] == list(range(len(views)))
        covered = torch.cat([v.packed for v in views])
        assert covered.unique().numel() == covered.numel()
        is_newline = (image == model.model.image_newline).all(-1)
        assert covered.numel() + int(is_newline.sum()) == image.shape[0]
        for v in views:
            rows, cols = v.grid
            assert rows * cols == v.num_tokens


@pytest.mark.parametrize("policy", ["global", "per_tile"])
@pytest.mark.parametrize("newlines", ["keep", "drop"])
def test_budget_keeps_k_per_image_and_generates(model, inputs, policy, newlines):
    k = 9
    pruned = zoprune.prune(model, budget=k, adapter={"name": "llava_next", "budget_policy": policy,
                                                     "newlines": newlines})
    output = pruned.generate(**inputs, **GREEDY)
    length = inputs["input_ids"].shape[1]
    assert output.shape == (3, length + GREEDY["max_new_tokens"])
    assert torch.equal(output[:, :length], inputs["input_ids"])
    per_image: dict = {}
    for s in pruned.last_selection:
        per_image.setdefault((s.sample, s.image), []).append(s.kept.numel())
    assert sorted(per_image) == [(0, 0), (0, 1), (1, 0)]
    assert all(sum(counts) == k for counts in per_image.values())
    if policy == "per_tile":  # shared evenly: the views' counts differ by at most one
        assert all(len(c) > 1 and max(c) - min(c) <= 1 for c in per_image.values())
    # the language model sees k tokens per image, plus the newline tokens when they are kept
    packed = packed_features(model, inputs)
    newline_count = sum(int((p == model.model.image_newline).all(-1).sum()) for p in packed)
    short = pruned.prepare(**inputs)
    visual = int((short["input_ids"] == IMAGE_TOKEN_ID).sum())
    assert visual == 3 * k + (newline_count if newlines == "keep" else 0)


def test_language_model_sees_kept_tokens_and_newlines_in_order(model):
    """At the remaining placeholders the language model gets the model's own packed embeddings of the kept tokens
    and every newline, in their original order; the text around them is untouched."""
    inputs = llava_next_batch(model, [[7, 8]], [[(30, 20)]])
    pruned = zoprune.prune(model, budget=7)
    with language_model_calls(model) as calls:
        pruned(**inputs)
    (selection,) = pruned.last_selection
    image = packed_features(model, inputs)[0]
    is_newline = (image == model.model.image_newline).all(-1)
    keep = is_newline.clone()
    keep[(~is_newline).nonzero().squeeze(-1)[selection.kept]] = True
    ids = inputs["input_ids"][0]
    text = model.get_input_embeddings()(ids[ids != IMAGE_TOKEN_ID])
    start = int((ids == IMAGE_TOKEN_ID).nonzero()[0])
    expected = torch.cat([text[:start], image[keep], text[start:]])
    assert torch.equal(calls[0]["inputs_embeds"][0], expected)


@pytest.mark.parametrize("scorer, selector", [("zo_sensitivity", "coverage"), ("zo_sensitivity", "topk")])
def test_scorers_and_selectors_run_per_view(model, inputs, scorer, selector):
    pruned = zoprune.prune(model, budget=0.25, scorer=scorer, selector=selector,
                           adapter={"name": "llava_next", "budget_policy": "per_tile"})
    selections = pruned.select(**inputs)
    assert all(s.scores is not None and s.scores.shape == (s.num_tokens,) for s in selections)
    total = {}
    for s in selections:
        total.setdefault((s.sample, s.image), [0, 0])
        total[(s.sample, s.image)][0] += s.kept.numel()
        total[(s.sample, s.image)][1] += s.num_tokens
    assert all(kept == max(1, int(0.25 * n + 0.5)) for kept, n in total.values())


def test_share_evenly():
    assert share_evenly(160, [576] * 5) == [32] * 5  # the paper's 160 over base + 4 crops
    assert share_evenly(11, [16, 12, 12]) == [4, 4, 3]  # the remainder goes to the first views
    assert share_evenly(20, [2, 12, 12]) == [2, 9, 9]  # a small view keeps all; the rest is shared
    assert share_evenly(2, [16, 12, 12]) == [1, 1, 1]  # at least one per view
    assert share_evenly(100, [3, 4]) == [3, 4]
