"""Shared inputs of the speed benchmarks: LLaVA-1.5-shaped projector and stand-in features at several N.

Run: ``python -m pytest benchmarks --benchmark-only -p no:cacheprovider`` (the default ``pytest`` run only collects
``tests/`` and skips benchmarks).
"""

import pytest
from bench_inputs import image_tokens as stand_in_tokens
from bench_inputs import llava_projector

from zoprune import ImageTokens


@pytest.fixture(scope="session")
def projector():
    return llava_projector()


@pytest.fixture(scope="session")
def image_tokens(projector):
    cache = {}

    def make(n: int) -> ImageTokens:
        if n not in cache:
            cache[n] = stand_in_tokens(n, projector)
        return cache[n]

    return make
