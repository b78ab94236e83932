"""CDPruner equals the official greedy MAP (Theia-4869/CDPruner ``encode_images``, written out here from its
description: the N x N kernel and Chen et al.'s k x N Cholesky rows), and each pick maximises the log-det gain."""

import itertools

import pytest
import torch

import zoprune
from zoprune import ConfigError, Context, ImageTokens
from zoprune_plugins.selectors.cdpruner import CDPruner, CDPrunerConfig, cdpruner_select, relevance
from tiny_families import llava_next_batch, qwen_batch, tiny_llava_next, tiny_qwen2_vl
from tiny_models import llava_batch, tiny_llava


def reference_relevance(image, text, theta=None):
    """r = mean_m(-cos(E_i, T_m)); r = (r - min + 1e-6) / (max - min) (per image here); optional exp weighting."""
    e = image.double() / image.double().norm(dim=-1, keepdim=True)
    t = text.double() / text.double().norm(dim=-1, keepdim=True)
    r = (-(e @ t.T)).mean(dim=-1)
    r = (r - r.min() + 1e-6) / (r.max() - r.min())
    if theta is not None:
        r = torch.exp(theta / (2 * (1 - theta)) * r)
    return r


def reference_map(features, r, k):
    """Chen et al.'s fast greedy MAP on L = diag(r) S diag(r), S = cos(F, F), float64, as the official loop:
    d2 = diag(L); repeat k: j = argmax d2; e = (L[j] - sum_t c_t[j] c_t) / sqrt(d2_j); c_i = e; d2 -= e^2;
    d2_j = -inf."""
    f = features.double() / features.double().norm(dim=-1, keepdim=True)
    kernel = r[:, None] * (f @ f.T) * r[None, :]
    n = f.shape[0]
    cis = torch.zeros(k, n, dtype=torch.float64)
    d2 = kernel.diagonal().clone()
    picks = []
    for i in range(k):
        j = int(torch.argmax(d2))
        picks.append(j)
        e = (kernel[j] - cis[:i, j] @ cis[:i]) / torch.sqrt(d2[j])
        cis[i] = e
        d2 -= e * e
        d2[j] = float("-inf")
    return sorted(picks)


