"""`zoprune eval` and `zoprune show` on a tiny saved LLaVA and a small JSONL data set."""

import csv
import json

from PIL import Image
from typer.testing import CliRunner

import zoprune
from zoprune.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_writes_table_csv_json_and_plot(tiny_checkpoint, tiny_vqa_jsonl, tmp_path):
    out = tmp_path / "eval"
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "zoo-prune", "-m", "zo-topk",
                    "-m", "contrast+stratified", "-b", 8, "-b", 4, "--out", out, "--batch-size", 4)
    assert result.exit_code == 0, result.output
    assert "95% interval" in result.output and "relative" in result.output
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["budget"]) for r in rows] == [
        ("unpruned", None), ("zoo-prune", 8), ("zoo-prune", 4), ("zo-topk", 8), ("zo-topk", 4),
        ("contrast+stratified", 8), ("contrast+stratified", 4)]
    assert rows[0]["kept_tokens"] == rows[0]["total_tokens"] == 16
    assert all(r["total"] == 6 and 0 <= r["ci_low"] <= r["accuracy"] <= r["ci_high"] <= 1 for r in rows)
    assert [r["kept_tokens"] for r in rows[1:]] == [8, 4] * 3
    assert set(rows[1]["by_kind"]) == {"colour", "count"}
    with (out / "results.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 7 and {"accuracy", "ci_low", "ci_high", "relative", "accuracy_colour"} <= set(table[0])
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_records_each_methods_whole_config_and_says_what_it_decided(tiny_checkpoint, tiny_vqa_jsonl, tmp_path):
    file = tmp_path / "sum.yaml"
    file.write_text("scorer: {name: zo_sensitivity, directions: 4}\nselector: {name: coverage, fusion: sum}\n"
                    "budget: 12\n")
    out = tmp_path / "eval"
    result = runner.invoke(app, ["eval", "--model", str(tiny_checkpoint), "--data", str(tiny_vqa_jsonl), "-m", "topk",
                                 "-m", str(file), "-m", "random", "-b", "4", "--out", str(out), "--no-plot"],
                           env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("note: ")]
    assert notes == [
        "note: topk: the selector needs scores and none was named, so the default scorer 'zo_sensitivity' is used "
        "(SCORER+topk names another)",
        f"note: {file}: the file's budget {{'keep': 12}} is replaced by the command's budgets"]
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["unpruned"]["config"] is None
    topk = rows["topk"]["config"]
    assert topk["scorer"] == {"name": "zo_sensitivity", **zoprune.get_registry().get(
        "scorer", "zo_sensitivity").cls.Config().model_dump(mode="json")}  # every parameter, defaults included
    assert topk["selector"] == {"name": "topk"} and topk["budget"] == {"keep": 4}
    assert topk["adapter"]["name"] == "llava" and topk["seed"] == 0
    assert rows["sum"]["config"]["scorer"]["directions"] == 4 and rows["sum"]["config"]["budget"] == {"keep": 4}
    assert rows["sum"]["config"]["selector"]["fusion"] == "sum"
    assert rows["random"]["config"]["scorer"] is None
    # what was recorded is what runs: it loads back into the same config
    assert zoprune.PipelineConfig.from_dict(topk).resolved_dict() == topk


def test_eval_errors(tiny_checkpoint, tiny_vqa_jsonl, tmp_path):
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "no-such-method", "--no-plot")
    assert result.exit_code == 2 and "unknown method 'no-such-method'" in result.output
    result = invoke("eval", "--model", tiny_checkpoint, "-m", "zoo-prune", "--no-plot")
    assert result.exit_code == 2 and "--data is required" in result.output
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "zoo-prune", "-b", 0,
                    "--no-plot")
    assert result.exit_code == 2 and "at least 1" in result.output


def test_show_writes_a_png_with_one_panel_per_method(tiny_checkpoint, sample_image, tmp_path):
    out = tmp_path / "kept.png"
    result = invoke("show", "--model", tiny_checkpoint, "--image", sample_image,
                    "--prompt", "what colour is the circle ?", "-m", "zoo-prune", "-m", "zo-topk", "--keep", 5,
                    "--out", out, "--max-new-tokens", 2)
    assert result.exit_code == 0, result.output
    assert result.output.count("kept 5 / 16") == 2
    with Image.open(out) as png:
        assert png.width > 2.5 * png.height  # input + two panels side by side


def test_the_default_eval_folder_is_ignored_by_git():
    import inspect
    from pathlib import Path

    from zoprune.cli.eval_cmd import eval_command

    default = inspect.signature(eval_command).parameters["out"].default.default  # typer's OptionInfo
    ignored = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().splitlines()
    assert f"/{default}/" in ignored  # `zoprune eval` in a clone leaves no untracked folder
