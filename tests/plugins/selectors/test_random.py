"""The random baseline: k distinct sorted tokens, reproducible from the seed, and uniform over the tokens."""

import torch

import zoprune
from zoprune import Context, ImageTokens
from zoprune_plugins.selectors.random import RandomSelector
from tiny_models import llava_batch, tiny_llava


def tokens(n):
    z = torch.zeros(n, 4)
    return ImageTokens(features=z, embeddings=z, model_embeddings=z, projector=lambda x: x, sample=0, image=0)


def draw(n, k, seed):
    return RandomSelector().select(None, tokens(n), k, Context(torch.Generator().manual_seed(seed)))


def test_distinct_sorted_and_seeded():
    kept = draw(50, 12, seed=3)
    assert kept.dtype == torch.long and kept.numel() == 12 and len(set(kept.tolist())) == 12
    assert torch.equal(kept, kept.sort().values)
    assert torch.equal(kept, draw(50, 12, seed=3))
    assert not torch.equal(kept, draw(50, 12, seed=4))


def test_every_token_equally_likely():
    # 2000 draws of 5 of 20 tokens: each token is kept about 500 times (binomial sd ~19)
    counts = torch.zeros(20)
    for seed in range(2000):
        counts[draw(20, 5, seed)] += 1
    assert counts.sum() == 2000 * 5
    assert (counts - 500).abs().max() < 100


def test_runs_through_prune_and_follows_the_pipeline_seed():
    model = tiny_llava()
    inputs = llava_batch(model, [[6, 7, 8]], [2])
    pruned = zoprune.prune(model, {"scorer": None, "selector": "random", "budget": 5, "seed": 1})
    pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    first = [s.kept for s in pruned.last_selection]
    assert [k.numel() for k in first] == [5, 5]
    again = [s.kept for s in zoprune.prune(model, {"scorer": None, "selector": "random", "budget": 5,
                                                    "seed": 1}).select(**inputs)]
    other = [s.kept for s in zoprune.prune(model, {"scorer": None, "selector": "random", "budget": 5,
                                                    "seed": 2}).select(**inputs)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))
