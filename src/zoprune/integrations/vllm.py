"""Pruned image embeddings for vLLM, as data: requests for ``LLM.generate`` and for ``vllm serve``, and the pieces of
a server-side plugin that do not need vLLM. Nothing here imports vLLM.

Written against **vLLM 0.32.0** (its Python source; file and function names in ``docs/serving.md``). vLLM was not
run to check these requests (it cannot run on this project's CPU machines); ``scripts/check_vllm.py`` compares
vLLM's answers with ``PrunedModel.generate`` on a GPU.

**Client side** (LLaVA-1.5, LLaVA-NeXT): vLLM's LLaVA processors size an image's placeholders by the length of the
embeddings they are given (``BaseLlavaMultiModalProcessor._get_prompt_updates``), so a client can prune::

    pruned = zoprune.prune(model, "configs/zoo_prune_fast.yaml", budget=64)
    prompt, embeds = prune_for_vllm(pruned, processor, [image], "What is shown?")
    llm = vllm.LLM(model="llava-hf/llava-1.5-7b-hf", enable_mm_embeds=True)
    llm.generate(offline_request(prompt, embeds), vllm.SamplingParams(max_tokens=30))

or, to a server started with ``--enable-mm-embeds``, POST ``chat_request(model_id, question, embeds)`` to
``/v1/chat/completions``. Text-conditioned methods see the question: :func:`prune_for_vllm` prunes the prompt the
processor builds from it.

Qwen2-VL / Qwen2.5-VL are refused on the client side: vLLM sizes their placeholders and 3-D positions from
``image_grid_thw``, so an embedding of fewer rows than the grid cannot be sent; they need the server-side plugin,
whose vLLM-free pieces are :func:`kept_tokens`, :func:`select_tokens`, :func:`mrope_positions` and
:func:`pruned_item`.
"""

from __future__ import annotations

import base64
import io
from typing import Any, Sequence

import torch

from zoprune.config import Budget, PipelineConfig
from zoprune.errors import ConfigError, InputError, UnsupportedModelError
from zoprune.interfaces import ImageTokens, PrunedEmbedding

#: the vLLM release whose source these helpers follow
VLLM_VERSION = "0.32.0"
#: model classes whose vLLM processor sizes placeholders by the embeddings given (``ImageEmbeddingItems``)
CLIENT_SIDE_MODELS = ("LlavaForConditionalGeneration", "LlavaNextForConditionalGeneration")


def prune_for_vllm(pruned: Any, processor: Any, images: Sequence[Any], question: str
                   ) -> tuple[str, list[PrunedEmbedding]]:
    """Prune ``images`` for ``question`` with ``pruned`` (a :class:`~zoprune.PrunedModel`): the prompt text, with
    one image placeholder per image as vLLM expects it, and the pruned embeddings of each image.

    The prompt is built by the processor's chat template (as ``zoprune run`` builds it), the processor's own
    expansion of it is what the pipeline prunes, so a method that reads the question reads this one.
    """
    from zoprune.loading import prompt_text

    name = type(pruned.model).__name__
    if name not in CLIENT_SIDE_MODELS:
        raise UnsupportedModelError(
            f"vLLM takes pruned image embeddings from the client only for {', '.join(CLIENT_SIDE_MODELS)}; "
            f"for {name} it sizes placeholders and positions from the image grid, so pruning has to run inside "
            f"the server (docs/serving.md, the server-side plugin)")
    if not images:
        raise InputError("prune_for_vllm needs at least one image")
    prompt = prompt_text(processor, question, images=len(images))
    inputs = processor(images=list(images), text=[prompt], return_tensors="pt").to(pruned.device)
    return prompt, pruned.embed(**inputs)


def _rows(embeds: Sequence[PrunedEmbedding | torch.Tensor]) -> list[torch.Tensor]:
    """Each image's (k, d_l) tensor, checked: vLLM reads a lone 2-D tensor as one image's pixels, not embeddings."""
    if isinstance(embeds, torch.Tensor):
        raise InputError("pass a list with one (k, d_l) tensor per image, not one tensor")
    rows = []
    for i, item in enumerate(embeds):
        if isinstance(item, PrunedEmbedding) and item.kind != "image":
            raise InputError(f"embedding {i} is a {item.kind}; vLLM's image_embeds take images only")
        tensor = item.embeddings if isinstance(item, PrunedEmbedding) else item
        if not isinstance(tensor, torch.Tensor) or tensor.ndim != 2:
            raise InputError(f"embedding {i} must be a (k, d_l) tensor, got "
                             f"{tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__}")
        rows.append(tensor)
    if not rows:
        raise InputError("no image embeddings given")
    return rows


