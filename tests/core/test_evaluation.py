"""The accuracy measurement: scoring, intervals, data files."""

import json

import pytest

from zoprune.errors import InputError
from zoprune.evaluation import Example, load_jsonl, normalize, score, wilson_interval


def test_normalize():
    assert normalize("  Red. ") == "red"
    assert normalize("Two   circles!") == "two circles"  # whitespace collapsed to one space
    assert normalize("Two circles!") == normalize("two   circles")
    assert normalize("yes") != normalize("yes no")


def test_wilson_interval():
    low, high = wilson_interval(900, 1000)
    assert low == pytest.approx(0.8798, abs=1e-4) and high == pytest.approx(0.9171, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # a 2-point gap at 1,000 questions is at the edge of what the interval resolves
    assert wilson_interval(900, 1000)[1] - wilson_interval(900, 1000)[0] < 0.04


def test_score_counts_exact_matches_by_kind():
    examples = [Example(None, "q", "red", "colour"), Example(None, "q", "two", "count"),
                Example(None, "q", "yes", "count")]
    result = score("m", 8, examples, ["Red", "three", "yes."], [8, 8, 8], [16, 16, 16])
    assert (result.correct, result.total) == (2, 3)
    assert result.by_kind == {"colour": 1.0, "count": 0.5}
    assert result.kept_tokens == 8 and result.total_tokens == 16
    assert (result.method, result.budget) == ("m", 8) and result.accuracy == pytest.approx(2 / 3)
    (one,) = [score("m", 4, examples[:1], ["red"], [3], [16])]  # one question: no division by anything else
    assert (one.accuracy, one.kept_tokens, one.total_tokens) == (1.0, 3.0, 16.0)


def test_jsonl_errors_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"image": "missing.png", "question": "q", "answer": "a"}) + "\n")
    with pytest.raises(InputError, match="line 1"):
        load_jsonl(path)
    path.write_text('{"question": "q"}\n')
    with pytest.raises(InputError, match="line 1.*image, question and answer"):
        load_jsonl(path)
    with pytest.raises(InputError, match="not found"):
        load_jsonl(tmp_path / "nope.jsonl")


def _scipy_wilson(correct, total):
    """The 95% Wilson interval from scipy (z = 1.95996...; ours rounds z to 1.96: measured gap below 7.4e-6)."""
    from scipy.stats import binomtest

    interval = binomtest(correct, total).proportion_ci(confidence_level=0.95, method="wilson")
    return interval.low, interval.high


def test_wilson_interval_matches_scipy():
    for correct, total in [(0, 7), (3, 7), (7, 7), (412, 1000), (999, 1000)]:
        assert wilson_interval(correct, total) == pytest.approx(_scipy_wilson(correct, total), abs=3e-5)


