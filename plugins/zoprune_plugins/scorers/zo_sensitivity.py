"""ZOO-Prune's sensitivity: a zeroth-order (central finite difference) estimate of how strongly the projector's
output responds to perturbations of each token's input (method.md, step 1)."""

from __future__ import annotations

import math
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
    max_chunk_bytes: int | None = Field(
        default=256 * 2**20, ge=2**20,
        description="cap on the temporaries of one batch (estimated from the shapes): fewer directions than "
        "`chunk` are batched when they would not fit, and tokens are split too when one direction does not fit; "
        "null: no cap. The scores do not depend on it (up to float rounding)",
    )
    output_sketch: int | None = Field(
        default=None, ge=1,
        description="r: estimate each ||M(x + h u) - M(x - h u)|| from r random projections of the projector's "
        "output instead of all d_l of them (a seeded orthogonal sketch R, r x d_l, applied to the second layer once "
        "per image: about d_l / r times less work per direction). Unbiased: averaged over sketches the score is "
        "the exact one; r = d_l gives the exact score up to rounding. Needs a Linear-activation-Linear projector. "
        "null (default): the exact estimator",
    )
    product_dtype: Literal["auto", "scoring", "bfloat16", "float16"] = Field(
        default="auto",
        description="dtype of the second-layer product of an MLP projector (the bulk of the work; the perturbed "
        "branches and their difference stay in the scoring dtype, so nothing cancels in the product). 'auto': the "
        "model's own dtype where it is bfloat16, or float16 on CUDA, else the scoring dtype (at LLaVA-1.5 shapes on a "
        "CPU with AVX-512-BF16: 3x faster, scores within 5e-5 relative of 'scoring'; docs/speed.md); 'scoring': "
        "the scoring dtype. float16 products are very slow on CPUs. Not used in mode 'black_box'",
    )


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
        cap = self.config.max_chunk_bytes
        r = self.config.output_sketch
        sketch = None
        if r is not None:
            if parts is None:
                raise ConfigError("zo_sensitivity output_sketch needs a Linear-activation-Linear projector and mode "
                                  "'auto' or 'structured'; set output_sketch to null for this model")
            d_l = parts.second.out_features
            if r > d_l:
                raise ConfigError(f"zo_sensitivity output_sketch = {r}: at most the projector's output width {d_l}")
            # drawn after the directions, so the sketched and the exact estimator perturb along the same u_j
            sketch = output_sketch(r, d_l, ctx.generator, parts.second.weight.dtype, x.device)
        if parts is not None:
            return structured_sensitivity(x, parts, directions, self.config.step, self.config.chunk, cap, sketch,
                                          self._product_dtype(tokens))
        return black_box_sensitivity(x, tokens.projector, directions, self.config.step, self.config.chunk, cap)

    def check_scoring_dtype(self, dtype: torch.dtype) -> None:
        # a finite difference in 16 bits measures rounding, not a derivative; refused rather than left to silently
        # invert the method (docs/reliability.md has the measurement)
        if dtype in (torch.bfloat16, torch.float16):
            name = str(dtype).removeprefix("torch.")
            raise ConfigError(
                f"zo_sensitivity cannot score in {name} (scoring_dtype 'model' on a {name} model, or "
                f"'{name}'): a step of h = {self.config.step} along a unit direction is below {name}'s rounding "
                f"(eps {torch.finfo(dtype).eps:.1e}), so the finite differences measure rounding noise; on a "
                f"LLaVA-1.5-shaped projector the ranking comes out reversed (Spearman -0.94 against float32). "
                f"Use scoring_dtype: float32 (the default; the model itself stays in {name})")

    def _product_dtype(self, tokens: ImageTokens) -> torch.dtype:
        choice = self.config.product_dtype
        if choice == "scoring":
            return tokens.features.dtype
        if choice != "auto":
            return getattr(torch, choice)
        model = tokens.model_embeddings.dtype
        # the model computes in this dtype anyway; float16 is only fast on GPUs (CPUs have no float16 GEMM)
        if model == torch.bfloat16 or (model == torch.float16 and tokens.features.device.type == "cuda"):
            return model
        return tokens.features.dtype


