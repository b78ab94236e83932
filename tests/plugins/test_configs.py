"""Every example config in configs/ loads, runs through prune(...).generate(...) on the tiny LLaVA, and through
``zoprune run --config``."""

import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import zoprune
from zoprune.cli import app
from tiny_models import llava_batch, tiny_llava

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))
BUDGET = 4  # the tiny LLaVA has 16 tokens per image, fewer than the configs' 64: prune to 4 so selection runs


def test_configs_exist():
    names = {path.stem for path in CONFIGS}
    assert {"zoo_prune", "random", "uniform", "norm_topk", "divprune", "visionzip_dominant", "visionzip", "fastv",
            "ablation_sensitivity_only", "ablation_diversity_only", "ablation_sum_fusion"} <= names


@pytest.fixture(scope="module")
def model():
    return tiny_llava(attn_implementation="sdpa")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_generates(path, model):
    config = zoprune.PipelineConfig.load(path)
    assert config.budget.keep == 64
    inputs = llava_batch(model, [[6, 7, 8], [9]], [1, 2])
    pruned = zoprune.prune(model, config, budget=BUDGET)
    output = pruned.generate(**inputs, max_new_tokens=2, do_sample=False)
    assert output.shape == (2, inputs["input_ids"].shape[1] + 2)
    assert torch.equal(output[:, :inputs["input_ids"].shape[1]], inputs["input_ids"])
    assert [s.num_kept for s in pruned.last_selection] == [BUDGET] * 3  # kept + merged tokens


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_through_the_cli(path, tiny_checkpoint, sample_image):
    result = CliRunner().invoke(app, ["run", "--model", str(tiny_checkpoint), "--image", str(sample_image), "--prompt",
                                      "what colour is the circle ?", "--config", str(path), "--keep", "3",
                                      "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert re.search(r"visual tokens kept: 3 / 16", result.output)
    config = zoprune.PipelineConfig.load(path)
    assert f"selector={config.selector.name}" in result.output
