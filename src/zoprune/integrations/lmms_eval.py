"""zoprune as an lmms-eval model: ``python -m lmms_eval --model zoprune --model_args pretrained=PATH_OR_ID,...``.

Every option is a ``--model_args`` key, so the results file's ``config.model_args`` says exactly what ran:

- ``pretrained``: checkpoint directory or hub id (default: the shapes model that ships with zoprune);
- ``method``: a method name (``zoprune plugins``), a selector, ``SCORER+SELECTOR``, a config file, or
  ``unpruned`` for the reference run; or ``config``: a config file or inline JSON (not both);
- ``budget`` (tokens per image) or ``ratio`` (fraction of each image's tokens);
- any other key overrides the pipeline config, dotted for a component's parameter
  (``seed=1``, ``scorer.directions=32``, ``selector.fusion=sum``);
- ``dtype`` (``auto``, ``bfloat16``, ``float16``, ``float32``), ``attn_implementation`` (``sdpa``, ``eager``,
  ``flash_attention_2``), ``device_map`` (e.g. ``auto`` to spread one process over the GPUs),
  ``trust_remote_code`` (off unless given).

The family is detected from the checkpoint (``AutoModelForImageTextToText``) and its adapter from the model class.
``--batch_size N`` batches N requests with left padding; data-parallel runs (``accelerate launch`` on GPUs,
``torchrun`` on CPU) put one model on each process's device.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

try:
    from lmms_eval.api.instance import Instance
    from lmms_eval.api.model import lmms
    from lmms_eval.protocol import ChatMessages
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(f"zoprune's lmms-eval model needs lmms-eval ({error}); install it with "
                      "pip install 'zoprune[lmms]' (see docs/lmms-eval.md for a CPU environment)") from error

import torch

from zoprune.config import PipelineConfig
from zoprune.errors import ConfigError, InputError
from zoprune.pipeline import PrunedModel, prune, resolve_config

#: ``method=unpruned``: the reference run, every visual token kept (exactly the stock model's outputs)
UNPRUNED = "unpruned"
KEEP_ALL = 2**31 - 1
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
GENERATE_KEYS = ("max_new_tokens", "temperature", "top_p", "num_beams", "do_sample")


def pipeline_from_options(method: str | None = None, config: str | None = None, budget: int | float | None = None,
                          ratio: float | None = None, **overrides: Any) -> PipelineConfig:
    """The pipeline config that ``--model_args`` describe (see the module docstring); ``method=unpruned`` gives a
    config that keeps every token. Errors name the offending key."""
    if method is not None and config is not None:
        raise ConfigError("give method= or config=, not both")
    if budget is not None and ratio is not None:
        raise ConfigError("give budget= or ratio=, not both")
    if method == UNPRUNED:
        if budget is not None or ratio is not None or overrides:
            given = ", ".join(k for k, v in [("budget", budget), ("ratio", ratio)] if v is not None)
            raise ConfigError(f"method=unpruned keeps every token; it takes no {given or ', '.join(overrides)}")
        return resolve_config(budget=KEEP_ALL)
    if method is not None:
        from zoprune.methods import resolve_method

        data = resolve_method(str(method))[1].to_dict()
    elif config is not None and str(config).lstrip().startswith("{"):
        try:
            data = json.loads(config)
        except json.JSONDecodeError as error:
            raise ConfigError(f"config= is not valid JSON: {error}") from None
    elif config is not None:
        data = resolve_config(str(config)).to_dict()
    else:
        data = PipelineConfig().to_dict()
    for key, value in overrides.items():
        _set_dotted(data, key, value)
    if budget is not None or ratio is not None:
        data["budget"] = {"keep": budget} if budget is not None else {"ratio": ratio}
    return resolve_config(data)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """``scorer.directions=32`` sets the parameter of the configured component (a name becomes ``{name: ...}``)."""
    *path, last = key.split(".")
    node = data
    for part in path:
        child = node.get(part)
        if isinstance(child, str):
            child = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}={value!r}: {part!r} is not a section of the config that has parameters")
        node[part] = child = dict(child)
        node = child
    node[last] = value


def _generate_kwargs(gen_kwargs: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The HF ``generate`` arguments of a task's ``generation_kwargs`` and its ``until`` stop strings."""
    options = dict(gen_kwargs)
    until = options.pop("until", None) or []
    until = [until] if isinstance(until, str) else list(until)
    temperature = float(options.get("temperature") or 0)
    do_sample = bool(options.get("do_sample")) or temperature > 0
    kwargs: dict[str, Any] = {"max_new_tokens": int(options.get("max_new_tokens", 128)), "do_sample": do_sample,
                              "num_beams": int(options.get("num_beams") or 1)}
    if do_sample:
        if temperature > 0:
            kwargs["temperature"] = temperature
        if options.get("top_p") is not None:
            kwargs["top_p"] = float(options["top_p"])
    return kwargs, until


