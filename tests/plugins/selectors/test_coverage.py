"""The coverage selector equals method.md's greedy sensitivity x diversity selection, written out naively."""

import pytest
import torch

from zoprune import Context, ImageTokens
from zoprune_plugins.selectors.coverage import Coverage, CoverageConfig, coverage_select


def reference(scores, z, k, fusion="product"):
    """method.md step 2 with the full N x N cosine matrix, one candidate at a time."""
    s = (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)
    zn = z / z.norm(dim=1, keepdim=True)
    cos = zn @ zn.T
    kept = [int(torch.argmax(s))]
    while len(kept) < k:
        best, best_gain = None, -float("inf")
        for i in range(len(s)):
            if i in kept:
                continue
            diversity = 1 - max(float(cos[i, j]) for j in kept)
            gain = float(s[i]) * diversity if fusion == "product" else float(s[i]) + diversity
            if gain > best_gain:
                best, best_gain = i, gain
        kept.append(best)
    return sorted(kept)


def clustered(n, d, clusters, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(clusters, d, generator=g) * 3
    return centers[torch.randint(clusters, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)


@pytest.mark.parametrize("fusion", ["product", "sum"])
@pytest.mark.parametrize("n, k, kind", [(30, 5, "random"), (64, 16, "random"), (64, 16, "clustered"),
                                        (100, 40, "clustered"), (10, 9, "random")])
def test_equals_reference(n, k, kind, fusion):
    g = torch.Generator().manual_seed(n + k)
    z = torch.randn(n, 24, generator=g) if kind == "random" else clustered(n, 24, 6, n)
    scores = torch.rand(n, generator=g)
    assert coverage_select(scores, z, k, fusion).tolist() == reference(scores, z, k, fusion)


def test_invariants():
    g = torch.Generator().manual_seed(0)
    n = 200
    z, scores = torch.randn(n, 16, generator=g), torch.rand(n, generator=g)
    tokens = ImageTokens(features=z, embeddings=z, model_embeddings=z, projector=lambda x: x, sample=0, image=0)
    for k in (1, 2, 17, 199, 200):
        kept = Coverage(CoverageConfig()).select(scores, tokens, k, Context(torch.Generator()))
        assert kept.dtype == torch.long and kept.numel() == k
        assert len(set(kept.tolist())) == k and torch.equal(kept, kept.sort().values)
        assert int(torch.argmax(scores)) in kept.tolist()  # the most sensitive token is always kept


def test_sensitivity_weighs_the_diversity():
    # two identical tokens: after taking one, its twin has zero diversity and must not come next
    z = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    scores = torch.tensor([1.0, 0.99, 0.5, 0.0])
    assert coverage_select(scores, z, 2).tolist() == [0, 2]


def test_equal_scores_mean_pure_diversity_not_the_first_tokens():
    """Every score equal (a blank image's sensitivities): no preference, so coverage selects what DivPrune selects.
    The authors' normalisation (+1e-8) would give every token weight 0 and keep tokens 0..k-1 (the top rows)."""
    from zoprune_plugins.selectors.coverage import coverage_select_dense
    from zoprune_plugins.selectors.divprune import divprune_select

    z = clustered(144, 24, 5, 3)
    for fusion in ("product", "sum"):
        kept = coverage_select(torch.full((144,), 0.7), z, 12, fusion)
        assert torch.equal(kept, divprune_select(z, 12))
        assert torch.equal(kept, coverage_select_dense(torch.full((144,), 0.7), z, 12, fusion))
        assert kept.tolist() != list(range(12))
    assert reference(torch.full((144,), 0.7), z, 12) == list(range(12))  # the authors' behaviour, for the record


def test_identical_tokens_keep_an_even_spread():
    """Every token identical: all similarities 1, every pick a tie; k evenly spaced tokens, for any scores."""
    from zoprune_plugins.selectors.divprune import divprune_select
    from zoprune_plugins.selection.lattice import evenly_spaced

    z = torch.ones(64, 8) * 0.3
    for scores in (torch.rand(64, generator=torch.Generator().manual_seed(0)), torch.zeros(64)):
        assert torch.equal(coverage_select(scores, z, 4), evenly_spaced(64, 4))
    assert torch.equal(divprune_select(z, 4), evenly_spaced(64, 4))
    assert evenly_spaced(64, 4).tolist() == [8, 24, 40, 56]


def test_the_selector_passes_its_fusion_on():
    g = torch.Generator().manual_seed(3)
    z, scores = torch.randn(40, 8, generator=g), torch.rand(40, generator=g)
    tokens = ImageTokens(features=z, embeddings=z, model_embeddings=z, projector=lambda x: x, sample=0, image=0)
    by_fusion = {fusion: Coverage(CoverageConfig(fusion=fusion)).select(scores, tokens, 10, Context(g)).tolist()
                 for fusion in ("product", "sum")}
    assert by_fusion == {fusion: reference(scores, z, 10, fusion) for fusion in ("product", "sum")}
    assert by_fusion["product"] != by_fusion["sum"]
