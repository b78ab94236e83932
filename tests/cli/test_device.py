"""A device this machine lacks is one line naming it and the devices that exist, from every command that takes
``--device`` (never torch's "Torch not compiled with CUDA enabled" traceback)."""

import pytest
import torch
from typer.testing import CliRunner

from zoprune.cli import app
from zoprune.loading import available_devices, check_device
from zoprune.errors import ZopruneError

runner = CliRunner()

COMMANDS = {
    "run": ["run", "--image", "scene.png", "--prompt", "hi"],
    "eval": ["eval", "--no-plot", "-m", "random", "-b", "4"],
    "bench": ["bench", "--preset", "tiny", "--budgets", "4"],
}


def one_line_error(args):
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "AssertionError" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --device "), result.output
    return lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_one_line(command, device):
    line = one_line_error([*COMMANDS[command], "--device", device])
    assert f"--device {device}: " in line and "available here: cpu" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_cuda_index_that_does_not_exist_is_one_line(command, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    line = one_line_error([*COMMANDS[command], "--device", "cuda:5"])
    assert "there is no CUDA device 5" in line and "available here: cpu, cuda:0, cuda:1" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_name_that_is_no_device_is_one_line(command):
    line = one_line_error([*COMMANDS[command], "--device", "gpu0"])
    assert "'gpu0' is not a device name" in line


def test_cpu_is_always_available():
    assert available_devices()[0] == "cpu"
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ZopruneError, match=r"^--device xpu: not usable here \([^)]*\); available here: cpu"):
        check_device("xpu")  # torch knows the name, this build cannot use it
