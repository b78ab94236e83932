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
    from zoprune.cli.loading import load_model, prompt_text
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
