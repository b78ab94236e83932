"""Peak RSS of ``zoprune eval`` at 1,000 and 10,000 questions: memory must stay flat over long runs (no growth from
the score memo, selections, caches or the questions themselves).

    python benchmarks/eval_memory.py [--sizes 1000,10000] [--method zoo-prune] [--budget 16] [--threads 1]

Each size runs the command in a fresh process on the shipped shapes model (the unpruned model and one method at one
budget, no plot) and reads that process's peak resident set from the kernel (``wait4``'s ``ru_maxrss``). Prints
one line per size and the growth from the smallest size, in MiB. docs/reliability.md records the figures.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

parser = argparse.ArgumentParser()
parser.add_argument("--sizes", default="1000,10000")
parser.add_argument("--method", default="zoo-prune")
parser.add_argument("--budget", default="16")
parser.add_argument("--threads", default="1", help="OMP_NUM_THREADS of the measured process")
args = parser.parse_args()

peaks = {}
for n in (int(size) for size in args.sizes.split(",")):
    with tempfile.TemporaryDirectory() as out:
        zoprune = os.path.join(os.path.dirname(sys.executable), "zoprune")  # the command of this environment
        command = [zoprune, "eval", "-m", args.method, "-b", args.budget, "--n", str(n), "--no-plot", "--out", out]
        env = {**os.environ, "OMP_NUM_THREADS": args.threads, "COLUMNS": "120"}
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        output = process.stdout.read().decode()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"zoprune eval --n {n} failed:\n{output[-3000:]}")
        peaks[n] = usage.ru_maxrss / 1024  # KiB on Linux
        rows = [line for line in output.splitlines() if args.method in line or "unpruned" in line]
        print(f"{n:>6} questions: peak RSS {peaks[n]:7.0f} MiB, {seconds:6.0f} s   " + " | ".join(
            " ".join(r.split()) for r in rows[-2:]), flush=True)
smallest = min(peaks)
for n, peak in sorted(peaks.items()):
    if n != smallest:
        print(f"growth {smallest} -> {n} questions: {peak - peaks[smallest]:+.0f} MiB "
              f"({(peak - peaks[smallest]) / (n - smallest) * 1024:.1f} KiB per question)")
