"""`zoprune eval` and `zoprune run` with no --model: the shipped shapes model and its generated held-out set."""

import json

from typer.testing import CliRunner

from zoprune.cli import app


def test_default_eval_runs_on_the_shipped_model(tmp_path):
    # what the benchmark exists to show, on few enough questions to stay quick: ZOO-Prune at 8 of 144 tokens keeps
    # most of the trained model's accuracy and random tokens do not, with 95% intervals that do not overlap
    # (measured on these 100 questions: unpruned 97%, zoo-prune 86%, random 39%)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "-m", "zoo-prune", "-m", "random", "-b", "8", "--n", "100",
                                      "--out", str(out), "--no-plot"])
    assert result.exit_code == 0, result.output
    assert "shapes held-out set (100 questions, seed 20261124)" in result.output.replace("\n", " ")
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["budget"]) for r in rows] == [("unpruned", None), ("zoo-prune", 8), ("random", 8)]
    unpruned, zoo, random = rows
    assert unpruned["total_tokens"] == unpruned["kept_tokens"] == 144
    assert zoo["kept_tokens"] == random["kept_tokens"] == 8
    assert set(unpruned["by_kind"]) == {"colour", "shape", "size", "count", "exists", "position", "digit"}
    assert unpruned["ci_low"] > 0.85  # a trained model, far above the answer prior of its 7 question kinds
    assert zoo["ci_low"] > random["ci_high"]  # the intervals separate
    assert zoo["relative"] > 0.75 and random["relative"] < 0.6


def test_run_uses_the_shipped_model(tmp_path):
    from zoprune.shapes.data import make_dataset

    example = make_dataset(1, seed=5)[0]
    image = tmp_path / "shapes.png"
    example.image.save(image)
    result = CliRunner().invoke(app, ["run", "--image", str(image), "--prompt", example.question, "--keep", "32"])
    assert result.exit_code == 0, result.output
    assert "visual tokens kept: 32 / 144" in result.output


def test_hard_split_runs_on_the_shipped_model_with_paired_differences(tmp_path):
    # the hard split stays answerable by the shipped model (measured on 2100 questions: 95.4%, chance is ~33%), and
    # the paired table compares with divprune by default
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "-m", "random", "-m", "divprune", "-b", "8", "--n", "70",
                                      "--split", "hard", "--out", str(out), "--no-plot"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "shapes held-out set (70 questions, seed 20261124, hard split)" in result.output
    assert "difference to divprune at the same budget" in result.output
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["unpruned"]["ci_low"] > 0.8
    assert rows["random"]["reference"] == "divprune" and rows["random"]["difference"] < 0
    assert rows["random"]["separated"]  # random tokens lose to divprune's covering set, beyond the interval
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert len(records) == 3 * 70 and {r["method"] for r in records} == {"unpruned", "random", "divprune"}
