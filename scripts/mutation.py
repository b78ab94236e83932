"""Mutation testing of zoprune's core with mutmut: ``python scripts/mutation.py`` (``pip install -e ".[mutation]"``).

mutmut names a mutant's module from its path under the folder it mutates, stripping only a leading ``src/``, and
it puts ``mutants/src`` first on ``sys.path``. The built-in plugins live in ``plugins/zoprune_plugins``, so mutmut
run from the repository root would name them ``plugins.zoprune_plugins...`` and never switch a mutant on, while the
tests import ``zoprune_plugins...``. This script therefore lays out both packages under one ``src/`` in
``build/mutation`` (symbolic links to the real folders, plus the tests and pyproject.toml, whose
``[tool.mutmut]`` section holds the scope and the tests that run) and runs mutmut there; the mutants and mutmut's
cache stay in ``build/mutation/mutants``. Arguments are passed to ``mutmut run`` (mutant names rerun those only).

Afterwards: ``cd build/mutation && mutmut results`` lists the survivors, ``mutmut show NAME`` prints one's diff.
The last score and every survivor's verdict are on docs/development.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "mutation"
LINKS = {"src/zoprune": ROOT / "src" / "zoprune", "src/zoprune_plugins": ROOT / "plugins" / "zoprune_plugins",
         "tests": ROOT / "tests", "configs": ROOT / "configs"}


def stage() -> None:
    """build/mutation with src/zoprune, src/zoprune_plugins and tests linked and pyproject.toml copied."""
    (STAGE / "src").mkdir(parents=True, exist_ok=True)
    for name, target in LINKS.items():
        link = STAGE / name
        if link.is_symlink() or link.exists():
            if link.is_symlink() and link.resolve() == target:
                continue
            link.unlink() if link.is_symlink() else shutil.rmtree(link)
        link.symlink_to(target, target_is_directory=True)
    shutil.copy2(ROOT / "pyproject.toml", STAGE / "pyproject.toml")


def main(argv: list[str]) -> int:
    stage()
    # one OpenMP thread: mutmut forks a worker per mutant from a process that has run torch, and a forked child
    # of a multi-threaded OpenMP pool can hang
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    mutmut = shutil.which("mutmut") or "mutmut"
    code = subprocess.call([mutmut, "run", *argv], cwd=STAGE, env=env)
    if code == 0:
        code = subprocess.call([mutmut, "results"], cwd=STAGE, env=env)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
