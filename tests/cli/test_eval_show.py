"""`zoprune eval` and `zoprune show` on a tiny saved LLaVA and a small JSONL data set."""

import csv
import json

from PIL import Image
from typer.testing import CliRunner

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


def test_eval_errors(tiny_checkpoint, tiny_vqa_jsonl, tmp_path):
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "no-such-method", "--no-plot")
    assert result.exit_code == 2 and "unknown method 'no-such-method'" in result.output
    result = invoke("eval", "--model", tiny_checkpoint, "-m", "zoo-prune", "--no-plot")
    assert result.exit_code == 2 and "--data is required" in result.output
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "zoo-prune", "-b", 0, "--no-plot")
    assert result.exit_code == 2 and "at least 1" in result.output


def test_show_writes_a_png_with_one_panel_per_method(tiny_checkpoint, sample_image, tmp_path):
    out = tmp_path / "kept.png"
    result = invoke("show", "--model", tiny_checkpoint, "--image", sample_image, "--prompt", "what colour is the circle ?",
                    "-m", "zoo-prune", "-m", "zo-topk", "--keep", 5, "--out", out, "--max-new-tokens", 2)
    assert result.exit_code == 0, result.output
    assert result.output.count("kept 5 / 16") == 2
    with Image.open(out) as png:
        assert png.width > 2.5 * png.height  # input + two panels side by side
