"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): AnyRes tiling, unpadding and ``image_newline`` tokens.

An image becomes a base view (the whole image at the encoder's resolution, n = (image_size / patch_size)^2 tokens)
plus crops of the best-fitting grid pinpoint; the crops' tokens are stitched into one high-resolution grid, the rows
and columns that only cover padding are removed ("unpadding"), and a learned ``image_newline`` embedding ends each
row of that grid. The model packs per image: ``[base (n)] + [row_1, newline, row_2, newline, ...]``.

Scored tokens are the base and crop tokens: their projector input is the vision feature before the MLP projector.
Newline tokens have no projector input, so no scorer can score them; the ``newlines`` option decides what happens
to them (``keep``: always kept and not counted in the budget, as the ZOO-Prune authors do; ``drop``: always
removed, with their placeholders). Either way the language model's input stays consistent: every placeholder left
in ``input_ids`` receives exactly the embedding the unpruned model would put there.

Budget policies (``adapter: {name: llava_next, budget_policy: ...}``):

* ``global`` (default): one budget over all of an image's scored tokens (the paper's 2880 -> 640/320/160); one
  ImageTokens per image, selection across views.
* ``per_tile``: one ImageTokens per view (the base, then each crop in raster order), the image's budget split
  evenly between them (a view with fewer tokens than its share keeps all, the rest goes to the others; at least one
  token per view). This is the authors' choice for LLaVA-NeXT: selection and score normalisation run per view.

Merged tokens (a merging selector such as ``visionzip``) go at the end of their image's run of placeholders, after
all its kept tokens and newlines, in entry order (under ``per_tile``: the base view's, then each crop's).

Pruning inside the language model (FastV, ``inside_llm``) uses the same entries and policies, found from
``image_sizes`` and the placeholders without running the vision tower; newline tokens are kept or dropped by the
``newlines`` option there too.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal

import torch
from pydantic import Field
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from zoprune import Budget, ComponentConfig, ImageTokens, InputError, PrunedEmbedding, UnsupportedModelError, hookimpl
from zoprune_plugins.adapters.common import (ViewTokens, VisualInput, assign_to_prompts, drop_columns,
                                             drop_mask, encoder_outputs, kept_per_input, pad_token_id,
                                             placeholder_columns, placeholder_counts, pruned_per_input,
                                             require_input_ids, shared_budgets, strip, with_positions,
                                             with_text_embeddings)
from zoprune_plugins.adapters.llava import LlavaAdapter, tokens_per_image
from zoprune_plugins.adapters.llm_pruning import ImageColumns

_VISION_KEYS = ("pixel_values", "image_sizes", "vision_feature_layer", "vision_feature_select_strategy")