def test_evaluate_reports_relative_accuracy_intervals_and_means_computed_here(monkeypatch):
    """evaluate()'s arithmetic on scripted answers: accuracy, relative accuracy (pruned / unpruned), Wilson
    intervals and mean kept tokens, each recomputed here from the script, on rows where none of them is trivial."""
    import zoprune.evaluation as evaluation
    from tiny_models import tiny_llava

    truth = ["red", "two", "yes", "blue", "no", "three", "green", "left", "one", "square"]
    kinds = ["colour", "count", "exists", "colour", "exists", "count", "colour", "position", "count", "shape"]
    examples = [Example(None, f"q{i}", answer, kind) for i, (answer, kind) in enumerate(zip(truth, kinds))]
    # which questions each run answers correctly, and the tokens its images kept; runs are told apart by their
    # scorer (method "a" scores by norm, "b" by zo_sensitivity) and budget
    right = {
        None: ({0, 1, 2, 3, 4, 5, 6, 7}, [16] * 10),  # unpruned: 8 / 10
        ("norm", 8): ({0, 1, 2, 3, 4, 5}, [8] * 10),  # 6 / 10
        ("norm", 4): ({0, 2, 9}, [4] * 10),  # 3 / 10
        ("zo_sensitivity", 8): ({0, 1, 2, 3, 4, 5, 6, 9}, [8] * 9 + [7]),  # 8 / 10; one image kept 7
        ("zo_sensitivity", 4): (set(range(10)), [4] * 10),  # 10 / 10: better than unpruned
    }

    passed = []

    def scripted(models, processor, examples, prompt, batch_size=32, max_new_tokens=4, on_batch=None, device=None):
        examples = list(examples)  # an iterator read once, as answer_all reads it
        passed.append((batch_size, on_batch))
        out = []
        for model in models:
            budget = model.config.budget.keep
            key = None if budget == evaluation.KEEP_ALL else (model.config.scorer.name, budget)
            hits, kept = right[key]
            answers = [e.answer.upper() + "." if i in hits else "wrong" for i, e in enumerate(examples)]
            out.append((answers, kept, [16] * len(examples)))
        return out

    monkeypatch.setattr(evaluation, "answer_all", scripted)
    methods = {"a": evaluation.PipelineConfig(scorer="norm", selector="topk"),
               "b": evaluation.PipelineConfig(scorer="zo_sensitivity", selector="topk")}
    progress = print  # any callable: evaluate hands it on for the progress bar
    results = evaluation.evaluate(tiny_llava(), None, examples, methods, [8, 4], prompt=lambda q: q, batch_size=7,
                                  on_batch=progress)
    assert passed == [(7, progress)]  # one pass for the unpruned run and every method's budget twins, as asked
    assert [(r.method, r.budget) for r in results] == [("unpruned", None), ("a", 8), ("a", 4), ("b", 8), ("b", 4)]
    expected_correct = [8, 6, 3, 8, 10]
    for result, correct in zip(results, expected_correct):
        assert (result.correct, result.total) == (correct, 10)
        assert result.accuracy == pytest.approx(correct / 10)
        assert result.relative == pytest.approx(correct / 8)  # pruned over unpruned, never the other way round
        assert (result.ci_low, result.ci_high) == pytest.approx(_scipy_wilson(correct, 10), abs=3e-5)
    assert [r.kept_tokens for r in results] == [16, 8, 4, pytest.approx(7.9), 4]
    assert all(r.total_tokens == 16 for r in results)
    assert results[2].by_kind == {"colour": pytest.approx(1 / 3), "count": 0.0, "exists": pytest.approx(1 / 2),
                                  "position": 0.0, "shape": 1.0}
    assert results[4].relative == pytest.approx(1.25)  # above 1 when pruning happens to help


def test_relative_accuracy_is_none_when_the_unpruned_model_scores_nothing(monkeypatch):
    import zoprune.evaluation as evaluation
    from tiny_models import tiny_llava

    examples = [Example(None, "q", "red"), Example(None, "q", "blue")]

    def scripted(models, processor, examples, prompt, batch_size=32, max_new_tokens=4, on_batch=None, device=None):
        list(examples)
        return [(["red", "green"] if model.config.budget.keep != evaluation.KEEP_ALL else ["no", "no"], [4, 4],
                 [16, 16]) for model in models]

    monkeypatch.setattr(evaluation, "answer_all", scripted)
    results = evaluation.evaluate(tiny_llava(), None, examples, {"m": evaluation.PipelineConfig(scorer="norm")}, [4],
                                  prompt=lambda q: q)
    assert results[0].relative == 1.0 and results[0].accuracy == 0.0
    assert results[1].accuracy == 0.5 and results[1].relative is None


