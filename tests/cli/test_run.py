"""`zoprune run` and `zoprune plugins` on a tiny saved LLaVA, loaded through from_pretrained as users do."""

import re

import pytest
from typer.testing import CliRunner

from zoprune.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_run_prints_answer_tokens_kept_and_time(tiny_checkpoint, sample_image):
    result = invoke("run", "--model", tiny_checkpoint, "--image", sample_image,
                    "--prompt", "what colour is the circle ?", "--keep", 4, "--max-new-tokens", 3, "--compare")
    assert result.exit_code == 0, result.output
    assert "answer:" in result.output
    assert re.search(r"visual tokens kept: 4 / 16 \(25\.0%\)", result.output)
    assert re.search(r"time: \d+\.\d+ s", result.output)
    assert "unpruned answer:" in result.output


def test_run_with_config_file(tiny_checkpoint, sample_image, tmp_path):
    config = tmp_path / "pipeline.toml"
    config.write_text('selector = "topk"\n[budget]\nratio = 0.5\n[scorer]\nname = "zo_sensitivity"\ndirections = 4\n')
    result = invoke("run", "--model", tiny_checkpoint, "--image", sample_image, "--prompt", "describe",
                    "--config", config, "--max-new-tokens", 2)
    assert result.exit_code == 0, result.output
    assert "visual tokens kept: 8 / 16" in result.output and "selector=topk" in result.output


def test_run_with_original_positions(tiny_checkpoint, sample_image):
    result = invoke("run", "--model", tiny_checkpoint, "--image", sample_image, "--prompt", "describe",
                    "-m", "divprune", "--keep", 4, "--positions", "original", "--max-new-tokens", 2)
    assert result.exit_code == 0, result.output
    assert "visual tokens kept: 4 / 16" in result.output


@pytest.mark.parametrize("args, message", [
    (["--positions", "shifted"], "positions = 'shifted'"),
    (["-m", "visionzip", "--positions", "original"], "merged tokens have no position"),
    (["--keep", 0], "budget.keep = 0"),
    (["--ratio", 1.5], "budget.ratio = 1.5"),
    (["--keep", 3, "--ratio", 0.5], "not both"),
    (["--config", "missing.yaml"], "config file not found"),
])
def test_run_bad_input_is_one_clear_line(tiny_checkpoint, sample_image, args, message):
    result = invoke("run", "--model", tiny_checkpoint, "--image", sample_image, "--prompt", "hi", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_run_missing_image_and_model(tiny_checkpoint, sample_image, tmp_path):
    result = invoke("run", "--model", tiny_checkpoint, "--image", tmp_path / "nope.png", "--prompt", "hi")
    assert result.exit_code == 2 and "image not found" in result.output
    not_an_image = tmp_path / "text.png"
    not_an_image.write_text("hello")
    result = invoke("run", "--model", tiny_checkpoint, "--image", not_an_image, "--prompt", "hi")
    assert result.exit_code == 2 and "not an image" in result.output
    result = invoke("run", "--model", tmp_path / "no-model", "--image", sample_image, "--prompt", "hi")
    assert result.exit_code == 2 and "model directory not found" in result.output
    (tmp_path / "empty").mkdir()
    result = invoke("run", "--model", tmp_path / "empty", "--image", sample_image, "--prompt", "hi")
    assert result.exit_code == 2 and "could not load model" in result.output


def test_plugins_lists_builtins_and_external(tmp_path):
    result = invoke("plugins")
    assert result.exit_code == 0, result.output
    for name in ("zo_sensitivity", "coverage", "topk", "llava", "contrast", "stratified"):
        assert name in result.output
    assert "zoprune-example" in result.output


@pytest.mark.parametrize("command", [["run"], ["embed", "--out", "unused.safetensors"]])
def test_config_and_method_together_are_refused_before_anything_loads(command, tmp_path):
    # the image does not exist: the refusal must come first, from the options alone
    result = runner.invoke(app, [*command, "--image", str(tmp_path / "absent.png"), "--prompt", "q",
                                 "--method", "divprune", "--config", "configs/scope.yaml"])
    assert result.exit_code != 0
    assert "give --config or --method, not both" in result.output
    assert "Traceback" not in result.output