class LlavaNextAdapterConfig(ComponentConfig):
    """How an image's budget is applied and what happens to newline tokens."""

    budget_policy: Literal["global", "per_tile"] = Field(
        default="global", description="'global': one budget over all of an image's tokens; 'per_tile': the budget "
        "split evenly between the base view and each crop, selecting within each view")
    newlines: Literal["keep", "drop"] = Field(
        default="keep", description="'keep': newline tokens always stay and do not count against the budget; "
        "'drop': they are removed")


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT layout: base view + AnyRes crops, unpadded, newline-terminated rows; several images per prompt."""

    name = "llava_next"
    Config = LlavaNextAdapterConfig
    model_classes = ("LlavaNextForConditionalGeneration",)

    def extract(self, inputs: dict[str, Any], projector: Callable[[torch.Tensor], torch.Tensor],
                dtype: torch.dtype, extras: frozenset[str] = frozenset()) -> list[ImageTokens]:
        input_ids = require_input_ids(inputs)
        counts = (input_ids == self.image_token_id).sum(dim=1)  # (B,)
        pixel_values = inputs.get("pixel_values")
        if pixel_values is None:
            if int(counts.sum()):
                raise InputError(f"the prompts hold {int(counts.sum())} image placeholder tokens "
                                 f"(id {self.image_token_id}) but no `pixel_values` were given")
            return []
        image_sizes = inputs.get("image_sizes")
        if image_sizes is None:
            raise InputError("LLaVA-NeXT inputs need `image_sizes` next to `pixel_values` (the processor returns it)")
        config = self.model.config
        views = self._views(image_sizes)  # base + crops, per image
        if pixel_values.dim() == 5:  # (I, max views, C, H, W), zero-padded per image: as get_image_features does
            pixel_values = torch.cat([pv[:v] for pv, v in zip(pixel_values, views)], dim=0)
        flat_inputs = {**inputs, "pixel_values": pixel_values}
        outputs = self.vision_outputs(flat_inputs)
        features = self.vision_features(flat_inputs, outputs)  # (P, n, d_v), P = sum(views)
        signals = {name: value.flatten(0, 1) for name, value in self.signals(flat_inputs, outputs, extras).items()}
        projected = self.projector()(features)  # (P, n, d_l), the same call on the same tensor as the model's
        n = features.shape[1]
        strategy = inputs.get("vision_feature_select_strategy") or config.vision_feature_select_strategy
        packed = self._pack(list(torch.split(projected, views)), image_sizes, strategy,
                            self._inner.image_newline)  # [(L_i, d_l)]
        sources = self._sources(views, n, image_sizes, strategy, features.device)
        lengths = [p.shape[0] for p in packed]
        owners = assign_to_prompts(counts, lengths, "image")
        columns = placeholder_columns(input_ids, self.image_token_id, owners, lengths)
        flat_features = features.reshape(-1, features.shape[-1])  # (P*n, d_v)
        flat_features_scoring = flat_features.to(dtype)
        same_dtype = projected.dtype == dtype
        images: list[ImageTokens] = []
        first_view = 0
        image_in_prompt: dict[int, int] = {}
        for i, (source_index, embeddings) in enumerate(zip(sources, packed)):
            source_index = source_index.squeeze(-1)  # (L_i,)
            newline = source_index < 0
            visual = VisualInput(kind="image", index=i, sample=owners[i], columns=columns[i], embeddings=embeddings,
                                 always=newline if self.config.newlines == "keep" else torch.zeros_like(newline))
            view_of = torch.where(newline, -1, source_index // n - first_view)  # (L_i,): 0 base, c crop c, -1 newline
            row_of = torch.cumsum(newline.long(), 0)  # (L_i,): row of the stitched grid (for crop tokens)
            image = image_in_prompt.get(owners[i], 0)
            image_in_prompt[owners[i]] = image + 1
            groups = [~newline] if self.config.budget_policy == "global" or views[i] == 1 else \
                [view_of == v for v in range(views[i])]
            for v, members in enumerate(groups):
                positions = members.nonzero().squeeze(-1)  # (N,) among the L_i
                if positions.numel() == 0:  # a crop that covers only padding keeps no tokens at all
                    continue
                x = flat_features_scoring[source_index[positions]]
                model_embeddings = embeddings[positions]
                images.append(ViewTokens(
                    features=x, embeddings=model_embeddings.to(dtype) if same_dtype else projector(x),
                    model_embeddings=model_embeddings, projector=projector, sample=owners[i], image=image,
                    grid=_grid(positions, view_of, row_of, n, len(groups) > 1 or views[i] == 1),
                    view=v if len(groups) > 1 else 0, source=visual, packed=positions,
                    extras={name: value[source_index[positions]] for name, value in signals.items()},
                ))
            first_view += views[i]
        return with_text_embeddings(self.model, inputs, images, dtype, extras)

    def _views(self, image_sizes: torch.Tensor) -> list[int]:
        """Views (base + crops) of each image, from its original size."""
        config = self.model.config
        return [image_size_to_num_patches(size, config.image_grid_pinpoints, config.vision_config.image_size)
                for size in image_sizes]

    def _sources(self, views: list[int], n: int, image_sizes: torch.Tensor, strategy: str,
                 device: torch.device) -> list[torch.Tensor]:
        """Per image, (L_i, 1) long: the flat index (view * n + token) each packed token comes from, -1 for newline
        tokens. It is the model's own packing applied to token indices, so it cannot drift from the model's."""
        index = torch.arange(sum(views) * n, device=device).view(-1, n, 1)
        return self._pack(list(torch.split(index, views)), image_sizes, strategy, torch.tensor([-1], device=device))

    def _tokens_per_view(self, strategy: str) -> int:
        """n, the tokens of one view (a CLIP tower's patches, plus [CLS] with the "full" strategy)."""
        return tokens_per_image(self.model, strategy)

    def _pack(self, views: list[torch.Tensor], image_sizes: torch.Tensor, strategy: str,
              newline: torch.Tensor) -> list[torch.Tensor]:
        """The model's own packing of each image's views [(V_i, n, d)] into [(L_i, d)]."""
        packed, _ = self._inner.pack_image_features(views, image_sizes, strategy, image_newline=newline)
        return packed

    def token_budgets(self, budget: Budget, images: list[ImageTokens]) -> list[int]:
        return shared_budgets(budget, images, split=self.config.budget_policy == "per_tile")

    def pruned_inputs(self, inputs: dict[str, Any], images: list[ImageTokens], kept: list[torch.Tensor],
                      merged: list[torch.Tensor | None] | None = None,
                      positions: str = "contiguous") -> dict[str, Any]:
        inputs = with_positions(inputs, positions)  # "original": position_ids of the unpruned prompt, gathered below
        per_input = kept_per_input(images, kept)
        input_ids = inputs["input_ids"]
        per_token = {key: value for key, value in inputs.items()
                     if isinstance(value, torch.Tensor) and value.shape[:2] == input_ids.shape
                     and key not in _VISION_KEYS}
        pruned = strip(inputs, _VISION_KEYS)
        outputs = encoder_outputs(per_input)
        if merged is not None and any(m is not None for m in merged):
            per_input, outputs = append_merged(per_input, outputs, images, merged)
        pruned.update(drop_columns(per_token, drop_mask(input_ids, per_input), pad_id=pad_token_id(self.model)))
        pruned["mm_encoder_outputs"] = outputs
        return pruned

    def pruned_embeddings(self, images: list[ImageTokens], kept: list[torch.Tensor],
                          merged: list[torch.Tensor | None] | None = None) -> list[PrunedEmbedding]:
        return pruned_per_input(images, kept, merged)

    def llm_columns(self, inputs: dict[str, Any], input_ids: torch.Tensor
                    ) -> tuple[list[ImageColumns], torch.Tensor | None, torch.Tensor | None]:
        image_sizes = inputs.get("image_sizes")
        given = inputs.get("pixel_values") is not None and image_sizes is not None
        counts = placeholder_counts(input_ids, self.image_token_id, "image", given,
                                    "`pixel_values` and `image_sizes`")  # (B,)
        if not given:
            return [], None, None
        strategy = inputs.get("vision_feature_select_strategy") or self.model.config.vision_feature_select_strategy
        n = self._tokens_per_view(strategy)
        views = self._views(image_sizes)
        sources = [s.squeeze(-1) for s in self._sources(views, n, image_sizes, strategy, input_ids.device)]
        lengths = [s.shape[0] for s in sources]
        owners = assign_to_prompts(counts, lengths, "image")
        columns = placeholder_columns(input_ids, self.image_token_id, owners, lengths)
        newlines = torch.zeros_like(input_ids, dtype=torch.bool)  # (B, L)
        entries: list[ImageColumns] = []
        image_in_prompt: dict[int, int] = {}
        first_view = 0
        for i, (source, cols) in enumerate(zip(sources, columns)):
            whole = object()  # the image's views share its budget under per_tile (token_budgets groups by it)
            newline = source < 0  # (L_i,)
            newlines[owners[i], cols[newline]] = True
            image = image_in_prompt.get(owners[i], 0)
            image_in_prompt[owners[i]] = image + 1
            view_of = torch.where(newline, -1, source // n - first_view)
            first_view += views[i]
            groups = [~newline] if self.config.budget_policy == "global" or views[i] == 1 else \
                [view_of == v for v in range(views[i])]
            for v, members in enumerate(groups):
                if bool(members.any()):  # a crop that covers only padding has no tokens at all
                    entries.append(ImageColumns(owners[i], image, cols[members], source=whole, view=v))
        keep = self.config.newlines == "keep"
        return entries, (newlines if keep else None), (None if keep else newlines)


def _grid(positions: torch.Tensor, view_of: torch.Tensor, row_of: torch.Tensor, n: int,
          single_view: bool) -> tuple[int, int] | None:
    """(rows, cols) of one view's tokens when they form a full rectangle, else None (``global`` over several
    views). The base view is the encoder's square grid; an unpadded crop is a rectangle of the stitched grid."""
    if not single_view:
        return None
    count = positions.numel()
    if int(view_of[positions[0]]) == 0:
        side = math.isqrt(n)
        return (side, side) if side * side == count else None
    rows = int(torch.unique(row_of[positions]).numel())
    return (rows, count // rows) if count % rows == 0 else None


def append_merged(per_input: list[tuple[VisualInput, torch.Tensor]], outputs: dict[str, Any],
                  images: list[ImageTokens], merged: list[torch.Tensor | None]) -> tuple[list, dict[str, Any]]:
    """Place each entry's merged tokens (M, d_l) at the end of its input's embeddings and keep as many more of its
    placeholders (the first dropped ones: placeholders are alike and positions are renumbered after pruning)."""
    extra: dict[int, list[torch.Tensor]] = {}
    for tokens, tokens_merged in zip(images, merged):
        if tokens_merged is not None:
            extra.setdefault(id(tokens.source), []).append(tokens_merged)
    placed = []
    embeddings = list(outputs["image"].pooler_output)  # per input, in the order of per_input
    for i, (source, keep) in enumerate(per_input):
        if id(source) in extra:
            added = torch.cat(extra[id(source)])  # (M, d_l)
            keep = keep.clone()
            keep[(~keep).nonzero().squeeze(-1)[:added.shape[0]]] = True
            embeddings[i] = torch.cat([embeddings[i], added.to(embeddings[i].device)])
        placed.append((source, keep))
    return placed, {**outputs, "image": BaseModelOutputWithPooling(pooler_output=embeddings)}


class LlavaNextVideoAdapter(LlavaNextAdapter):
    """LLaVA-NeXT-Video: LLaVA-NeXT's images (pruned as above); videos (``pixel_values_videos``) go to the model
    unpruned, which computes their features itself."""

    name = "llava_next_video"
    model_classes = ("LlavaNextVideoForConditionalGeneration",)


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision: LLaVA-NeXT's AnyRes images (base view, unpadded crops, newline tokens; a single-view image
    gets one newline at its end), with the budget policies above; videos go to the model unpruned.

    Two cases are refused rather than approximated: an image whose unpadded grid exceeds ``vision_aspect_ratio``
    (``anyres_max_N``) is bilinearly shrunk after the projector, so its placed tokens are mixtures of projector
    outputs; and prompts with several images (``batch_num_images`` > 1), whose images the model reduces to their
    base view.
    """

    name = "llava_onevision"
    model_classes = ("LlavaOnevisionForConditionalGeneration",)
    provides = frozenset({"text_embeddings"})  # a SigLIP tower has no [CLS] token, so no [CLS] attention

    def _check(self, inputs: dict[str, Any]) -> None:
        counts = inputs.get("batch_num_images")
        if counts is not None and any(int(c) > 1 for c in counts):
            raise UnsupportedModelError("LLaVA-OneVision prompts with several images (batch_num_images > 1) are "
                                        "not supported yet; give one image per prompt")

    def extract(self, inputs: dict[str, Any], projector: Callable[[torch.Tensor], torch.Tensor],
                dtype: torch.dtype, extras: frozenset[str] = frozenset()) -> list[ImageTokens]:
        self._check(inputs)
        return super().extract(inputs, projector, dtype, extras)

    def llm_columns(self, inputs: dict[str, Any], input_ids: torch.Tensor):
        self._check(inputs)
        return super().llm_columns(inputs, input_ids)

    def inside_llm(self, inputs: dict[str, Any], layer: int,
                   select: Callable[[list[ImageTokens]], list[torch.Tensor]], dtype: torch.dtype) -> Any:
        """Not available yet: LLaVA-NeXT's hook point, run on this model with every token kept, does not reproduce
        its logits (the cause is not found yet), so it is refused rather than approximated."""
        raise UnsupportedModelError(f"adapter {self.name!r} cannot prune inside the language model yet; use a "
                                    f"selector that prunes before it")

    def _tokens_per_view(self, strategy: str) -> int:
        """n of a SigLIP tower (no [CLS]): its patches, less the first with the "default" strategy (the model drops
        it as if it were [CLS])."""
        vision = self.model.config.vision_config
        return (vision.image_size // vision.patch_size) ** 2 - (1 if strategy == "default" else 0)

    def _pack(self, views: list[torch.Tensor], image_sizes: torch.Tensor, strategy: str,
              newline: torch.Tensor) -> list[torch.Tensor]:
        if not views[0].dtype.is_floating_point:  # token indices: the model would interpolate an oversized grid
            aspect = self.model.config.vision_aspect_ratio
            try:
                packed, _ = self._inner.pack_image_features(views, image_sizes, image_newline=newline,
                                                            vision_aspect_ratio=aspect)
            except (RuntimeError, NotImplementedError) as error:
                raise UnsupportedModelError(f"an image larger than LLaVA-OneVision's {aspect!r} grid is shrunk by "
                                            f"interpolation after the projector; pruning such images is not "
                                            f"supported yet ({error})") from error
            return packed
        packed, _ = self._inner.pack_image_features(views, image_sizes, image_newline=newline,
                                                    vision_aspect_ratio=self.model.config.vision_aspect_ratio)
        return packed


@hookimpl
def register_adapters(register):
    register(LlavaNextAdapter)
    register(LlavaNextVideoAdapter)
    register(LlavaOnevisionAdapter)