def _cut(text: str, until: Sequence[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text


class _ZopruneModel(lmms):
    """What the chat and simple classes share: loading, the pipeline, batched pruned generation."""

    gen_kwargs_at: int  # where a request's args hold its generation options

    def __init__(self, pretrained: str | None = None, method: str | None = None, config: str | None = None,
                 budget: int | float | None = None, ratio: float | None = None, dtype: str = "auto",
                 attn_implementation: str | None = None, device_map: str | None = None,
                 trust_remote_code: bool = False, batch_size: int | str = 1, device: str | None = None,
                 max_batch_size: int | None = None, **overrides: Any) -> None:
        super().__init__()
        from accelerate import Accelerator
        from loguru import logger

        self.pipeline = pipeline_from_options(method, config, budget, ratio, **overrides)
        if str(batch_size) == "auto" or int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size!r}: give a whole number of requests, at least 1")
        self.batch_size_per_gpu = int(batch_size)
        if dtype not in DTYPES:
            raise ConfigError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)}")

        self.accelerator = accelerator = Accelerator()
        # one model per process on that process's device; device_map=auto spreads one process over the GPUs
        self._device = torch.device(device) if device and accelerator.num_processes == 1 else accelerator.device
        self.model, self.processor = _load(pretrained, DTYPES[dtype], attn_implementation,
                                           device_map or str(self._device), bool(trust_remote_code))
        self.pruned: PrunedModel = prune(self.model, self.pipeline)
        self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        if accelerator.is_main_process:
            logger.info(f"zoprune: {self.pruned!r}; pipeline {json.dumps(self.pipeline.to_dict())}")

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    def _prompt(self, images: int, text: str) -> str:
        """The user turn with ``images`` image placeholders, through the processor's chat template when it has one."""
        token = getattr(self.processor, "image_token", "<image>")
        if token in text:  # the task placed its images itself
            images = 0
        if getattr(self.processor, "chat_template", None):
            content = [{"type": "image"}] * images + [{"type": "text", "text": text}]
            return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                      add_generation_prompt=True, tokenize=False)
        return token * images + ("\n" if images else "") + text

    def _inputs(self, prompts: list[str], images: list[list[Any]]) -> Any:
        flat = [image for per_prompt in images for image in per_prompt]
        self.processor.tokenizer.padding_side = "left"  # generation continues every prompt at the same column
        inputs = self.processor(text=prompts, images=flat or None, return_tensors="pt", padding=True)
        return inputs.to(self.model.device)

    @torch.no_grad()
    def _generate(self, prompts: list[str], images: list[list[Any]], gen_kwargs: dict[str, Any]) -> list[str]:
        kwargs, until = _generate_kwargs(gen_kwargs)
        inputs = self._inputs(prompts, images)
        pad = self.processor.tokenizer.pad_token_id
        output = self.pruned.generate(**inputs, **kwargs, pad_token_id=pad if pad is not None else
                                      self.processor.tokenizer.eos_token_id)
        length = inputs["input_ids"].shape[1]
        texts = self.processor.batch_decode(output[:, length:], skip_special_tokens=True)
        return [_cut(text, until) for text in texts]

    def _batched(self, requests: list[Instance], unpack) -> list[str]:
        """Answers in request order; requests with the same task and generation options share a batch."""
        from tqdm import tqdm

        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            task, gen_kwargs = request.args[-2], request.args[self.gen_kwargs_at]
            key = json.dumps([task, gen_kwargs], sort_keys=True, default=str)
            groups.setdefault(key, []).append(index)
        answers: list[str | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=self.rank != 0, desc="zoprune responding")
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start:start + self.batch_size]
                unpacked = [unpack(requests[i].args) for i in batch]
                prompts = [self._prompt(len(visuals), text) for text, visuals, _ in unpacked]
                texts = self._generate(prompts, [visuals for _, visuals, _ in unpacked], unpacked[0][2])
                for i, text in zip(batch, texts):
                    answers[i] = text
                progress.update(len(batch))
        progress.close()
        return answers  # type: ignore[return-value]

    def _doc(self, task: str, split: str, doc_id: int) -> dict[str, Any]:
        return self.task_dict[task][split][doc_id]

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("zoprune's lmms-eval model answers single-round generation tasks only")


