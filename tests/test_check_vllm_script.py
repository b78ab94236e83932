"""scripts/check_vllm.py (run by GPU users) loads and parses its options without vLLM installed."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "check_vllm.py"


def _load():
    spec = importlib.util.spec_from_file_location("check_vllm", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_script_loads_without_vllm_and_parses_its_options():
    module = _load()
    args = module.parse_args(["--images", "a.jpg", "b.jpg", "--budget", "32", "--server", "http://localhost:8000"])
    assert args.images == [Path("a.jpg"), Path("b.jpg")] and args.budget == 32 and args.method == "zoo-prune-fast"
    assert args.model == "llava-hf/llava-1.5-7b-hf" and "vllm" not in sys.modules
    assert module.agreement(["a cat ", "a dog"], ["a cat", "two dogs"]) == 1
