"""The ZO sensitivity scorer: the estimator of method.md, its structured path, seeding and precision."""

import pytest
import torch
from pydantic import ValidationError
from scipy.stats import spearmanr
from torch import nn

import zoprune
from zoprune import Context, ImageTokens
from zoprune.projector import mlp_parts
from zoprune_plugins.scorers.zo_sensitivity import (ZOSensitivity, ZOSensitivityConfig, black_box_sensitivity,
                                                    structured_sensitivity, unit_directions)
from tiny_models import llava_batch, tiny_llava


def llava_like_projector(d_v=64, d_h=128, d_l=96, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_v, d_h), nn.GELU(), nn.Linear(d_h, d_l))


def tokens_for(projector, n=50, d_v=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_v, generator=g) * torch.linspace(0.2, 3, n)[:, None]  # tokens of varied scale
    with torch.no_grad():
        z = projector(x)
    return ImageTokens(features=x, embeddings=z, model_embeddings=z, projector=projector, sample=0, image=0)


def test_matches_the_formula_written_out():
    """S(i) = 1/m sum_j ||M(x_i + h u_j) - M(x_i - h u_j)|| / 2h, one token and one direction at a time."""
    projector = llava_like_projector()
    tokens = tokens_for(projector, n=6)
    m, h = 5, 0.01
    scores = ZOSensitivity(ZOSensitivityConfig(directions=m, step=h, mode="black_box")).score(
        tokens, Context(torch.Generator().manual_seed(3)))
    u = torch.randn(m, 64, generator=torch.Generator().manual_seed(3))
    u = u / u.norm(dim=1, keepdim=True)
    with torch.no_grad():
        expected = torch.stack([
            sum(torch.linalg.norm(projector(x + h * u[j]) - projector(x - h * u[j])) / (2 * h) for j in range(m)) / m
            for x in tokens.features])
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("step", [1e-3, 1e-2, 0.5])
def test_structured_and_black_box_agree(step):
    projector = llava_like_projector()
    tokens = tokens_for(projector)
    parts = mlp_parts(projector)
    u = unit_directions(32, 64, torch.Generator().manual_seed(0), torch.float32, torch.device("cpu"))
    with torch.no_grad():
        fast = structured_sensitivity(tokens.features, parts, u, step, chunk=7)
        slow = black_box_sensitivity(tokens.features, projector, u, step, chunk=5)
    torch.testing.assert_close(fast, slow, rtol=2e-3, atol=1e-5)
    assert spearmanr(fast, slow)[0] > 0.999


def test_auto_mode_takes_the_structured_path_on_llava():
    model = tiny_llava()
    assert mlp_parts(model.model.multi_modal_projector) is not None
    inputs = llava_batch(model, [[6]], [1])

    def scores(mode):
        pruned = zoprune.prune(model, budget=4, scorer={"name": "zo_sensitivity", "mode": mode, "directions": 16})
        return pruned.select(**inputs)[0].scores

    torch.testing.assert_close(scores("structured"), scores("black_box"), rtol=2e-3, atol=1e-5)
    assert torch.equal(scores("auto"), scores("structured"))


def test_mlp_parts_rejects_projectors_that_do_more():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear_1, self.act, self.linear_2 = nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8)

        def forward(self, x):
            return x + self.linear_2(self.act(self.linear_1(x)))

    assert mlp_parts(Residual()) is None
    assert mlp_parts(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4))) is None
    with pytest.raises(zoprune.ConfigError, match="structured"):
        tokens = tokens_for(Residual(), d_v=8)
        ZOSensitivity(ZOSensitivityConfig(mode="structured")).score(tokens, Context(torch.Generator()))


