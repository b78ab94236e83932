"""Every LLaVA-style model in transformers through one adapter: the families whose ``get_image_features`` runs a
vision tower and then a projector module, whose prompts hold one placeholder (``config.image_token_id``) per
visual token, and whose forward takes ``mm_encoder_outputs`` in place of the pixels.

**Tokens.** The adapter runs the model's own ``get_image_features`` once, with a hook at the projector: the
projector's input gives ``ImageTokens.features`` (one row per visual token) and ``get_image_features``' output is
``model_embeddings``, bit-identical to what the unpruned forward puts at the placeholders. Where the projector first
regroups tokens (a pixel shuffle, Mistral3's patch merger) the features are taken after that step and the projector
handed to scorers is the rest of it (:class:`ProjectorTail`), so it maps features to embeddings token by token.
Where each family keeps its projector is a small table (``_PROJECTORS``), with a fallback over the usual attribute
names; a family whose projector cannot be split that way (Gemma 3's pooling) is a small subclass.

**Entries.** One entry per image; when the projector sees an image as several tiles (InternVL's, Idefics3's and
SmolVLM's crops) one entry per tile, the image's budget shared evenly between its tiles (``common.shared_budgets``).
Idefics3 and SmolVLM hand back one output per prompt rather than per image, so there the tiles of all a prompt's
images share one budget. Text tokens around and between the placeholders (row and column separators, image-break
and image-end tokens, begin/end-of-image tokens) are text: they always stay.

**Pruning.** Dropped tokens' placeholders leave ``input_ids`` and every per-token tensor (``attention_mask``,
``token_type_ids``, ...), the kept tokens' embeddings go to the stock model through ``mm_encoder_outputs``; with
every token kept the model computes exactly what it computes unpruned. Merged tokens (VisionZip) take the first
dropped placeholders of their image, after its kept tokens.

Families that need more than this (AnyRes packing with newline tokens, 3-D rotary positions, deepstack features)
are subclasses of their own adapters, not of this one.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from typing import Any, Callable, Iterator

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from zoprune import Budget, ImageTokens, ModelAdapter, UnsupportedModelError, hookimpl
from zoprune_plugins.adapters.common import (ViewTokens, VisualInput, assign_to_prompts, drop_columns, drop_mask,
                                             encoder_outputs, kept_per_input, number_in_prompt, pad_token_id,
                                             placeholder_columns, placeholder_counts, require_input_ids,
                                             shared_budgets, strip, with_positions,
                                             with_text_embeddings)
from zoprune_plugins.adapters.llava_next import append_merged

# config.model_type -> (projector path under the base model, the projector's token-regrouping steps that come before
# the per-token part: attributes of the projector, submodules or methods, made the identity in ProjectorTail)
_PROJECTORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "aya_vision": ("multi_modal_projector", ("pixel_shuffle",)),
    "cohere2_vision": ("multi_modal_projector", ("pixel_shuffle",)),
    "mistral3": ("multi_modal_projector", ("norm", "patch_merger")),
    "lighton_ocr": ("vision_projection", ("norm", "patch_merger")),
    "lfm2_vl": ("multi_modal_projector", ("pixel_unshuffle",)),
    "idefics3": ("connector.modality_projection", ()),
    "smolvlm": ("connector.modality_projection", ()),
    "idefics2": ("connector.modality_projection", ()),
}
# where the other families keep it, tried in order
_FALLBACK = ("multi_modal_projector", "mm_projector", "multimodal_projector", "projector", "aligner", "mlp1")


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


class ProjectorTail(torch.nn.Module):
    """A projector without its regrouping steps: the projector's own forward with ``steps`` (submodules or methods
    that regroup tokens, e.g. a pixel shuffle) made the identity, so it maps (..., d_v) regrouped features to
    (..., d_l) embeddings token by token, with the model's own weights and code."""

    def __init__(self, projector: torch.nn.Module, steps: tuple[str, ...]):
        super().__init__()
        self.projector = projector
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the projector's other arguments (Mistral3's image_sizes) only feed the steps made the identity
        params = list(inspect.signature(self.projector.forward).parameters.values())[1:]
        unused = [None] * sum(p.default is p.empty and p.kind == p.POSITIONAL_OR_KEYWORD for p in params)
        with _without(self.projector, self.steps):
            out = self.projector(x.unsqueeze(0) if x.dim() == 2 else x, *unused)  # (batch, N, d_v) expected
        return out.squeeze(0) if x.dim() == 2 else out