def offline_request(prompt: str, embeds: Sequence[PrunedEmbedding | torch.Tensor]) -> dict[str, Any]:
    """The prompt for offline ``LLM(..., enable_mm_embeds=True).generate``:
    ``{"prompt": prompt, "multi_modal_data": {"image": [(k_i, d_l) per image]}}``.

    A list of 2-D tensors, one per image in prompt order (vLLM 0.32.0 ``MultiModalDataParser.is_embeddings``:
    a list of 2-D tensors or one 3-D tensor are embeddings; a single 2-D tensor would be read as an image).
    ``prompt`` holds one ``<image>`` per image; vLLM repeats it k_i times.
    """
    return {"prompt": prompt, "multi_modal_data": {"image": _rows(embeds)}}


def encode_embeddings(tensor: torch.Tensor) -> str:
    """The base64 text of ``torch.save(tensor)``, what vLLM's ``ImageEmbeddingMediaIO.load_base64`` reads
    (``torch.load(..., weights_only=True)``); it keeps bfloat16, which the ``.npy`` form vLLM also reads cannot."""
    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_messages(question: str, embeds: Sequence[PrunedEmbedding | torch.Tensor]) -> list[dict[str, Any]]:
    """OpenAI-API messages for ``vllm serve --enable-mm-embeds``: one user turn with an
    ``{"type": "image_embeds", "image_embeds": BASE64}`` content part per image, then the question as text.

    The server's chat template puts the image placeholder where each part is; send the same question the
    embeddings were pruned for.
    """
    parts: list[dict[str, Any]] = [{"type": "image_embeds", "image_embeds": encode_embeddings(rows)}
                                   for rows in _rows(embeds)]
    parts.append({"type": "text", "text": question})
    return [{"role": "user", "content": parts}]


def chat_request(model: str, question: str, embeds: Sequence[PrunedEmbedding | torch.Tensor],
                 **sampling: Any) -> dict[str, Any]:
    """The JSON body to POST to ``/v1/chat/completions``; ``sampling`` adds fields such as ``max_tokens=30``."""
    return {"model": model, "messages": chat_messages(question, embeds), **sampling}


# ------------------------------------------------------------------------------- server side, without vLLM

def kept_tokens(budget: Budget | int | float | dict, num_tokens: int, always: int = 0) -> int:
    """k(N, budget): the placeholders an image keeps when all its N scored tokens share one budget, plus the
    ``always`` kept ones — what a vLLM processor must emit before the encoder runs.

    - LLaVA-1.5: N = the image's tokens (576 at 336 px), ``always = 0``;
    - LLaVA-NeXT (``budget_policy: global``): N = base + unpadded crop tokens, ``always`` = its newline tokens
      (``newlines: keep``) or 0 (``drop``); vLLM's ``LlavaNextProcessingInfo.get_num_image_tokens`` computes the
      three parts;
    - Qwen2-VL / Qwen2.5-VL images and videos (``video_policy: per_video``): N = t*h*w / merge_size**2
      (:func:`qwen_num_tokens`).

    The adapters' ``token_budgets`` give the same counts (tests/integrations/test_vllm.py).
    """
    budget = budget if isinstance(budget, Budget) else Budget.model_validate(budget)
    if num_tokens < 1 or always < 0:
        raise InputError(f"an image has N >= 1 scored tokens and always >= 0, got N = {num_tokens}, "
                         f"always = {always}")
    return budget.tokens_for(num_tokens) + always


def qwen_num_tokens(grid_thw: Sequence[int], merge_size: int = 2) -> int:
    """N of a Qwen2/2.5-VL image or video: its (t, h, w) patch grid over the merger's 2x2 blocks."""
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // merge_size ** 2


def mrope_positions(grid_thw: Sequence[int], merge_size: int = 2, time_scale: float = 1.0) -> torch.Tensor:
    """(N, 4) long: per merged token in raster order (t, row, col), its temporal, height and width rotary
    positions counted from the item's start, and the merged grid's width — the 4 channels vLLM 0.32.0's
    Qwen2.5-VL appends to each item's embeddings when multimodal pruning is on (``compute_mrope_for_media``) and
    ``recompute_mrope_positions`` reads back. ``time_scale`` is tokens_per_second x seconds per grid for a video
    (1 for an image)."""
    t, h, w = (int(x) for x in grid_thw)
    rows, cols = h // merge_size, w // merge_size
    grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(rows), torch.arange(cols), indexing="ij"))
    temporal = (grid[0].double() * time_scale).long()  # as the model casts it
    width = torch.full_like(grid[0], cols)
    return torch.stack([temporal, grid[1], grid[2], width], dim=-1).reshape(-1, 4)


