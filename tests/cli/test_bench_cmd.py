"""``zoprune bench`` on the tiny preset: a table, a PNG and JSON measurements whose structure is checked."""

import json

import pytest
import torch
from typer.testing import CliRunner

from zoprune.bench.speed import PRESETS, build_inputs, build_model, method_config, run_bench
from zoprune.cli import app


def test_bench_prints_a_table_and_writes_a_chart_and_json(tmp_path):
    png, out = tmp_path / "bench.png", tmp_path / "bench.json"
    args = ["bench", "--preset", "tiny", "--methods", "zoo,jacobian", "--budgets", "4", "--new-tokens", "3",
            "--png", str(png), "--json", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "unpruned" in result.output and "zoo @ 4" in result.output and "jacobian oracle @ 4" in result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.read_text())
    assert data["shapes"]["name"] == "tiny" and data["extrapolation"] == 1.0
    assert [r["pruned"]["method"] for r in data["rows"]] == ["zoo", "jacobian"]
    for r in data["rows"]:
        assert r["pruned"]["kept"] == r["oracle"]["kept"] == 4
        assert r["pruned"]["kept_indices"] == r["oracle"]["kept_indices"]
        assert r["pruned"]["generated"] == r["oracle"]["generated"] and len(r["oracle"]["generated"]) == 3
        assert r["pruned"]["overhead"]["seconds"] > 0 and r["oracle"]["overhead"] is None
        # the language model sees 4 of 16 visual tokens: fewer prefill FLOPs than unpruned
        assert r["pruned"]["prefill"]["gflop"] < data["unpruned"]["prefill"]["gflop"]


@pytest.mark.parametrize("args, message", [(["--preset", "nope"], "unknown preset"),
                                           (["--preset", "tiny", "--budgets", "a"], "comma-separated integers"),
                                           (["--preset", "tiny", "--dtype", "half"], "--dtype must be")])
def test_bench_rejects_bad_options(args, message):
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2 and message in result.output


def test_oracle_and_pruned_generate_the_same_tokens():
    shapes = PRESETS["tiny"]
    report = run_bench(shapes, ["zoo"], [5], new_tokens=3)
    pruned, oracle = report.rows[0]
    assert pruned.kept_indices == oracle.kept_indices and len(pruned.kept_indices) == 5
    # each row's own generate: the oracle's model.generate on the kept tokens and the pruned pipeline's generate
    assert pruned.generated == oracle.generated and len(oracle.generated) == 3
    # and the comparison can fail: a model given other tokens than the kept ones answers differently
    model, inputs = build_model(shapes), build_inputs(shapes)
    with torch.no_grad():
        unpruned = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert report.unpruned.generated == unpruned[0, -3:].tolist() != oracle.generated
    assert report.unpruned.kept == shapes.num_visual == 16
    assert report.unpruned.prefill.gflop > pruned.prefill.gflop > 0
    assert pruned.overhead.gflop > 0  # the ZO scorer's projector products are counted


def test_every_pruned_generate_scores_afresh(monkeypatch):
    """With repeats, each timed pruned generate must pay for scoring, as a new image would."""
    from zoprune_plugins.scorers.jacobian_norm import JacobianNorm

    calls = []
    score = JacobianNorm.score
    monkeypatch.setattr(JacobianNorm, "score", lambda self, *a: calls.append(1) or score(self, *a))
    run_bench(PRESETS["tiny"], ["jacobian"], [4], new_tokens=2, repeats=3)
    # warm-up 1, overhead 3 timed + 1 counted for FLOPs, the selection used 1, generate 3
    assert len(calls) == 1 + 3 + 1 + 1 + 3


def test_bfloat16_model():
    report = run_bench(PRESETS["tiny"], ["zoo"], [5], new_tokens=2, dtype=torch.bfloat16)
    pruned, oracle = report.rows[0]
    assert report.to_dict()["dtype"] == "bfloat16"
    assert pruned.kept_indices == oracle.kept_indices and len(pruned.kept_indices) == 5
    assert pruned.generated == oracle.generated and len(oracle.generated) == 2


def test_extrapolation_adds_the_missing_layers_by_flops():
    import dataclasses

    shapes = dataclasses.replace(PRESETS["tiny"], layers=1, full_layers=3)
    report = run_bench(shapes, ["jacobian"], [4], new_tokens=2)
    assert 2.0 < report.extrapolation() < 3.0  # two more layers, plus the parts that do not scale


