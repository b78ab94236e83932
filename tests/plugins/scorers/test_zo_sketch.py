"""zo_sensitivity's non-default ``output_sketch``: an unbiased, seeded, cheaper estimate of the exact ZO score."""

import math

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

import zoprune
from zoprune import Context, ImageTokens
from zoprune.projector import mlp_parts
from zoprune_plugins.scorers.zo_sensitivity import (ZOSensitivity, ZOSensitivityConfig, output_sketch,
                                                    sketch_norm_mean, structured_sensitivity, unit_directions)

D_V, D_H, D_L = 32, 64, 48


def projector(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_V, D_H), nn.GELU(), nn.Linear(D_H, D_L))


def features(n=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_V, generator=g) * torch.linspace(0.2, 3, n)[:, None]  # tokens of varied scale


def sketch(r, seed):
    return output_sketch(r, D_L, torch.Generator().manual_seed(seed), torch.float32, torch.device("cpu"))


def test_sketch_rows_are_orthogonal_and_square_norms_are_unbiased():
    r = 8
    one = sketch(r, 0)  # (r, d_l)
    torch.testing.assert_close(one @ one.T, torch.eye(r) * D_L / r, rtol=1e-5, atol=1e-5)
    y = torch.randn(D_L, generator=torch.Generator().manual_seed(9))
    squares = torch.stack([(sketch(r, s) @ y).square().sum() for s in range(4000)])  # (draws,)
    assert abs(float(squares.mean() / y.square().sum()) - 1) < 0.03  # E||R y||^2 = ||y||^2 (std of mean: 0.7%)
    norms = torch.stack([(sketch(r, s) @ y).norm() for s in range(4000)])
    assert abs(float(norms.mean()) / (sketch_norm_mean(r, D_L) * float(y.norm())) - 1) < 0.01


def test_norm_mean_constant():
    assert sketch_norm_mean(D_L, D_L) == 1.0
    # E sqrt(B), B ~ Beta(a, b), by numerical integration of the Beta density
    r, d = 8, 48
    a, b = r / 2, (d - r) / 2
    t = torch.linspace(0, 1, 200001, dtype=torch.float64)[1:-1]
    log_beta = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    density = torch.exp((a - 1) * torch.log(t) + (b - 1) * torch.log1p(-t) - log_beta)
    mean_sqrt = float(torch.trapezoid(density * t.sqrt(), t))
    assert sketch_norm_mean(r, d) == pytest.approx(math.sqrt(d / r) * mean_sqrt, rel=1e-5)
    assert sketch_norm_mean(r, d) < 0.98  # so the correction matters at this r


def test_full_width_sketch_is_exact_up_to_rounding():
    parts = mlp_parts(projector())
    x = features()
    u = unit_directions(16, D_V, torch.Generator().manual_seed(0), torch.float32, torch.device("cpu"))
    with torch.no_grad():
        exact = structured_sensitivity(x, parts, u, 0.01, 16)
        full = structured_sensitivity(x, parts, u, 0.01, 16, None, sketch(D_L, 5))
    torch.testing.assert_close(full, exact, rtol=1e-5, atol=0)


def test_expectation_over_sketches_is_the_exact_score():
    parts = mlp_parts(projector())
    x = features()
    u = unit_directions(16, D_V, torch.Generator().manual_seed(0), torch.float32, torch.device("cpu"))
    r = 8
    with torch.no_grad():
        exact = structured_sensitivity(x, parts, u, 0.01, 16)  # (N,)
        draws = torch.stack([structured_sensitivity(x, parts, u, 0.01, 16, None, sketch(r, s))
                             for s in range(2000)])  # (draws, N); one draw is ~8% off
    ratio = draws.mean(0) / exact
    # without dividing by sketch_norm_mean (0.974 here) the mean would be 2.6% low
    assert abs(float(ratio.mean()) - 1) < 0.005
    assert float((ratio - 1).abs().max()) < 0.015


def tokens_for(proj, n=60):
    x = features(n)
    with torch.no_grad():
        z = proj(x)
    return ImageTokens(features=x, embeddings=z, model_embeddings=z, projector=proj, sample=0, image=0)


def test_scorer_is_seeded_and_ranks_like_the_exact_estimator():
    proj = projector()
    tokens = tokens_for(proj)

    def score(seed, **config):
        with torch.no_grad():  # as in the pipeline
            return ZOSensitivity(ZOSensitivityConfig(directions=32, **config)).score(
                tokens, Context(torch.Generator().manual_seed(seed)))

    exact = score(0)
    sketched = score(0, output_sketch=16)
    assert torch.equal(sketched, score(0, output_sketch=16))
    assert not torch.equal(sketched, score(1, output_sketch=16))
    assert not torch.equal(sketched, exact)
    assert spearmanr(sketched, exact)[0] > 0.95
    torch.testing.assert_close(score(0, output_sketch=D_L), exact, rtol=1e-5, atol=0)  # same directions


def test_invalid_uses_are_config_errors():
    proj = projector()
    tokens = tokens_for(proj)
    with pytest.raises(zoprune.ConfigError, match="output width 48"):
        ZOSensitivity(ZOSensitivityConfig(output_sketch=49)).score(tokens, Context(torch.Generator()))
    with pytest.raises(zoprune.ConfigError, match="Linear-activation-Linear"):
        ZOSensitivity(ZOSensitivityConfig(output_sketch=8, mode="black_box")).score(tokens, Context(torch.Generator()))
    with pytest.raises(Exception):
        ZOSensitivityConfig(output_sketch=0)
    assert ZOSensitivityConfig().output_sketch is None  # the default stays exact
