"""The three kinds of component a pipeline is made of: Scorer, Selector and ModelAdapter.

Plugins subclass these and register the subclasses through :mod:`zoprune.hookspecs`. Every component has a
``name`` (how configs refer to it) and a ``Config`` (a pydantic model of its parameters, validated before the
component is built).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, ContextManager, Literal

import torch
from pydantic import BaseModel, ConfigDict


class ComponentConfig(BaseModel):
    """Base of every component's parameters: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=True)


class NoParameters(ComponentConfig):
    """For components that take no parameters."""


@dataclass
class ImageTokens:
    """The visual tokens of one image (or one view of it), as an adapter found them.

    ``features`` and ``embeddings`` are in the pipeline's scoring dtype (float32 by default) and ``projector``
    computes in that dtype too, so scorers never meet the model's half precision.

    Attributes:
        features: (N, d_v), the projector's input, one row per visual token.
        embeddings: (N, d_l), the projector's output: what the language model would see.
        model_embeddings: (N, d_l), the same in the model's own dtype, exactly as the model computed it.
        projector: the projection layer in the scoring dtype, (..., d_v) -> (..., d_l).
        sample: which prompt of the batch the image belongs to.
        image: which image of that prompt, counted from 0.
        grid: (rows, cols) of the patch grid when the tokens form one (rows * cols == N), else None.
        extras: signals a scorer or selector asked for through its ``requires``, e.g. ``cls_attention`` of shape
            (N,), ``vision_keys`` of shape (N, d_head) or ``text_embeddings`` of shape (T, d_l) (the language
            model's input embeddings of the prompt's text tokens: neither visual placeholders nor padding).
    """

    features: torch.Tensor  # (N, d_v): the projector's input
    embeddings: torch.Tensor  # (N, d_l): the projector's output, what the language model would see
    model_embeddings: torch.Tensor  # (N, d_l): the same in the model's own dtype, exactly as the model computed it
    projector: Callable[[torch.Tensor], torch.Tensor]  # (..., d_v) -> (..., d_l)
    sample: int  # which prompt of the batch the image belongs to
    image: int  # which image of that prompt, counted from 0
    grid: tuple[int, int] | None = None  # (rows, cols) of the patch grid when the tokens form one, rows*cols == N
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # signals a scorer asked for, e.g. cls_attention

    @property
    def num_tokens(self) -> int:
        """N, the number of visual tokens."""
        return self.features.shape[0]


@dataclass
class Context:
    """What a scorer or selector may need besides the tokens: a seeded generator and the compute dtype.

    Attributes:
        generator: seeded from ``PipelineConfig.seed`` afresh for every image, on the tokens' device; draw every
            random number from it so that selections are reproducible and independent of the batch.
        dtype: the scoring dtype of ``ImageTokens.features`` and ``embeddings``.
    """

    generator: torch.Generator
    dtype: torch.dtype = torch.float32


class Scorer(ABC):
    """Visual tokens of one image -> one importance score per token (higher = more worth keeping)."""

    name: ClassVar[str]
    """How configs and commands refer to the component; unique among components of its kind."""
    Config: ClassVar[type[ComponentConfig]] = NoParameters
    """The pydantic model of its parameters, validated before the component is built."""
    requires: ClassVar[frozenset[str]] = frozenset()
    """Extra signals the adapter must put in ``ImageTokens.extras`` (e.g. ``{"cls_attention"}``)."""

    def __init__(self, config: ComponentConfig | None = None):
        self.config = config if config is not None else self.Config()

    def check_scoring_dtype(self, dtype: torch.dtype) -> None:
        """Raise a ConfigError when this scorer cannot give meaningful scores computed in ``dtype`` (``prune``
        calls this with the pipeline's scoring dtype, resolved against the model's). Any dtype by default."""

    @abstractmethod
    def score(self, tokens: ImageTokens, ctx: Context) -> torch.Tensor:
        """Score the N visual tokens of one image.

        ``tokens.features`` is (N, d_v) and ``tokens.embeddings`` (N, d_l); return the scores, shape (N,), float32,
        on the tokens' device, higher meaning more worth keeping. Randomness comes from ``ctx.generator`` only.
        """