def test_config_files_are_labelled_by_their_stem():
    from zoprune.bench.speed import method_label

    assert method_label("benchmarks/zoo-sketch256.yaml") == "zoo-sketch256"
    assert method_label("zoo") == "zoo" and method_label("none+divprune") == "none+divprune"


def test_bench_takes_registered_method_names():
    from zoprune.bench.speed import method_config

    assert method_config("zoo-prune-fast", 64) == {"scorer": "jacobian_norm", "selector": "coverage", "budget": 64,
                                                  "seed": 0}
    assert method_config("jacobian", 8, seed=3) == {"scorer": "jacobian_norm", "selector": "coverage", "budget": 8,
                                                    "seed": 3}


def test_method_config_forms(tmp_path):
    assert method_config("zoo", 64)["scorer"] == "zo_sensitivity"
    assert method_config("none+divprune", 8) == {"scorer": None, "selector": "divprune", "budget": 8, "seed": 0}
    path = tmp_path / "c.yaml"
    path.write_text("scorer: norm\nselector: topk\n")
    assert method_config(str(path), 3)["selector"] == "topk"


def test_model_shapes():
    model = build_model(PRESETS["tiny"])
    inputs = build_inputs(PRESETS["tiny"])
    assert int((inputs["input_ids"] == 3).sum()) == 16
    with torch.no_grad():
        assert model(**inputs).logits.shape[1] == inputs["input_ids"].shape[1]


def synthetic_report(layers, full_layers, overhead=0.5):
    """A report with made-up timings (no model run), to check the full-depth arithmetic exactly."""
    import dataclasses

    from zoprune.bench.speed import Report, Row, Timing

    shapes = dataclasses.replace(PRESETS["tiny"], layers=layers, full_layers=full_layers)
    unpruned = Row("unpruned", None, 16, None, Timing(2.0, gflop=0.02), 0.1, Timing(3.0))
    oracle = Row("zoo oracle", 4, 4, None, Timing(1.0, gflop=0.01), 0.1, Timing(1.5))
    pruned = Row("zoo", 4, 4, Timing(overhead), Timing(1.0, gflop=0.01), 0.1, Timing(2.0))
    return Report(shapes, "cpu", 1, 5, 1, unpruned, [(pruned, oracle)])


def test_vs_oracle_at_full_depth_is_the_measured_overhead_over_a_scaled_generate():
    from zoprune.bench.speed import decode_flops, decoder_layer_flops

    built_in_full = synthetic_report(2, 2)
    pruned, oracle = built_in_full.rows[0]
    assert built_in_full.full_depth_generate(oracle) == pytest.approx(1.0 + 4 * 0.1)  # prefill + 4 decoded tokens
    assert built_in_full.vs_oracle_full_depth(pruned, oracle) == pytest.approx((1.4 + 0.5) / 1.4)
    assert built_in_full.vs_oracle_full_depth(oracle, oracle) is None

    deeper = synthetic_report(1, 3)
    s = deeper.shapes
    prefill = 1.0 * (0.01 + 2 * decoder_layer_flops(s, 4 + s.text_tokens + 1) / 1e9) / 0.01
    decode = 0.1 * decode_flops(s, 3) / decode_flops(s, 1)
    assert deeper.full_depth_generate(oracle) == pytest.approx(prefill + 4 * decode)
    assert deeper.full_depth_generate(oracle) > built_in_full.full_depth_generate(oracle)
    # the same overhead weighs less against a deeper model's generate
    assert 1 < deeper.vs_oracle_full_depth(pruned, oracle) < built_in_full.vs_oracle_full_depth(pruned, oracle)
    assert deeper.to_dict()["rows"][0]["vs_oracle_full_depth_estimate"] == deeper.vs_oracle_full_depth(pruned, oracle)


def test_bench_threads_option_sets_this_process_threads(tmp_path):
    previous = torch.get_num_threads()
    wanted = 2 if previous == 1 else 1  # differs from the current setting, so the option must have acted
    out = tmp_path / "bench.json"
    try:
        result = CliRunner().invoke(app, ["bench", "--preset", "tiny", "--methods", "jacobian", "--budgets", "4",
                                          "--new-tokens", "2", "--threads", str(wanted), "--json", str(out)],
                                    env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        assert json.loads(out.read_text())["threads"] == wanted
        assert "est.)" in result.output  # the full-depth vs-oracle column
    finally:
        torch.set_num_threads(previous)
