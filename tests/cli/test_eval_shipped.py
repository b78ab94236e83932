"""`zoprune eval` and `zoprune run` with no --model: the shipped shapes model and its generated held-out set."""

import json

from typer.testing import CliRunner

from zoprune.cli import app


def test_default_eval_runs_on_the_shipped_model(tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "-m", "zoo-prune", "-m", "random", "-b", "16", "--n", "28",
                                      "--out", str(out), "--no-plot"])
    assert result.exit_code == 0, result.output
    assert "shapes held-out set (28 questions, seed 20261124)" in result.output.replace("\n", " ")
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["budget"]) for r in rows] == [("unpruned", None), ("zoo-prune", 16), ("random", 16)]
    assert rows[0]["total_tokens"] == rows[0]["kept_tokens"] == 144 and rows[1]["kept_tokens"] == 16
    assert set(rows[0]["by_kind"]) == {"colour", "shape", "size", "count", "exists", "position", "digit"}
    assert rows[0]["accuracy"] > 0.3  # a trained model: above the answer prior even on 28 questions


def test_run_uses_the_shipped_model(tmp_path):
    from zoprune.shapes.data import make_dataset

    example = make_dataset(1, seed=5)[0]
    image = tmp_path / "shapes.png"
    example.image.save(image)
    result = CliRunner().invoke(app, ["run", "--image", str(image), "--prompt", example.question, "--keep", "32"])
    assert result.exit_code == 0, result.output
    assert "visual tokens kept: 32 / 144" in result.output