def test_seeded_directions():
    projector = llava_like_projector()
    tokens = tokens_for(projector)
    scorer = ZOSensitivity(ZOSensitivityConfig(directions=8))
    a = scorer.score(tokens, Context(torch.Generator().manual_seed(0)))
    b = scorer.score(tokens, Context(torch.Generator().manual_seed(0)))
    c = scorer.score(tokens, Context(torch.Generator().manual_seed(1)))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bf16_model_ranks_like_fp32_because_perturbations_run_in_fp32(capsys):
    """In bf16 a step of 0.01 is at the format's rounding: the naive difference measures noise, not a derivative."""
    model = tiny_llava(image_size=64)  # 64 tokens
    inputs = llava_batch(model, [[6, 7]], [1])
    half = tiny_llava(image_size=64, dtype=torch.bfloat16)
    half.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    half_inputs = {**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)}

    reference = zoprune.prune(model, budget=8).select(**inputs)[0].scores
    pruned = zoprune.prune(half, budget=8)
    fp32_scored = pruned.select(**half_inputs)[0].scores
    # what `scoring_dtype: model` would compute (prune refuses it, see below): the scorer on bf16 tokens
    with torch.no_grad():
        (tokens,) = pruned.adapter.extract(half_inputs, pruned.adapter.projector(), torch.bfloat16)
        naive = pruned.scorer.score(tokens, Context(torch.Generator().manual_seed(0), torch.bfloat16)).float()
    for dtype in ("model", "bfloat16", "float16"):
        with pytest.raises(zoprune.ConfigError, match="zo_sensitivity cannot score in .*rounding.*float32"):
            zoprune.prune(half, budget=8, scoring_dtype=dtype)
    zoprune.prune(model, budget=8, scoring_dtype="model")  # float32: fine
    rho = spearmanr(reference, fp32_scored)[0]
    rho_naive = spearmanr(reference, naive)[0]
    with capsys.disabled():
        print(f"\nSpearman vs fp32 model: bf16 model scored in fp32 {rho:.4f}; naive bf16 difference {rho_naive:.4f}")
    assert rho >= 0.98
    assert rho_naive < rho - 0.2  # the naive estimate is far off: the reason for scoring in fp32


def test_bf16_second_layer_product_matches_the_float32_one():
    """The difference of the branches is formed in float32 first, so a bf16 product loses nothing to cancellation:
    the scores move by bf16 rounding of the difference only (a bf16 model's W2 is already in bf16)."""
    projector = llava_like_projector(d_h=256, d_l=192).to(torch.bfloat16).float()  # weights exact in bf16
    tokens = tokens_for(projector, n=80)
    u = unit_directions(32, 64, torch.Generator().manual_seed(0), torch.float32, torch.device("cpu"))
    with torch.no_grad():
        full = structured_sensitivity(tokens.features, mlp_parts(projector), u, 0.01, chunk=8)
        half = structured_sensitivity(tokens.features, mlp_parts(projector), u, 0.01, chunk=8,
                                      product_dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=1e-3, atol=0)
    assert spearmanr(half, full)[0] > 0.9999


@pytest.mark.parametrize("model_dtype, choice, expected", [
    (torch.bfloat16, "auto", torch.bfloat16),
    (torch.float16, "auto", torch.float32),  # a CPU has no fast float16 product
    (torch.float32, "auto", torch.float32),
    (torch.bfloat16, "scoring", torch.float32),
    (torch.float32, "bfloat16", torch.bfloat16),
])
def test_product_dtype_choice(model_dtype, choice, expected):
    tokens = tokens_for(llava_like_projector())
    tokens.model_embeddings = tokens.embeddings.to(model_dtype)
    scorer = ZOSensitivity(ZOSensitivityConfig(product_dtype=choice))
    assert scorer._product_dtype(tokens) == expected


def test_bf16_model_scores_with_bf16_products_by_default():
    model = tiny_llava(image_size=64, dtype=torch.bfloat16)
    inputs = llava_batch(model, [[6, 7]], [1])
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)

    def scores(product_dtype):
        scorer = {"name": "zo_sensitivity", "directions": 16, "product_dtype": product_dtype}
        return zoprune.prune(model, budget=8, scorer=scorer).select(**inputs)[0].scores

    auto, full = scores("auto"), scores("scoring")
    assert not torch.equal(auto, full)  # the default did take the bf16 product
    torch.testing.assert_close(auto, full, rtol=1e-3, atol=0)


def test_invalid_parameters():
    for bad in ({"directions": 0}, {"step": 0}, {"step": -1}, {"mode": "fast"}, {"chunk": 0},
                {"product_dtype": "float8"}):
        with pytest.raises(ValidationError):
            ZOSensitivityConfig(**bad)