@contextlib.contextmanager
def _without(module: torch.nn.Module, steps: tuple[str, ...]) -> Iterator[None]:
    saved = {}
    for step in steps:
        if step in module._modules:
            saved[step] = module._modules[step]
            module._modules[step] = _Identity()
        else:  # a method: an instance attribute shadows it
            module.__dict__[step] = lambda x, *args, **kwargs: x
    try:
        yield
    finally:
        for step in steps:
            if step in saved:
                module._modules[step] = saved[step]
            else:
                module.__dict__.pop(step, None)


@contextlib.contextmanager
def _recording(module: torch.nn.Module, step: str | None) -> Iterator[list[torch.Tensor]]:
    """Records the projector's per-token input while ``get_image_features`` runs: the projector's input (``step``
    None) or the output of its regrouping ``step`` (a submodule or a method)."""
    seen: list[torch.Tensor] = []
    if step is None:  # the first argument, positional or by keyword
        handle = module.register_forward_pre_hook(
            lambda _, args, kwargs: seen.append(args[0] if args else next(iter(kwargs.values()))), with_kwargs=True)
    elif step in module._modules:
        handle = module._modules[step].register_forward_hook(lambda _, args, out: seen.append(out))
    else:
        method = getattr(module, step)

        def record(*args: Any, **kwargs: Any) -> torch.Tensor:
            out = method(*args, **kwargs)
            seen.append(out)
            return out

        module.__dict__[step] = record
        handle = None
    try:
        yield seen
    finally:
        if handle is not None:
            handle.remove()
        else:
            module.__dict__.pop(step, None)


def _attribute(root: torch.nn.Module, path: str) -> Any:
    for name in path.split("."):
        root = getattr(root, name, None)
        if root is None:
            return None
    return root