@dataclass(frozen=True)
class Merge:
    """What a merging selector (``Selector.merges``) returns: original tokens kept as they are, plus tokens it built
    from the others. The language model sees ``len(kept) + M`` tokens for the image, which must equal the budget k.

    Where the merged tokens go is the adapter's job (``ModelAdapter.places_merged``): right after the image's kept
    tokens, in the order given here (VisionZip's layout: dominant tokens, then contextual ones).

    Attributes:
        kept: (k - M,) long, sorted indices into the N tokens kept unchanged.
        embeddings: (M, d_l), the merged tokens as the language model sees them (projector outputs), in the
            scoring dtype; the pipeline casts them to the model's dtype.
        groups: (N,) long, which merged token each of the N tokens went into (0..M-1), -1 for the kept ones.
    """

    kept: torch.Tensor  # (k - M,) long, sorted indices of the tokens kept unchanged
    embeddings: torch.Tensor  # (M, d_l): the merged tokens, projector outputs in the scoring dtype
    groups: torch.Tensor  # (N,) long: merged token of each token, -1 for kept ones


@dataclass(frozen=True)
class PrunedEmbedding:
    """One image (or video) as the language model sees it after pruning: the rows its placeholders receive.

    Attributes:
        sample: the prompt's index in the batch.
        image: which image of that prompt, counted from 0 (as ``ImageTokens.image``).
        kind: "image" or "video".
        embeddings: (k, d_l) in the model's dtype: exactly what the language model gets for this input, in
            placeholder order (the kept rows, then any merged ones).
        kept: (k - M,) long, sorted positions of the kept rows among the input's ``num_tokens`` unpruned ones
            (for LLaVA-NeXT: positions in the packed sequence, newline tokens included).
        num_tokens: L, the input's embeddings before pruning.
        num_merged: M, the rows at the end of ``embeddings`` that a merging selector built.
    """

    sample: int  # the prompt's index in the batch
    image: int  # which image of that prompt
    kind: str  # "image" or "video"
    embeddings: torch.Tensor  # (k, d_l), the model's dtype: what the language model sees
    kept: torch.Tensor  # (k - M,) long, sorted positions among the L unpruned rows
    num_tokens: int  # L, the rows before pruning
    num_merged: int = 0  # M merged rows at the end of ``embeddings``


class Selector(ABC):
    """Scores and projected features of one image, and a budget -> indices of the kept tokens."""

    name: ClassVar[str]
    """How configs and commands refer to the component; unique among components of its kind."""
    Config: ClassVar[type[ComponentConfig]] = NoParameters
    """The pydantic model of its parameters, validated before the component is built."""
    needs_scores: ClassVar[bool] = True
    """Whether ``select`` needs scores (a pipeline with such a selector and no scorer is a config error)."""
    merges: ClassVar[bool] = False
    """Whether ``select`` returns a :class:`Merge` (kept tokens plus merged ones) instead of indices."""
    requires: frozenset[str] = frozenset()
    """Extra signals the adapter must put in ``ImageTokens.extras`` for ``select`` (as ``Scorer.requires``); a plain
    attribute, so a selector may make it a property of its config."""
    resizes_images: ClassVar[bool] = False
    """Whether the pipeline first shrinks every image so that the vision tower emits about k tokens for it
    (``ModelAdapter.downsample``), and ``select`` then picks k of those (the ``downsample`` baseline)."""
    stage: ClassVar[Literal["pre_llm", "in_llm"]] = "pre_llm"
    """Where the selection runs. "pre_llm": on the vision tokens, before the language model sees them (the adapter's
    ``extract`` / ``pruned_inputs``). "in_llm": inside the language model, after its first layers ran on every
    token (the adapter's ``inside_llm``; such a selector must say which layer, see ``llm_layer``)."""

    @property
    def llm_layer(self) -> int:
        """For "in_llm" selectors: K, the first decoder layer that sees only the kept tokens (layers 0..K-1 see
        every token, and ``select`` runs on what enters layer K-1)."""
        raise NotImplementedError(f"selector {self.name!r} does not select inside the language model")

    def __init__(self, config: ComponentConfig | None = None):
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def select(self, scores: torch.Tensor | None, tokens: ImageTokens, k: int, ctx: Context) -> torch.Tensor | Merge:
        """Return k distinct indices into the N tokens, sorted ascending (original order), dtype long.

        ``scores`` has shape (N,) (None when the pipeline has no scorer); ``1 <= k <= N`` is guaranteed by the
        pipeline (and with k == N the pipeline keeps every token without calling ``select``). A selector with
        ``merges = True`` returns a :class:`Merge` whose kept indices and merged tokens add up to k.
        """


