"""The closed-form scorer equals the projector Jacobian's Frobenius norm / sqrt(d_v), and is cached per weights."""

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn
from zoprune_plugins.scorers import jacobian_norm as jn
from zoprune_plugins.scorers.jacobian_norm import JacobianNorm, JacobianNormConfig, gram_kernel
from zoprune_plugins.scorers.zo_sensitivity import ZOSensitivity, ZOSensitivityConfig

import zoprune
from zoprune import ConfigError, Context, ImageTokens
from zoprune.projector import mlp_parts


def projector(d_v=12, d_h=20, d_l=16, act=None, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_v, d_h), act or nn.GELU(), nn.Linear(d_h, d_l))


def tokens(proj, n=9, seed=1):
    d_v = proj[0].in_features
    x = torch.randn(n, d_v, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.3, 2.5, n)[:, None]
    x = x.to(proj[0].weight.dtype)
    with torch.no_grad():
        z = proj(x)
    return ImageTokens(features=x, embeddings=z, model_embeddings=z, projector=proj, sample=0, image=0)


def ctx():
    return Context(torch.Generator().manual_seed(0))


@pytest.mark.parametrize("act", [nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Tanh()])
@pytest.mark.parametrize("block", [4, 4096])
def test_equals_exact_jacobian_frobenius_norm(act, block):
    proj = projector(act=act).double()
    tok = tokens(proj)
    with torch.no_grad():
        scores = JacobianNorm(JacobianNormConfig(block=block)).score(tok, ctx())
    exact = torch.stack([torch.autograd.functional.jacobian(proj, x).norm() for x in tok.features]) / 12 ** 0.5
    torch.testing.assert_close(scores.double(), exact, rtol=1e-5, atol=1e-7)


def test_deterministic_and_independent_of_the_generator():
    proj = projector()
    tok = tokens(proj)
    a = JacobianNorm().score(tok, Context(torch.Generator().manual_seed(0)))
    b = JacobianNorm().score(tok, Context(torch.Generator().manual_seed(123)))
    assert a.dtype == torch.float32 and a.shape == (9,)
    assert torch.equal(a, b)


def test_is_the_mean_square_limit_of_zo():
    """m -> large, h -> small: sqrt(mean_j ||J u_j||^2) from the ZO differences approaches the closed form."""
    proj = projector()
    tok = tokens(proj, n=5)
    x = tok.features
    u = torch.randn(20000, 12, generator=torch.Generator().manual_seed(0))
    u = u / u.norm(dim=1, keepdim=True)
    with torch.no_grad():
        rms = torch.stack([((proj(xi + 1e-3 * u) - proj(xi - 1e-3 * u)).norm(dim=1) / 2e-3).pow(2).mean().sqrt()
                           for xi in x])
        closed = JacobianNorm().score(tok, ctx())
    torch.testing.assert_close(closed, rms, rtol=2e-2, atol=0)


def test_ranks_like_zo_sensitivity():
    proj = projector(d_v=32, d_h=64, d_l=48)
    tok = tokens(proj, n=60)
    with torch.no_grad():
        closed = JacobianNorm().score(tok, ctx())
        zo = ZOSensitivity(ZOSensitivityConfig(directions=64)).score(tok, ctx())
    assert spearmanr(closed, zo)[0] > 0.9


def test_kernel_is_cached_per_weights_and_recomputed_when_they_change():
    jn.clear_cache()
    proj = projector()
    parts = mlp_parts(proj)
    first = gram_kernel(parts)
    assert gram_kernel(parts) is first  # cached
    w1, w2 = parts.first.weight, parts.second.weight
    torch.testing.assert_close(first, (w2.T @ w2) * (w1 @ w1.T))
    with torch.no_grad():
        parts.second.weight.mul_(2)  # in-place change: the version counter moves
    second = gram_kernel(parts)
    assert second is not first
    torch.testing.assert_close(second, 4 * first)
    other = mlp_parts(projector(seed=5))
    assert not torch.equal(gram_kernel(other), second)  # another projector, its own K


def test_non_mlp_projector_is_a_config_error():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(12)
            self.lin = nn.Linear(12, 16)

        def forward(self, x):
            return self.lin(self.norm(x))

    proj = Odd()
    x = torch.randn(4, 12)
    tok = ImageTokens(features=x, embeddings=proj(x), model_embeddings=proj(x), projector=proj, sample=0, image=0)
    with pytest.raises(ConfigError, match="zo_sensitivity"):
        JacobianNorm().score(tok, ctx())


def test_registered_and_usable_in_a_pipeline():
    from tiny_models import llava_batch, tiny_llava

    assert "jacobian_norm" in zoprune.get_registry().names("scorer")
    model = tiny_llava()
    pruned = zoprune.prune(model, {"scorer": "jacobian_norm", "budget": 5})
    sel = pruned.select(**llava_batch(model, [[6, 7]], [1]))
    assert sel[0].kept.numel() == 5 and sel[0].scores.shape == (16,)
