"""The Qwen2-VL and Qwen2.5-VL adapters on tiny random models: the merger as projector, raster order, 3-D rotary
positions of kept tokens during prefill and generation, images of different sizes, videos, batches."""

import pytest
import torch

import zoprune
from zoprune_plugins.adapters.qwen_vl import GroupedMerger
from tiny_families import (IMAGE_TOKEN_ID, VIDEO_TOKEN_ID, language_model_calls, qwen_batch, tiny_qwen2_5_vl,
                           tiny_qwen2_vl)

GREEDY = {"max_new_tokens": 5, "do_sample": False}
FAMILIES = {"qwen2_vl": tiny_qwen2_vl, "qwen2_5_vl": tiny_qwen2_5_vl}
PROMPTS = [[7, 8, 9], [10], [11, 12]]
# images of different sizes, an image and a video in one prompt, a prompt with neither
VISUALS = [[("image", (1, 4, 6)), ("video", (2, 4, 4))], [("image", (1, 6, 4)), ("image", (1, 4, 4))], []]


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    model = FAMILIES[request.param]()
    return request.param, model, qwen_batch(model, PROMPTS, VISUALS)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("policy", ["per_video", "per_frame"])
def test_keep_all_is_exact(name, attn, policy):
    model = FAMILIES[name](attn_implementation=attn)
    inputs = qwen_batch(model, PROMPTS, VISUALS)
    pruned = zoprune.prune(model, budget=10_000, adapter={"name": name, "video_policy": policy})
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.equal(pruned(**inputs).logits, expected)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))
    # images and videos of a prompt are numbered together, in order of appearance
    assert sorted({(s.sample, s.image) for s in pruned.last_selection}) == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_features_are_the_mergers_input_in_raster_order(family):
    """features (N, 4*d_v) through GroupedMerger give the model's merged tokens; model_embeddings are the model's."""
    name, model, inputs = family
    pruned = zoprune.prune(model, budget=10_000)
    images = pruned._extract(inputs)
    with torch.no_grad():
        expected = {"image": model.model.get_image_features(inputs["pixel_values"],
                                                            inputs["image_grid_thw"]).pooler_output,
                    "video": model.model.get_video_features(inputs["pixel_values_videos"],
                                                            inputs["video_grid_thw"]).pooler_output}
    d_v = model.config.vision_config.embed_dim if name == "qwen2_vl" else model.config.vision_config.hidden_size
    merger = GroupedMerger(model.model.visual.merger)
    for tokens in images:
        reference = expected[tokens.source.kind][tokens.source.index]
        assert tokens.features.shape == (tokens.num_tokens, 4 * d_v)
        assert torch.equal(tokens.model_embeddings, reference)
        assert torch.equal(tokens.embeddings, reference)  # fp32 model: the scoring embeddings are the model's
        with torch.no_grad():  # one image alone: another matmul blocking than the batch, so equal to rounding
            assert torch.allclose(merger(tokens.features), reference, rtol=0, atol=1e-6)
        rows, cols = tokens.grid
        assert rows * cols == tokens.num_tokens
    for kind in ("image", "video"):  # the batch of one kind at once: the merger's very computation, bit for bit
        features = torch.cat([t.features for t in sorted(images, key=lambda t: t.source.index)
                              if t.source.kind == kind])
        with torch.no_grad():
            assert torch.equal(merger(features), torch.cat(expected[kind]))
    if name == "qwen2_5_vl":  # the tower's own output order is not raster order: the adapter must undo it
        hidden = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).last_hidden_state
        grouped = hidden.reshape(-1, 4 * d_v)[:images[0].num_tokens]
        assert not torch.equal(grouped, images[0].features)


@pytest.mark.parametrize("policy", ["per_video", "per_frame"])
def test_budget_keeps_k_per_image_and_video(family, policy):
    name, model, inputs = family
    k = 3
    pruned = zoprune.prune(model, budget=k, adapter={"name": name, "video_policy": policy})
    output = pruned.generate(**inputs, **GREEDY)
    length = inputs["input_ids"].shape[1]
    assert output.shape == (3, length + GREEDY["max_new_tokens"])
    assert torch.equal(output[:, :length], inputs["input_ids"])
    per_input: dict = {}
    for s in pruned.last_selection:
        per_input.setdefault((s.sample, s.image), []).append(s.kept.numel())
    assert per_input[(0, 1)] == ([k] if policy == "per_video" else [2, 1])  # the video: 2 temporal slices
    assert all(sum(counts) == k for counts in per_input.values())
    short = pruned.prepare(**inputs)
    assert int((short["input_ids"] == IMAGE_TOKEN_ID).sum()) == 3 * k
    assert int((short["input_ids"] == VIDEO_TOKEN_ID).sum()) == k


def test_kept_tokens_keep_their_positions_through_generation(family):
    """Prefill: every kept column has the 3-D position it has unpruned. Decoding: each new token gets exactly the
    position it gets in the unpruned model's generation."""
    name, model, inputs = family
    pruned = zoprune.prune(model, budget=2)
    with language_model_calls(model) as calls:
        pruned.generate(**inputs, **GREEDY)
    with language_model_calls(model) as reference:
        model.generate(**inputs, **GREEDY)
    assert len(calls) == len(reference) == GREEDY["max_new_tokens"]
    full = pruned.adapter.rope_positions(inputs)  # (3, B, L), from the model's get_rope_index
    short = pruned.prepare(**inputs)
    prefill = calls[0]["position_ids"]  # (4, B, L'): text row, then temporal / height / width
    assert prefill.shape[0] == 4
    for b in range(inputs["input_ids"].shape[0]):
        kept_columns = _kept_columns(inputs["input_ids"][b], inputs["attention_mask"][b],
                                     [s for s in pruned.last_selection if s.sample == b])
        real = short["attention_mask"][b].bool()
        assert torch.equal(prefill[1:, b, real], full[:, b, kept_columns])
        assert torch.equal(prefill[0, b, real], torch.arange(int(real.sum())))
    for step, expected in zip(calls[1:], reference[1:]):
        assert torch.equal(step["position_ids"][1:], expected["position_ids"][1:])


def _kept_columns(ids, mask, selections):
    """Columns of one unpruned row that the pruned row keeps: its text, and of its j-th run of placeholders (its
    j-th image or video) the positions the j-th selection kept."""
    visual = (ids == IMAGE_TOKEN_ID) | (ids == VIDEO_TOKEN_ID)
    columns = visual.nonzero().squeeze(-1).tolist()
    runs, run = [], []
    for column in columns:
        if run and column != run[-1] + 1:
            runs.append(run)
            run = []
        run.append(column)
    runs += [run] if run else []
    keep = mask.bool() & ~visual
    for selection in selections:
        keep[torch.tensor(runs[selection.image])[selection.kept]] = True
    return keep.nonzero().squeeze(-1)


def test_without_mm_token_type_ids_the_types_are_derived(family):
    name, model, inputs = family
    pruned = zoprune.prune(model, budget=2)
    with_types = pruned(**inputs).logits
    without = {key: value for key, value in inputs.items() if key != "mm_token_type_ids"}
    assert torch.equal(pruned(**without).logits, with_types)


def test_prompts_without_any_visual_input_are_left_alone(family):
    name, model, _ = family
    inputs = qwen_batch(model, [[7, 8], [9]], [[], []])
    pruned = zoprune.prune(model, budget=2)
    assert torch.equal(pruned.generate(**inputs, **GREEDY), model.generate(**inputs, **GREEDY))
    assert pruned.last_selection == []
