"""The declarative pipeline config: which adapter, scorer and selector, with what budget, seed and dtype.

Loadable from YAML, TOML or JSON files and buildable from Python. Every component's parameters are validated by that
component's own pydantic model, so ``scorer: {name: zo_sensitivity, directions: 0}`` fails with a message that names
``scorer.directions``, the value and what is allowed.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zoprune.errors import ConfigError, PluginError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ScoringDtype = Literal["float32", "float64", "bfloat16", "float16", "model"]
Positions = Literal["contiguous", "original"]


class ComponentSpec(BaseModel):
    """A component chosen by name, with its parameters next to the name: ``{name: coverage, fusion: sum}``."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1, description="the registered name of the component")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        if isinstance(value, dict) and "name" not in value:
            given = ", ".join(map(str, value)) or "none"
            raise ValueError(f"no `name` key (keys given: {given}); say which component, as in "
                             "`{name: coverage, ...}`")
        return {"name": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        """The parameters: every key but ``name``, not yet validated (the component's ``Config`` does that)."""
        return dict(self.model_extra or {})


class Budget(BaseModel):
    """How many visual tokens each image keeps: a count (``keep``) or a fraction of its tokens (``ratio``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    keep: int | None = Field(default=None, ge=1, description="tokens kept per image (all of them when larger)")
    ratio: float | None = Field(default=None, gt=0, le=1, description="fraction of each image's tokens kept, in (0, 1]")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        # `budget: 64` means keep 64; `budget: 0.25` means keep a quarter
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return {"keep": value}
        if isinstance(value, float):
            return {"ratio": value}
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> "Budget":
        if (self.keep is None) == (self.ratio is None):
            raise ValueError("give exactly one of `keep` (tokens per image) or `ratio` (fraction in (0, 1])")
        return self

    def tokens_for(self, num_tokens: int) -> int:
        """How many of ``num_tokens`` to keep: at least 1, at most all of them."""
        if self.keep is not None:
            return min(self.keep, num_tokens)
        return max(1, min(num_tokens, math.floor(self.ratio * num_tokens + 0.5)))


class PipelineConfig(BaseModel):
    """Everything ``zoprune.prune`` needs to know. The defaults are the paper's ZOO-Prune (m = 64, h = 0.01)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    adapter: ComponentSpec | None = Field(
        default=None, description="model adapter by name; detected from the model class when omitted"
    )
    scorer: ComponentSpec | None = Field(
        default=ComponentSpec(name="zo_sensitivity"), description="token scorer; null for selectors that need none"
    )
    selector: ComponentSpec = Field(default=ComponentSpec(name="coverage"), description="token selector")
    budget: Budget = Field(default=Budget(keep=64), description="tokens kept per image")
    seed: int = Field(default=0, ge=-(2**63), le=2**64 - 1,
                      description="seed of every random draw (perturbation directions, random baselines); any "
                      "integer a torch.Generator takes")
    scoring_dtype: ScoringDtype = Field(
        default="float32", description="dtype of the scoring computations; 'model' uses the model's own dtype. "
        "zo_sensitivity refuses bfloat16 and float16 (its finite differences would measure rounding)"
    )
    positions: Positions = Field(
        default="contiguous", description="rotary positions of the tokens after pre-LLM pruning: 'contiguous' "
        "renumbers the shorter sequence densely (the papers' LLaVA setting); 'original' keeps the positions the "
        "tokens had in the unpruned prompt (1-D RoPE families; Qwen's 3-D M-RoPE keeps them either way; in-LLM "
        "selectors always keep them)"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_scorer(cls, data: Any) -> Any:
        # TOML has no null: `scorer = "none"` spells "no scorer" in every format
        if isinstance(data, dict) and isinstance(data.get("scorer"), str) and data["scorer"].lower() == "none":
            data = {**data, "scorer": None}
        return data

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise ConfigError(format_validation_error(error, type(self))) from None

    @model_validator(mode="after")
    def _validate_components(self) -> "PipelineConfig":
        from zoprune.registry import get_registry

        problems = []  # every component's, not only the first one's
        for kind in ("adapter", "scorer", "selector"):
            spec = getattr(self, kind)
            if spec is not None:
                try:
                    component_config(kind, spec)
                except ValueError as error:
                    problems.append(str(error))
        if problems:
            raise ValueError("\n  ".join(problems))
        if get_registry().get("selector", self.selector.name).cls.needs_scores and self.scorer is None:
            raise ValueError(f"selector {self.selector.name!r} needs scores, but `scorer` is null")
        return self

    def component(self, kind: Literal["adapter", "scorer", "selector"]) -> tuple[type, BaseModel] | None:
        """The registered class of a component and its validated parameters, or None when not configured."""
        spec = getattr(self, kind)
        if spec is None:
            return None
        from zoprune.registry import get_registry

        return get_registry().get(kind, spec.name).cls, component_config(kind, spec)

    def torch_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """The torch dtype of the scoring: ``scoring_dtype``, or ``model_dtype`` when it is ``"model"``."""
        return model_dtype if self.scoring_dtype == "model" else getattr(torch, self.scoring_dtype)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict that ``PipelineConfig(**d)`` reads back (component parameters flattened next to names)."""
        out: dict[str, Any] = self.model_dump(exclude_none=True, exclude={"adapter", "scorer", "selector", "budget"})
        for kind in ("adapter", "scorer", "selector"):
            spec = getattr(self, kind)
            out[kind] = None if spec is None else {"name": spec.name, **spec.params}
        if self.adapter is None:
            del out["adapter"]
        out["budget"] = self.budget.model_dump(exclude_none=True)
        return out

    def resolved_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with every component's parameters written out, defaults included: exactly what runs."""
        out = self.to_dict()
        for kind in ("adapter", "scorer", "selector"):
            found = self.component(kind)
            if found is not None:
                out[kind] = {"name": getattr(self, kind).name, **found[1].model_dump(mode="json")}
        return out

    @classmethod
    def load(cls, path: str | Path) -> "PipelineConfig":
        """Read a config from a .yaml/.yml, .toml or .json file."""
        return cls.from_dict(read_config_file(path), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str | None = None) -> "PipelineConfig":
        """Validate a mapping; ``source`` (a file name) prefixes error messages."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source or 'config'}: expected a mapping of config keys, got {type(data).__name__}")
        try:
            return cls(**data)
        except ConfigError as error:
            if source is None:
                raise
            raise ConfigError(f"{source}: {error}") from None

    def save(self, path: str | Path) -> None:
        """Write the config to a .yaml/.yml, .toml or .json file (by its suffix)."""
        path = Path(path)
        data = self.to_dict()
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            import yaml

            path.write_text(yaml.safe_dump(data, sort_keys=False))
        elif suffix == ".json":
            path.write_text(json.dumps(data, indent=2) + "\n")
        elif suffix == ".toml":
            path.write_text(_to_toml(data))
        else:
            raise ConfigError(f"{path}: unknown config format {suffix!r}; use .yaml, .yml, .toml or .json")


def component_config(kind: str, spec: ComponentSpec) -> BaseModel:
    """Validate a component's parameters with its own Config model; errors name ``kind.key``."""
    from zoprune.registry import get_registry

    try:
        registered = get_registry().get(kind, spec.name)
    except PluginError as error:
        raise ValueError(f"{kind}.name: {error}") from None
    try:
        return registered.cls.Config(**spec.params)
    except ValidationError as error:
        # the problems alone: the config's own validation wraps them once more, with the "invalid config" heading
        raise ValueError("\n  ".join(validation_problems(error, registered.cls.Config, prefix=f"{kind}."))) from None


def format_validation_error(error: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line per problem: ``key = value: what is wrong`` (listing the allowed keys for unknown ones)."""
    lines = validation_problems(error, model, prefix)
    if len(lines) == 1 and "\n" not in lines[0]:
        return "invalid config: " + lines[0]
    return "invalid config:\n  " + "\n  ".join(lines)


def validation_problems(error: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """The problems of ``error``, one string each: ``key = value: what is wrong``."""
    lines = []
    for item in error.errors():
        loc = ".".join(str(part) for part in item["loc"])
        where = prefix + loc if loc else prefix.rstrip(".") or "config"
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        if item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, item["loc"][:-1])
            message = f"unknown key; allowed keys: {', '.join(allowed)}" if allowed else "unknown key"
        if item["type"] in ("value_error", "assertion_error") and not loc:
            lines.append(message)  # already names its keys
        else:
            lines.append(f"{where} = {item['input']!r}: {message}")
    return lines


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def read_config_file(path: str | Path) -> Any:
    """The raw contents of a .yaml/.yml, .toml or .json file (not validated); a ConfigError names the file when it
    is missing, unreadable or of an unknown format."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        if suffix == ".toml":
            return tomllib.loads(text)
        if suffix == ".json":
            return json.loads(text)
    except Exception as error:  # parser errors differ per format; all mean the same to the user
        raise ConfigError(f"{path}: not valid {suffix[1:].upper()}: {error}") from None
    raise ConfigError(f"{path}: unknown config format {suffix!r}; use .yaml, .yml, .toml or .json")


def _to_toml(data: dict[str, Any]) -> str:
    data = {k: ("none" if k == "scorer" and v is None else v) for k, v in data.items()}
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{k} = {json.dumps(v)}" for k, v in scalars.items()]
    for name, table in tables.items():
        lines += ["", f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"
