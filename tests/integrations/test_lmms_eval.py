"""lmms-eval's ``--model zoprune``: registration, options, batching, the offline shapes task, data parallel.

The end-to-end tests launch lmms-eval as users do (``python -m lmms_eval``, ``torchrun --nproc_per_node 2``) on the
shapes held-out set, and check that it reports exactly what ``zoprune eval`` measures on the same questions.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

lmms_eval = pytest.importorskip(
    "lmms_eval", reason="lmms-eval is not installed: the README's test command installs it (pip install --no-deps "
                        "lmms_eval==0.7.3 with zoprune[lmms-cpu])")

from lmms_eval.api.instance import Instance  # noqa: E402

from zoprune.errors import ConfigError, ZopruneError  # noqa: E402
from zoprune.evaluation import evaluate, shapes_examples  # noqa: E402
from zoprune.integrations.lmms_eval import ZopruneChat, ZopruneSimple, pipeline_from_options  # noqa: E402
from zoprune.integrations.lmms_eval_task import TASK, write_shapes_task  # noqa: E402
from zoprune.methods import resolve_method  # noqa: E402

N, SEED, BUDGET = 70, 20261124, 8  # 10 questions of each kind of the held-out set `zoprune eval` uses


# --- registration and options ---------------------------------------------------------------------------------

def test_the_entry_point_registers_a_chat_model_and_its_simple_twin():
    from lmms_eval import models

    assert "zoprune" in models.list_available_models()
    assert models.get_model("zoprune") is ZopruneChat
    assert models.get_model("zoprune", force_simple=True) is ZopruneSimple


def test_options_resolve_to_the_pipeline_config_they_name(tmp_path):
    assert pipeline_from_options("divprune", budget=16).to_dict() == {**resolve_method("divprune")[1].to_dict(),
                                                                       "budget": {"keep": 16}}
    config = pipeline_from_options("zoo-prune", budget=32, seed=3, **{"scorer.directions": 16,
                                                                       "selector.fusion": "sum"})
    assert (config.budget.keep, config.seed, config.scorer.params, config.selector.params) == (
        32, 3, {"directions": 16}, {"fusion": "sum"})
    assert pipeline_from_options(ratio=0.25).budget.ratio == 0.25
    assert pipeline_from_options(config='{"selector": "random", "scorer": null}', budget=8).selector.name == "random"
    file = tmp_path / "mine.yaml"
    file.write_text("selector: {name: coverage, fusion: sum}\nbudget: {keep: 12}\n")
    assert pipeline_from_options(config=str(file)).budget.keep == 12
    assert pipeline_from_options().scorer.name == "zo_sensitivity"  # no method: the default, ZOO-Prune
    assert pipeline_from_options("unpruned").budget.keep >= 2**31 - 1


@pytest.mark.parametrize("options, message", [
    ({"budget": 0}, "budget.keep = 0"),
    ({"method": "zoo-prune", "config": "x.yaml"}, "method= or config="),
    ({"budget": 8, "ratio": 0.5}, "budget= or ratio="),
    ({"method": "unpruned", "budget": 8}, "takes no budget"),
    ({"method": "no-such-method"}, "unknown method 'no-such-method'"),
    ({"directions": 3}, "directions"),  # a component's parameter without its section: an unknown top-level key
    ({"scorer.directions": 0}, "scorer.directions = 0"),
    ({"seed.x": 1}, "'seed' is not a section"),
    ({"config": "{not json"}, "config= is not valid JSON"),
    ({"config": "missing.yaml"}, "config file not found: missing.yaml"),
])
def test_bad_options_name_the_problem(options, message):
    with pytest.raises(ZopruneError, match=None) as raised:
        pipeline_from_options(**options)
    assert message in str(raised.value)


def test_bad_model_arguments_fail_before_loading_with_the_key_named():
    with pytest.raises(ConfigError, match="batch_size='auto'"):
        ZopruneChat(batch_size="auto")
    with pytest.raises(ConfigError, match="dtype='half'"):
        ZopruneChat(dtype="half")
    with pytest.raises(ZopruneError, match="could not load pretrained='/no/such/checkpoint'"):
        ZopruneChat(pretrained="/no/such/checkpoint")


# --- the model classes, called as lmms-eval calls them ------------------------------------------------------------

@pytest.fixture(scope="module")
def docs():
    return [{"image": e.image, "question": e.question, "answer": e.answer} for e in shapes_examples(14, SEED)]


def _request(kind: str, args: tuple, index: int) -> Instance:
    return Instance(kind, args, index, metadata={"task": args[-2], "doc_id": args[-3], "repeats": 1})


def _simple_requests(model, docs, gen_kwargs):
    model.task_dict = {"t": {"test": docs}}
    return [_request("generate_until", (d["question"], dict(g), lambda doc: [doc["image"]], i, "t", "test"), i)
            for i, (d, g) in enumerate(zip(docs, gen_kwargs))]


def test_batches_give_the_answers_of_single_requests_in_request_order(docs):
    model = ZopruneSimple(method="zoo-prune", budget=BUDGET, batch_size=1)
    # two generation settings interleaved: grouped into separate batches, answered in request order
    settings = [{"max_new_tokens": 4, "until": ["\n\n"]}, {"max_new_tokens": 1, "until": ["\n\n"]}]
    gen_kwargs = [settings[i % 3 == 0] for i in range(len(docs))]
    one_by_one = model.generate_until(_simple_requests(model, docs, gen_kwargs))
    model.batch_size_per_gpu = 8
    batched = model.generate_until(_simple_requests(model, docs, gen_kwargs))
    assert batched == one_by_one
    hits = sum(a.strip() == d["answer"] for a, d, g in zip(batched, docs, gen_kwargs) if g["max_new_tokens"] == 4)
    assert hits >= 7  # of 9 (the model answers ~86% of held-out questions at 8 tokens)
    assert all(len(a.split()) <= 1 for a, g in zip(batched, gen_kwargs) if g["max_new_tokens"] == 1)
    # the selections of the last batch: 8 tokens of 144 per image
    assert {(s.num_kept, s.num_tokens) for s in model.pruned.last_selection} == {(BUDGET, 144)}


def test_loglikelihood_is_the_models_log_probability_of_the_continuation(docs):
    unpruned = ZopruneSimple(method="unpruned")
    unpruned.task_dict = {"t": {"test": docs}}
    model, processor = unpruned.model, unpruned.processor
    for i, doc in enumerate(docs[:4]):
        request = _request("loglikelihood", (doc["question"], " " + doc["answer"], lambda d: [d["image"]], i, "t",
                                             "test"), 0)
        (logprob, greedy), = unpruned.loglikelihood([request])
        # independently: the stock model on the prompt followed by the answer
        prompt = processor.apply_chat_template([{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": doc["question"]}]}], add_generation_prompt=True)
        short = processor(text=[prompt], images=[doc["image"]], return_tensors="pt")["input_ids"].shape[1]
        full = processor(text=[prompt + " " + doc["answer"]], images=[doc["image"]], return_tensors="pt")
        with torch.no_grad():
            logits = model(**full).logits[0, short - 1:-1]
        target = full["input_ids"][0, short:]
        expected = torch.log_softmax(logits, -1).gather(1, target[:, None]).sum()
        assert logprob == pytest.approx(float(expected), abs=1e-4)
        assert greedy == bool((logits.argmax(-1) == target).all())


def test_pruned_loglikelihood_prefers_the_right_answer(docs):
    model = ZopruneSimple(method="zoo-prune", budget=16)
    model.task_dict = {"t": {"test": docs}}
    yes_no = [(i, d) for i, d in enumerate(docs) if d["answer"] in ("yes", "no")]
    requests = [_request("loglikelihood", (d["question"], " " + answer, lambda d: [d["image"]], i, "t", "test"), 0)
                for i, d in yes_no for answer in ("yes", "no")]
    scores = [logprob for logprob, _ in model.loglikelihood(requests)]
    right = sum((scores[2 * j] > scores[2 * j + 1]) == (d["answer"] == "yes") for j, (_, d) in enumerate(yes_no))
    assert len(yes_no) >= 4 and right >= len(yes_no) - 1


# --- end to end, as users run it ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def task_folder(tmp_path_factory):
    return write_shapes_task(tmp_path_factory.mktemp("tasks"), N, SEED).parent


@pytest.fixture(scope="module")
def eval_accuracy():
    """``zoprune eval``'s accuracy of zoo-prune at the budget on the same questions."""
    from zoprune.loading import load_model, prompt_text

    model, processor = load_model(None)
    results = evaluate(model, processor, shapes_examples(N, SEED), {"zoo-prune": resolve_method("zoo-prune")[1]},
                       [BUDGET], lambda q: prompt_text(processor, q))
    return results[1].accuracy


