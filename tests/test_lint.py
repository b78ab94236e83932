"""The code passes ``ruff check`` with the settings in pyproject.toml ([tool.ruff]): unused imports, undefined
names and lines over 120 characters fail the suite, not only a reviewer's eye."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_ruff_reads_this_projects_settings():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--show-settings", "pyproject.toml"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "line_length = 120" in result.stdout.replace(" ", " ")
