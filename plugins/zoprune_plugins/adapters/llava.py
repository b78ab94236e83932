"""LLaVA-1.5 (``LlavaForConditionalGeneration``): CLIP vision tower, MLP projector, a fixed number of tokens per image.

The kept tokens go to the language model through transformers' own ``mm_encoder_outputs`` argument, together with
``input_ids`` from which the dropped tokens' placeholders are removed; every other token and the attention
mask are untouched, so with every token kept the model computes exactly what it computes unpruned.

Merged tokens (from a merging selector such as ``visionzip``) take placeholders of dropped tokens: the image keeps
``len(kept) + M`` placeholders and the model fills them in order with the kept tokens' embeddings followed by the
merged ones, so the merged tokens sit right after the image's kept tokens (VisionZip's layout). Placeholders are
all alike and the language model numbers positions after the pruning, so which placeholders stay does not matter.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling

from zoprune import ImageTokens, InputError, ModelAdapter, hookimpl
from zoprune_plugins.adapters.common import (TEXT_EMBEDDINGS, drop_columns, pad_token_id, placeholder_counts,
                                             require_input_ids, with_positions, with_text_embeddings)
from zoprune_plugins.adapters.llm_pruning import ImageColumns, inside_language_model
from zoprune_plugins.adapters.vision_attention import cls_attention, encoder_layers, mean_keys


class LlavaAdapter(ModelAdapter):
    """LLaVA-1.5 layout: N = (image_size / patch_size)^2 tokens per image, several images per prompt."""

    name = "llava"
    model_classes = ("LlavaForConditionalGeneration",)
    provides = frozenset({"cls_attention", "vision_keys", TEXT_EMBEDDINGS})
    places_merged = True
    position_modes = frozenset({"contiguous", "original"})

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
        attention = torch.stack(self._per_feature_layer(inputs, outputs, cls_attention)).mean(dim=0)  # (I, T)
        return attention[:, 1:] if self._feature_layers(inputs)[1] == "default" else attention

    def vision_keys(self, inputs: dict[str, Any], outputs: Any) -> torch.Tensor:
        """Keys of the layer(s) the features come from, mean over heads (concatenated over the layers when several
        are): (num_images, N, head_dim * layers), the model's dtype. VisionZip merges tokens by their cosine."""
        keys = torch.cat(self._per_feature_layer(inputs, outputs, mean_keys), dim=-1)  # (I, T, hd * layers)
        return keys[:, 1:] if self._feature_layers(inputs)[1] == "default" else keys

    def _per_feature_layer(self, inputs: dict[str, Any], outputs: Any,
                           compute: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """``compute(block, hidden state entering it)`` for the encoder block producing each feature layer."""
        layers, _ = self._feature_layers(inputs)
        blocks = encoder_layers(self._inner.vision_tower)
        out = []
        for layer in layers:
            index = layer % len(outputs.hidden_states)  # hidden_states[i] is the output of blocks[i - 1]
            if index == 0:
                raise InputError("[CLS] attention and keys need features from an encoder layer, not the embeddings")
            out.append(compute(blocks[index - 1], outputs.hidden_states[index - 1]))
        return out

    def signals(self, inputs: dict[str, Any], outputs: Any, extras: frozenset[str]) -> dict[str, torch.Tensor]:
        """The extras asked for, each (num_views, N, ...) in the order of ``pixel_values``."""
        compute = {"cls_attention": self.cls_attention, "vision_keys": self.vision_keys}
        return {name: compute[name](inputs, outputs) for name in extras if name in compute}

    def extract(self, inputs: dict[str, Any], projector: Callable[[torch.Tensor], torch.Tensor],
                dtype: torch.dtype, extras: frozenset[str] = frozenset()) -> list[ImageTokens]:
        input_ids = require_input_ids(inputs)
        pixel_values = inputs.get("pixel_values")
        placeholders = placeholder_counts(input_ids, self.image_token_id, "image", pixel_values is not None,
                                          "`pixel_values`")  # (B,)
        if pixel_values is None:
            return []
        outputs = self.vision_outputs(inputs)
        features = self.vision_features(inputs, outputs)  # (I, N, d_v) in the model's dtype
        signals = self.signals(inputs, outputs, extras)  # name -> (I, N, ...)
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
        return with_text_embeddings(self.model, inputs, images, dtype, extras)

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

    def pruned_inputs(self, inputs: dict[str, Any], images: list[ImageTokens], kept: list[torch.Tensor],
                      merged: list[torch.Tensor | None] | None = None,
                      positions: str = "contiguous") -> dict[str, Any]:
        inputs = with_positions(inputs, positions)  # "original": position_ids of the unpruned prompt, gathered below
        input_ids = inputs["input_ids"]  # (B, L)
        merged = merged if merged is not None else [None] * len(images)
        drop = torch.zeros_like(input_ids, dtype=torch.bool)
        features = []
        for tokens, indices, extra in zip(images, kept, merged):
            positions = image_positions(input_ids[tokens.sample], self.image_token_id, tokens.num_tokens,
                                        tokens.image)  # (N,)
            dropped = torch.ones(tokens.num_tokens, dtype=torch.bool, device=input_ids.device)
            dropped[indices.to(input_ids.device)] = False
            embeddings = tokens.model_embeddings[indices]  # (k, d_l)
            if extra is not None:  # M dropped placeholders stay for the merged tokens (see the module docstring)
                dropped[dropped.nonzero().squeeze(-1)[:extra.shape[0]]] = False
                embeddings = torch.cat([embeddings, extra.to(embeddings.device)])  # (k + M, d_l)
            drop[tokens.sample, positions[dropped]] = True
            features.append(embeddings)
        pruned = {key: value for key, value in inputs.items()
                  if key not in ("pixel_values", "image_sizes", "vision_feature_layer",
                                 "vision_feature_select_strategy")}
        pruned.update(drop_columns(inputs, drop, pad_id=pad_token_id(self.model)))
        pruned["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=features)}
        return pruned

    def inside_llm(self, inputs: dict[str, Any], layer: int,
                   select: Callable[[list[ImageTokens]], list[torch.Tensor]], dtype: torch.dtype) -> Any:
        """FastV's hook point on the Llama / Qwen2 language model (see ``llm_pruning.InsideLLM``). The tokens
        passed to ``select`` carry ``extras["llm_attention"]`` (attention of the prompt's last token in layer
        ``layer - 1``, mean over heads) and ``extras["llm_attention_text"]`` (the same, averaged over the prompt's
        text tokens)."""
        input_ids = require_input_ids(inputs)
        images, always, never = self.llm_columns(inputs, input_ids)
        return inside_language_model(self._inner.language_model, inputs, input_ids, layer, images, select, dtype,
                                     always=always, never=never)

    def llm_columns(self, inputs: dict[str, Any], input_ids: torch.Tensor
                    ) -> tuple[list[ImageColumns], torch.Tensor | None, torch.Tensor | None]:
        """Where each image's tokens sit in the language model's input, found from the placeholders alone (no
        vision tower), and the visual columns no entry covers: (B, L) bool of those always kept and of those
        always dropped (None: there are none)."""
        n = tokens_per_image(self.model, self._feature_layers(inputs)[1])
        num_images = int(inputs["pixel_values"].shape[0]) if inputs.get("pixel_values") is not None else 0
        placeholders = placeholder_counts(input_ids, self.image_token_id, "image", num_images > 0, "`pixel_values`")
        images = [ImageColumns(sample, image, image_positions(input_ids[sample], self.image_token_id, n, image))
                  for sample, count in enumerate(self._images_per_sample(placeholders, n, num_images))
                  for image in range(count)]
        return images, None, None


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
