"""Qwen2-VL and Qwen2.5-VL (``Qwen2VLForConditionalGeneration``, ``Qwen2_5_VLForConditionalGeneration``): dynamic
resolution, a patch merger as projector, multimodal rotary positions, images and videos.

**Tokens.** The vision tower turns an image of (t, h, w) patches (``image_grid_thw``) into t*h*w patch features of
width d_v; the merger (``model.model.visual.merger``) normalises each patch (``ln_q``), concatenates each 2x2 block
and maps it through an MLP to one language-model token. So one visual token = one merged 2x2 block, and its
projector input is the 4 grouped patch features before normalisation: ``ImageTokens.features`` is
(N, 4*d_v) with N = t*h*w/4, and the projector handed to scorers, :class:`GroupedMerger`, maps (..., 4*d_v) ->
(..., d_l) by applying ``ln_q`` per patch and then the MLP, exactly as the merger does. Tokens are in raster order
(t, row, col) of the merged grid and ``grid`` is (rows, cols) of merged tokens (an image's t is 1). Qwen2.5-VL's
tower returns its patch features in window order; they are put back in raster order here, as the model does with
the merged output.

**Positions.** Kept tokens keep the 3-D rotary positions they have in the unpruned sequence: the positions of the
full prompt come from the model's own ``get_rope_index``, and the pruned call gets those of the kept columns as
``position_ids`` (with the contiguous text row the model uses for its attention mask), next to the pruned
``attention_mask``. ``generate`` continues every row from the last position + 1, exactly as it does unpruned, so
the generated tokens sit where they would without pruning.

``PipelineConfig.positions`` does not change this: ``original`` is what these adapters always do, and
``contiguous`` (the default, which renumbers the kept tokens densely on 1-D RoPE families) keeps the 3-D positions
too, since densely renumbered M-RoPE positions (height and width indices of a grid with holes) mean nothing the model
was trained on. Both values give the same inputs (a test checks it).

**Merged tokens** (``pool``, ``visionzip``) go after their input's kept tokens, each at the rounded mean 3-D position
of the tokens merged into it (``place_merged``). **Downsampling** (the ``downsample`` selector): ``downsample``
shrinks each image's pixels before the tower to about the budget's tokens.

**Budget.** The budget applies per image and per video. Videos have a policy (``adapter: {name: qwen2_vl,
video_policy: per_video | per_frame}``): ``per_video`` (default) selects across all of a video's tokens at once
(``grid`` = (t*rows, cols): the temporal slices stacked); ``per_frame`` emits one ImageTokens per temporal slice
(each slice covers ``temporal_patch_size`` frames) and splits the video's budget evenly between them.
``ImageTokens.image`` numbers a prompt's images and videos together, in order of appearance; ``view`` is the
temporal slice under ``per_frame``.

**Inside the language model** (FastV, ``inside_llm``): the model runs on the unpruned inputs, so it computes the
full prompt's 3-D positions and its ``rope_deltas`` itself; layers from K on get the rotary embeddings of the kept
columns (kept tokens keep their original positions), and decode steps continue from the full prompt's rope deltas,
exactly as unpruned. Entries and budgets are those above (images, videos, ``video_policy``), found from the
placeholders and ``*_grid_thw`` without running the vision tower.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import Field
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures
from transformers.vision_utils import get_vision_window_index

from zoprune import (Budget, ComponentConfig, ImageTokens, InputError, ModelAdapter, PrunedEmbedding,
                     UnsupportedModelError, hookimpl)
from zoprune_plugins.adapters.common import (ViewTokens, VisualInput, assign_to_prompts, drop_columns,
                                             drop_mask, encoder_outputs, kept_per_input, number_in_prompt,
                                             pad_token_id, placeholder_columns, placeholder_counts,
                                             pruned_per_input, require_input_ids, shared_budgets, strip,
                                             with_text_embeddings)
from zoprune_plugins.adapters.llm_pruning import ImageColumns, inside_language_model

_VISION_KEYS = ("pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw", "second_per_grid_ts",
                "position_ids", "rope_deltas")
_KINDS = (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))


class QwenVLAdapterConfig(ComponentConfig):
    """How a video's budget is applied."""

    video_policy: Literal["per_video", "per_frame"] = Field(
        default="per_video", description="'per_video': one selection over all of a video's tokens; 'per_frame': "
        "the video's budget split evenly between its temporal slices, selecting within each")


