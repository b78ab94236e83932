"""Pruning overhead, prefill, decoding, generation, memory and FLOPs of pruned models, as ratios in one run.

Models are built with random weights in realistic shapes, so nothing is downloaded: a LLaVA whose vision tower is
reduced to its patch embedding (a stand-in vision output with the real number of tokens and width) feeding the real
projector shape and a language model of the real width with fewer layers (``layers``; the report extrapolates to
``full_layers`` by FLOPs). Three runs of the same prompt are compared:

- **unpruned**: ``model.generate`` on every visual token;
- **oracle**: the kept indices of the pruned run given for free (vision and projector run, no scoring or selection);
- **pruned**: ``zoprune.prune(model, config).generate``.

``pruned - oracle`` is the pure pruning overhead; ``unpruned / pruned`` the speed-up a user sees.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

IMAGE_TOKEN_ID = 3


@dataclass(frozen=True)
class Shapes:
    """The shapes a benchmark model is built with."""

    name: str
    vision_dim: int  # d_v, the projector's input
    image_size: int
    patch_size: int  # N = (image_size / patch_size)^2 visual tokens
    hidden: int  # the language model's width (and the projector's hidden and output width)
    intermediate: int
    layers: int  # decoder layers built and run
    full_layers: int  # decoder layers of the real model (for the extrapolated figures)
    heads: int
    kv_heads: int
    vocab: int
    text_tokens: int = 40  # text tokens of the prompt besides the image

    @property
    def num_visual(self) -> int:
        return (self.image_size // self.patch_size) ** 2


PRESETS: dict[str, Shapes] = {
    # LLaVA-1.5-7B: CLIP ViT-L/14-336 features (1024 wide, 576 tokens), projector 1024 -> 4096 -> 4096, Vicuna-7B
    "llava-1.5-7b": Shapes("llava-1.5-7b", 1024, 336, 14, 4096, 11008, 1, 32, 32, 32, 32064),
    # the same vision side in front of a Qwen2-0.5B-shaped language model, run in full
    "qwen2-0.5b": Shapes("qwen2-0.5b", 1024, 336, 14, 896, 4864, 24, 24, 14, 2, 151936),
    # for tests: seconds on any machine
    "tiny": Shapes("tiny", 32, 32, 8, 48, 96, 2, 2, 4, 2, 64, text_tokens=8),
}

METHOD_ALIASES = {"zoo": "zo_sensitivity+coverage", "jacobian": "jacobian_norm+coverage",
                  "divprune": "none+divprune", "random": "none+random", "norm": "norm+coverage"}


def build_model(shapes: Shapes, seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A LlavaForConditionalGeneration with random weights in ``shapes``; the vision features are the patch
    embedding of the image (a stand-in for CLIP's output, same count and width)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    # one (narrow) encoder layer, whose output is unused: the features are hidden_states[-2], the patch embedding
    vision = CLIPVisionConfig(hidden_size=shapes.vision_dim, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=max(1, shapes.vision_dim // 64),
                              image_size=shapes.image_size, patch_size=shapes.patch_size)
    text = LlamaConfig(vocab_size=shapes.vocab, hidden_size=shapes.hidden, intermediate_size=shapes.intermediate,
                       num_hidden_layers=shapes.layers, num_attention_heads=shapes.heads,
                       num_key_value_heads=shapes.kv_heads, max_position_embeddings=4096, pad_token_id=0,
                       bos_token_id=1, eos_token_id=2)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN_ID,
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act="gelu")
    config._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlavaForConditionalGeneration(config)
    model = model.to(dtype).eval()
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = None  # never stop early: every run decodes the same number of tokens
    return model


def build_inputs(shapes: Shapes, seed: int = 0, device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(6, shapes.vocab, (shapes.text_tokens,), generator=g).tolist()
    ids = [1] + [IMAGE_TOKEN_ID] * shapes.num_visual + text
    return {"input_ids": torch.tensor([ids], device=device),
            "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
            "pixel_values": torch.randn(1, 3, shapes.image_size, shapes.image_size, generator=g).to(device)}


def method_config(method: str, budget: int, seed: int = 0) -> dict[str, Any]:
    """A pipeline config from a method: an alias, a registered method (``zoo-prune-fast``), ``scorer+selector``
    (``none+divprune``) or a config file."""
    from zoprune.config import read_config_file
    from zoprune.registry import get_registry

    method = METHOD_ALIASES.get(method, method)
    if method in get_registry().methods:
        data = dict(get_registry().method(method).config)
    elif "+" in method:
        scorer, selector = method.split("+", 1)
        data: dict[str, Any] = {"scorer": None if scorer == "none" else scorer, "selector": selector}
    else:
        data = dict(read_config_file(method))
    return {**data, "budget": budget, "seed": seed}


def method_label(method: str) -> str:
    """How tables and charts name a method: a config file by its stem (``configs/zoo.yaml`` -> ``zoo``)."""
    path = Path(method)
    return path.stem if path.suffix.lower() in (".yaml", ".yml", ".toml", ".json") else method


@dataclass
class Timing:
    """Seconds (median of repeats), peak extra memory (MB) and FLOPs of one phase."""

    seconds: float
    runs: list[float] = field(default_factory=list)
    peak_mb: float | None = None
    gflop: float | None = None


@dataclass
class Row:
    """One method at one budget (or the unpruned / oracle reference)."""

    method: str
    budget: int | None
    kept: int
    overhead: Timing | None  # scoring + selection
    prefill: Timing
    decode_per_token: float
    generate: Timing
    kept_indices: list[int] | None = None
    generated: list[int] | None = None  # the new token ids of the first prompt in the first timed generate


@dataclass
class Report:
    shapes: Shapes
    device: str
    threads: int
    new_tokens: int
    repeats: int
    unpruned: Row
    rows: list[tuple[Row, Row]]  # (pruned, its oracle)
    dtype: str = "float32"  # the model's weights and activations

    def extrapolation(self) -> float:
        """Full-model prefill FLOPs / measured prefill FLOPs of the unpruned model (1 when the language model is
        built in full)."""
        return self.prefill_scale(self.unpruned)

    def prefill_scale(self, row: Row) -> float:
        """Full-model prefill FLOPs / measured prefill FLOPs at ``row``'s own sequence length (1 when the language
        model is built in full or the FLOPs were not counted)."""
        s = self.shapes
        if s.layers == s.full_layers or not row.prefill.gflop:
            return 1.0
        seq = row.kept + s.text_tokens + 1
        per_layer = decoder_layer_flops(s, seq) / 1e9
        return (row.prefill.gflop + (s.full_layers - s.layers) * per_layer) / row.prefill.gflop

    def full_depth_generate(self, row: Row) -> float:
        """Estimated seconds of ``row``'s language-model generate at ``full_layers``: the measured prefill scaled
        by prefill FLOPs at its own sequence length, plus the measured per-token decode scaled by decode FLOPs
        (weights: every layer's plus the output head). Equals the measured figures when the model is built in full.
        """
        s = self.shapes
        prefill = row.prefill.seconds * self.prefill_scale(row)
        decode = row.decode_per_token * decode_flops(s, s.full_layers) / decode_flops(s, s.layers)
        return prefill + (self.new_tokens - 1) * decode

    def vs_oracle_full_depth(self, row: Row, oracle: Row) -> float | None:
        """(oracle's generate + scoring and selection) / oracle's generate, both at full depth (estimated): what
        the pruning overhead adds to a full model's generate. The overhead itself does not depend on the depth."""
        if row.overhead is None:
            return None
        base = self.full_depth_generate(oracle)
        return (base + row.overhead.seconds) / base

    def to_dict(self) -> dict[str, Any]:
        return {"shapes": asdict(self.shapes), "device": self.device, "dtype": self.dtype, "threads": self.threads,
                "new_tokens": self.new_tokens, "repeats": self.repeats, "extrapolation": self.extrapolation(),
                "unpruned": asdict(self.unpruned),
                "rows": [{"pruned": asdict(p), "oracle": asdict(o),
                          "vs_oracle_full_depth_estimate": self.vs_oracle_full_depth(p, o)} for p, o in self.rows]}


def decoder_layer_flops(s: Shapes, seq: int) -> float:
    """Analytic FLOPs of one Llama decoder layer's prefill over ``seq`` tokens (matmuls only, full attention)."""
    head = s.hidden // s.heads
    projections = s.hidden * (s.hidden + 2 * s.kv_heads * head) + s.hidden * s.hidden + 3 * s.hidden * s.intermediate
    return 2 * seq * projections + 4 * seq * seq * s.hidden


def decode_flops(s: Shapes, layers: int) -> float:
    """Analytic FLOPs of decoding one token with ``layers`` decoder layers: every weight once (2 FLOPs a
    multiply-add), the output head included; attention over the cache is left out (small at these lengths)."""
    head = s.hidden // s.heads
    per_layer = s.hidden * (s.hidden + 2 * s.kv_heads * head) + s.hidden * s.hidden + 3 * s.hidden * s.intermediate
    return 2 * (layers * per_layer + s.hidden * s.vocab)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class PeakMemory:
    """Peak extra memory of a block: CUDA's allocator peak, or on CPU the rise of the process's RSS high-water mark
    (reset through /proc/self/clear_refs where the kernel allows it; None where it does not)."""

    def __init__(self, device: str):
        self.device = device
        self.mb: float | None = None

    def __enter__(self):
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _rss_kb("VmRSS") if _reset_hwm() else None
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            self.mb = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        elif self.base is not None:
            self.mb = max(0.0, (_rss_kb("VmHWM") - self.base) / 1024)


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _rss_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def measure(fn: Callable[[], Any], repeats: int, device: str, flops: bool = True) -> Timing:
    """Median wall time of ``fn`` over ``repeats`` runs, the peak memory of the first, FLOPs counted separately."""
    runs = []
    peak = None
    for i in range(repeats):
        with PeakMemory(device) as memory:
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            runs.append(time.perf_counter() - start)
        if i == 0:
            peak = memory.mb
    gflop = None
    if flops:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            fn()
        gflop = counter.get_total_flops() / 1e9
    return Timing(statistics.median(runs), runs, peak, gflop)


def run_bench(shapes: Shapes, methods: list[str], budgets: list[int], new_tokens: int = 8, repeats: int = 1,
              device: str = "cpu", seed: int = 0, progress: Callable[[str], None] | None = None,
              dtype: torch.dtype = torch.float32) -> Report:
    """Measure the unpruned model once and every method at every budget, with its oracle, in one process.

    ``dtype``: the model's; the pipelines score in their own scoring dtype (float32 unless a method's config says
    otherwise), as they would on a real checkpoint of that dtype."""
    import zoprune

    say = progress or (lambda _: None)
    say("building the model")
    model = build_model(shapes, seed=seed, dtype=dtype, device=device)
    inputs = build_inputs(shapes, seed=seed, device=device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    one = {"max_new_tokens": 1, "do_sample": False}

    def lm_rows(label, budget, kept, overhead, forward_inputs: Callable[[], dict], generate: Callable[..., Any],
                indices=None) -> Row:
        say(f"{label}: prefill")
        prefill = measure(lambda: model(**forward_inputs(), logits_to_keep=1), repeats, device)
        say(f"{label}: generate")
        outputs = []  # the generated sequences, so rows can be compared token by token (oracle against pruned)
        full = measure(lambda: outputs.append(generate(**gen)), repeats, device, flops=False)
        # decoding is the same computation with or without the pruning in front: time it on the model's own
        # generate over the (pruned) inputs, so the scoring time's noise does not enter the per-token figure
        long = measure(lambda: model.generate(**forward_inputs(), **gen), repeats, device, flops=False)
        first = measure(lambda: model.generate(**forward_inputs(), **one), repeats, device, flops=False)
        decode = max(0.0, (long.seconds - first.seconds) / max(1, new_tokens - 1))
        return Row(label, budget, kept, overhead, prefill, decode, full, indices,
                   outputs[0][0, -new_tokens:].tolist())

    with torch.no_grad():
        model(**inputs, logits_to_keep=1)  # warm-up: allocations, kernels
        unpruned = lm_rows("unpruned", None, shapes.num_visual, None, lambda: inputs,
                           lambda **kw: model.generate(**inputs, **kw))
        rows = []
        for method in methods:
            for budget in budgets:
                pruned = zoprune.prune(model, method_config(method, budget, seed))
                images = pruned._extract(inputs)
                label = method_label(method)
                say(f"{label} @ {budget}: scoring and selection")
                if budget == budgets[0]:  # warm-up, once per method: one-off work (jacobian_norm's K) and caches
                    pruned._select(images)
                # memo=False: the pipeline remembers the scores of the images it last scored; time them every run
                overhead = measure(lambda: pruned._select(images), repeats, device)
                selection = pruned._select(images)
                kept = [s.kept for s in selection]
                pruned_inputs = pruned.adapter.pruned_inputs(inputs, images, kept)

                def pruned_generate(**kw):
                    # fresh tensors, as in a new request: the pipeline remembers the scores of the tensors it
                    # last saw, and a repeat on the same ones would skip the scoring
                    return pruned.generate(**{name: t.clone() for name, t in inputs.items()}, **kw)

                row = lm_rows(label, budget, int(sum(k.numel() for k in kept)), overhead,
                              lambda: pruned_inputs, pruned_generate, [int(i) for i in kept[0]])

                def oracle_generate(**kw):
                    found = pruned.adapter.extract(inputs, pruned._projector(images[0].features.dtype),
                                                   images[0].features.dtype)
                    return model.generate(**pruned.adapter.pruned_inputs(inputs, found, kept), **kw)

                oracle = lm_rows(f"{label} oracle", budget, row.kept, None, lambda: pruned_inputs,
                                 oracle_generate, row.kept_indices)
                rows.append((row, oracle))
    return Report(shapes, device, torch.get_num_threads(), new_tokens, repeats, unpruned, rows,
                  str(dtype).removeprefix("torch."))


def render_table(report: Report):
    """A rich Table of the report: times, and ratios to the unpruned model and to the oracle."""
    from rich.table import Table

    base = report.unpruned
    scale = report.extrapolation()
    s = report.shapes
    title = (f"{s.name}: N={s.num_visual}, LM {s.layers}/{s.full_layers} layers, {report.device} {report.dtype}, "
             f"{report.threads} threads, {report.new_tokens} new tokens, median of {report.repeats}")
    table = Table(title=title)
    for column in ("method", "kept", "overhead s", "overhead / prefill",
                   f"overhead / prefill at {s.full_layers} layers", "prefill s", "decode ms/tok", "generate s",
                   "speed-up", "vs oracle", f"vs oracle at {s.full_layers} layers (est.)", "peak MB", "prefill GFLOP",
                   "overhead GFLOP"):
        table.add_column(column, justify="right" if column != "method" else "left", no_wrap=column == "method")

    def fmt(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    table.add_row("unpruned", str(base.kept), "-", "-", "-", fmt(base.prefill.seconds),
                  fmt(1e3 * base.decode_per_token, ".1f"), fmt(base.generate.seconds), "1.00x", "-", "-",
                  fmt(base.generate.peak_mb, ".0f"), fmt(base.prefill.gflop, ".1f"), "-")
    for row, oracle in report.rows:
        for r in (oracle, row):
            over = r.overhead.seconds if r.overhead else None
            table.add_row(
                f"{r.method} @ {r.budget}", str(r.kept), fmt(over),
                fmt(None if over is None else over / base.prefill.seconds, ".1%"),
                fmt(None if over is None else over / (base.prefill.seconds * scale), ".1%"),
                fmt(r.prefill.seconds), fmt(1e3 * r.decode_per_token, ".1f"), fmt(r.generate.seconds),
                f"{base.generate.seconds / r.generate.seconds:.2f}x",
                "-" if r is oracle else f"{r.generate.seconds / oracle.generate.seconds:.3f}",
                "-" if r is oracle else fmt(report.vs_oracle_full_depth(r, oracle)),
                fmt(r.generate.peak_mb, ".0f"), fmt(r.prefill.gflop, ".1f"),
                fmt(r.overhead.gflop if r.overhead else None, ".1f"))
    return table


def plot(report: Report, path: str | Path) -> Path:
    """A PNG bar chart of generate time (overhead stacked) per method and budget, against unpruned and oracle."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:  # pragma: no cover - depends on the environment
        from zoprune.errors import ZopruneError

        raise ZopruneError("the chart needs matplotlib: pip install 'zoprune[plot]'") from error
    labels, oracle_t, overhead_t = [], [], []
    for row, oracle in report.rows:
        labels.append(f"{row.method}\n@{row.budget}")
        oracle_t.append(oracle.generate.seconds)
        overhead_t.append(max(0.0, row.generate.seconds - oracle.generate.seconds))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels) + 2), 4))
    x = range(len(labels))
    ax.bar(x, oracle_t, label="oracle (kept tokens for free)", color="#4c72b0")
    ax.bar(x, overhead_t, bottom=oracle_t, label="pruning overhead", color="#dd8452")
    ax.axhline(report.unpruned.generate.seconds, color="k", linestyle="--", label="unpruned")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel(f"generate time, {report.new_tokens} new tokens (s)")
    ax.set_title(f"{report.shapes.name} on {report.device}, {report.dtype}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