def test_plot_styles_are_distinct_for_twenty_methods_and_the_default_leads():
    from zoprune.evaluation import plot_styles

    names = [f"method-{i}" for i in range(19)] + ["zoo-prune"]
    styles = plot_styles(names)
    assert list(styles)[0] == "zoo-prune" and list(styles)[1:] == names[:-1]
    pairs = [(s["color"], s["marker"]) for s in styles.values()]
    assert len(set(pairs)) == 20
    assert styles["zoo-prune"]["linewidth"] > max(s["linewidth"] for m, s in styles.items() if m != "zoo-prune")
    order = list(styles.values())
    assert all(a["color"] != b["color"] and a["marker"] != b["marker"] for a, b in zip(order, order[1:]))
    assert len({(s["color"], s["marker"]) for s in plot_styles([f"m{i}" for i in range(70)]).values()}) == 70


def test_plot_draws_each_method_with_its_style(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from zoprune.evaluation import Result, plot_results, plot_styles

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at it
    names = ["random", "zoo-prune", *(f"plugin-{i}" for i in range(12))]
    results = [Result("unpruned", None, 16, 16, 9, 10, 0.9, 0.6, 0.98)]
    results += [Result(name, k, k, 16, 5, 10, 0.5, 0.2, 0.8) for name in names for k in (4, 8)]
    path = plot_results(results, tmp_path / "accuracy.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    (axis,) = figures[0].axes
    legend = [t.get_text() for t in axis.get_legend().get_texts()]
    assert legend[0] == "zoo-prune" and legend[-1].startswith("unpruned")
    drawn = {bars.get_label(): (bars.lines[0].get_color(), bars.lines[0].get_marker()) for bars in axis.containers}
    expected = {name: (s["color"], s["marker"]) for name, s in plot_styles(names).items()}
    assert drawn == expected and len(set(drawn.values())) == len(names)


def test_shapes_examples_are_generated_on_the_fly_and_equal_the_data_set():
    import numpy as np

    from zoprune.evaluation import ShapesExamples
    from zoprune.shapes.data import make_dataset

    lazy, eager = ShapesExamples(7, 3), make_dataset(7, 3)
    assert len(lazy) == 7
    for a, b in zip(lazy, eager):
        assert (a.question, a.answer, a.kind) == (b.question, b.answer, b.kind)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert [e.question for e in lazy[2:5]] == [e.question for e in eager[2:5]]
    assert lazy[-1].question == eager[-1].question
    with pytest.raises(IndexError):
        lazy[7]


def test_evaluate_reads_the_examples_once_as_an_iterator(tiny_checkpoint):
    from zoprune.loading import load_model, prompt_text
    from zoprune.evaluation import evaluate
    from zoprune.pipeline import resolve_config

    model, processor = load_model(str(tiny_checkpoint))
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    examples = [Example(Image.fromarray((rng.random((32, 32, 3)) * 255).astype("uint8")), "what colour is the circle ?",
                        "red", "colour") for _ in range(5)]
    methods = {"random": resolve_config({"scorer": None, "selector": "random"})}
    once = evaluate(model, processor, iter(examples), methods, [4, 8], lambda q: prompt_text(processor, q),
                    batch_size=2)
    listed = evaluate(model, processor, examples, methods, [4, 8], lambda q: prompt_text(processor, q), batch_size=2)
    assert [(r.method, r.budget, r.total, r.correct, r.kept_tokens) for r in once] == \
        [(r.method, r.budget, r.total, r.correct, r.kept_tokens) for r in listed]
    assert [(r.method, r.budget, r.total, r.kept_tokens) for r in once] == [
        ("unpruned", None, 5, 16), ("random", 4, 5, 4), ("random", 8, 5, 8)]


def test_evaluate_with_records_keeps_every_answer_and_the_paired_figures_attach(monkeypatch):
    """One record per question and run, in run order then question order, with the answer as generated, its
    correctness after normalisation and the tokens kept for that image; Result.attach takes a comparison's
    figures."""
    import zoprune.evaluation as evaluation
    from tiny_models import tiny_llava
    from zoprune.statistics import paired_comparisons

    examples = [Example(None, "q0", "red", "colour"), Example(None, "q1", "two", "count"),
                Example(None, "q2", "yes", "exists")]
    scripted_answers = {None: ["Red.", "two", "no"], 8: ["red", "three", "Yes"], 4: ["blue", "three", "no"]}

    def scripted(models, processor, examples, prompt, batch_size=32, max_new_tokens=4, on_batch=None, device=None):
        list(examples)
        out = []
        for model in models:
            budget = None if model.config.budget.keep == evaluation.KEEP_ALL else model.config.budget.keep
            out.append((scripted_answers[budget], [budget or 16, (budget or 16) - 1, budget or 16], [16, 16, 16]))
        return out

    monkeypatch.setattr(evaluation, "answer_all", scripted)
    results, records = evaluation.evaluate_with_records(
        tiny_llava(), None, examples, {"m": evaluation.PipelineConfig(scorer="norm")}, [8, 4], prompt=lambda q: q)
    assert [(r.method, r.budget, r.id) for r in records] == [
        (method, budget, i) for method, budget in [("unpruned", None), ("m", 8), ("m", 4)] for i in range(3)]
    assert [r.answer for r in records] == scripted_answers[None] + scripted_answers[8] + scripted_answers[4]
    assert [r.correct for r in records] == [True, True, False, True, False, True, False, False, False]
    assert [r.kept for r in records] == [16, 15, 16, 8, 7, 8, 4, 3, 4] and {r.total for r in records} == {16}
    assert [(r.question, r.expected, r.kind) for r in records[3:6]] == [(e.question, e.answer, e.kind)
                                                                        for e in examples]
    assert [r.correct for r in results] == [sum(r.correct for r in records[i:i + 3]) for i in (0, 3, 6)]
    assert results == evaluation.evaluate(tiny_llava(), None, examples, {"m": evaluation.PipelineConfig(
        scorer="norm")}, [8, 4], prompt=lambda q: q)  # evaluate gives the same results, without the records
    comparison = paired_comparisons(records, "unpruned")[1]  # m at 4 against the unpruned model
    assert (comparison.method, comparison.budget, comparison.gained, comparison.lost) == ("m", 4, 0, 2)
    results[2].attach(comparison)
    assert (results[2].reference, results[2].difference, results[2].gained, results[2].lost) == (
        "unpruned", pytest.approx(-2 / 3), 0, 2)
    assert (results[2].difference_low, results[2].difference_high, results[2].mcnemar_p) == (
        comparison.low, comparison.high, comparison.p_value)
    assert results[2].separated is comparison.separated and results[1].reference is None


def test_paired_plot_draws_each_difference_with_its_interval(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import numpy as np

    from zoprune.evaluation import plot_paired
    from zoprune.statistics import Paired

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    comparisons = [Paired("zoo-prune", 16, "divprune", 100, 5, 2, 0.03, -0.01, 0.08, 0.45),
                   Paired("zoo-prune", 8, "divprune", 100, 1, 9, -0.08, -0.14, -0.02, 0.02),
                   Paired("random", 16, "divprune", 100, 0, 30, -0.30, -0.39, -0.21, 1e-9),
                   Paired("random", 8, "divprune", 100, 0, 50, -0.50, -0.59, -0.40, 1e-15)]
    assert plot_paired(comparisons, tmp_path / "paired.png").read_bytes()[:4] == b"\x89PNG"
    (axis,) = figures[0].axes
    bars = {container.get_label(): container for container in axis.containers}
    assert set(bars) == {"zoo-prune", "random"}
    for method in bars:
        line, _, (segments,) = bars[method].lines
        rows = sorted((c for c in comparisons if c.method == method), key=lambda c: c.budget)
        assert np.allclose(line.get_ydata(), [100 * c.difference for c in rows])  # points, budgets ascending
        ends = [sorted(segment[:, 1]) for segment in segments.get_segments()]
        assert np.allclose(ends, [[100 * c.low, 100 * c.high] for c in rows])  # the paired interval, not +-1 sd
    assert "divprune" in [t.get_text() for t in axis.get_legend().get_texts()]  # the zero line is the reference