class GroupedMerger(torch.nn.Module):
    """The patch merger as a per-token projector: (..., 4*d_v) grouped patch features -> (..., d_l).

    ``ln_q`` normalises each of the 4 patches on its own, as the merger does before it concatenates them.
    """

    def __init__(self, merger: torch.nn.Module):
        super().__init__()
        self.merger = merger

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(*x.shape[:-1], -1, self.merger.ln_q.weight.shape[0])  # (..., 4, d_v)
        return self.merger.mlp(self.merger.ln_q(patches).reshape(x.shape))


class Qwen2VLAdapter(ModelAdapter):
    """Qwen2-VL layout: one merged 2x2 block per token, any number of images and videos per prompt."""

    name = "qwen2_vl"
    Config = QwenVLAdapterConfig
    model_classes = ("Qwen2VLForConditionalGeneration",)
    provides: ClassVar[frozenset[str]] = frozenset({"text_embeddings"})
    position_modes = frozenset({"contiguous", "original"})  # the same inputs either way: see the module docstring
    #: whether the hook point of ``inside_llm`` reproduces this language model with every token kept; where it does
    #: not (Qwen3-VL, Qwen3.5, GLM-4V on their tiny models; the cause is not found yet) FastV is refused by name
    hook_point_exact: ClassVar[bool] = True

    def __init__(self, model: torch.nn.Module, config: ComponentConfig | None = None):
        super().__init__(model, config)
        self._grouped = GroupedMerger(self._inner.visual.merger)

    @property
    def _inner(self):
        return self.model.model  # Qwen2VLModel: visual (with .merger), language_model

    def projector(self) -> torch.nn.Module:
        return self._grouped

    def _token_ids(self) -> dict[str, int]:
        return {"image": self.model.config.image_token_id, "video": self.model.config.video_token_id}

    def raster_order(self, grid_thw: torch.Tensor) -> torch.Tensor | None:
        """Permutation putting the tower's merged groups in raster order, (M,), or None when they already are."""
        return None

    def _tower(self, kind: str, pixels: torch.Tensor, grid_thw: torch.Tensor):
        """(features (M, 4*d_v) in raster order, model embeddings split per input [(N_i, d_l)], the tower's
        output)."""
        get = self._inner.get_image_features if kind == "image" else self._inner.get_video_features
        outputs = get(pixels, grid_thw, return_dict=True)
        hidden = outputs.last_hidden_state  # (sum t*h*w, d_v)
        grouped = hidden.reshape(-1, self._inner.visual.spatial_merge_size ** 2 * hidden.shape[-1])
        order = self.raster_order(grid_thw)
        if order is not None:
            grouped = grouped[order.to(grouped.device)]
        return grouped, list(outputs.pooler_output), outputs

    def _visual_input(self, outputs: Any, i: int, **fields: Any) -> VisualInput:
        """The i-th input of one kind, from the tower's ``outputs`` (a subclass adds what else it carries)."""
        return VisualInput(**fields)

    def extract(self, inputs: dict[str, Any], projector: Callable[[torch.Tensor], torch.Tensor],
                dtype: torch.dtype, extras: frozenset[str] = frozenset()) -> list[ImageTokens]:
        input_ids = require_input_ids(inputs)
        merge = self._inner.visual.spatial_merge_size
        found: list[tuple[int, int, ViewTokens]] = []  # (sample, first column, tokens)
        for kind, pixel_key, grid_key in _KINDS:
            token_id = self._token_ids()[kind]
            pixels, grid_thw = inputs.get(pixel_key), inputs.get(grid_key)
            given = pixels is not None and grid_thw is not None
            counts = placeholder_counts(input_ids, token_id, kind, given, f"`{pixel_key}` and `{grid_key}`")  # (B,)
            if not given:
                continue
            features, embeddings, outputs = self._tower(kind, pixels, grid_thw)
            lengths = [e.shape[0] for e in embeddings]
            owners = assign_to_prompts(counts, lengths, kind)
            columns = placeholder_columns(input_ids, token_id, owners, lengths)
            scoring = features.to(dtype)
            start = 0
            for i, (model_embeddings, (t, h, w)) in enumerate(zip(embeddings, grid_thw.tolist())):
                cols = w // merge
                n = model_embeddings.shape[0]
                visual = self._visual_input(outputs, i, kind=kind, index=i, sample=owners[i], columns=columns[i],
                                            embeddings=model_embeddings,
                                            always=torch.zeros(n, dtype=torch.bool, device=model_embeddings.device))
                x_all = scoring[start:start + n]
                z_all = model_embeddings.to(dtype) if model_embeddings.dtype == dtype else projector(x_all)
                start += n
                slices = t if kind == "video" and self.config.video_policy == "per_frame" else 1
                size = n // slices
                for v in range(slices):
                    part = slice(v * size, (v + 1) * size)
                    tokens = ViewTokens(
                        features=x_all[part], embeddings=z_all[part], model_embeddings=model_embeddings[part],
                        projector=projector, sample=owners[i], image=0, grid=(size // cols, cols), view=v,
                        source=visual, packed=torch.arange(v * size, (v + 1) * size, device=columns[i].device),
                    )
                    found.append((owners[i], int(columns[i][0]), tokens))
        images = number_in_prompt(found)  # each prompt's images and videos together, in order of appearance
        return with_text_embeddings(self.model, inputs, images, dtype, extras)

    def token_budgets(self, budget: Budget, images: list[ImageTokens]) -> list[int]:
        return shared_budgets(budget, images, split=self.config.video_policy == "per_frame")

    #: the tower takes any grid of whole 2x2 merge blocks (the ``downsample`` baseline); Qwen3-VL and GLM-4V are
    #: not tested with it and set this False
    resizes_images: ClassVar[bool] = True

    def downsample(self, inputs: dict[str, Any], keep: int) -> dict[str, Any]:
        """Every image (not videos) shrunk so that it has ``r x c`` merged tokens, ``r * c >= keep`` as small as its
        aspect ratio allows (``downsampled_grid``): its pixels are put back together from the processor's patches,
        resized with antialiased bilinear interpolation (an area average when shrinking) and cut into patches
        again; ``image_grid_thw`` and the placeholders follow (each image's last placeholders are removed), and so
        do the attention mask and ``mm_token_type_ids``. Normalisation is per channel and affine, so resizing the
        normalised pixels equals normalising resized ones. The model's own rope positions are recomputed from the
        new inputs (given ``position_ids`` / ``rope_deltas`` are dropped)."""
        from zoprune_plugins.selection.lattice import downsampled_grid

        pixels, grid_thw = inputs.get("pixel_values"), inputs.get("image_grid_thw")
        if pixels is None or grid_thw is None:
            return inputs
        input_ids = require_input_ids(inputs)
        vision = self.model.config.vision_config
        merge = self._inner.visual.spatial_merge_size
        layout = (vision.in_channels, vision.temporal_patch_size, vision.patch_size, merge)
        sizes = grid_thw.prod(-1).tolist()
        if pixels.ndim != 2 or sum(sizes) != pixels.shape[0]:
            raise InputError(f"`pixel_values` of shape {tuple(pixels.shape)} does not hold the {sum(sizes)} patches "
                             f"`image_grid_thw` describes; build inputs with the model's processor")
        lengths = [t * h * w // merge ** 2 for t, h, w in grid_thw.tolist()]
        counts = placeholder_counts(input_ids, self.model.config.image_token_id, "image", True,
                                    "`pixel_values` and `image_grid_thw`")
        owners = assign_to_prompts(counts, lengths, "image")
        columns = placeholder_columns(input_ids, self.model.config.image_token_id, owners, lengths)
        drop = torch.zeros_like(input_ids, dtype=torch.bool)
        new_pixels, new_grid = [], []
        for patches, (t, h, w), owner, cols in zip(pixels.split(sizes), grid_thw.tolist(), owners, columns):
            r, c = downsampled_grid(h // merge, w // merge, keep)
            if (r, c) == (h // merge, w // merge):
                new_pixels.append(patches)
                new_grid.append([t, h, w])
                continue
            image = unpatchify(patches, t, h, w, layout)  # (t * T, C, h * P, w * P)
            size = (r * merge * vision.patch_size, c * merge * vision.patch_size)
            small = torch.nn.functional.interpolate(image.float(), size=size, mode="bilinear", antialias=True,
                                                    align_corners=False).to(patches.dtype)
            new_pixels.append(patchify(small, t, layout))
            new_grid.append([t, r * merge, c * merge])
            drop[owner, cols[t * r * c:]] = True  # the image's last placeholders go
        per_token = {key: value for key, value in inputs.items() if key in ("input_ids", "attention_mask",
                                                                             "mm_token_type_ids")}
        out = {key: value for key, value in inputs.items() if key not in ("position_ids", "rope_deltas")}
        out.update(drop_columns(per_token, drop, pad_id=pad_token_id(self.model)))
        out["pixel_values"] = torch.cat(new_pixels)
        out["image_grid_thw"] = torch.tensor(new_grid, dtype=grid_thw.dtype, device=grid_thw.device)
        return out

    def rope_positions(self, inputs: dict[str, Any]) -> torch.Tensor:
        """The 3-D rotary positions of the unpruned prompt, (3, B, L), from the model's own ``get_rope_index``."""
        input_ids = inputs["input_ids"]
        types = inputs.get("mm_token_type_ids")
        if types is None:  # what the processor would have returned: 0 text, 1 image, 2 video
            ids = self._token_ids()
            types = (input_ids == ids["image"]).int() + 2 * (input_ids == ids["video"]).int()
        extra = {"second_per_grid_ts": inputs["second_per_grid_ts"]} if inputs.get("second_per_grid_ts") is not None \
            else {}
        positions, _ = self._inner.get_rope_index(
            input_ids, mm_token_type_ids=types, image_grid_thw=inputs.get("image_grid_thw"),
            video_grid_thw=inputs.get("video_grid_thw"), attention_mask=inputs.get("attention_mask"), **extra)
        return positions

    #: merged tokens (``pool``, ``visionzip``) go after their input's kept tokens, each at the mean 3-D rotary
    #: position of the tokens it was merged from (rounded): a pooled cell sits at its centre
    places_merged: ClassVar[bool] = True
    merge_groups: ClassVar[bool] = True

    def pruned_inputs(self, inputs: dict[str, Any], images: list[ImageTokens], kept: list[torch.Tensor],
                      merged: list[torch.Tensor | None] | None = None,
                      groups: list[torch.Tensor | None] | None = None,
                      positions: str = "contiguous") -> dict[str, Any]:
        # `positions` changes nothing: 3-D M-RoPE positions are always the unpruned prompt's (module docstring)
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:  # positions with gaps and no mask would be read as packed sequences: always pass one
            mask = torch.ones_like(input_ids)
        per_input = slots = kept_per_input(images, kept)  # slots: placeholders that stay (kept + merged tokens)
        rope = self.rope_positions(inputs).permute(1, 2, 0)  # (B, L, 3)
        added: dict[int, torch.Tensor] = {}
        if merged is not None and any(m is not None for m in merged):
            if groups is None:
                raise ValueError("merged tokens need their groups to be placed")  # the pipeline always gives them
            slots, added, rope = place_merged(per_input, images, merged, groups, rope)
        per_token = {"input_ids": input_ids, "attention_mask": mask, "rope": rope}
        if inputs.get("mm_token_type_ids") is not None:
            per_token["mm_token_type_ids"] = inputs["mm_token_type_ids"]
        pruned = strip(inputs, _VISION_KEYS)
        short = drop_columns(per_token, drop_mask(input_ids, slots), pad_id=pad_token_id(self.model))
        rope = short.pop("rope").permute(2, 0, 1)  # (3, B, L')
        text = short["attention_mask"].long().cumsum(-1) - 1  # the text row generate builds, (B, L')
        text = text.masked_fill(short["attention_mask"] == 0, 0)
        pruned.update(short)
        pruned["position_ids"] = torch.cat([text[None], rope], dim=0)  # (4, B, L')
        outputs = self.encoder_outputs(per_input)
        if added:  # each input's merged rows after its kept ones, as ``pruned_embeddings`` lists them
            for kind, output in outputs.items():
                sources = [source for source, _ in per_input if source.kind == kind]
                output.pooler_output = [torch.cat([rows, added[id(source)].to(rows)]) if id(source) in added
                                        else rows for rows, source in zip(output.pooler_output, sources)]
        pruned["mm_encoder_outputs"] = outputs
        return pruned

    def encoder_outputs(self, per_input: list[tuple[VisualInput, torch.Tensor]]) -> dict[str, Any]:
        """``mm_encoder_outputs`` of the kept tokens (see ``common.encoder_outputs``)."""
        return encoder_outputs(per_input)

    def pruned_embeddings(self, images: list[ImageTokens], kept: list[torch.Tensor],
                          merged: list[torch.Tensor | None] | None = None) -> list[PrunedEmbedding]:
        return pruned_per_input(images, kept, merged)

    def inside_llm(self, inputs: dict[str, Any], layer: int,
                   select: Callable[[list[ImageTokens]], list[torch.Tensor]], dtype: torch.dtype) -> Any:
        """FastV's hook point on the Qwen2 language model (see ``llm_pruning.InsideLLM`` and the module
        docstring); ``select`` gets ``extras["llm_attention"]`` and ``extras["llm_attention_text"]`` per entry."""
        if not self.hook_point_exact:
            raise UnsupportedModelError(f"adapter {self.name!r} cannot prune inside the language model yet; use a "
                                        f"selector that prunes before it")
        input_ids = require_input_ids(inputs)
        return inside_language_model(self._inner.language_model, inputs, input_ids, layer,
                                     self.llm_columns(inputs, input_ids), select, dtype)

    def llm_columns(self, inputs: dict[str, Any], input_ids: torch.Tensor) -> list[ImageColumns]:
        """The entries ``extract`` would emit, as columns of the prompt: per image, per video or per temporal
        slice, numbered per prompt in order of appearance."""
        merge = self._inner.visual.spatial_merge_size
        found: list[tuple[int, int, ImageColumns]] = []  # (sample, first column, entry)
        for kind, pixel_key, grid_key in _KINDS:
            token_id = self._token_ids()[kind]
            grid_thw = inputs.get(grid_key)
            given = inputs.get(pixel_key) is not None and grid_thw is not None
            counts = placeholder_counts(input_ids, token_id, kind, given, f"`{pixel_key}` and `{grid_key}`")  # (B,)
            if not given:
                continue
            lengths = [t * h * w // merge ** 2 for t, h, w in grid_thw.tolist()]
            owners = assign_to_prompts(counts, lengths, kind)
            columns = placeholder_columns(input_ids, token_id, owners, lengths)
            for i, (cols, (t, _, _)) in enumerate(zip(columns, grid_thw.tolist())):
                whole = object()  # a video's slices share its budget under per_frame (token_budgets groups by it)
                slices = t if kind == "video" and self.config.video_policy == "per_frame" else 1
                size = cols.numel() // slices
                for v in range(slices):
                    entry = ImageColumns(owners[i], 0, cols[v * size:(v + 1) * size], source=whole, view=v)
                    found.append((owners[i], int(cols[0]), entry))
        return number_in_prompt(found)


def place_merged(per_input: list[tuple[VisualInput, torch.Tensor]], images: list[ImageTokens],
                 merged: list[torch.Tensor | None], groups: list[torch.Tensor | None], rope: torch.Tensor
                 ) -> tuple[list[tuple[VisualInput, torch.Tensor]], dict[int, torch.Tensor], torch.Tensor]:
    """Room and positions for merged tokens: each input with merged tokens keeps M more placeholders (its first
    dropped ones); the input's surviving placeholders, in order, get its kept tokens' own positions and then the
    merged tokens', each the rounded mean of its members' positions in ``rope`` (B, L, 3). Returns the new keep
    masks, the merged rows per input (by ``id`` of its VisualInput, entry order) and the new rope."""
    placed: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for tokens, rows, group in zip(images, merged, groups):
        if rows is None:
            continue
        source = tokens.source
        members = group.to(rope.device)  # (N,)
        inside = members >= 0
        positions = rope[source.sample, source.columns[tokens.packed.to(source.columns.device)]].float()  # (N, 3)
        sums = positions.new_zeros(rows.shape[0], 3).index_add_(0, members[inside], positions[inside])
        counts = torch.bincount(members[inside], minlength=rows.shape[0]).clamp_min(1)[:, None]
        placed.setdefault(id(source), []).append((rows, (sums / counts).round().to(rope.dtype)))
    rope = rope.clone()
    out, added = [], {}
    for source, keep in per_input:
        if id(source) not in placed:
            out.append((source, keep))
            continue
        rows = torch.cat([r for r, _ in placed[id(source)]])  # (M, d_l)
        where = torch.cat([p for _, p in placed[id(source)]])  # (M, 3)
        keep = keep.to(source.columns.device).clone()
        kept_positions = rope[source.sample, source.columns[keep]]  # (k - M, 3), before any is overwritten
        keep[(~keep).nonzero().squeeze(-1)[:rows.shape[0]]] = True
        rope[source.sample, source.columns[keep]] = torch.cat([kept_positions, where])
        out.append((source, keep))
        added[id(source)] = rows
    return out, added, rope


def unpatchify(patches: torch.Tensor, t: int, h: int, w: int, layout: tuple[int, int, int, int]) -> torch.Tensor:
    """The processor's patches of one image, (t*h*w, C*T*P*P) in merge-block order, back to pixels
    (t*T, C, h*P, w*P). ``layout`` = (C, T, P, merge): channels, temporal patch size, patch size, merge size."""
    channels, temporal, patch, merge = layout
    blocks = patches.reshape(t, h // merge, w // merge, merge, merge, channels, temporal, patch, patch)
    # -> (t, T, C, block row, row in block, pixel row, block col, col in block, pixel col)
    return blocks.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(t * temporal, channels, h * patch, w * patch)


def patchify(pixels: torch.Tensor, t: int, layout: tuple[int, int, int, int]) -> torch.Tensor:
    """The inverse of :func:`unpatchify`: pixels (t*T, C, H, W) -> patches (t*h*w, C*T*P*P), h = H/P, w = W/P."""
    channels, temporal, patch, merge = layout
    height, width = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    grid = pixels.reshape(t, temporal, channels, height // merge, merge, patch, width // merge, merge, patch)
    return grid.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(t * height * width, channels * temporal * patch * patch)


class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    """Qwen2.5-VL: as Qwen2-VL, but the tower computes in window order (windowed attention) and returns its patch
    features that way; the merged output is put back in raster order, and so are the features here."""

    name = "qwen2_5_vl"
    model_classes = ("Qwen2_5_VLForConditionalGeneration",)

    def raster_order(self, grid_thw: torch.Tensor) -> torch.Tensor:
        visual = self._inner.visual
        window_index, _ = get_vision_window_index(grid_thw, spatial_merge_size=visual.spatial_merge_size,
                                                  window_size=visual.window_size, patch_size=visual.patch_size)
        return torch.argsort(window_index)


@dataclass(eq=False)
class DeepstackInput(VisualInput):
    """A Qwen3-VL input with its deepstack embeddings: per deepstack layer, (L, d_l), added to the hidden states of
    the language model's first layers at the input's placeholders."""

    deepstack: list[torch.Tensor]


class MergerPerToken(torch.nn.Module):
    """Qwen3-VL's patch merger as a per-token projector: (..., 4*d_v) grouped patch features -> (..., d_l), by the
    merger's own forward on the token's 4 patches (it normalises each patch, then concatenates them)."""

    def __init__(self, merger: torch.nn.Module):
        super().__init__()
        self.merger = merger

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.reshape(-1, self.merger.norm.normalized_shape[0])  # (M*4, d_v)
        return self.merger(patches).reshape(*x.shape[:-1], -1)


class Qwen3VLAdapter(Qwen2VLAdapter):
    """Qwen3-VL and Qwen3.5 (and their MoE variants): as Qwen2-VL (3-D positions, images and videos, raster order),
    plus Qwen3-VL's deepstack (Qwen3.5's tower has none).

    The tower also emits one set of embeddings per deepstack layer (merged from intermediate tower layers), which the
    language model adds to the hidden states of its first layers at the visual positions. Those follow the main
    embeddings: the pruned call gets, per deepstack layer, the rows of the same kept tokens, so with every token
    kept the model computes exactly what it computes unpruned. Scoring uses the main features and merger only.
    """

    name = "qwen3_vl"
    hook_point_exact = False
    places_merged = False  # deepstack rows (Qwen3-VL) and GLM's merger are not defined for merged tokens
    merge_groups = False
    resizes_images = False
    why_no_resize = "takes any resolution, but shrinking its images is not tested yet"
    model_classes = ("Qwen3VLForConditionalGeneration", "Qwen3VLMoeForConditionalGeneration",
                     "Qwen3_5ForConditionalGeneration", "Qwen3_5MoeForConditionalGeneration")

    def __init__(self, model: torch.nn.Module, config: ComponentConfig | None = None):
        super().__init__(model, config)
        self._grouped = MergerPerToken(self._inner.visual.merger)

    def _visual_input(self, outputs: Any, i: int, **fields: Any) -> VisualInput:
        layers = getattr(outputs, "deepstack_features", None) or []  # Qwen3.5's tower has none
        return DeepstackInput(**fields, deepstack=[layer[i] for layer in layers])

    def encoder_outputs(self, per_input: list[tuple[VisualInput, torch.Tensor]]) -> dict[str, Any]:
        out: dict[str, tuple[list, list]] = {}
        for source, keep in per_input:
            keep = keep.to(source.embeddings.device)
            embeds, deepstack = out.setdefault(source.kind, ([], []))
            embeds.append(source.embeddings[keep])
            deepstack.append([layer[keep] for layer in source.deepstack])  # the same kept rows in every layer
        return {kind: BaseModelOutputWithDeepstackFeatures(
                    pooler_output=embeds, deepstack_features=[list(layer) for layer in zip(*deepstack)] or None)
                for kind, (embeds, deepstack) in out.items()}


class Glm4vAdapter(Qwen2VLAdapter):
    """GLM-4.1V / GLM-4.5V (``Glm4vForConditionalGeneration``, ``Glm4vMoeForConditionalGeneration``): Qwen2-VL's
    layout and 3-D positions, but the tower merges each 2x2 block with a strided convolution (``downsample``) before
    a per-token merger. A token's features are the merger's input (one row per token, d_l wide) and the projector
    handed to scorers is the merger itself."""

    name = "glm4v"
    places_merged = False  # deepstack rows (Qwen3-VL) and GLM's merger are not defined for merged tokens
    merge_groups = False
    resizes_images = False
    why_no_resize = "takes any resolution, but shrinking its images is not tested yet"
    hook_point_exact = False
    model_classes = ("Glm4vForConditionalGeneration", "Glm4vMoeForConditionalGeneration")

    def projector(self) -> torch.nn.Module:
        return self._inner.visual.merger

    def _tower(self, kind: str, pixels: torch.Tensor, grid_thw: torch.Tensor):
        get = self._inner.get_image_features if kind == "image" else self._inner.get_video_features
        seen: list[torch.Tensor] = []
        handle = self._inner.visual.merger.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        try:
            outputs = get(pixels, grid_thw, return_dict=True)
        finally:
            handle.remove()
        return seen[0], list(outputs.pooler_output), outputs  # (M, d): one row per merged token, in raster order


@hookimpl
def register_adapters(register):
    register(Qwen2VLAdapter)
    register(Qwen2_5_VLAdapter)
    register(Qwen3VLAdapter)
    register(Glm4vAdapter)