class ZopruneChat(_ZopruneModel):
    """lmms-eval's chat interface (``--model zoprune``): requests carry the task's messages."""

    is_simple = False
    gen_kwargs_at = 2  # in a request's args: (context, doc_to_messages, gen_kwargs, doc_id, task, split)

    def _unpack(self, args: tuple) -> tuple[str, list[Any], dict[str, Any]]:
        _, doc_to_messages, gen_kwargs, doc_id, task, split = args
        messages = ChatMessages(messages=doc_to_messages(self._doc(task, split, doc_id)))
        images, videos, audios = messages.extract_media()
        if videos or audios:
            raise InputError(f"{task} doc {doc_id}: zoprune's lmms-eval model takes images, not "
                             f"{'videos' if videos else 'audio'}")
        if len(messages.messages) != 1 or messages.messages[0].role != "user":
            raise InputError(f"{task} doc {doc_id}: zoprune's lmms-eval model takes one user turn, got roles "
                             f"{[m.role for m in messages.messages]}")
        text = "".join(part.text for part in messages.messages[0].content if part.type == "text")
        return text, list(images), gen_kwargs

    def generate_until(self, requests: list[Instance]) -> list[str]:
        return self._batched(requests, self._unpack)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError("lmms-eval sends loglikelihood requests to simple models: add --force_simple")


class ZopruneSimple(_ZopruneModel):
    """lmms-eval's simple interface (``--model zoprune --force_simple``): plain-text contexts, and loglikelihood for
    multiple-choice tasks."""

    is_simple = True
    gen_kwargs_at = 1  # in a request's args: (context, gen_kwargs, doc_to_visual, doc_id, task, split)

    def _unpack(self, args: tuple) -> tuple[str, list[Any], dict[str, Any]]:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = args
        return context, _visuals(doc_to_visual, self._doc(task, split, doc_id), task, doc_id), gen_kwargs

    def generate_until(self, requests: list[Instance]) -> list[str]:
        return self._batched(requests, self._unpack)

    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """``(log p(continuation | context, image), whether greedy decoding gives it)`` per request, on the pruned
        visual tokens."""
        results = []
        for request in requests:
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            doc = self._doc(task, split, doc_id)
            visuals = _visuals(doc_to_visual, doc, task, doc_id)
            if callable(continuation):
                continuation = continuation(doc)
            prompt = self._prompt(len(visuals), context)
            prompt_ids = self._inputs([prompt], [visuals])["input_ids"]
            inputs = self._inputs([prompt + str(continuation)], [visuals])
            target = inputs["input_ids"][0, prompt_ids.shape[1]:]  # (C,) the continuation's tokens
            if target.numel() == 0:
                raise InputError(f"{task} doc {doc_id}: the continuation {continuation!r} has no tokens")
            logits = self.pruned(**inputs).logits[0, -target.numel() - 1:-1].float()  # (C, V)
            logprobs = torch.log_softmax(logits, dim=-1)
            results.append((float(logprobs.gather(1, target[:, None]).sum()),
                            bool((logits.argmax(-1) == target).all())))
        return results


def _visuals(doc_to_visual: Any, doc: dict[str, Any], task: str, doc_id: int) -> list[Any]:
    visuals = doc_to_visual(doc) if callable(doc_to_visual) else []
    if any(isinstance(visual, str) for visual in visuals):
        raise InputError(f"{task} doc {doc_id}: zoprune's lmms-eval model takes images, not video files")
    return list(visuals)


def _load(pretrained: str | None, dtype: Any, attn_implementation: str | None, device_map: str,
          trust_remote_code: bool) -> tuple[Any, Any]:
    from zoprune.loading import from_pretrained

    if pretrained is None:
        from zoprune.shapes.model import default_model_path

        pretrained = str(default_model_path())
    return from_pretrained(pretrained, f"pretrained={pretrained!r}", attn_implementation, trust_remote_code,
                           dtype=dtype, device_map=device_map)