class ModelAdapter(ABC):
    """Knows one model family: where its visual tokens and projector are and how to run it on the kept ones."""

    name: ClassVar[str]
    """How configs and commands refer to the component; unique among components of its kind."""
    Config: ClassVar[type[ComponentConfig]] = NoParameters
    """The pydantic model of its parameters, validated before the component is built."""
    model_classes: ClassVar[tuple[str, ...]] = ()
    """Class names this adapter handles, used for auto-detection and for error messages."""
    provides: ClassVar[frozenset[str]] = frozenset()
    """The extra signals this adapter can provide to scorers (see ``Scorer.requires``)."""
    places_merged: ClassVar[bool] = False
    """Whether ``pruned_inputs`` accepts ``merged`` tokens (from selectors that return a :class:`Merge`)."""
    merge_groups: ClassVar[bool] = False
    """Whether ``pruned_inputs`` also takes ``groups`` next to ``merged``: per entry, the (N,) merged token each token
    went into (-1: none), so that a merged token can be placed by its members (Qwen: their mean 3-D position)."""
    resizes_images: ClassVar[bool] = False
    """Whether :meth:`downsample` can shrink images (families whose vision tower takes any resolution)."""
    why_no_resize: ClassVar[str] = (
        "feeds a fixed-resolution encoder (every image is resized to the same input size and becomes the same "
        "number of tokens, its position embeddings learned for that grid), so a smaller image would only be scaled "
        "back up")
    """Why :meth:`downsample` is not available, for the ConfigError (when ``resizes_images`` is False)."""
    position_modes: frozenset[str] = frozenset({"contiguous"})
    """The ``PipelineConfig.positions`` values this adapter honours. With ``"original"`` in it, ``pruned_inputs`` is
    called with ``positions="original"`` when the config asks for it, and then gives the language model the rotary
    positions the kept tokens had in the unpruned prompt (as ``position_ids``). A plain attribute, so an adapter may
    make it a property of the model it wraps; ``prune`` refuses a config whose mode is not in it."""

    def __init__(self, model: torch.nn.Module, config: ComponentConfig | None = None):
        self.model = model
        self.config = config if config is not None else self.Config()

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        """Whether this adapter can handle ``model`` (by default: its class name is in ``model_classes``)."""
        return type(model).__name__ in cls.model_classes

    #: whether ``supports`` goes by ``model_classes`` alone; an adapter that recognises models by their shape sets
    #: it False and says in ``missing`` what a model lacks, which the error for an unsupported model then names
    model_classes_only: ClassVar[bool] = True

    @classmethod
    def missing(cls, model: torch.nn.Module) -> str | None:
        """What ``model`` lacks for this adapter, or None when it is supported."""
        return None if cls.supports(model) else f"its class is not one of {', '.join(cls.model_classes)}"

    @abstractmethod
    def projector(self) -> torch.nn.Module:
        """The projection layer (vision features -> language-model embeddings), as the model holds it."""

    @abstractmethod
    def extract(
        self, inputs: dict[str, Any], projector: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype,
        extras: frozenset[str] = frozenset(),
    ) -> list[ImageTokens]:
        """Run the vision side on the model inputs and return every image's tokens, in batch order.

        ``projector`` is the projection layer in ``dtype``; the returned tokens carry it, with ``features`` and
        ``embeddings`` cast to ``dtype`` and ``model_embeddings`` exactly as the model computes them.
        ``extras`` names the signals scorers asked for.
        """

    def downsample(self, inputs: dict[str, Any], keep: int) -> dict[str, Any]:
        """``inputs`` with every image resized, before the vision tower, so that the tower emits about ``keep``
        tokens for it: the fewest at the image's aspect ratio that are at least ``keep`` (images already that small
        stay as they are). Placeholders and every per-token input follow. Only adapters with ``resizes_images``
        implement it; a fixed-resolution encoder cannot emit fewer tokens for a smaller image."""
        from zoprune.errors import ConfigError

        raise ConfigError(f"adapter {self.name!r} cannot resize images before its vision tower")

    def token_budgets(self, budget: Any, images: list[ImageTokens]) -> list[int]:
        """How many tokens each entry of ``images`` keeps under ``budget`` (a :class:`zoprune.Budget`).

        By default the budget applies to every entry on its own. An adapter that emits several entries for one image
        or video (its views, its frames) overrides this to share that input's budget between them. Each count must
        lie in ``[1, N]`` of its entry.
        """
        return [budget.tokens_for(tokens.num_tokens) for tokens in images]

    def inside_llm(
        self, inputs: dict[str, Any], layer: int, select: Callable[[list[ImageTokens]], list[torch.Tensor]],
        dtype: torch.dtype,
    ) -> ContextManager[Any]:
        """A context in which the model, called on the unpruned ``inputs`` (forward or ``generate``), runs decoder
        layers ``0..layer-1`` on every token and the later layers on the kept visual tokens only.

        In the prefill the adapter calls ``select(images)`` once, with one :class:`ImageTokens` per image as the
        tokens enter layer ``layer - 1`` (features = embeddings = those hidden states in ``dtype``; ``extras`` hold
        what the adapter documents, e.g. ``llm_attention``), and gets the sorted kept indices of each. Kept tokens
        keep their original positions; with every token kept, outputs equal the unpruned model's (up to rounding).
        Adapters that cannot do this keep this default, which raises.
        """
        from zoprune.errors import UnsupportedModelError

        raise UnsupportedModelError(f"adapter {self.name!r} cannot prune inside the language model; use a "
                                    f"selector that prunes before it, or an adapter that implements inside_llm")

    def pruned_embeddings(
        self, images: list[ImageTokens], kept: list[torch.Tensor], merged: list[torch.Tensor | None] | None = None,
    ) -> list[PrunedEmbedding]:
        """Per image or video, the embeddings the language model gets for it after pruning: exactly the rows that
        :meth:`pruned_inputs` hands the model, one :class:`PrunedEmbedding` per input in the order the model
        consumes them (images in batch order).

        By default each entry of ``images`` is one whole image: its kept rows of ``model_embeddings``, then its
        merged tokens. An adapter that emits several entries per input, or keeps rows no entry covers, overrides
        this.
        """
        merged = merged if merged is not None else [None] * len(images)
        out = []
        for tokens, indices, extra in zip(images, kept, merged):
            rows = tokens.model_embeddings[indices.to(tokens.model_embeddings.device)]  # (k - M, d_l)
            if extra is not None:
                rows = torch.cat([rows, extra.to(rows.device)])
            out.append(PrunedEmbedding(tokens.sample, tokens.image, "image", rows, indices.to(torch.long),
                                       tokens.num_tokens, 0 if extra is None else extra.shape[0]))
        return out

    @abstractmethod
    def pruned_inputs(
        self, inputs: dict[str, Any], images: list[ImageTokens], kept: list[torch.Tensor],
        merged: list[torch.Tensor | None] | None = None,
    ) -> dict[str, Any]:
        """Model keyword arguments equivalent to ``inputs`` with only the kept visual tokens of each image.

        ``kept[i]`` holds the sorted indices kept of ``images[i]``. The result goes to the model's own
        ``forward`` or ``generate`` unchanged; with every token kept, it must give exactly the same outputs.

        Adapters with ``places_merged`` may be given ``merged``: ``merged[i]`` is None or the
        (M_i, d_l) merged tokens of ``images[i]`` in the model's dtype, which the language model must see right
        after that entry's kept tokens (the entry then has ``len(kept[i]) + M_i`` positions in the prompt).

        Adapters with ``"original"`` in ``position_modes`` are also given ``positions="original"`` (only then: the
        default call is the one above), and must then place every kept token at the rotary position it had in the
        unpruned prompt, the text after the image included, so that generation continues from the unpruned length.
        """
