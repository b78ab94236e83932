"""The MMR selector equals the plain maximal-marginal-relevance loop, and its two ends are top-k and max-min
diversity."""

import pytest
import torch

import zoprune
from zoprune import Context, ImageTokens
from zoprune_plugins.selectors.mmr import MMR, MMRConfig
from tiny_models import llava_batch, tiny_llava


def reference(scores, z, k, lam):
    """First the highest score; then argmax lam * s - (1 - lam) * max cos to the picked, s min-max normalised."""
    s = (scores - scores.min()) / (scores.max() - scores.min() + 1e-8)
    zn = torch.nn.functional.normalize(z, dim=-1)
    picked = [int(s.argmax())]
    for _ in range(k - 1):
        max_cos = (zn @ zn[picked].T).max(dim=1).values
        gain = lam * s - (1 - lam) * max_cos
        gain[picked] = float("-inf")
        picked.append(int(gain.argmax()))
    return sorted(picked)


def select(scores, z, k, lam):
    tokens = ImageTokens(features=z, embeddings=z, model_embeddings=z, projector=lambda x: x, sample=0, image=0)
    return MMR(MMRConfig(lam=lam)).select(scores, tokens, k, Context(torch.Generator()))


@pytest.mark.parametrize("n, k", [(30, 5), (144, 16), (576, 64), (2000, 200)])
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.5, 0.9])
def test_equals_the_plain_loop(n, k, lam):
    g = torch.Generator().manual_seed(n + k)
    z, scores = torch.randn(n, 24, generator=g), torch.rand(n, generator=g)
    assert select(scores, z, k, lam).tolist() == reference(scores, z, k, lam)


def test_lambda_one_is_top_k():
    g = torch.Generator().manual_seed(2)
    z, scores = torch.randn(100, 8, generator=g), torch.rand(100, generator=g)
    assert select(scores, z, 10, 1.0).tolist() == sorted(torch.topk(scores, 10).indices.tolist())


def test_zo_mmr_method_runs_on_llava():
    model = tiny_llava()
    inputs = llava_batch(model, [[5]], [1])
    pruned = zoprune.prune(model, {"scorer": "zo_sensitivity", "selector": "mmr"}, budget=4)
    pruned.generate(**inputs, max_new_tokens=1, do_sample=False)
    assert pruned.last_selection[0].kept.numel() == 4
