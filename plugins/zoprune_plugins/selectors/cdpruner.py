"""CDPruner (Zhang et al., NeurIPS 2025, "Beyond Attention or Similarity: Maximizing Conditional Diversity for Token
Pruning in MLLMs"): the MAP of a conditional determinantal point process over the projected visual tokens.

Kernel ``L = diag(r) S diag(r)``: ``S`` the cosine similarity of the projected tokens, ``r`` each token's relevance
to the instruction. Greedy MAP inference as Chen et al. (NeurIPS 2018, "Fast Greedy MAP Inference for DPP"): pick
``argmax_i d_i^2``, the marginal gain of ``log det L_Y``. Written from the paper and the official description
(Theia-4869/CDPruner ``encode_images``; OpenVINO's recipe for the relevance from the language model's own text
embeddings); see docs/methods/cdpruner.md for the differences.
"""

from __future__ import annotations

import torch
from pydantic import Field

from zoprune import ComponentConfig, Context, ConfigError, ImageTokens, Selector, hookimpl
from zoprune_plugins.selection.geometry import unit_rows
from zoprune_plugins.selection.greedy import lazy_greedy

#: a token whose squared distance to the span of the kept tokens is below this lies in it (float32 rounding of
#: ``1 - ||Q u||^2`` is ~1e-6): no DPP gain is left for it
SPAN_EPS = 1e-5


class CDPrunerConfig(ComponentConfig):
    """The official code's kernel by default (relevance min-max normalised, no exponential weighting)."""

    theta: float | None = Field(
        default=None, ge=0, lt=1,
        description="relevance weighting: None keeps r as is (the official code: the line is commented out); "
                    "a value in [0, 1) uses exp(theta / (2 (1 - theta)) r) (the paper, OpenVINO's default 0.5)")
    negate: bool = Field(default=True, description="relevance = mean over text tokens of -cos (the official code's "
                                                   "sign, kept by OpenVINO); False: +cos")


class CDPruner(Selector):
    """Keep the k tokens of the greedy MAP of the DPP with kernel ``diag(r) S diag(r)``.

    ``r_i = mean_m(-cos(z_i, t_m))`` over the prompt's text tokens ``t`` (the language model's own input
    embeddings: ``requires = {"text_embeddings"}``), min-max normalised per image as
    ``(r - min r + 1e-6) / (max r - min r)``. Because ``L = diag(r) S diag(r)``, Chen et al.'s gain is
    ``d_i^2 = r_i^2 * (1 - ||P u_i||^2)``, with ``u_i`` the normalised token and ``P`` the projection on the span of
    the kept tokens: this runs as the shared lazy greedy (:func:`~zoprune_plugins.selection.greedy.lazy_greedy`,
    redundancy "span"), O(N + k d) memory, never the N x N kernel nor Chen's k x N Cholesky rows.
    """

    name = "cdpruner"
    Config = CDPrunerConfig
    needs_scores = False
    requires = frozenset({"text_embeddings"})

    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor:
        text = tokens.extras.get("text_embeddings")
        if text is None:
            raise ConfigError("selector 'cdpruner' needs the signal text_embeddings; the adapter did not provide it")
        r = relevance(tokens.embeddings, text, self.config.negate, self.config.theta)
        return cdpruner_select(r, tokens.embeddings, k)


def relevance(embeddings: torch.Tensor, text: torch.Tensor, negate: bool = True,
              theta: float | None = None) -> torch.Tensor:
    """Instruction relevance of each token, (N,) float32 > 0. ``embeddings``: (N, d_l); ``text``: (T, d_l).

    Mean cosine to the text tokens (negated, as in the official code), min-max normalised over the image with the
    authors' ``+ 1e-6`` (so the least relevant token keeps a small positive weight). Without text tokens, or when
    every token is equally relevant, the relevance says nothing: r = 1 everywhere (the kernel is then plain S).
    """
    n = embeddings.shape[0]
    if text.shape[0] == 0:
        return torch.ones(n, dtype=torch.float32, device=embeddings.device)
    t = unit_rows(text.to(embeddings.device))  # (T, d_l)
    r = torch.empty(n, dtype=torch.float32, device=embeddings.device)
    for start in range(0, n, 1024):  # (1024, T) blocks: T may be long
        r[start:start + 1024] = (unit_rows(embeddings[start:start + 1024]) @ t.T).mean(dim=1)
    if negate:
        r = -r
    low, high = r.min(), r.max()
    if not bool(high > low):
        return torch.ones_like(r)
    r = (r - low + 1e-6) / (high - low)
    if theta is not None:
        r = torch.exp(theta / (2 * (1 - theta)) * r)
    return r


def cdpruner_select(r: torch.Tensor, embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (k,) sorted ascending: the greedy MAP of the DPP with ``L = diag(r) S diag(r)``, ``S`` the cosines of
    the rows of ``embeddings`` (N, d), read in place. ``r``: (N,) > 0.

    The first pick is ``argmax_i L_ii`` (``d_i^2 = r_i^2`` before any pick, 0 for a zero row; ties: the lower index,
    as ``argmax``). When
    the kept tokens span every remaining token (no gain above float rounding: k > rank, e.g. duplicated tokens)
    Chen et al. stop; the official code would divide by ~0 and pick from NaNs. Here the remaining picks are the most
    relevant tokens not yet kept (ties: the lower index).
    """
    r = r.float().to(embeddings.device)
    weight = r * r  # d_i^2 = r_i^2 * residual_i

    def gain(w: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return torch.where(residual > SPAN_EPS, w * residual, float("-inf"))

    diagonal = torch.empty_like(weight)  # L_ii = r_i^2 |u_i|^2 (0 for a zero row, else r_i^2)
    for start in range(0, weight.shape[0], 1024):
        diagonal[start:start + 1024] = weight[start:start + 1024] * unit_rows(embeddings[start:start + 1024]).square(
        ).sum(dim=1)
    chosen = lazy_greedy(weight, embeddings, k, int(torch.argmax(diagonal)), gain, "span", exhausted="stop")
    if chosen.numel() < k:
        rest = torch.ones_like(r, dtype=torch.bool)
        rest[chosen] = False
        order = torch.argsort(r.masked_fill(~rest, float("-inf")), descending=True, stable=True)
        chosen = torch.sort(torch.cat([chosen, order[:k - chosen.numel()]])).values
    return chosen


@hookimpl
def register_selectors(register):
    register(CDPruner)