class GenericAdapter(ModelAdapter):
    """LLaVA-style families: ``get_image_features`` (vision tower, projector), one placeholder per visual token,
    ``mm_encoder_outputs`` (see the module docstring)."""

    name = "generic"
    #: the classes tested for exactness with every token kept (any other class of that shape is handled as well)
    model_classes = ("VipLlavaForConditionalGeneration", "AyaVisionForConditionalGeneration",
                     "Mistral3ForConditionalGeneration", "PaliGemmaForConditionalGeneration",
                     "InternVLForConditionalGeneration", "Idefics3ForConditionalGeneration",
                     "SmolVLMForConditionalGeneration", "Cohere2VisionForConditionalGeneration",
                     "VideoLlavaForConditionalGeneration", "LightOnOcrForConditionalGeneration",
                     "QianfanOCRForConditionalGeneration", "Lfm2VlForConditionalGeneration",
                     "HyperCLOVAXVisionV2ForConditionalGeneration", "JanusForConditionalGeneration",
                     "DeepseekVLForConditionalGeneration")
    provides = frozenset({"text_embeddings"})
    places_merged = True
    model_classes_only = False
    why_no_resize = ("does not know how each family's processor lays out pixels (some take any resolution, others "
                     "a fixed one), so it cannot shrink images")

    @property
    def position_modes(self) -> frozenset[str]:  # type: ignore[override]
        """``original`` where the model's forward takes ``position_ids`` (1-D positions, which ``generate``
        continues from the last given one)."""
        takes = "position_ids" in inspect.signature(self.model.forward).parameters
        return frozenset({"contiguous", "original"} if takes else {"contiguous"})

    @property
    def _inner(self) -> torch.nn.Module:
        return self.model.model

    @classmethod
    def missing(cls, model: torch.nn.Module) -> str | None:
        """What ``model`` lacks for this adapter (None: nothing)."""
        inner = getattr(model, "model", None)
        if inner is None or not callable(getattr(inner, "get_image_features", None)):
            return "no `model.get_image_features` (a vision tower followed by a projector)"
        if _token_id(model.config) is None:
            return "no `config.image_token_id` (the placeholder token of a visual token)"
        if "mm_encoder_outputs" not in inspect.signature(inner.forward).parameters:
            return "its forward takes no `mm_encoder_outputs` (the vision features computed beforehand)"
        if cls._find_projector(model) is None:
            known = _PROJECTORS.get(getattr(model.config, "model_type", ""))
            tried = ", ".join(dict.fromkeys(([known[0]] if known else []) + list(_FALLBACK)))
            return f"no projector module (looked for {tried})"
        return None

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        return cls.missing(model) is None

    @classmethod
    def _find_projector(cls, model: torch.nn.Module) -> tuple[torch.nn.Module, tuple[str, ...]] | None:
        known = _PROJECTORS.get(getattr(model.config, "model_type", ""))
        for path, steps in ([known] if known else []) + [(path, ()) for path in _FALLBACK]:
            module = _attribute(model.model, path)
            if isinstance(module, torch.nn.Module):
                return module, steps
        return None

    @property
    def image_token_id(self) -> int:
        return _token_id(self.model.config)

    def projector(self) -> torch.nn.Module:
        if not hasattr(self, "_tail"):
            module, steps = self._find_projector(self.model)
            self._tail = ProjectorTail(module, steps) if steps else module
        return self._tail

    def _feature_point(self) -> tuple[torch.nn.Module, str | None]:
        """The module whose per-token input the features are and, when it regroups tokens first, the last step
        that does (its output is the features)."""
        module, steps = self._find_projector(self.model)
        return module, (steps[-1] if steps else None)

    def vision_keys(self) -> tuple[str, ...]:
        """The inputs that belong to ``get_image_features`` (and leave the pruned call)."""
        names = [name for name, p in inspect.signature(self._inner.get_image_features).parameters.items()
                 if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        return tuple(dict.fromkeys(names + ["vision_feature_layer", "vision_feature_layers",
                                            "vision_feature_select_strategy"]))

    def image_outputs(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(the projector's per-token input, (..., d_v) as the model computed it; the embeddings the model puts at
        the placeholders, per output entry [(L_i, d_l)])."""
        kwargs = {key: inputs[key] for key in self.vision_keys() if inputs.get(key) is not None}
        module, step = self._feature_point()
        with _recording(module, step) as seen:
            outputs = self._inner.get_image_features(**kwargs, return_dict=True)
        pooled = outputs.pooler_output
        # the forward reads mm_encoder_outputs in the form get_image_features returns: a list, or one tensor
        self._pooled_as_list = isinstance(pooled, (list, tuple))
        embeddings = list(pooled) if self._pooled_as_list or pooled.dim() == 3 else [pooled]
        if len(seen) != 1:
            raise UnsupportedModelError(f"{type(self.model).__name__}: its projector ran {len(seen)} times for one "
                                        f"call of get_image_features; it needs its own adapter")
        # a prompt without images has an empty entry in the families that return one entry per prompt
        return seen[0], [e.reshape(-1, e.shape[-1]) for e in embeddings if e.numel()]

    def extract(self, inputs: dict[str, Any], projector: Callable[[torch.Tensor], torch.Tensor],
                dtype: torch.dtype, extras: frozenset[str] = frozenset()) -> list[ImageTokens]:
        input_ids = require_input_ids(inputs)
        pixels = inputs.get("pixel_values")
        counts = placeholder_counts(input_ids, self.image_token_id, "image", pixels is not None,
                                    "`pixel_values`")  # (B,)
        if pixels is None:
            return []
        features, embeddings = self.image_outputs(inputs)
        rows = features.reshape(-1, features.shape[-1])  # (T, d_v)
        lengths = [e.shape[0] for e in embeddings]
        if rows.shape[0] != sum(lengths):
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: its projector sees {rows.shape[0]} tokens but the model places "
                f"{sum(lengths)}; the generic adapter needs one projector row per placeholder (this family needs "
                f"its own adapter)")
        tile = features.shape[-2] if features.dim() == 3 else None  # tokens per tile as the projector sees them
        owners = assign_to_prompts(counts, lengths, "image")
        columns = placeholder_columns(input_ids, self.image_token_id, owners, lengths)
        scoring = rows.to(dtype)
        found: list[tuple[int, int, ViewTokens]] = []
        start = 0
        for i, model_embeddings in enumerate(embeddings):
            n = model_embeddings.shape[0]
            source = VisualInput(kind="image", index=i, sample=owners[i], columns=columns[i],
                                 embeddings=model_embeddings,
                                 always=torch.zeros(n, dtype=torch.bool, device=model_embeddings.device))
            x_all = scoring[start:start + n]
            z_all = model_embeddings.to(dtype) if model_embeddings.dtype == dtype else projector(x_all)
            start += n
            size = tile if tile and n % tile == 0 else n
            for v in range(n // size):
                part = slice(v * size, (v + 1) * size)
                side = math.isqrt(size)
                found.append((owners[i], int(columns[i][0]), ViewTokens(
                    features=x_all[part], embeddings=z_all[part], model_embeddings=model_embeddings[part],
                    projector=projector, sample=owners[i], image=0,
                    grid=(side, side) if side * side == size else None, view=v, source=source,
                    packed=torch.arange(v * size, (v + 1) * size, device=columns[i].device))))
        return with_text_embeddings(self.model, inputs, number_in_prompt(found), dtype, extras)

    def token_budgets(self, budget: Budget, images: list[ImageTokens]) -> list[int]:
        return shared_budgets(budget, images, split=True)

    def pruned_inputs(self, inputs: dict[str, Any], images: list[ImageTokens], kept: list[torch.Tensor],
                      merged: list[torch.Tensor | None] | None = None,
                      positions: str = "contiguous") -> dict[str, Any]:
        inputs = with_positions(inputs, positions)  # "original": position_ids of the unpruned prompt, gathered below
        input_ids = inputs["input_ids"]
        keys = self.vision_keys()
        per_input = kept_per_input(images, kept)
        outputs = encoder_outputs(per_input)
        if merged is not None and any(m is not None for m in merged):
            per_input, outputs = append_merged(per_input, outputs, images, merged)
        per_token = {key: value for key, value in inputs.items()
                     if isinstance(value, torch.Tensor) and value.shape[:2] == input_ids.shape and key not in keys}
        pruned = strip(inputs, keys)
        pruned.update(drop_columns(per_token, drop_mask(input_ids, per_input), pad_id=pad_token_id(self.model)))
        pruned["mm_encoder_outputs"] = self.encoder_outputs(outputs)
        return pruned

    def encoder_outputs(self, outputs: dict[str, BaseModelOutputWithPooling]) -> dict[str, BaseModelOutputWithPooling]:
        """The kept embeddings in the form the model's forward reads (the form ``get_image_features`` returned): a
        list per input, or all of them as one (1, K, d_l) tensor (the model scatters them in order either way)."""
        if getattr(self, "_pooled_as_list", True):
            return outputs
        return {kind: BaseModelOutputWithPooling(pooler_output=torch.cat(list(out.pooler_output))[None])
                for kind, out in outputs.items()}


class Gemma3Adapter(GenericAdapter):
    """Gemma 3: the projector average-pools the tower's patches to ``mm_tokens_per_image`` tokens, then normalises
    and projects each. A token's features are its pooled patch features (the norm's input); the projector handed to
    scorers is the norm and the projection.

    Gemma 3's language model attends bidirectionally among the tokens of one image (``token_type_ids`` == 1 marks
    them; each consecutive run is one image). The kept tokens of an image stay one consecutive run between its
    begin- and end-of-image tokens, so they still attend to each other bidirectionally and to nothing they did not
    see before; the dropped ones are simply gone from the block.
    """

    name = "gemma3"
    model_classes = ("Gemma3ForConditionalGeneration",)
    model_classes_only = True

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        return type(model).__name__ in cls.model_classes and super().supports(model)

    def projector(self) -> torch.nn.Module:
        if not hasattr(self, "_tail"):
            self._tail = _Gemma3Projection(self._inner.multi_modal_projector)
        return self._tail

    def _feature_point(self) -> tuple[torch.nn.Module, str | None]:
        return self._inner.multi_modal_projector.mm_soft_emb_norm, None


class _Gemma3Projection(torch.nn.Module):
    """Gemma 3's projector after the pooling: (..., d_v) pooled features -> (..., d_l)."""

    def __init__(self, projector: torch.nn.Module):
        super().__init__()
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.projector.mm_soft_emb_norm(x)
        return torch.matmul(normed, self.projector.mm_input_projection_weight).type_as(x)


def _token_id(config: Any) -> int | None:
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


@hookimpl
def register_adapters(register):
    register(GenericAdapter)
    register(Gemma3Adapter)
