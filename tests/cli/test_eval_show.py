"""`zoprune eval` and `zoprune show` on a tiny saved LLaVA and a small JSONL data set."""

import csv
import json

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import zoprune
from zoprune.cli import app

runner = CliRunner()
METHODS = ["zoo-prune", "zo-topk", "contrast+stratified"]
BUDGETS = [8, 4]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def generated_answers(model, processor, examples, batch_size=4):
    """Greedy answers of ``model`` (the model or a pruned one), batched as the eval batches them."""
    from zoprune.loading import prompt_text

    answers = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        inputs = processor(images=[e.image for e in batch], text=[prompt_text(processor, e.question) for e in batch],
                           return_tensors="pt", padding=True)
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answers += processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


@pytest.fixture(scope="module")
def answered_vqa(tiny_checkpoint, tiny_vqa_jsonl, tmp_path_factory):
    """The 6 questions with the unpruned tiny model's own answers as the truth for the first 4 and "yes" for the
    last 2, so accuracies, intervals and relative accuracies are not all 0 or None; with the loaded model."""
    from zoprune.loading import load_model
    from zoprune.evaluation import load_jsonl

    model, processor = load_model(str(tiny_checkpoint))
    answers = generated_answers(model, processor, load_jsonl(tiny_vqa_jsonl))
    rows = [json.loads(line) for line in tiny_vqa_jsonl.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["image"] = str(tiny_vqa_jsonl.parent / row["image"])
        row["answer"] = answers[i] if i < 4 else "yes"
    path = tmp_path_factory.mktemp("answered") / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, model, processor


def test_eval_writes_table_csv_json_and_plot(answered_vqa, tmp_path):
    from scipy.stats import binomtest

    import zoprune
    from zoprune.methods import resolve_method
    from zoprune.evaluation import load_jsonl, normalize

    data, model, processor = answered_vqa
    out = tmp_path / "eval"
    args = [arg for m in METHODS for arg in ("-m", m)] + [arg for b in BUDGETS for arg in ("-b", b)]
    result = invoke("eval", "--model", model.name_or_path, "--data", data, *args, "--out", out, "--batch-size", 4)
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

    # every number again, from answers generated here and scipy's Wilson interval
    examples = load_jsonl(data)
    truth = [normalize(e.answer) for e in examples]
    runs = [generated_answers(model, processor, examples)]
    for method in METHODS:
        config = resolve_method(method)[1]
        runs += [generated_answers(zoprune.prune(model, config, budget=b), processor, examples) for b in BUDGETS]
    correct = [sum(normalize(a) == t for a, t in zip(answers, truth)) for answers in runs]
    assert correct[0] == 4  # the unpruned model answers the first 4 as recorded, and not "yes"
    assert any(c != correct[0] for c in correct[1:])  # pruning changed some answers: relative accuracy is not 1
    printed = {}
    for line in result.output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] in ["unpruned", *METHODS]:
            printed[(cells[0], cells[1])] = cells[2:]
    for row, csv_row, c in zip(rows, table, correct):
        interval = binomtest(c, 6).proportion_ci(confidence_level=0.95, method="wilson")
        relative = (c / 6) / (correct[0] / 6)
        assert row["correct"] == c and row["accuracy"] == pytest.approx(c / 6)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((interval.low, interval.high), abs=3e-5)
        assert row["relative"] == pytest.approx(relative) and float(csv_row["relative"]) == pytest.approx(relative)
        kept = f"{row['kept_tokens']:g} / 16"
        assert printed[(row["method"], kept)] == [f"{100 * c / 6:.1f}%",
                                                  f"{100 * interval.low:.1f} - {100 * interval.high:.1f}",
                                                  f"{100 * relative:.1f}%"]


