"""VisPruner equals the official selection (Theia-4869/VisPruner ``encode_images`` in ``llava/model/llava_arch.py``),
written out here from its description."""

import pytest
import torch

import zoprune
from zoprune_plugins.selectors.vispruner import vispruner_select
from tiny_models import llava_batch, tiny_llava


def reference(features, attention, k, ratio=0.5):
    """Top int(k r) by attention; the residual (falling attention) loses its r = min(8, R - T_div) even tokens with
    the highest max cosine to the odd ones, until T_div remain; kept evens (falling similarity) then odds."""
    important = int(k * ratio)
    diverse = k - important
    order = attention.argsort(descending=True)
    residual = order[important:]
    xn = features / features.norm(dim=-1, keepdim=True)
    while True:
        r = min(8, residual.shape[0] - diverse)
        if r <= 0:
            break
        a, b = xn[residual[::2]], xn[residual[1::2]]
        scores = (a @ b.T).max(dim=-1).values
        distinct = scores.argsort(descending=True)[r:]
        residual = torch.cat([residual[::2][distinct], residual[1::2]])
    return sorted(torch.cat([order[:important], residual]).tolist())


# every case with an even residual: the official batched indexing fails on a residual of odd length
CASES = [(n, k, ratio) for n, k in [(144, 16), (144, 64), (576, 64), (576, 128), (576, 192), (40, 4), (41, 5)]
         for ratio in (0.5, 0.75, 0.25) if (n - int(k * ratio)) % 2 == 0]


@pytest.mark.parametrize("n, k, ratio", CASES)
def test_equals_the_official_selection(n, k, ratio):
    assert len(CASES) >= 15
    g = torch.Generator().manual_seed(n * 7 + k)
    features, attention = torch.randn(n, 32, generator=g), torch.rand(n, generator=g)
    assert vispruner_select(attention, features, k, ratio).tolist() == reference(features, attention, k, ratio)


def test_important_tokens_are_the_top_scores_and_duplicates_go_first():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(50, 16, generator=g)
    features = torch.cat([base, base])  # every token twice: 50 distinct directions
    attention = torch.rand(100, generator=g)
    kept = vispruner_select(attention, features, 40, important_ratio=0.25)
    top10 = set(torch.sort(attention, descending=True).indices[:10].tolist())
    assert top10 <= set(kept.tolist())
    # the 30 diverse tokens come from the de-duplicated rest: copies of one direction are removed before others
    directions = [i % 50 for i in kept.tolist() if i not in top10]
    assert len(directions) == 30 and len(set(directions)) >= 28


def test_odd_residuals_and_edge_budgets_give_k_distinct_indices():
    g = torch.Generator().manual_seed(1)
    features, attention = torch.randn(45, 8, generator=g), torch.rand(45, generator=g)
    for k in (1, 2, 7, 44):
        for ratio in (0.0, 0.5, 1.0):
            kept = vispruner_select(attention, features, k, ratio)
            assert kept.numel() == k and kept.unique().numel() == k and bool((kept[1:] > kept[:-1]).all())


def test_vispruner_method_prunes_a_llava_batch_to_the_budget():
    model = tiny_llava()
    inputs = llava_batch(model, [[5, 6]], [2])
    pruned = zoprune.prune(model, {"scorer": "cls_attention", "selector": "vispruner"}, budget=6)
    output = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 2
    assert [s.kept.numel() for s in pruned.last_selection] == [6, 6]


def test_duplicates_are_judged_on_the_projectors_input_features_not_the_embeddings():
    """The authors compare the vision encoder's features (the projector's input). Here the features hold every
    direction twice while the embeddings are all distinct, so the two choices keep different tokens: the selector
    must keep what the features say."""
    from zoprune import Context, ImageTokens
    from zoprune_plugins.selectors.vispruner import VisPruner, VisPrunerConfig

    g = torch.Generator().manual_seed(3)
    base = torch.randn(24, 16, generator=g)
    features = torch.cat([base, base])  # (48, 16): token i and token i + 24 are duplicates
    embeddings = torch.randn(48, 16, generator=g)  # (48, 16): no duplicates
    scores = torch.rand(48, generator=g)
    tokens = ImageTokens(features=features, embeddings=embeddings, model_embeddings=embeddings,
                         projector=lambda x: x, sample=0, image=0)
    for k in (12, 20):
        kept = VisPruner(VisPrunerConfig(important_ratio=0.25, step=4)).select(
            scores, tokens, k, Context(torch.Generator()))
        by_features = vispruner_select(scores, features, k, 0.25, 4)
        by_embeddings = vispruner_select(scores, embeddings, k, 0.25, 4)
        assert not torch.equal(by_features, by_embeddings)  # the case tells the two apart
        assert kept.tolist() == by_features.tolist()
