"""The norm scorer, the Spearman helper, and how norm ranks tokens next to ZO sensitivity on the tiny LLaVA."""

import pytest
import torch
from scipy.stats import spearmanr

import zoprune
from zoprune import Context, ImageTokens
from zoprune_plugins.scorers.norm import Norm, ranks, spearman
from tiny_models import llava_batch, tiny_llava


def test_scores_are_the_projected_feature_norms():
    z = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 1.0]])
    tokens = ImageTokens(features=torch.zeros(3, 5), embeddings=z, model_embeddings=z, projector=lambda x: x,
                         sample=0, image=0)
    assert torch.allclose(Norm().score(tokens, Context(torch.Generator())), torch.tensor([5.0, 1.0, 2 ** 0.5]))


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(ties):
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(300, generator=g), torch.randn(300, generator=g)
    b = 0.5 * a + b
    if ties:
        a, b = a.round(), (b * 2).round()
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic, abs=1e-12)
    assert torch.equal(ranks(torch.tensor([2.0, 1.0, 2.0, 0.5])), torch.tensor([3.5, 2.0, 3.5, 1.0],
                                                                                dtype=torch.float64))


def norm_vs_sensitivity(model, inputs):
    """Spearman correlation of the norm and zo_sensitivity rankings, one per image."""
    by_norm = zoprune.prune(model, {"scorer": "norm", "selector": "topk", "budget": 4}).select(**inputs)
    by_zo = zoprune.prune(model, {"scorer": "zo_sensitivity", "selector": "topk", "budget": 4}).select(**inputs)
    return [spearman(a.scores, b.scores) for a, b in zip(by_norm, by_zo)]


def test_report_norm_vs_zo_sensitivity_on_tiny_llava(capsys):
    model = tiny_llava()
    inputs = llava_batch(model, [[6, 7], [8]], [2, 1])
    correlations = norm_vs_sensitivity(model, inputs)
    with capsys.disabled():
        print(f"\nSpearman(norm, zo_sensitivity) per image on tiny LLaVA: {[round(c, 3) for c in correlations]}")
    assert len(correlations) == 3 and all(-1 <= c <= 1 for c in correlations)
    # the figures docs/methods/norm.md quotes (seeded model and ZO draws: reproducible to far below the margin)
    assert correlations == pytest.approx([0.226, 0.362, 0.412], abs=0.005)
    # measured: positive on every image (the norm and the sensitivity grow together through GELU's linear part)
    assert all(c > 0 for c in correlations)


def test_topk_by_norm_keeps_the_largest_embeddings():
    model = tiny_llava()
    inputs = llava_batch(model, [[6, 7]], [1])
    pruned = zoprune.prune(model, {"scorer": "norm", "selector": "topk", "budget": 3})
    pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    selection = pruned.last_selection[0]
    assert selection.kept.tolist() == sorted(torch.topk(selection.scores, 3).indices.tolist())