def pruned_item(embeddings: torch.Tensor, kept: torch.Tensor, positions: torch.Tensor | None = None
                ) -> torch.Tensor:
    """One item as vLLM's pruning path hands it on: the kept rows of its (N, d_l) embeddings (raster order, as
    vLLM's vision tower returns them), with their (N, 4) M-RoPE channels appended when ``positions`` is given:
    (k, d_l + 4), in the embeddings' dtype, as vLLM's own ``torch.cat`` casts them (bfloat16 holds integers
    exactly up to 256)."""
    n = embeddings.shape[0]
    kept = kept.to(device=embeddings.device, dtype=torch.long)
    if kept.ndim != 1 or kept.numel() == 0 or int(kept.min()) < 0 or int(kept.max()) >= n:
        raise InputError(f"kept indices must be a non-empty 1-D tensor in [0, {n})")
    rows = embeddings[kept]
    if positions is None:
        return rows
    if tuple(positions.shape) != (n, 4):
        raise InputError(f"positions must be ({n}, 4), got {tuple(positions.shape)}")
    return torch.cat([rows, positions.to(device=rows.device)[kept].to(rows.dtype)], dim=1)


def select_tokens(config: PipelineConfig | dict | str | None, features: torch.Tensor, embeddings: torch.Tensor,
                  projector: Any, k: int | None = None, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """(k,) long, the sorted indices one item keeps, from tensors a serving engine holds rather than from model
    inputs: ``features`` (N, d_v), the projector's input per token, ``embeddings`` (N, d_l), its output in the
    model's dtype, both in raster order (for Qwen2.5-VL, the merger's input regrouped to (N, 4 d_v) and put back
    from window order, as vLLM's vision tower does with the merger's output); ``projector`` maps (..., d_v) ->
    (..., d_l) (a copy in the scoring dtype is made when its weights differ). ``k`` defaults to
    :func:`kept_tokens` of the config's budget. The same selection ``PrunedModel`` makes on that image.

    Only what runs on the encoder side fits here: a selector that merges tokens, prunes inside the language
    model or needs an adapter's extra signals (``[CLS]`` attention, keys) is refused with a ConfigError.
    """
    import copy

    from zoprune.pipeline import resolve_config, select_entry

    config = resolve_config(config)
    selector_cls, selector_params = config.component("selector")
    scorer_entry = config.component("scorer")
    scorer = scorer_entry[0](scorer_entry[1]) if scorer_entry is not None else None
    selector = selector_cls(selector_params)
    needs = (scorer.requires if scorer is not None else frozenset()) | frozenset(selector.requires)
    if selector.stage != "pre_llm" or selector.merges or needs:
        why = ("prunes inside the language model" if selector.stage != "pre_llm" else
               "merges tokens" if selector.merges else f"needs {', '.join(sorted(needs))} from a model adapter")
        raise ConfigError(f"this pipeline {why}; on a serving engine's encoder output only scorers and selectors "
                          f"that read the tokens' features and embeddings can run (docs/serving.md)")
    n = features.shape[0]
    if features.ndim != 2 or embeddings.ndim != 2 or embeddings.shape[0] != n:
        raise InputError(f"features (N, d_v) and embeddings (N, d_l) must have the same N, got "
                         f"{tuple(features.shape)} and {tuple(embeddings.shape)}")
    dtype = config.torch_dtype(embeddings.dtype)
    weight = next(projector.parameters(), None) if isinstance(projector, torch.nn.Module) else None
    if weight is not None and weight.dtype != dtype:
        projector = copy.deepcopy(projector).to(dtype).eval()
    tokens = ImageTokens(features=features.to(dtype), embeddings=embeddings.to(dtype), model_embeddings=embeddings,
                         projector=projector, sample=0, image=0, grid=grid)
    k = kept_tokens(config.budget, n) if k is None else k
    with torch.no_grad():
        selection, _ = select_entry(scorer, selector, tokens, k, config.seed)
    return selection.kept
