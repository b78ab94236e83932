"""After any error raised from prune, generate, __call__, select, prepare or an in-LLM context, the wrapped model is
exactly as before (parameters and buffers by checksum, no hooks or patched methods left), ``last_selection`` is
empty and the next call gives what a fresh pipeline gives. An error is injected at every stage."""

import hashlib

import pytest
import torch

import zoprune
from zoprune.errors import ConfigError, PluginError, UnsupportedModelError
from tiny_models import llava_batch, tiny_llava

GREEDY = {"max_new_tokens": 3, "do_sample": False}
PRE_LLM = {"scorer": {"name": "zo_sensitivity", "directions": 8}, "budget": 5}
IN_LLM = {"scorer": None, "selector": "fastv", "budget": 5}


class Injected(RuntimeError):
    pass


@pytest.fixture(scope="module")
def model():
    model = tiny_llava(attn_implementation="sdpa")
    # transformers installs output-capturing hooks on the vision encoder at its first call with hidden states, and
    # keeps them: call the model's own code once first, so the snapshots show only what zoprune might leave
    inputs = llava_batch(model, [[6]], [1])
    with torch.no_grad():
        model.generate(**inputs, **GREEDY)
        model.model.vision_tower(inputs["pixel_values"], output_hidden_states=True, return_dict=True)
    return model


def checksum(model):
    digest = hashlib.sha256()
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def hooks_and_patches(model):
    """Every module's hooks and any callable set on a module instance (a patched method), plus torch's global
    module hooks, and the training flags."""
    from torch.nn.modules import module as torch_module

    state = []
    for name, module in model.named_modules():
        hooks = {attr: list(getattr(module, attr)) for attr in vars(module)
                 if attr.startswith(("_forward", "_backward", "_state_dict", "_load_state_dict")) and attr.endswith(
                     "hooks") and isinstance(getattr(module, attr), dict)}
        patched = sorted(attr for attr, value in vars(module).items() if callable(value)
                         and not isinstance(value, torch.nn.Module))
        state.append((name, module.training, hooks, patched))
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"):
        state.append((attr, len(getattr(torch_module, attr))))
    return state


def stage_faults(model, pruned):
    """name -> (what to break, how to undo it): one per stage of a call."""
    language_model = model.model.language_model

    def on(obj, attribute, replacement):
        def undo():
            delattr(obj, attribute)
        setattr(obj, attribute, replacement)
        return undo

    def raise_(*args, **kwargs):
        raise Injected("injected")

    def hook_on(layer):
        handle = layer.register_forward_pre_hook(raise_)
        return handle.remove

    faults = {
        "extract": lambda: on(pruned.adapter, "extract", raise_),
        "language model forward": lambda: hook_on(language_model.layers[-1]),
        "decode step": lambda: decode_fault(language_model.layers[0]),
    }
    if pruned.selector.stage == "pre_llm":
        faults["score"] = lambda: on(pruned.scorer, "score", raise_)
        faults["select"] = lambda: on(pruned.selector, "select", raise_)
        faults["prepare"] = lambda: on(pruned.adapter, "pruned_inputs", raise_)
    else:  # inside the language model: the selection runs in a hook, with the later layers hooked too
        faults["select inside the language model"] = lambda: on(pruned.selector, "select", raise_)
        del faults["extract"]  # the vision tower runs inside the model's own forward there
        faults["vision tower"] = lambda: hook_on(model.model.vision_tower)
    return faults


def decode_fault(layer):
    """Raises on the first decode step of generate (the prefill went through and was pruned)."""
    calls = []

    def hook(module, args):
        calls.append(1)
        if len(calls) > 1:
            raise Injected("injected in decoding")

    handle = layer.register_forward_pre_hook(hook)
    return handle.remove


ENTRY_POINTS = {
    "generate": lambda pruned, inputs: pruned.generate(**inputs, **GREEDY),
    "__call__": lambda pruned, inputs: pruned(**inputs).logits,
    "select": lambda pruned, inputs: pruned.select(**inputs),
    "prepare": lambda pruned, inputs: pruned.prepare(**inputs),
}


def reaches(stage, entry, pruned):
    """Whether a call through ``entry`` runs ``stage`` (select and prepare stop before the language model)."""
    if stage == "decode step":
        return entry == "generate"
    if pruned.selector.stage == "in_llm":
        return entry in ("generate", "__call__", "select")
    if stage == "language model forward":
        return entry in ("generate", "__call__")
    return stage != "prepare" or entry != "select"  # select stops before the pruned inputs are built


def result(pruned, entry, inputs):
    out = ENTRY_POINTS[entry](pruned, inputs)
    selection = [s.kept.tolist() for s in pruned.last_selection]
    if isinstance(out, dict):
        out = out["input_ids"]
    return (out if isinstance(out, torch.Tensor) else None), selection


@pytest.mark.parametrize("config", [PRE_LLM, IN_LLM], ids=["pre_llm", "in_llm"])
def test_an_error_at_any_stage_leaves_the_model_as_it_was(model, config, record_property):
    inputs = llava_batch(model, [[6, 7, 8], [6]], [1, 2])
    before_sum, before_hooks = checksum(model), hooks_and_patches(model)
    injected = 0
    pruned = zoprune.prune(model, config)
    for stage, fault in stage_faults(model, pruned).items():
        for entry in ENTRY_POINTS:
            if not reaches(stage, entry, pruned):
                continue
            pruned.select(**llava_batch(model, [[6]], [1], seed=7))  # a previous call's selection to clear
            undo = fault()
            try:
                with _named(stage, entry), pytest.raises((Injected, PluginError), match="injected"):
                    ENTRY_POINTS[entry](pruned, inputs)
            finally:
                undo()
            injected += 1
            assert pruned.last_selection == [], (stage, entry)
            assert checksum(model) == before_sum, (stage, entry)
            assert hooks_and_patches(model) == before_hooks, (stage, entry)
            got = result(pruned, entry, inputs)  # the next call works, and as a fresh pipeline's does
            expected = result(zoprune.prune(model, config), entry, inputs)
            assert (got[0] is None and expected[0] is None) or torch.equal(got[0], expected[0]), (stage, entry)
            assert got[1] == expected[1], (stage, entry)
    record_property("faults injected", injected)
    print(f"\n{config['selector'] if 'selector' in config else 'coverage'}: {injected} faults injected")
    assert injected >= (10 if config is PRE_LLM else 7)


def test_prune_errors_leave_the_model_as_it_was(model):
    before_sum, before_hooks = checksum(model), hooks_and_patches(model)
    for bad in ({"budget": 0}, {"selector": "no_such_selector"}, {"scoring_dtype": "float16"},
                {"adapter": "qwen_vl"}, {"scorer": "cls_attention", "selector": "fastv"}):
        with pytest.raises((ConfigError, PluginError, UnsupportedModelError)):
            zoprune.prune(model, bad).select(**llava_batch(model, [[6]], [1]))
    assert checksum(model) == before_sum and hooks_and_patches(model) == before_hooks
    half = tiny_llava(dtype=torch.bfloat16)
    before = checksum(half)
    with pytest.raises(ConfigError, match="cannot score in bfloat16"):
        zoprune.prune(half, scoring_dtype="model")
    assert checksum(half) == before


class _named:
    """Adds the stage and entry point to a failure inside the block."""

    def __init__(self, stage, entry):
        self.where = f"stage {stage!r}, entry point {entry!r}"

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None and issubclass(kind, pytest.fail.Exception):
            raise AssertionError(f"{self.where}: {error}") from None
        return False
