"""Scorers at LLaVA-1.5 projector shapes (1024 -> 4096 -> 4096), N = 576, 2880, 16384.

The ZO scorers run with m = 4 directions here (their cost is linear in m: multiply by 16 for the default m = 64);
the black-box path only at N = 576.
"""

import pytest
import torch
from bench_inputs import SIZES
from zoprune_plugins.scorers.jacobian_norm import JacobianNorm, gram_kernel
from zoprune_plugins.scorers.zo_sensitivity import ZOSensitivity, ZOSensitivityConfig

from zoprune import Context
from zoprune.projector import mlp_parts


def ctx():
    return Context(torch.Generator().manual_seed(0))


@pytest.mark.parametrize("n", SIZES)
def test_zo_structured_m4(benchmark, image_tokens, n):
    tokens = image_tokens(n)
    scorer = ZOSensitivity(ZOSensitivityConfig(directions=4, mode="structured"))
    with torch.no_grad():
        scores = benchmark.pedantic(scorer.score, args=(tokens, ctx()), rounds=2, iterations=1)
    assert scores.shape == (n,)


def test_zo_black_box_m4(benchmark, image_tokens):
    tokens = image_tokens(576)
    scorer = ZOSensitivity(ZOSensitivityConfig(directions=4, mode="black_box"))
    with torch.no_grad():
        scores = benchmark.pedantic(scorer.score, args=(tokens, ctx()), rounds=2, iterations=1)
    assert scores.shape == (576,)


@pytest.mark.parametrize("n", SIZES)
def test_jacobian_norm(benchmark, image_tokens, n):
    tokens = image_tokens(n)
    gram_kernel(mlp_parts(tokens.projector))  # K is cached per projector: time the per-image cost
    with torch.no_grad():
        scores = benchmark.pedantic(JacobianNorm().score, args=(tokens, ctx()), rounds=3, iterations=1)
    assert scores.shape == (n,)


def test_jacobian_norm_kernel_first_call(benchmark, projector):
    parts = mlp_parts(projector)

    def fresh():
        from zoprune_plugins.scorers import jacobian_norm

        jacobian_norm.clear_cache()
        return gram_kernel(parts)

    kernel = benchmark.pedantic(fresh, rounds=2, iterations=1)
    assert kernel.shape == (4096, 4096)
