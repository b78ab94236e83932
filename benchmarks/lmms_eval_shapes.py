"""lmms-eval on the shipped shapes task, as docs/lmms-eval.md reports it.

    python benchmarks/lmms_eval_shapes.py table --n 350 --budgets 64,16 --out lmms-shapes
        every zoprune method at each budget plus method=unpruned, one `python -m lmms_eval` run each (as a user runs
        them), then `zoprune report` on the results
    python benchmarks/lmms_eval_shapes.py throughput --n 350 --method zoo-prune --budget 16
        questions per second through lmms-eval at batch 1 and batch 8, measured in one process, and their ratio

Needs lmms-eval (the README's test command installs it). Runs offline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from zoprune.integrations.lmms_eval_task import TASK, write_shapes_task

SEED = 20261124  # the held-out seed `zoprune eval` uses
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def table(args: argparse.Namespace) -> None:
    from zoprune.registry import get_registry

    out = Path(args.out)
    tasks = write_shapes_task(out / "tasks", args.n, SEED).parent
    methods = args.methods.split(",") if args.methods else [
        m.name for m in get_registry().methods.values() if m.distribution == "zoprune"]
    runs = [("unpruned", "method=unpruned")] + [
        (f"{method}-{budget}", f"method={method},budget={budget}") for method in methods
        for budget in args.budgets.split(",")]
    for number, (label, model_args) in enumerate(runs, start=1):
        target = out / "results" / label
        if list(target.rglob("*_results.json")):
            continue  # done in an earlier, interrupted run
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "zoprune", "--model_args", model_args,
                        "--include_path", str(tasks), "--tasks", TASK, "--batch_size", str(args.batch_size),
                        "--output_path", str(target)], env=ENV, check=True, capture_output=True)
        print(f"[{number}/{len(runs)}] {model_args}: {time.perf_counter() - started:.0f} s", flush=True)
    subprocess.run(["zoprune", "report", str(out / "results"), "--out", str(out / "report")], check=True)


def throughput(args: argparse.Namespace) -> None:
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from zoprune.integrations.lmms_eval import ZopruneChat

    tasks = write_shapes_task(Path(args.out) / "tasks", args.n, SEED).parent
    manager = TaskManager("WARNING", include_path=str(tasks), include_defaults=False, model_name="zoprune")
    measured = {}
    for batch in (8, 1, 8):  # the first pass warms caches up and is not counted
        # a model per run: lmms-eval's clean() deletes the model's modules at the end of each evaluation
        model = ZopruneChat(method=args.method, budget=args.budget, batch_size=batch)
        started = time.perf_counter()
        results = simple_evaluate(model=model, tasks=[TASK], task_manager=manager, batch_size=batch)
        measured[batch] = (time.perf_counter() - started, float(results["results"][TASK]["exact_match,none"]))
    (one, acc_one), (eight, acc_eight) = measured[1], measured[8]
    print(json.dumps({"questions": args.n, "method": args.method, "budget": args.budget, "threads":
                      __import__("torch").get_num_threads(), "batch_1_s": round(one, 2), "batch_8_s": round(eight, 2),
                      "batch_1_questions_per_s": round(args.n / one, 2),
                      "batch_8_questions_per_s": round(args.n / eight, 2),
                      "speedup_8_vs_1": round(one / eight, 2), "accuracy_batch_1": acc_one,
                      "accuracy_batch_8": acc_eight}, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_table = commands.add_parser("table")
    run_table.add_argument("--n", type=int, default=350)
    run_table.add_argument("--budgets", default="64,16")
    run_table.add_argument("--methods", default="", help="comma-separated [default: every zoprune method]")
    run_table.add_argument("--batch-size", type=int, default=8)
    run_table.add_argument("--out", default="lmms-shapes")
    run_throughput = commands.add_parser("throughput")
    run_throughput.add_argument("--n", type=int, default=350)
    run_throughput.add_argument("--method", default="zoo-prune")
    run_throughput.add_argument("--budget", type=int, default=16)
    run_throughput.add_argument("--out", default="lmms-shapes")
    args = parser.parse_args()
    {"table": table, "throughput": throughput}[args.command](args)


if __name__ == "__main__":
    main()
