"""`zoprune eval` with no --method runs every available method the model can run and says which it left out."""

import json

from typer.testing import CliRunner

from zoprune.cli import app
from zoprune.cli.eval_cmd import runnable_methods
from zoprune.methods import resolve_method
from tiny_models import tiny_llava


def test_runnable_methods_leave_out_downsample_on_llava_with_the_reason():
    methods = {name: resolve_method(name)[1] for name in ("pool", "downsample", "holov")}
    kept, left_out = runnable_methods(tiny_llava(), methods)
    assert list(kept) == ["pool", "holov"]
    assert [label for label, _ in left_out] == ["downsample"]
    reason = left_out[0][1]  # the first clause of the ConfigError: short enough for one note line
    assert "takes any resolution" in reason and ";" not in reason and "Use `pool`" not in reason


def test_default_eval_on_the_shipped_model_notes_what_it_left_out(tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "-b", "16", "--n", "2", "--out", str(out), "--no-plot"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "downsample left out: selector 'downsample' shrinks each image" in result.output
    methods = {row["method"] for row in json.loads((out / "results.json").read_text())}
    assert {"holov", "pool", "zoo-prune"} <= methods and "downsample" not in methods


def test_run_with_the_new_methods(tiny_checkpoint, sample_image):
    base = ["run", "--model", str(tiny_checkpoint), "--image", str(sample_image), "--prompt", "what colour ?",
            "--keep", "4", "--max-new-tokens", "1"]
    for method in ("holov", "pool", "zo_sensitivity+holov"):
        result = CliRunner().invoke(app, [*base, "--method", method], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "visual tokens kept: 4 / 16" in result.output
    result = CliRunner().invoke(app, [*base, "--method", "downsample"], env={"COLUMNS": "200"})
    assert result.exit_code != 0
    assert "fixed-resolution encoder" in result.output and "Use `pool`" in result.output
    assert "Traceback" not in result.output