def clustered(n, d, clusters, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, d, generator=g) * 3
    return centres[torch.randint(clusters, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("n, k, kind", [(2, 1, "random"), (30, 5, "random"), (144, 16, "random"),
                                        (144, 40, "clustered"), (576, 64, "clustered"), (300, 60, "random"),
                                        (576, 64, "random")])
@pytest.mark.parametrize("theta", [None, 0.5])
@pytest.mark.parametrize("hot, promote", [(256, 64), (4, 3)])
def test_equals_the_official_greedy_map(n, k, kind, theta, hot, promote, monkeypatch):
    g = torch.Generator().manual_seed(n + k)
    d = 96
    z = torch.randn(n, d, generator=g) if kind == "random" else clustered(n, d, 8, seed=k)
    text = torch.randn(7, d, generator=g) + z.mean(dim=0)
    r = relevance(z, text, theta=theta)
    assert torch.allclose(r.double(), reference_relevance(z, text, theta), rtol=1e-4, atol=1e-5)
    import zoprune_plugins.selectors.cdpruner as module

    original = module.lazy_greedy
    monkeypatch.setattr(module, "lazy_greedy", lambda *a, **kw: original(*a, **kw, hot=hot, promote=promote))
    assert cdpruner_select(r, z, k).tolist() == reference_map(z, r.double(), k)


def test_each_pick_maximises_the_log_det_gain():
    # brute force: the greedy adds, k times, the token whose addition gives the largest log det L_Y
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        n, d, k = 14, 10, 6
        z = clustered(n, d, 3, seed) if seed % 2 else torch.randn(n, d, generator=g)
        r = torch.rand(n, generator=g) + 0.05
        f = torch.nn.functional.normalize(z.double(), dim=-1)
        kernel = r.double()[:, None] * (f @ f.T) * r.double()[None, :]
        chosen: list[int] = []
        for _ in range(k):
            gains = {j: torch.logdet(kernel[chosen + [j]][:, chosen + [j]]) for j in range(n) if j not in chosen}
            chosen.append(max(gains, key=lambda j: (float(gains[j]), -j)))
        assert cdpruner_select(r, z, k).tolist() == sorted(chosen)


def test_the_greedy_set_beats_every_swap_of_one_token_on_small_inputs():
    # not the exact MAP (the greedy is an approximation), but no worse than the best set from an exhaustive search
    # by more than the greedy's guarantee would allow on such easy inputs: here it is the exact MAP
    g = torch.Generator().manual_seed(11)
    centres = torch.nn.functional.normalize(torch.randn(4, 16, generator=g), dim=-1)
    z = centres[torch.arange(12) % 4] + 0.01 * torch.randn(12, 16, generator=g)
    r = torch.ones(12)
    got = cdpruner_select(r, z, 4)
    f = torch.nn.functional.normalize(z.double(), dim=-1)
    kernel = f @ f.T
    best = max(itertools.combinations(range(12), 4), key=lambda s: float(torch.logdet(kernel[list(s)][:, list(s)])))
    assert sorted(got.tolist()) == sorted(best) or {i % 4 for i in got.tolist()} == {0, 1, 2, 3}


def test_relevance_prefers_tokens_unlike_the_text_with_the_official_sign():
    text = torch.tensor([[1.0, 0.0, 0.0]])
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    r = relevance(z, text)
    assert int(torch.argmax(r)) == 2 and int(torch.argmin(r)) == 0  # -cos: the opposite token is "most relevant"
    assert float(r.min()) == pytest.approx(1e-6 / 2, rel=1e-3)  # (r - min + 1e-6) / (max - min), range 2
    assert int(torch.argmax(relevance(z, text, negate=False))) == 0
    # no text tokens, or every token equally relevant: r = 1 (plain DPP on the cosines)
    assert torch.equal(relevance(z, torch.zeros(0, 3)), torch.ones(3))
    assert torch.equal(relevance(torch.ones(3, 3), text), torch.ones(3))


def test_more_picks_than_the_rank_fill_by_relevance():
    # 40 tokens in a 3-dimensional space: three picks span it, the other seven are the most relevant of the rest
    g = torch.Generator().manual_seed(2)
    z = torch.randn(40, 3, generator=g)
    r = torch.rand(40, generator=g) + 0.1
    kept = cdpruner_select(r, z, 10)
    assert kept.shape == (10,) and len(set(kept.tolist())) == 10
    first_three = reference_map(z, r.double(), 3)
    rest = [i for i in torch.argsort(r, descending=True).tolist() if i not in first_three][:7]
    assert kept.tolist() == sorted(first_three + rest)


def test_zero_rows_carry_no_volume():
    z = torch.zeros(6, 4)
    z[3] = torch.tensor([1.0, 2.0, 0.0, 0.0])
    z[5] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    r = torch.ones(6)
    assert cdpruner_select(r, z, 2).tolist() == [3, 5]


def test_without_the_signal_it_is_a_config_error_naming_it(monkeypatch):
    model = tiny_llava()
    from zoprune_plugins.adapters.llava import LlavaAdapter

    monkeypatch.setattr(LlavaAdapter, "provides", frozenset({"cls_attention", "vision_keys"}))
    with pytest.raises(ConfigError, match="text_embeddings"):
        zoprune.prune(model, {"scorer": None, "selector": "cdpruner"}, budget=4)
    tokens = ImageTokens(features=torch.randn(5, 3), embeddings=torch.randn(5, 3), model_embeddings=torch.randn(5, 3),
                         projector=lambda x: x, sample=0, image=0)
    with pytest.raises(ConfigError, match="text_embeddings"):
        CDPruner(CDPrunerConfig()).select(None, tokens, 2, Context(torch.Generator()))


@torch.no_grad()
def _check_selections(pruned, inputs, model):
    """Every entry's kept tokens are cdpruner_select on the adapter's embeddings and the prompt's text tokens, and
    the text tokens are the language model's input embeddings of the prompt's non-placeholder, non-padding ids."""
    images = pruned.adapter.extract(inputs, pruned._projector(torch.float32), torch.float32,
                                    frozenset({"text_embeddings"}))
    table = model.get_input_embeddings()
    placeholders = {getattr(model.config, key, None) for key in ("image_token_id", "video_token_id",
                                                                 "image_token_index")}
    mask = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"]))
    assert pruned.last_selection
    for s in pruned.last_selection:
        tokens = next(t for t in images if (t.sample, t.image) == (s.sample, s.image))
        ids = [int(i) for i, m in zip(inputs["input_ids"][s.sample], mask[s.sample])
               if m and int(i) not in placeholders]
        expected = table(torch.tensor(ids, dtype=torch.long)).detach().float()
        assert torch.equal(tokens.extras["text_embeddings"], expected)
        r = relevance(tokens.embeddings, expected)
        assert s.kept.tolist() == cdpruner_select(r, tokens.embeddings, s.kept.numel()).tolist()


def test_cdpruner_prunes_and_generates_on_llava():
    model = tiny_llava()
    inputs = llava_batch(model, [[5, 6], [7, 8, 9]], [1, 2])
    pruned = zoprune.prune(model, {"scorer": None, "selector": "cdpruner"}, budget=5)
    out = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert out.shape[0] == 2
    assert [s.kept.numel() for s in pruned.last_selection] == [5, 5, 5]
    _check_selections(pruned, inputs, model)


def test_cdpruner_prunes_and_generates_on_llava_next():
    model = tiny_llava_next()
    inputs = llava_next_batch(model, [[5, 6, 7], [8]], [[(40, 60)], [(60, 40)]])
    pruned = zoprune.prune(model, "configs/cdpruner.yaml", budget=6)
    pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    _check_selections(pruned, inputs, model)


def test_cdpruner_prunes_and_generates_on_qwen2_vl():
    model = tiny_qwen2_vl()
    inputs = qwen_batch(model, [[5, 6], [7, 8, 9]], [[("image", (1, 4, 4))], [("image", (1, 4, 6))]])
    pruned = zoprune.prune(model, {"scorer": None, "selector": "cdpruner"}, budget=3)
    pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    _check_selections(pruned, inputs, model)


def test_the_question_changes_the_selection():
    # the same image under two prompts: the relevance, and so (here) the kept tokens, follow the text
    model = tiny_llava()
    pruned = zoprune.prune(model, {"scorer": None, "selector": "cdpruner"}, budget=4)
    kept = []
    for text in ([5, 6, 7], [20, 21, 22, 23]):
        inputs = llava_batch(model, [text], [1])
        pruned.select(**inputs)
        kept.append(pruned.last_selection[0].kept.tolist())
    assert kept[0] != kept[1]


def test_cdpruner_on_the_shipped_model_and_through_the_cli(tmp_path):
    from typer.testing import CliRunner

    from zoprune.cli import app
    from zoprune.shapes import model as shapes
    from zoprune.shapes.data import make_dataset

    model, processor = shapes.load()
    example = make_dataset(1, seed=5)[0]
    inputs = processor(images=[example.image], text=[shapes.prompt(example.question)], return_tensors="pt")
    pruned = zoprune.prune(model, {"scorer": None, "selector": "cdpruner"}, budget=16)
    pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert [s.kept.numel() for s in pruned.last_selection] == [16]
    _check_selections(pruned, dict(inputs), model)
    image = tmp_path / "shapes.png"
    example.image.save(image)
    result = CliRunner().invoke(app, ["run", "--image", str(image), "--prompt", example.question, "--keep", "16",
                                      "--method", "cdpruner"])
    assert result.exit_code == 0, result.output
    assert "visual tokens kept: 16 / 144" in result.output


@pytest.mark.parametrize("family", ["mistral3", "gemma3", "llava_onevision"])
def test_cdpruner_on_generic_families_and_onevision(family):
    # the generic adapter (one placeholder id per family config) and LLaVA-OneVision (no [CLS]: still the text)
    from tiny_generic import batch, tiny_llava_onevision, tiny_model

    if family == "llava_onevision":
        model = tiny_llava_onevision()
        inputs = llava_next_batch(model, [[8, 9], [10]], [[(30, 20)], [(16, 16)]])
    else:
        model = tiny_model(family)
        inputs = batch(model, family, [[8, 9, 11], [10]], [1, 1])
    pruned = zoprune.prune(model, {"scorer": None, "selector": "cdpruner"}, budget=3)
    pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    _check_selections(pruned, inputs, model)
