"""``zoprune report``: lmms-eval results files read back into the paper's table (lmms-eval itself not needed)."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from zoprune.cli import app
from zoprune.errors import InputError
from zoprune.integrations.lmms_eval_results import build_table, find_results, parse_model_args, read_run


def write_results(folder, name, model_args, scores, date, model="zoprune", samples=100):
    """A results file shaped as lmms-eval 0.7.3 writes it; ``scores`` maps task -> {metric: value}."""
    results = {task: {"alias": task, **{f"{m},none": v for m, v in metrics.items()},
                      **{f"{m}_stderr,none": 0.01 for m in metrics}} for task, metrics in scores.items()}
    data = {"results": results, "config": {"model": model, "model_args": model_args},
            "higher_is_better": {task: {m: True for m in metrics} for task, metrics in scores.items()},
            "n-samples": {task: {"original": samples, "effective": samples} for task in scores}, "date": date}
    path = folder / "some__model" / f"{date}_results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def results_folder(tmp_path):
    base = "pretrained=org/vlm,dtype=bfloat16"
    write_results(tmp_path, "a", f"{base},method=unpruned",
                  {"gqa": {"exact_match": 0.80}, "mme": {"perception": 1500.0, "cognition": 300.0}}, "20261201_100000")
    write_results(tmp_path, "b", f"{base},method=zoo-prune,budget=64",
                  {"gqa": {"exact_match": 0.72}, "mme": {"perception": 1350.0, "cognition": 330.0}}, "20261201_110000")
    # the same cell twice: the later run counts
    write_results(tmp_path, "c", f"{base},method=zoo-prune,budget=16", {"gqa": {"exact_match": 0.50}},
                  "20261201_120000")
    write_results(tmp_path, "d", f"{base},method=zoo-prune,budget=16", {"gqa": {"exact_match": 0.60}},
                  "20261201_130000")
    write_results(tmp_path, "e", f"{base},method=divprune,budget=16", {"gqa": {"exact_match": 0.64}},
                  "20261201_140000")
    write_results(tmp_path, "f", f"{base},method=zoo-prune,budget=64,scorer.directions=16",
                  {"gqa": {"exact_match": 0.76}}, "20261201_150000")
    return tmp_path


def test_model_args_split_as_lmms_eval_splits_them():
    assert parse_model_args('pretrained=x/y,config={"a": 1, "b": [2, 3]},budget=64') == {
        "pretrained": "x/y", "config": '{"a": 1, "b": [2, 3]}', "budget": "64"}
    assert parse_model_args("") == {}


def test_the_table_has_the_scores_relative_scores_and_means_of_each_run(results_folder):
    rows, columns, notes = build_table([read_run(p) for p in find_results([results_folder])])
    assert columns == ["gqa", "mme/perception", "mme/cognition"]
    table = {(r.method, r.budget): r for r in rows}
    assert [(r.method, r.budget) for r in rows] == [("unpruned", None), ("zoo-prune", "64"), ("zoo-prune", "16"),
                                                    ("divprune", "16"), ("zoo-prune (scorer.directions=16)", "64")]
    zoo = table["zoo-prune", "64"]
    # computed here by hand: 0.72 / 0.80, 1350 / 1500, 330 / 300
    assert zoo.relative == pytest.approx({"gqa": 0.9, "mme/perception": 0.9, "mme/cognition": 1.1})
    assert zoo.mean_relative == pytest.approx((0.9 + 0.9 + 1.1) / 3)
    assert zoo.mean == pytest.approx((0.72 + 1350 + 330) / 3)
    assert table["zoo-prune", "16"].scores["gqa"] == 0.60  # the later of the two runs
    assert table["zoo-prune", "16"].relative["gqa"] == pytest.approx(0.75)
    assert table["zoo-prune", "16"].mean_relative == pytest.approx(0.75)  # over the tasks it was run on
    assert table["divprune", "16"].relative == pytest.approx({"gqa": 0.8, "mme/perception": None,
                                                              "mme/cognition": None})
    assert table["unpruned", None].mean_relative == pytest.approx(1.0)
    assert any("replaces" in n and "zoo-prune at 16" in n for n in notes)
    assert any("divprune at 16 has no result for mme/perception, mme/cognition" in n for n in notes)


def test_no_unpruned_run_means_no_relative_scores_and_a_note(tmp_path):
    write_results(tmp_path, "a", "method=random,budget=8", {"t": {"exact_match": 0.5}}, "20261201_100000")
    rows, _, notes = build_table([read_run(p) for p in find_results([tmp_path])])
    assert rows[0].mean_relative is None and rows[0].budget == "8" and rows[0].model == "shipped"
    assert notes == ["shipped: no method=unpruned run, so no relative scores"]


def test_ratio_budgets_config_files_and_the_default_method_are_labelled(tmp_path):
    write_results(tmp_path, "a", "ratio=0.25", {"t": {"exact_match": 0.5}}, "1")
    write_results(tmp_path, "b", "config=/x/my_pipeline.yaml", {"t": {"exact_match": 0.5}}, "2")
    runs = sorted((read_run(p) for p in find_results([tmp_path])), key=lambda r: r.date)
    assert [(r.method, r.budget) for r in runs] == [("zoo-prune", "25%"), ("my_pipeline", "64")]


def test_what_is_not_a_results_file_is_named(tmp_path):
    (tmp_path / "x_results.json").write_text("{}")
    with pytest.raises(InputError, match="x_results.json: not an lmms-eval results file"):
        read_run(tmp_path / "x_results.json")
    with pytest.raises(InputError, match="no lmms-eval results files"):
        find_results([tmp_path / "sub"]) if (tmp_path / "sub").mkdir() is None else None


def test_report_command_prints_the_table_at_80_columns_and_writes_csv_json_png(results_folder, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["report", str(results_folder), "--out", str(out)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    table = [line for line in lines if line[:1] in "┏┃┡│└"]
    assert len(table) >= 9 and max(len(line) for line in table) <= 80  # paths in the last lines are printed whole
    assert "…" not in result.output
    assert any("zoo-prune" in line and "72.0" in line and "96.7%" in line for line in lines)
    with (out / "report.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["method"], r["budget"]) for r in rows} >= {("unpruned", ""), ("zoo-prune", "64")}
    zoo = next(r for r in rows if r["method"] == "zoo-prune" and r["budget"] == "64")
    assert float(zoo["relative_gqa"]) == pytest.approx(0.9) and float(zoo["gqa"]) == pytest.approx(0.72)
    assert json.loads((out / "report.json").read_text())[0]["method"] == "unpruned"
    assert (out / "report.png").stat().st_size > 10_000


def test_report_command_says_when_there_is_nothing_to_read(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--no-plot"])
    assert result.exit_code == 2
    assert "no lmms-eval results files" in result.output


def test_a_relative_figure_is_the_run_over_its_own_models_unpruned_run_and_only_where_higher_is_better(tmp_path):
    """Relative = method / reference, where the reference is the unpruned run of the same model: a method above its
    reference is above 100%, one below is below, and another model's unpruned run is never the reference. A
    lower-is-better metric (an error rate) has no relative figure (its ratio would read backwards) and stays out of
    the mean relative score."""
    def results(name, model_args, scores, date, lower=()):
        path = write_results(tmp_path / name, name, model_args, scores, date)
        data = json.loads(path.read_text())
        for task, metric in lower:
            data["higher_is_better"][task][metric] = False
        path.write_text(json.dumps(data))

    results("a", "pretrained=org/small,method=unpruned", {"t": {"acc": 0.50, "err": 0.20}}, "1")
    results("b", "pretrained=org/small,method=random,budget=8", {"t": {"acc": 0.60, "err": 0.40}}, "2",
            lower=[("t", "err")])
    results("c", "pretrained=org/large,method=unpruned", {"t": {"acc": 0.80, "err": 0.10}}, "3")
    results("d", "pretrained=org/large,method=random,budget=8", {"t": {"acc": 0.40, "err": 0.05}}, "4",
            lower=[("t", "err")])
    rows, columns, _ = build_table([read_run(p) for p in find_results([tmp_path])])
    table = {(r.model, r.method): r for r in rows}
    assert columns == ["t/acc", "t/err"]
    small, large = table["org/small", "random"], table["org/large", "random"]
    assert small.relative == pytest.approx({"t/acc": 1.2, "t/err": None})  # 0.60 / 0.50: above its reference
    assert large.relative == pytest.approx({"t/acc": 0.5, "t/err": None})  # 0.40 / 0.80: below its reference
    assert small.mean_relative == pytest.approx(1.2) and large.mean_relative == pytest.approx(0.5)
    assert table["org/large", "unpruned"].relative["t/acc"] == pytest.approx(1.0)
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--no-plot", "--out", str(tmp_path / "out")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert any("org/small" in line and "120.0%" in line for line in result.output.splitlines())
    assert any("org/large" in line and "50.0%" in line for line in result.output.splitlines())