def unit_directions(m: int, dim: int, generator: torch.Generator, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
    """m Gaussian directions scaled to unit norm, (m, dim). Drawn in float32 so every dtype sees the same ones."""
    u = torch.randn(m, dim, generator=generator, device=generator.device, dtype=torch.float32)
    return (u / u.norm(dim=-1, keepdim=True)).to(device=device, dtype=dtype)


def output_sketch(r: int, d: int, generator: torch.Generator, dtype: torch.dtype,
                  device: torch.device) -> torch.Tensor:
    """A random orthogonal sketch (r, d): r orthonormal rows spanning a uniformly random subspace, times sqrt(d / r).

    For any y, ``E ||R y||^2 = ||y||^2``, and ``||R y|| / ||y||`` has the same distribution whatever the direction
    of y (its square is Beta(r/2, (d - r)/2) times d / r), so ``||R y|| / sketch_norm_mean(r, d)`` is unbiased for
    ``||y||``. With r = d, R is orthogonal and ``||R y|| = ||y||``. Drawn in float32 from ``generator``.
    """
    g = torch.randn(d, r, generator=generator, device=generator.device, dtype=torch.float32)
    q = torch.linalg.qr(g).Q  # (d, r), orthonormal columns spanning span(g): a uniformly random subspace
    return (q.T * math.sqrt(d / r)).to(device=device, dtype=dtype)


def sketch_norm_mean(r: int, d: int) -> float:
    """``E ||R y||`` for a unit y and R from :func:`output_sketch`: sqrt(d/r) E[sqrt(B)], B ~ Beta(r/2, (d-r)/2)."""
    if r >= d:
        return 1.0
    log = math.lgamma((r + 1) / 2) + math.lgamma(d / 2) - math.lgamma(r / 2) - math.lgamma((d + 1) / 2)
    return math.sqrt(d / r) * math.exp(log)


def batch_shape(m: int, n: int, chunk: int, bytes_per_pair: int, max_bytes: int | None) -> tuple[int, int]:
    """(directions, tokens) per batch: at most ``chunk`` directions and all n tokens, shrunk so that a batch's
    temporaries (``bytes_per_pair`` per direction and token) stay under ``max_bytes``."""
    chunk = max(1, min(chunk, m))
    if max_bytes is None:
        return chunk, n
    directions = max(1, min(chunk, max_bytes // max(1, n * bytes_per_pair)))
    tokens = n if directions > 1 else max(1, min(n, max_bytes // max(1, bytes_per_pair)))
    return directions, tokens


def black_box_sensitivity(x: torch.Tensor, projector, directions: torch.Tensor, step: float,
                          chunk: int, max_bytes: int | None = None) -> torch.Tensor:
    """The estimator with the projector as a black box: 2m projector passes over all N tokens. Returns (N,).

    ``max_bytes`` caps a batch by an estimate from the input and output widths (the hidden width is unknown)."""
    d_out = _output_width(projector, x)
    c, block = batch_shape(directions.shape[0], x.shape[0], chunk,
                           (2 * x.shape[-1] + 4 * d_out) * x.element_size(), max_bytes)
    total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    for u in directions.split(c):  # u: (c, d_v)
        offset = step * u[:, None, :]  # (c, 1, d_v)
        for start in range(0, x.shape[0], block):
            xs = x[None, start:start + block]
            diff = projector(xs + offset) - projector(xs - offset)  # (c, n, d_l)
            total[start:start + block] += diff.float().norm(dim=-1).sum(0)
    return total / (2 * step * directions.shape[0])


def structured_sensitivity(x: torch.Tensor, parts: MLPParts, directions: torch.Tensor, step: float,
                           chunk: int, max_bytes: int | None = None, sketch: torch.Tensor | None = None,
                           product_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The same estimate for ``second(act(first(x)))``: ``first(x)`` and ``W1 u`` are computed once, and the second
    layer is applied to the difference of the two activated branches (its bias cancels). Returns (N,).

    Per direction and token this costs ``d_h x d_l`` multiply-adds (one second-layer product) against
    ``2 (d_v + d_l) d_h`` for the black box: 2.5x fewer at LLaVA-1.5's 1024 -> 4096 -> 4096.

    ``sketch`` (r, d_l), from :func:`output_sketch`: the norms are taken of ``R W2 diff`` (``R W2``: r x d_h,
    formed once per call) and divided by :func:`sketch_norm_mean`, so ``d_h x r`` per direction and token, and the
    expectation over sketches is the exact score.

    ``product_dtype`` (default: x's dtype): the second-layer product runs in it, on the difference already formed
    in x's dtype; the norms are taken in float32."""
    pre = parts.first(x)  # (N, d_h): W1 x + b1
    moves = directions @ parts.first.weight.T  # (m, d_h): W1 u, independent of the tokens
    scale = 1.0
    if sketch is None:
        w2t = parts.second.weight.T  # (d_h, d_l)
    else:
        w2t = (sketch @ parts.second.weight).T  # (d_h, r)
        scale = sketch_norm_mean(sketch.shape[0], sketch.shape[1])
    product_dtype = product_dtype or x.dtype
    w2t = w2t.to(product_dtype)
    d_h, d_l = w2t.shape
    # alive at the peak: the two activated branches, their difference (in place) and the product; the difference's
    # cast when the product runs in another dtype, and the product's float32 copy for the norm when it is not float32
    size, product_size = x.element_size(), w2t.element_size()
    per_pair = 3 * d_h * size + d_l * product_size
    per_pair += d_h * product_size if product_dtype != x.dtype else 0
    per_pair += d_l * 4 if product_dtype != torch.float32 else 0
    c, block = batch_shape(directions.shape[0], x.shape[0], chunk, per_pair, max_bytes)
    total = torch.zeros(x.shape[0], dtype=torch.float32, device=x.device)
    for v in moves.split(c):  # v: (c, d_h)
        offset = step * v[:, None, :]
        for start in range(0, x.shape[0], block):
            p = pre[None, start:start + block]
            diff = parts.activation(p + offset)
            diff -= parts.activation(p - offset)  # (c, n, d_h)
            out = diff.reshape(-1, d_h).to(product_dtype) @ w2t  # one large product: (c n, d_l)
            del diff
            total[start:start + block] += torch.linalg.vector_norm(out.float(), dim=-1).view(-1, p.shape[1]).sum(0)
    return total / (2 * step * directions.shape[0] * scale)


def _output_width(projector, x: torch.Tensor) -> int:
    if isinstance(projector, torch.nn.Module):
        linears = [m for m in projector.modules() if isinstance(m, torch.nn.Linear)]
        if linears:
            return max(linears[-1].out_features, max(m.out_features for m in linears))
    return projector(x[:1]).shape[-1]


@hookimpl
def register_scorers(register):
    register(ZOSensitivity)
