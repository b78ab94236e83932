"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP vision tower, MLP projector, a fixed number of tokens per image.

The kept tokens go to the language model through transformers' own ``mm_encoder_outputs`` argument, together with
``input_ids`` from which the dropped tokens' placeholders are removed; every other token and the attention
mask are untouched, so with every token kept the model computes exactly what it computes unpruned.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from zoprune import ImageTokens, InputError, ModelAdapter, hookimpl
from zoprune_plugins.adapters.common import drop_columns, pad_token_id, require_input_ids
from zoprune_plugins.adapters.llm_pruning import ImageColumns, InsideLLM
from zoprune_plugins.adapters.vision_attention import cls_attention, encoder_layers


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 layout: N = (image_size / patch_size)^2 tokens per image, several images per prompt."""

    name = "llava"
    model_classes = ("LlavaForConditionalGeneration",)
    provides = frozenset({"cls_attention"})

    @property
    def _inner(self):
        return self.model.model  # LlavaModel: vision_tower, multi_modal_projector, language_model

    def projector(self) -> torch.nn.Module:
        return self._inner.multi_modal_projector

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    def _feature_layers(self, inputs: dict[str, Any]) -> tuple[list[int], str]:
        config = self.model.config
        layer = inputs.get("vision_feature_layer")
        layer = config.vision_feature_layer if layer is None else layer  # 0 is a valid layer, not "unset"
        strategy = inputs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
        return ([layer] if isinstance(layer, int) else list(layer)), strategy

    def vision_outputs(self, inputs: dict[str, Any]) -> Any:
        """The vision tower's output on ``pixel_values``, with every hidden state."""
        return self._inner.vision_tower(inputs["pixel_values"], output_hidden_states=True, return_dict=True)

    def vision_features(self, inputs: dict[str, Any], outputs: Any = None) -> torch.Tensor:
        """The projector's input for every image, (num_images, N, d_v), selected as ``get_image_features`` does."""
        outputs = outputs if outputs is not None else self.vision_outputs(inputs)
        layers, strategy = self._feature_layers(inputs)
        states = [outputs.hidden_states[i] for i in layers]
        if strategy == "default":  # drop [CLS]
            states = [s[:, 1:] for s in states]
        return torch.cat(states, dim=-1) if len(states) > 1 else states[0]

    def cls_attention(self, inputs: dict[str, Any], outputs: Any) -> torch.Tensor:
        """Attention of [CLS] to each visual token in the layer(s) the features come from, mean over heads (and
        over the layers when several are concatenated): (num_images, N), float32.

        Computed from the hidden state entering that layer, so it is the row eager attention would return, with
        the model left on its own attention implementation.
        """
        layers, strategy = self._feature_layers(inputs)
        blocks = encoder_layers(self._inner.vision_tower)
        rows = []
        for layer in layers:
            index = layer % len(outputs.hidden_states)  # hidden_states[i] is the output of blocks[i - 1]
            if index == 0:
                raise InputError("[CLS] attention needs features from an encoder layer, not the embeddings")
            rows.append(cls_attention(blocks[index - 1], outputs.hidden_states[index - 1]))  # (I, T)
        attention = torch.stack(rows).mean(dim=0)
        return attention[:, 1:] if strategy == "default" else attention

    def extract(self, inputs: dict[str, Any], projector: Callable[[torch.Tensor], torch.Tensor],
                dtype: torch.dtype, extras: frozenset[str] = frozenset()) -> list[ImageTokens]:
        input_ids = require_input_ids(inputs)
        pixel_values = inputs.get("pixel_values")
        placeholders = (input_ids == self.image_token_id).sum(dim=1)  # (B,)
        if pixel_values is None:
            if int(placeholders.sum()):
                raise InputError(f"the prompts hold {int(placeholders.sum())} image placeholder tokens "
                                 f"(id {self.image_token_id}) but no `pixel_values` were given")
            return []
        outputs = self.vision_outputs(inputs)
        features = self.vision_features(inputs, outputs)  # (I, N, d_v) in the model's dtype
        signals = {"cls_attention": self.cls_attention(inputs, outputs)} if "cls_attention" in extras else {}
        model_embeddings = self.projector()(features)  # (I, N, d_l), exactly as the unpruned forward computes them
        num_images, n = features.shape[:2]
        per_sample = self._images_per_sample(placeholders, n, num_images)
        side = int(math.isqrt(n))
        grid = (side, side) if side * side == n else None
        scoring_features = features.to(dtype)
        scoring_embeddings = model_embeddings.to(dtype) if model_embeddings.dtype == dtype else projector(
            scoring_features)
        images = []
        index = 0
        for sample, count in enumerate(per_sample):
            for image in range(count):
                images.append(ImageTokens(
                    features=scoring_features[index], embeddings=scoring_embeddings[index],
                    model_embeddings=model_embeddings[index], projector=projector, sample=sample, image=image,
                    grid=grid, extras={name: value[index] for name, value in signals.items()},
                ))
                index += 1
        return images

    def _images_per_sample(self, placeholders: torch.Tensor, n: int, num_images: int) -> list[int]:
        counts = []
        for sample, count in enumerate(placeholders.tolist()):
            if count % n:
                raise InputError(f"prompt {sample} has {count} image placeholder tokens, not a multiple of the "
                                 f"{n} tokens each image has; build inputs with the model's processor")
            counts.append(count // n)
        if sum(counts) != num_images:
            raise InputError(f"the prompts have placeholders for {sum(counts)} images but `pixel_values` holds "
                             f"{num_images}")
        return counts

    def pruned_inputs(self, inputs: dict[str, Any], images: list[ImageTokens],
                      kept: list[torch.Tensor]) -> dict[str, Any]:
        input_ids = inputs["input_ids"]  # (B, L)
        drop = torch.zeros_like(input_ids, dtype=torch.bool)
        for tokens, indices in zip(images, kept):
            positions = image_positions(input_ids[tokens.sample], self.image_token_id, tokens.num_tokens,
                                        tokens.image)  # (N,)
            dropped = torch.ones(tokens.num_tokens, dtype=torch.bool, device=input_ids.device)
            dropped[indices.to(input_ids.device)] = False
            drop[tokens.sample, positions[dropped]] = True
        pruned = {key: value for key, value in inputs.items()
                  if key not in ("pixel_values", "image_sizes", "vision_feature_layer",
                                 "vision_feature_select_strategy")}
        pruned.update(drop_columns(inputs, drop, pad_id=pad_token_id(self.model)))
        pruned["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(
            pooler_output=[t.model_embeddings[k] for t, k in zip(images, kept)])}
        return pruned

    def inside_llm(self, inputs: dict[str, Any], layer: int,
                   select: Callable[[list[ImageTokens]], list[torch.Tensor]], dtype: torch.dtype) -> Any:
        """FastV's hook point on the Llama / Qwen2 language model (see ``llm_pruning.InsideLLM``). The tokens
        passed to ``select`` carry ``extras["llm_attention"]`` (attention of the prompt's last token in layer
        ``layer - 1``, mean over heads) and ``extras["llm_attention_text"]`` (the same, averaged over the prompt's
        text tokens)."""
        if type(self.model).__name__ not in LlavaAdapter.model_classes:  # subclasses (LLaVA-NeXT): other layouts
            return super().inside_llm(inputs, layer, select, dtype)
        input_ids = require_input_ids(inputs)
        placeholders = (input_ids == self.image_token_id).sum(dim=1)
        n = tokens_per_image(self.model, self._feature_layers(inputs)[1])
        num_images = int(inputs["pixel_values"].shape[0]) if inputs.get("pixel_values") is not None else 0
        if num_images == 0 and int(placeholders.sum()):
            raise InputError(f"the prompts hold {int(placeholders.sum())} image placeholder tokens "
                             f"(id {self.image_token_id}) but no `pixel_values` were given")
        images = [ImageColumns(sample, image, image_positions(input_ids[sample], self.image_token_id, n, image))
                  for sample, count in enumerate(self._images_per_sample(placeholders, n, num_images))
                  for image in range(count)]
        if not images:  # text only: nothing to prune
            return contextlib.nullcontext()
        language_model = self._inner.language_model
        return InsideLLM(language_model.layers, layer, images, inputs.get("attention_mask"), input_ids.shape[1],
                         input_ids.shape[0], select, dtype, language_model.config._attn_implementation)


def tokens_per_image(model: torch.nn.Module, strategy: str) -> int:
    """N of a LLaVA-1.5 model: patches per image, plus [CLS] with the "full" feature strategy."""
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2 + (1 if strategy == "full" else 0)


def image_positions(row: torch.Tensor, image_token_id: int, n: int, image: int) -> torch.Tensor:
    """Positions in one prompt of the ``image``-th image's N placeholders, (N,)."""
    return (row == image_token_id).nonzero().squeeze(-1)[image * n:(image + 1) * n]


@hookimpl
def register_adapters(register):
    register(LlavaAdapter)
