"""The shipped benchmark as an offline lmms-eval task: ``zoprune lmms-task DIR`` writes the shapes held-out set
(the questions ``zoprune eval`` asks) as a folder for ``--include_path DIR --tasks zoprune_shapes``.

The folder holds the task YAML and one parquet file with the images; answers are scored by
:func:`process_results` with the normalisation ``zoprune eval`` uses, so both report the same accuracy on the same
questions. This module does not import lmms-eval: the task's YAML names its functions by import path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TASK = "zoprune_shapes"

TASK_YAML = """\
# The shapes held-out set of zoprune's shipped model ({n} questions, seed {seed}, {split} split), written by
# `zoprune lmms-task`. (Not a metadata key: lmms-eval 0.7.3 reads `split` there as each request's dataset split.)
# Run: python -m lmms_eval --model zoprune --model_args method=zoo-prune,budget=16 \\
#        --include_path {folder} --tasks {task} --batch_size 8 --output_path out
task: {task}
dataset_path: parquet
dataset_kwargs:
  data_files:
    test: test.parquet
test_split: test
output_type: generate_until
doc_to_visual: image
doc_to_text: question
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 4
  do_sample: false
process_results: !function zoprune.integrations.lmms_eval_task.process_results
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
  n: {n}
  seed: {seed}
"""


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """Exact match after normalisation, as ``zoprune eval`` scores (``zoprune.evaluation.is_correct``)."""
    from zoprune.evaluation import is_correct

    answer = results[0] if results else ""
    return {"exact_match": float(is_correct(answer, doc["answer"]))}


def write_shapes_task(folder: str | Path, n: int, seed: int, task: str = TASK, split: str = "standard") -> Path:
    """Write the task folder ``folder/task`` (YAML and ``test.parquet``) with the ``n`` questions of ``split`` that
    ``zoprune eval --n n --seed seed --split split`` asks, and return it."""
    from datasets import Dataset, Features, Image, Value

    from zoprune.shapes.data import make_dataset

    examples = make_dataset(n, seed, split)
    features = Features({"id": Value("int32"), "image": Image(), "question": Value("string"),
                         "answer": Value("string"), "kind": Value("string")})
    rows = {"id": list(range(n)), "image": [e.image for e in examples], "question": [e.question for e in examples],
            "answer": [e.answer for e in examples], "kind": [e.kind for e in examples]}
    out = Path(folder) / task
    out.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(rows, features=features).to_parquet(str(out / "test.parquet"))
    (out / f"{task}.yaml").write_text(TASK_YAML.format(n=n, seed=seed, split=split, task=task, folder=Path(folder)))
    return out