def _lmms_eval(launcher: list[str], tasks: Path, out: Path, model_args: str, *extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(out / "datasets-cache")}
    command = [*launcher, "-m", "lmms_eval", "--model", "zoprune", "--model_args", model_args, "--include_path",
               str(tasks), "--tasks", TASK, "--batch_size", "8", "--output_path", str(out), *extra]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    files = sorted(out.rglob("*_results.json"))
    assert done.returncode == 0 and len(files) == 1, f"{' '.join(command)}\n{done.stdout[-3000:]}{done.stderr[-6000:]}"
    return json.loads(files[0].read_text())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_lmms_eval_reports_the_accuracy_zoprune_eval_measures(task_folder, tmp_path, eval_accuracy):
    args = f"method=zoo-prune,budget={BUDGET}"
    results = _lmms_eval([sys.executable], task_folder, tmp_path, args)
    assert results["results"][TASK]["exact_match,none"] == pytest.approx(eval_accuracy, abs=1e-12)
    assert results["n-samples"][TASK] == {"original": N, "effective": N}
    assert results["config"]["model_args"] == args  # every option is in the results file
    assert results["config"]["model_backend"].endswith("ZopruneChat (chat)")
    assert 0.6 < eval_accuracy < 1  # a real measurement, not an empty or constant one


