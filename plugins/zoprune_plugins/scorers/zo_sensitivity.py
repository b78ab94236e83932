"""ZOO-Prune's sensitivity: a zeroth-order (central finite difference) estimate of how strongly the projector's
output responds to perturbations of each token's input (method.md, step 1)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ImageTokens, Scorer, hookimpl
from zoprune.errors import ConfigError
from zoprune.projector import MLPParts, mlp_parts


class ZOSensitivityConfig(ComponentConfig):
    """Parameters of the ZO estimator; the defaults are the paper's."""

    directions: int = Field(default=64, ge=1, le=4096, description="m: random unit directions shared by all tokens")
    step: float = Field(default=0.01, gt=0, le=10, description="h: the finite-difference step along each direction")
    mode: Literal["auto", "structured", "black_box"] = Field(
        default="auto",
        description="'structured' reuses the first Linear layer of an MLP projector (same scores, about half the "
        "work); 'black_box' only calls the projector; 'auto' takes 'structured' where the projector allows it",
    )
    chunk: int = Field(default=16, ge=1, description="directions evaluated at once; memory grows with chunk x N x d")


class ZOSensitivity(Scorer):
    """``S(i) = 1/m sum_j ||M(x_i + h u_j) - M(x_i - h u_j)|| / 2h`` over m seeded unit directions ``u_j``."""

    name = "zo_sensitivity"
    Config = ZOSensitivityConfig

    def score(self, tokens: ImageTokens, ctx: Context) -> torch.Tensor:
        x = tokens.features  # (N, d_v)
        directions = unit_directions(self.config.directions, x.shape[-1], ctx.generator, x.dtype, x.device)
        mode = self.config.mode
        parts = mlp_parts(tokens.projector) if mode != "black_box" and isinstance(tokens.projector, torch.nn.Module) \
            else None
        if mode == "structured" and parts is None:
            raise ConfigError("zo_sensitivity mode 'structured' needs a Linear-activation-Linear projector; "
                              "use mode 'black_box' or 'auto' for this model")
        if parts is not None:
            return structured_sensitivity(x, parts, directions, self.config.step, self.config.chunk)
        return black_box_sensitivity(x, tokens.projector, directions, self.config.step, self.config.chunk)


def unit_directions(m: int, dim: int, generator: torch.Generator, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
    """m Gaussian directions scaled to unit norm, (m, dim). Drawn in float32 so every dtype sees the same ones."""
    u = torch.randn(m, dim, generator=generator, device=generator.device, dtype=torch.float32)
    return (u / u.norm(dim=-1, keepdim=True)).to(device=device, dtype=dtype)


def black_box_sensitivity(x: torch.Tensor, projector, directions: torch.Tensor, step: float,
                          chunk: int) -> torch.Tensor:
    """The estimator with the projector as a black box: 2m projector passes over all N tokens. Returns (N,)."""
    total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    for u in directions.split(chunk):  # u: (c, d_v)
        offset = step * u[:, None, :]  # (c, 1, d_v)
        diff = projector(x[None] + offset) - projector(x[None] - offset)  # (c, N, d_l)
        total += diff.float().norm(dim=-1).sum(0)
    return total / (2 * step * directions.shape[0])


def structured_sensitivity(x: torch.Tensor, parts: MLPParts, directions: torch.Tensor, step: float,
                           chunk: int) -> torch.Tensor:
    """The same estimate for ``second(act(first(x)))``: ``first(x)`` and ``W1 u`` are computed once, and the second
    layer is applied to the difference of the two activated branches (its bias cancels). Returns (N,)."""
    pre = parts.first(x)  # (N, d_h): W1 x + b1
    moves = directions @ parts.first.weight.T  # (m, d_h): W1 u, independent of the tokens
    w2 = parts.second.weight  # (d_l, d_h)
    total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    for v in moves.split(chunk):  # v: (c, d_h)
        offset = step * v[:, None, :]
        diff = parts.activation(pre[None] + offset) - parts.activation(pre[None] - offset)  # (c, N, d_h)
        total += (diff @ w2.T).float().norm(dim=-1).sum(0)  # (c, N, d_l) -> (N,)
    return total / (2 * step * directions.shape[0])


@hookimpl
def register_scorers(register):
    register(ZOSensitivity)