def test_eval_records_recompute_the_printed_paired_table(answered_vqa, tmp_path):
    """records.jsonl holds every answer; the paired comparisons recomputed from it are the printed table, the
    CSV and the JSON; the records agree with the answers scored in results.json."""
    from zoprune.evaluation import load_jsonl, normalize
    from zoprune.statistics import load_records, paired_comparisons

    data, model, processor = answered_vqa
    out = tmp_path / "eval"
    args = [arg for m in METHODS for arg in ("-m", m)] + [arg for b in BUDGETS for arg in ("-b", b)]
    result = invoke("eval", "--model", model.name_or_path, "--data", data, *args, "--out", out, "--batch-size", 4,
                    "--reference", "zo-topk")
    assert result.exit_code == 0, result.output
    records = load_records(out / "records.jsonl")
    examples = load_jsonl(data)
    assert len(records) == 7 * 6  # one line per question and run
    rows = json.loads((out / "results.json").read_text())
    for row in rows:
        mine = [r for r in records if (r.method, r.budget) == (row["method"], row["budget"])]
        assert [r.id for r in mine] == list(range(6)) and [r.expected for r in mine] == [e.answer for e in examples]
        assert [r.kind for r in mine] == [e.kind for e in examples]
        assert all(r.correct == (normalize(r.answer) == normalize(r.expected)) for r in mine)
        assert sum(r.correct for r in mine) == row["correct"]
        assert sum(r.kept for r in mine) / 6 == pytest.approx(row["kept_tokens"])
    comparisons = paired_comparisons(records, "zo-topk")
    assert [(c.method, c.budget) for c in comparisons] == [(m, b) for m in ("zoo-prune", "contrast+stratified")
                                                           for b in BUDGETS]
    assert any(c.gained + c.lost for c in comparisons)  # some answers differ: the table is not all zeros
    printed = {}
    for line in result.output.splitlines():
        cells = [cell.strip() for cell in line.split("│")[1:-1]]
        if len(cells) == 6 and cells[0] in METHODS:
            printed[(cells[0], cells[1])] = cells[2:]
    by_run = {(r["method"], r["budget"]): r for r in rows}
    with (out / "results.csv").open() as handle:
        csv_rows = {(r["method"], r["budget"]): r for r in csv.DictReader(handle)}
    for c in comparisons:
        mark = " *" if c.low > 0 or c.high < 0 else ""
        assert printed[(c.method, str(c.budget))][:3] == [f"{100 * c.difference:+.1f}{mark}",
                                                           f"{100 * c.low:+.1f} to {100 * c.high:+.1f}",
                                                           f"{c.gained} / {c.lost}"]
        row = by_run[(c.method, c.budget)]
        assert (row["reference"], row["gained"], row["lost"]) == ("zo-topk", c.gained, c.lost)
        assert (row["difference"], row["difference_low"], row["difference_high"], row["mcnemar_p"]) == \
            pytest.approx((c.difference, c.low, c.high, c.p_value))
        assert row["separated"] == bool(mark)
        assert float(csv_rows[(c.method, str(c.budget))]["difference"]) == pytest.approx(c.difference)
    assert by_run[("zo-topk", 8)]["reference"] is None and by_run[("unpruned", None)]["difference"] is None
    assert (out / "paired.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_reference_runs_when_not_among_the_methods(tiny_checkpoint, tiny_vqa_jsonl, tmp_path):
    out = tmp_path / "eval"
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "random", "-b", 4,
                    "--reference", "uniform", "--out", out, "--no-plot")
    assert result.exit_code == 0, result.output
    assert "note: the reference uniform is not among the methods; it runs too" in result.output
    rows = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["reference"]) for r in rows] == [("unpruned", None), ("random", "uniform"),
                                                             ("uniform", None)]
    assert not (out / "paired.png").exists()


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


def test_eval_positions_applies_to_every_method(tiny_checkpoint, tiny_vqa_jsonl, tmp_path):
    out = tmp_path / "eval"
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "random", "-m", "dart",
                    "-b", 4, "--positions", "original", "--out", out, "--no-plot")
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
    assert rows["random"]["config"]["positions"] == rows["dart"]["config"]["positions"] == "original"
    assert rows["random"]["kept_tokens"] == rows["dart"]["kept_tokens"] == 4
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "visionzip", "-b", 4,
                    "--positions", "original", "--no-plot", "--out", out)
    assert result.exit_code == 2 and "merged tokens have no position" in result.output
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "random", "-b", 4,
                    "--positions", "shifted", "--no-plot", "--out", out)
    assert result.exit_code == 2 and "positions" in result.output


def test_eval_errors(tiny_checkpoint, tiny_vqa_jsonl, tmp_path):
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "no-such-method", "--no-plot")
    assert result.exit_code == 2 and "unknown method 'no-such-method'" in result.output
    result = invoke("eval", "--model", tiny_checkpoint, "-m", "zoo-prune", "--no-plot")
    assert result.exit_code == 2 and "--data is required" in result.output
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "zoo-prune", "-b", 0,
                    "--no-plot")
    assert result.exit_code == 2 and "at least 1" in result.output
    result = invoke("eval", "-m", "zoo-prune", "--split", "harder", "--no-plot")
    assert result.exit_code == 2 and "unknown split 'harder'; expected one of standard, hard" in result.output
    result = invoke("eval", "--data", tiny_vqa_jsonl, "-m", "zoo-prune", "--split", "hard", "--no-plot")
    assert result.exit_code == 2 and "does not apply to --data" in result.output
    result = invoke("eval", "--model", tiny_checkpoint, "--data", tiny_vqa_jsonl, "-m", "zoo-prune",
                    "--reference", "no-such-method", "--no-plot")
    assert result.exit_code == 2 and "unknown method 'no-such-method'" in result.output


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
