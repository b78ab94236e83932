"""VisionZip: dominant tokens by [CLS] attention plus contextual tokens merged from the rest, placed after them.

The reference here is computed from the model's own eager attention weights and its own key projection (a forward
hook on ``k_proj``), not from the adapter's signals."""

import json

import pytest
import torch
from typer.testing import CliRunner

import zoprune
from zoprune.cli import app
from zoprune.errors import ConfigError
from zoprune_plugins.selectors.visionzip import VisionZipConfig
from tiny_families import language_model_calls, llava_next_batch, tiny_llava_next, tiny_qwen2_vl
from tiny_models import IMAGE_TOKEN_ID, llava_batch, tiny_llava, tokens_per_image


def visionzip(model, budget, **params):
    return zoprune.prune(model, scorer="cls_attention", selector={"name": "visionzip", **params}, budget=budget)


def reference(model, pixel_values, k, m, merge="mean"):
    """Per image: (dominant indices, contextual embeddings (M, d_l)) as VisionZip defines them, from eager
    attention and keys captured at the layer whose output is the feature layer (-2)."""
    eager = tiny_llava(attn_implementation="eager")
    eager.load_state_dict(model.state_dict())
    tower = eager.model.vision_tower
    captured = {}
    layer = tower.encoder.layers[-2]  # produces hidden_states[-2], the feature layer
    handle = layer.self_attn.k_proj.register_forward_hook(lambda mod, args, out: captured.setdefault("k", out))
    with torch.no_grad():
        out = tower(pixel_values, output_attentions=True, output_hidden_states=True)
    handle.remove()
    heads = layer.self_attn.num_heads
    keys = captured["k"].view(*captured["k"].shape[:2], heads, -1).mean(dim=2)[:, 1:]  # (I, N, hd), [CLS] dropped
    attention = out.attentions[-2][:, :, 0, 1:].sum(dim=1)  # (I, N): VisionZip sums over heads
    features = out.hidden_states[-2][:, 1:]  # (I, N, d_v): the projector's input
    results = []
    for image in range(pixel_values.shape[0]):
        dominant = sorted(attention[image].topk(k - m).indices.tolist())
        rest = [i for i in range(features.shape[1]) if i not in dominant]
        step = max(1, len(rest) // m)
        targets = list(range(0, len(rest), step))[:m]
        unit = torch.nn.functional.normalize(keys[image, rest], dim=-1)
        nearest = (unit @ unit[targets].T).argmax(dim=1).tolist()
        groups = [[rest[t]] for t in targets]  # each group starts with its target
        for position, token in enumerate(rest):
            if position not in targets:
                groups[nearest[position]].append(token)
        merged = []
        for group in groups:
            x = features[image, group]
            merged.append(x.mean(dim=0) if merge == "mean" else x[0] + (x[1:].mean(dim=0) if len(group) > 1 else 0))
        with torch.no_grad():
            results.append((dominant, model.model.multi_modal_projector(torch.stack(merged))))
    return results


@pytest.fixture(scope="module")
def model():
    return tiny_llava(attn_implementation="sdpa")


@pytest.mark.parametrize("merge", ["mean", "target_plus_mean"])
def test_dominant_and_contextual_tokens_equal_the_reference(model, merge):
    inputs = llava_batch(model, [[6, 7, 8], [9]], [1, 2])
    pruned = visionzip(model, 8, contextual=3, merge=merge)
    pruned.select(**inputs)
    expected = reference(model, inputs["pixel_values"], 8, 3, merge)
    assert len(pruned.last_selection) == 3
    for selection, (dominant, merged) in zip(pruned.last_selection, expected):
        assert selection.kept.tolist() == dominant
        torch.testing.assert_close(selection.merged, merged, rtol=0, atol=1e-5)
        assert selection.num_kept == 8
        assert sorted(set(selection.groups.tolist())) == [-1, 0, 1, 2]
        assert (selection.groups == -1).nonzero().squeeze(-1).tolist() == dominant


def test_the_language_model_sees_the_budget_with_merged_tokens_after_the_dominant_ones(model):
    inputs = llava_batch(model, [[6, 7, 8, 9], [9]], [1, 2])  # left padded, several images
    budget, n = 6, tokens_per_image(model)
    pruned = visionzip(model, budget, contextual=2)
    with language_model_calls(model) as calls:
        output = pruned.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert output.shape == (2, inputs["input_ids"].shape[1] + 3)
    assert torch.equal(output[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    short = pruned.prepare(**inputs)
    assert (short["input_ids"] == IMAGE_TOKEN_ID).sum(dim=1).tolist() == [budget, 2 * budget]
    assert short["input_ids"].shape[1] == inputs["input_ids"].shape[1] - 2 * (n - budget)
    embeds = calls[0]["inputs_embeds"]  # the prefill: (B, L', d_l)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    selections = iter(pruned.last_selection)
    for row, count in enumerate([1, 2]):
        placed = embeds[row, short["input_ids"][row] == IMAGE_TOKEN_ID].view(count, budget, -1)
        for image in range(count):
            selection = next(selections)
            dominant = features[sum([1, 2][:row]) + image][selection.kept]  # the model's own embeddings
            torch.testing.assert_close(placed[image, :budget - 2], dominant, rtol=0, atol=0)
            torch.testing.assert_close(placed[image, budget - 2:], selection.merged, rtol=0, atol=0)


def test_default_ratio_is_visionzips_split():
    config = VisionZipConfig()
    assert [config.contextual_for(k) for k in (64, 128, 192, 8, 1)] == [10, 20, 30, 1, 0]
    assert VisionZipConfig(contextual=10).contextual_for(4) == 3  # at least one dominant token


def test_keep_all_is_the_unpruned_model(model):
    inputs = llava_batch(model, [[6, 7], [8, 9, 10]], [1, 2])
    pruned = visionzip(model, tokens_per_image(model))
    with torch.no_grad():
        assert torch.equal(pruned(**inputs).logits, model(**inputs).logits)
    assert all(s.merged is None for s in pruned.last_selection)


def test_merging_changes_the_output_against_dominant_tokens_alone(model):
    inputs = llava_batch(model, [[6, 7, 8]], [1])
    dominant_only = zoprune.prune(model, scorer="cls_attention", selector="topk", budget=4)
    merged = visionzip(model, 5, contextual=1)  # the same 4 dominant tokens plus one contextual token
    assert merged.select(**inputs)[0].kept.tolist() == dominant_only.select(**inputs)[0].kept.tolist()
    assert not torch.allclose(merged(**inputs).logits[0, -1], dominant_only(**inputs).logits[0, -1], atol=1e-4)


def test_features_similarity_and_errors(model):
    inputs = llava_batch(model, [[6]], [1])
    pruned = visionzip(model, 6, contextual=2, similarity="features")
    assert pruned.select(**inputs)[0].num_kept == 6
    with pytest.raises(ConfigError, match="not both"):
        visionzip(model, 6, contextual=2, contextual_ratio=0.5)
    with pytest.raises(ConfigError, match="selector.contextual_ratio"):
        visionzip(model, 6, contextual_ratio=1.0)
    from tiny_generic import tiny_qwen3_vl

    with pytest.raises(ConfigError, match="cannot place merged tokens"):  # deepstack rows of merged tokens: undefined
        zoprune.prune(tiny_qwen3_vl(), scorer="norm", selector={"name": "visionzip", "similarity": "features"})
    qwen = zoprune.prune(tiny_qwen2_vl(), scorer="norm", selector={"name": "visionzip", "similarity": "features",
                                                                   "contextual": 2}, budget=5)
    from tiny_families import qwen_batch

    qwen_inputs = qwen_batch(qwen.model, [[7]], [[("image", (1, 4, 6))]])
    qwen.generate(**qwen_inputs, max_new_tokens=1, do_sample=False)  # Qwen places merged tokens (see test_pool)
    assert qwen.last_selection[0].num_kept == 5 and qwen.last_selection[0].merged.shape[0] == 2
    with pytest.raises(ConfigError, match="vision_keys"):
        zoprune.prune(tiny_qwen2_vl(), scorer="norm", selector="visionzip")


@pytest.mark.parametrize("policy", ["global", "per_tile"])
def test_llava_next_places_merged_tokens_at_the_end_of_each_image(policy):
    model = tiny_llava_next(attn_implementation="sdpa")
    inputs = llava_next_batch(model, [[7, 8, 9], [10]], [[(16, 32)], [(32, 32), (16, 16)]])
    adapter = {"name": "llava_next", "budget_policy": policy, "newlines": "drop"}  # each image: exactly 9 tokens
    pruned = zoprune.prune(model, adapter=adapter, scorer="cls_attention",
                           selector={"name": "visionzip", "contextual": 1}, budget=9)
    with language_model_calls(model) as calls:
        output = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert output.shape == (2, inputs["input_ids"].shape[1] + 2)
    images: dict[tuple[int, int], list] = {}
    for selection in pruned.last_selection:
        images.setdefault((selection.sample, selection.image), []).append(selection)
    assert [len(parts) for parts in images.values()] == ([1, 1, 1] if policy == "global" else [3, 5, 3])  # base + crops
    short = pruned.prepare(**inputs)["input_ids"]
    for (sample, image), parts in images.items():
        assert sum(s.num_kept for s in parts) == 9
        run = calls[0]["inputs_embeds"][sample, short[sample] == IMAGE_TOKEN_ID][9 * image:9 * (image + 1)]
        merged = torch.cat([s.merged for s in parts if s.merged is not None])  # (M, d_l), in entry order
        torch.testing.assert_close(run[9 - merged.shape[0]:], merged, rtol=0, atol=0)
        assert (short[sample] == IMAGE_TOKEN_ID).sum() == 9 * len({i for s, i in images if s == sample})


def test_method_preset_config_file_and_cli(tiny_checkpoint, sample_image, tiny_vqa_jsonl, tmp_path):
    method = zoprune.get_registry().method("visionzip").config
    assert method == {"scorer": "cls_attention", "selector": "visionzip"}
    runner = CliRunner()
    result = runner.invoke(app, ["run", "--model", str(tiny_checkpoint), "--image", str(sample_image), "--prompt",
                                 "what colour is the circle ?", "--method", "visionzip", "--keep", "7",
                                 "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert "visual tokens kept: 7 / 16" in result.output and "selector=visionzip" in result.output
    both = runner.invoke(app, ["run", "--model", str(tiny_checkpoint), "--image", str(sample_image), "--prompt", "a",
                               "--method", "visionzip", "--config", "configs/visionzip.yaml"])
    assert both.exit_code != 0 and "not both" in both.output
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--model", str(tiny_checkpoint), "--data", str(tiny_vqa_jsonl), "-m",
                                 "visionzip", "-b", "8", "--out", str(out), "--no-plot"])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["kept_tokens"]) for r in rows] == [("unpruned", 16), ("visionzip", 8)]


# Hand-made tokens whose groups are known: 2 dominant (the top scores), 10 candidates, targets every 3rd candidate
# (tokens 2, 5, 8). Token 8 points the way token 5 does, so every B-like token ties between groups 1 and 2 and
# goes to the first (group 1), while token 8, a target, stays its own group 2. Tokens 6 and 7 are orthogonal to every
# target and token 10 is equally close to A and B: ties go to the first target, group 0.
A, B, C, D = torch.eye(4)
HAND_FEATURES = torch.stack([5 * (A + B + C + D), 2 * B - A + 3 * D,  # 0, 1: dominant
                             A, 2 * A + 0.5 * B, 0.3 * A + B, 2 * B,  # 2 (target 0), 3, 4, 5 (target 1)
                             D, C, 3 * B, B + 0.2 * D, A + B, 3 * A + 0.1 * D])  # 6, 7, 8 (target 2), 9, 10, 11
HAND_GROUPS = [-1, -1, 0, 0, 1, 1, 0, 0, 2, 1, 0, 0]


@pytest.mark.parametrize("merge", ["mean", "target_plus_mean"])
def test_each_candidate_joins_its_nearest_target_and_each_target_stays_in_its_own_group(merge):
    from zoprune import Context, ImageTokens
    from zoprune_plugins.selectors.visionzip import VisionZip

    x = HAND_FEATURES
    tokens = ImageTokens(features=x, embeddings=x, model_embeddings=x, projector=lambda v: 2 * v + 1, sample=0,
                         image=0)
    scores = torch.tensor([10.0, 9.0, *torch.linspace(1, 0, 10).tolist()])
    out = VisionZip(VisionZipConfig(contextual=3, similarity="features", merge=merge)).select(
        scores, tokens, 5, Context(torch.Generator()))
    assert out.kept.tolist() == [0, 1]
    assert out.groups.tolist() == HAND_GROUPS
    members = {g: [i for i, h in enumerate(HAND_GROUPS) if h == g] for g in range(3)}
    targets = {0: 2, 1: 5, 2: 8}
    for g, group in members.items():
        if merge == "mean":
            expected = x[group].mean(dim=0)
        else:  # the target, plus the mean of the others in its group (nothing for a group of one)
            others = [i for i in group if i != targets[g]]
            expected = x[targets[g]] + (x[others].mean(dim=0) if others else 0)
        torch.testing.assert_close(out.embeddings[g], 2 * expected + 1, rtol=0, atol=1e-6)  # projected
