"""The closed-form limit of ZOO-Prune's sensitivity for an MLP projector (method.md, "Cost").

For ``M(x) = W2 act(W1 x + b1) + b2`` the Jacobian at token i is ``J_i = W2 diag(g_i) W1`` with ``g_i = act'(W1 x_i +
b1)``, so ``||J_i||_F^2 = g_i^T K g_i`` with ``K = (W2^T W2) * (W1 W1^T)`` (element-wise product, d_h x d_h). For
unit directions ``u`` uniform on the sphere, ``E ||J_i u||^2 = ||J_i||_F^2 / d_v``: the score
``sqrt(g_i^T K g_i / d_v)`` is the root-mean-square response the ZO estimator samples with m directions and a step h,
taken at h -> 0 and m -> infinity. It is deterministic, and after ``K`` (once per projector, cached) it costs one
``N x d_h x d_h`` product per image, about as much as a single direction of the structured ZO estimator.

The ZO estimator averages ``||J u||`` (not its square), so the two scores differ by a token-dependent factor below 1;
they rank tokens alike when the Jacobians' spectra have similar shapes (docs/speed.md reports the correlation).
"""

from __future__ import annotations

import threading
import weakref

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Scorer, hookimpl
from zoprune.errors import ConfigError
from zoprune.projector import MLPParts, mlp_parts


class JacobianNormConfig(ComponentConfig):
    """Parameters of the closed-form scorer."""

    block: int = Field(default=4096, ge=1, description="tokens per block of the g K g product (memory: block x d_h)")


class JacobianNorm(Scorer):
    """``S(i) = sqrt(g_i^T K g_i / d_v)``: the projector Jacobian's Frobenius norm per token over sqrt(d_v)."""

    name = "jacobian_norm"
    Config = JacobianNormConfig

    def score(self, tokens: ImageTokens, ctx: Context) -> torch.Tensor:
        parts = mlp_parts(tokens.projector) if isinstance(tokens.projector, torch.nn.Module) else None
        if parts is None:
            raise ConfigError("scorer 'jacobian_norm' needs a Linear-activation-Linear projector (LLaVA's); "
                              "use 'zo_sensitivity', which works with any projector")
        return jacobian_norm_scores(tokens.features, parts, self.config.block)


def activation_derivative(activation, pre: torch.Tensor) -> torch.Tensor:
    """``act'(pre)`` element-wise, for any element-wise activation (one forward-mode pass, no graph kept)."""
    with torch.enable_grad():
        _, tangent = torch.func.jvp(activation, (pre,), (torch.ones_like(pre),))
    return tangent


def jacobian_norm_scores(x: torch.Tensor, parts: MLPParts, block: int = 4096) -> torch.Tensor:
    """(N,) float32: ``sqrt(g_i^T K g_i / d_v)`` for the tokens ``x`` (N, d_v)."""
    kernel = gram_kernel(parts)  # (d_h, d_h), symmetric
    d_v = parts.first.in_features
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], block):
        g = activation_derivative(parts.activation, parts.first(x[start:start + block])).to(kernel.dtype)
        quad = ((g @ kernel) * g).sum(dim=-1)  # g^T K g per token, >= 0 up to rounding (K is PSD)
        out[start:start + block] = (quad.clamp_min(0) / d_v).sqrt().float()
    return out


# K per projector: keyed weakly on the first Linear (so a freed projector frees its K), checked against the weights'
# identity and in-place version counters, so that loading new weights into the same module recomputes it.
_kernels: weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, torch.Tensor]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _weights_key(parts: MLPParts) -> tuple:
    w1, w2 = parts.first.weight, parts.second.weight
    return (id(w1), w1._version, w1.data_ptr(), w1.dtype, w1.device,
            id(w2), w2._version, w2.data_ptr(), w2.dtype, w2.device)


def gram_kernel(parts: MLPParts) -> torch.Tensor:
    """``K = (W2^T W2) * (W1 W1^T)`` (d_h x d_h), computed once per projector weights and cached."""
    key = _weights_key(parts)
    with _lock:
        cached = _kernels.get(parts.first)
        if cached is not None and cached[0] == key:
            return cached[1]
    with torch.no_grad():
        w1, w2 = parts.first.weight, parts.second.weight
        kernel = (w2.T @ w2) * (w1 @ w1.T)
    with _lock:
        _kernels[parts.first] = (key, kernel)
    return kernel


def clear_cache() -> None:
    """Forget every cached K."""
    with _lock:
        _kernels.clear()


@hookimpl
def register_scorers(register):
    register(JacobianNorm)