@pytest.mark.slow
def test_two_processes_give_the_single_process_accuracy(task_folder, tmp_path, eval_accuracy):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                str(_free_port())]
    results = _lmms_eval(launcher, task_folder, tmp_path, f"method=zoo-prune,budget={BUDGET}", "--log_samples")
    assert results["results"][TASK]["exact_match,none"] == pytest.approx(eval_accuracy, abs=1e-12)
    assert results["n-samples"][TASK] == {"original": N, "effective": N}
    samples = [json.loads(line) for path in tmp_path.rglob(f"*_samples_{TASK}.jsonl")
               for line in path.read_text().splitlines()]
    assert sorted(s["doc_id"] for s in samples) == list(range(N))  # both halves, each document once


def test_the_simple_class_through_the_library_route_scores_as_the_chat_class(task_folder, eval_accuracy):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    model = ZopruneSimple(method="zoo-prune", budget=BUDGET, batch_size=8)
    manager = TaskManager("WARNING", include_path=str(task_folder), include_defaults=False, model_name="zoprune")
    results = simple_evaluate(model=model, tasks=[TASK], task_manager=manager, batch_size=8)
    assert float(results["results"][TASK]["exact_match,none"]) == pytest.approx(eval_accuracy, abs=1e-12)


def test_the_task_folder_holds_the_held_out_questions(task_folder):
    from datasets import load_dataset

    rows = load_dataset("parquet", data_files=str(task_folder / TASK / "test.parquet"), split="train")
    examples = shapes_examples(N, SEED)
    assert len(rows) == N
    assert [r["question"] for r in rows] == [e.question for e in examples]
    assert [r["answer"] for r in rows] == [e.answer for e in examples]
    assert all(np.array_equal(np.asarray(r["image"]), np.asarray(e.image)) for r, e in zip(rows, examples[:5]))


def test_lmms_task_command_writes_the_folder_and_says_how_to_run_it(tmp_path):
    from typer.testing import CliRunner

    from zoprune.cli import app

    result = CliRunner().invoke(app, ["lmms-task", str(tmp_path), "--n", "14", "--name", "shapes14"])
    assert result.exit_code == 0, result.output
    assert "task: shapes14\n" in (tmp_path / "shapes14" / "shapes14.yaml").read_text()
    assert (tmp_path / "shapes14" / "test.parquet").stat().st_size > 14 * 5_000  # 14 noisy 96x96 PNGs
    assert f"--include_path {tmp_path} --tasks shapes14" in " ".join(result.output.split())


def test_lmms_task_command_writes_the_hard_split_eval_asks(tmp_path):
    from datasets import Dataset
    from typer.testing import CliRunner

    from zoprune.cli import app

    result = CliRunner().invoke(app, ["lmms-task", str(tmp_path), "--n", "7", "--split", "hard", "--name", "h7"])
    assert result.exit_code == 0, result.output
    assert "seed 20261124, hard split)" in (tmp_path / "h7" / "h7.yaml").read_text()
    rows = Dataset.from_parquet(str(tmp_path / "h7" / "test.parquet"))
    hard, standard = shapes_examples(7, SEED, "hard"), shapes_examples(7, SEED)
    assert [r["question"] for r in rows] == [e.question for e in hard]
    assert [r["question"] for r in rows] != [e.question for e in standard]  # the split changed what was written
    bad = CliRunner().invoke(app, ["lmms-task", str(tmp_path), "--split", "easy"])
    assert bad.exit_code != 0 and "unknown split 'easy'" in bad.output
