"""The topk selector, and FastV's ranking of its attention row: the k highest, ties to the lower index."""

import pytest
import torch

from zoprune import Context, ImageTokens
from zoprune_plugins.selectors.fastv import FastV, FastVConfig
from zoprune_plugins.selectors.topk import TopK


def tokens(n, **extras):
    z = torch.zeros(n, 4)
    return ImageTokens(features=z, embeddings=z, model_embeddings=z, projector=lambda x: x, sample=0, image=0,
                       extras=extras)


def by_rank(values, k):
    """The k indices of the highest values, the lower index first among equal values, sorted ascending."""
    return sorted(sorted(range(len(values)), key=lambda i: (-float(values[i]), i))[:k])


# few distinct values over many tokens: most of the cut falls among ties, where an unstable sort picks others
TIED = torch.randint(0, 5, (2000,), generator=torch.Generator().manual_seed(0)).float()


@pytest.mark.parametrize("k", [1, 7, 300, 1999])
def test_topk_keeps_the_highest_scores_ties_to_the_lower_index(k):
    kept = TopK().select(TIED, tokens(TIED.numel()), k, Context(torch.Generator()))
    assert kept.tolist() == by_rank(TIED.tolist(), k)


@pytest.mark.parametrize("query, signal", [("last", "llm_attention"), ("text", "llm_attention_text")])
def test_fastv_ranks_its_query_ties_to_the_lower_index(query, signal):
    other = {"llm_attention": torch.zeros_like(TIED), "llm_attention_text": torch.zeros_like(TIED)}
    selector = FastV(FastVConfig(query=query))
    kept = selector.select(None, tokens(TIED.numel(), **{**other, signal: TIED}), 300, Context(torch.Generator()))
    assert kept.tolist() == by_rank(TIED.tolist(), 300)
