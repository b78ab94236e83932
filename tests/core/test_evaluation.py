"""The accuracy measurement: scoring, intervals, data files."""

import json

import pytest

from zoprune.errors import InputError
from zoprune.evaluation import Example, load_jsonl, normalize, score, wilson_interval


def test_normalize():
    assert normalize("  Red. ") == "red"
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
