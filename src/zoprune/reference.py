"""Generated reference material: the JSON Schema of the pipeline config, the config reference page and the
command-line reference page.

Everything here is computed from what is registered (:func:`zoprune.get_registry`) and from the pydantic models
and typer commands themselves, so a newly installed plugin appears in the schema and the reference pages without
anyone writing them. ``zoprune schema`` prints the schema; the documentation site builds the pages with these
functions (see ``docs_tools/hooks.py``).
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from zoprune.config import Budget, PipelineConfig
from zoprune.registry import Registry, get_registry

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
KINDS = ("adapter", "scorer", "selector")
_KIND_TITLES = {"adapter": "Adapters", "scorer": "Scorers", "selector": "Selectors"}


def pipeline_schema(registry: Registry | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a pipeline config file, for editors and validators.

    ``adapter``, ``scorer`` and ``selector`` accept a registered name (a string) or a mapping discriminated by
    ``name``: each name brings its own component's parameter schema (``if name == X then X's parameters``), so a
    parameter that another component takes is rejected. ``budget`` accepts ``keep`` or ``ratio`` and the
    shorthands ``64`` and ``0.25``. What a schema cannot say (a selector that needs scores with ``scorer: null``)
    is still checked by :class:`zoprune.PipelineConfig` when the file is loaded.

    Args:
        registry: where the components come from; the process-wide registry when None.

    Returns:
        The schema as a JSON-serialisable dict.
    """
    registry = registry or get_registry()
    entries = [(kind, reg.name, reg.cls.Config) for kind in KINDS for reg in _sorted(registry, kind)]
    models = [(model, "validation") for model in {id(m): m for _, _, m in entries}.values()]
    models.append((PipelineConfig, "validation"))
    keys, top = models_json_schema(models, ref_template="#/$defs/{model}")
    defs: dict[str, Any] = top.get("$defs", {})

    def resolved(model: type[BaseModel]) -> dict[str, Any]:
        ref = keys[(model, "validation")]["$ref"]
        return defs[ref.rsplit("/", 1)[-1]]

    pipeline = copy.deepcopy(resolved(PipelineConfig))
    out_defs: dict[str, Any] = {}
    for kind in KINDS:
        names = [reg.name for reg in _sorted(registry, kind)]
        branches = []
        for entry_kind, name, model in entries:
            if entry_kind != kind:
                continue
            params = resolved(model)
            key = f"{kind}.{name}"
            out_defs[key] = {
                "title": f"{kind} {name!r}",
                "description": _first_line(registry.get(kind, name).cls.__doc__),
                "type": "object",
                "properties": {"name": {"const": name}, **copy.deepcopy(params.get("properties", {}))},
                "required": ["name", *params.get("required", [])],
                "additionalProperties": False,
            }
            branches.append({"if": {"properties": {"name": {"const": name}}, "required": ["name"]},
                             "then": {"$ref": f"#/$defs/{key}"}})
        out_defs[kind] = {
            "title": f"{kind}: its name, or a mapping of its name and parameters",
            "anyOf": [
                {"type": "string", "enum": names},
                {"type": "object", "required": ["name"], "properties": {"name": {"enum": names}}, "allOf": branches},
            ],
        }
    # shared definitions the parameter models refer to (enums, nested models), minus the models inlined above
    inlined = {keys[(m, "validation")]["$ref"].rsplit("/", 1)[-1] for m, _ in models}
    out_defs.update({k: v for k, v in defs.items() if k not in inlined})

    budget = copy.deepcopy(resolved(Budget)) if (Budget, "validation") in keys else _budget_schema(defs, pipeline)
    budget["oneOf"] = [{"required": ["keep"], "properties": {"ratio": {"type": "null"}}},
                       {"required": ["ratio"], "properties": {"keep": {"type": "null"}}}]
    out_defs["budget"] = {
        "title": "tokens kept per image",
        "anyOf": [
            {"type": "integer", "minimum": 1, "description": "shorthand of {keep: N}"},
            {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "shorthand of {ratio: r}"},
            budget,
        ],
    }

    properties = copy.deepcopy(pipeline["properties"])
    properties["adapter"] = {"anyOf": [{"$ref": "#/$defs/adapter"}, {"type": "null"}],
                             "description": _description(PipelineConfig, "adapter")}
    properties["scorer"] = {"anyOf": [{"$ref": "#/$defs/scorer"}, {"type": "null"}, {"const": "none"}],
                            "description": _description(PipelineConfig, "scorer")}
    properties["selector"] = {"$ref": "#/$defs/selector", "description": _description(PipelineConfig, "selector")}
    properties["budget"] = {"$ref": "#/$defs/budget", "description": _description(PipelineConfig, "budget")}
    for field in ("scorer", "selector", "budget"):
        properties[field]["default"] = _json_default(PipelineConfig, field)
    schema = {
        "$schema": SCHEMA_DIALECT,
        "title": "zoprune pipeline config",
        "description": _first_line(PipelineConfig.__doc__),
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "$defs": dict(sorted(out_defs.items())),
    }
    return _drop_unreferenced(schema)


OWN_DISTRIBUTION = "zoprune"  # the distribution whose components the documentation site documents


def config_reference(registry: Registry | None = None, site: bool = False) -> str:
    """The config reference page (Markdown): the pipeline's keys, then every registered component's parameters
    with type, default, allowed values and description, then the registered methods.

    Args:
        registry: where the components come from; the process-wide registry when None.
        site: the page of the documentation site, which says that it documents zoprune's own components and how
            to generate the page for an installation with plugins (``zoprune schema --reference``).
    """
    registry = registry or get_registry()
    if site:
        scope = ["The parameters of zoprune's own components, read from their pydantic models. Installed plugins",
                 "add their own: `zoprune schema --reference > reference.md` writes this page for every component",
                 "installed, and `zoprune schema > zoprune.schema.json` the JSON Schema to match."]
    else:
        scope = ["Every parameter of every installed component, read from the components' own pydantic models."]
    lines = [
        "# Config reference",
        "",
        "<!-- generated by zoprune.reference.config_reference when the site is built: do not edit -->",
        "",
        *scope,
        "",
        "A component is configured by name, with its parameters next to the name",
        "(`scorer: {name: zo_sensitivity, directions: 32}`); see [Configs](../concepts/config.md). Editors can",
        "validate config files against the [JSON Schema](zoprune.schema.json)",
        "(`zoprune schema > zoprune.schema.json`).",
        "",
        "## Pipeline",
        "",
        *_table(PipelineConfig, skip=()),
        "",
        "`budget` is a mapping with exactly one of these keys, or a shorthand: `budget: 64` keeps 64 tokens,",
        "`budget: 0.25` a quarter of them.",
        "",
        *_table(Budget, skip=()),
        "",
    ]
    for kind in KINDS:
        lines += [f"## {_KIND_TITLES[kind]}", ""]
        for reg in _sorted(registry, kind):
            cls = reg.cls
            lines += [f"### `{reg.name}`", "", _first_line(cls.__doc__) or "", "",
                      f"Provided by `{reg.distribution}` (plugin `{reg.plugin}`); class "
                      f"`{cls.__module__}.{cls.__qualname__}`.", ""]
            extra = _component_facts(kind, cls)
            if extra:
                lines += [extra, ""]
            if cls.Config.model_fields:
                lines += _table(cls.Config)
            else:
                lines.append("No parameters.")
            lines.append("")
    lines += ["## Methods", "",
              "Named pipelines, for `zoprune eval --method NAME` and `zoprune show --method NAME`. Each is a partial",
              "config: the budget comes from the command.", "",
              "| method | config | description | provided by |", "|---|---|---|---|"]
    for name, method in sorted(registry.methods.items()):
        config = json.dumps(method.config, separators=(", ", ": "))
        lines.append(f"| `{name}` | `{config}` | {_cell(method.description)} | `{method.distribution}` |")
    if registry.failures:
        lines += ["", "## Plugins that failed to load", ""]
        lines += [f"- `{plugin}`: {_cell(why)}" for plugin, why in sorted(registry.failures.items())]
    return "\n".join(lines) + "\n"


def cli_reference(app: Any = None, width: int = 100) -> str:
    """The command-line reference page (Markdown): the ``--help`` of ``zoprune`` and of each of its commands, as the
    typer application renders it, so the page is what users see in their terminal.

    Args:
        app: the typer application; ``zoprune.cli.app`` when None.
        width: the terminal width the help is rendered for, in characters.
    """
    from typer.testing import CliRunner

    if app is None:
        from zoprune.cli import app
    runner = CliRunner()

    def help_text(*args: str) -> str:
        result = runner.invoke(app, [*args, "--help"], prog_name="zoprune",
                               env={"COLUMNS": str(width), "NO_COLOR": "1", "TERM": "dumb"})
        if result.exit_code != 0:
            raise RuntimeError(f"zoprune {' '.join(args)} --help failed: {result.output}")
        return "\n".join(line.rstrip() for line in result.output.strip("\n").splitlines())

    lines = ["# Command line", "",
             "<!-- generated by zoprune.reference.cli_reference when the site is built: do not edit -->", "",
             "Every command's `--help`, rendered from the installed `zoprune` command.", "",
             "```text", help_text(), "```", ""]
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        if info.hidden:
            continue
        lines += [f"## `zoprune {name}`", "", "```text", help_text(name), "```", ""]
    return "\n".join(lines)


# -- helpers -----------------------------------------------------------------------------------------------------


def _drop_unreferenced(schema: dict[str, Any]) -> dict[str, Any]:
    """Remove the ``$defs`` that nothing refers to (the pydantic models inlined into the component schemas)."""
    defs = schema["$defs"]
    used: set[str] = set()
    pending = [{k: v for k, v in schema.items() if k != "$defs"}]
    while pending:
        text = json.dumps(pending.pop())
        for name in re.findall(r'"#/\$defs/([^"]+)"', text):
            if name not in used and name in defs:
                used.add(name)
                pending.append(defs[name])
    schema["$defs"] = {k: v for k, v in defs.items() if k in used}
    return schema


def _sorted(registry: Registry, kind: str):
    return [registry.components[kind][name] for name in sorted(registry.components[kind])]


def _first_line(doc: str | None) -> str:
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    return text


def _clean(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _description(model: type[BaseModel], field: str) -> str:
    return model.model_fields[field].description or ""


def _json_default(model: type[BaseModel], field: str) -> Any:
    default = model.model_fields[field].get_default(call_default_factory=True)
    if isinstance(default, BaseModel):
        return default.model_dump(mode="json", exclude_none=True)
    return default


def _budget_schema(defs: dict[str, Any], pipeline: dict[str, Any]) -> dict[str, Any]:
    ref = pipeline["properties"]["budget"].get("$ref", "")
    return copy.deepcopy(defs.get(ref.rsplit("/", 1)[-1], {"type": "object"}))


def _component_facts(kind: str, cls: type) -> str:
    facts = []
    if kind == "scorer" and getattr(cls, "requires", None):
        facts.append("needs the adapter to provide " + ", ".join(f"`{r}`" for r in sorted(cls.requires)))
    if kind == "selector":
        if not getattr(cls, "needs_scores", True):
            facts.append("uses no scores (`scorer: null`)")
        if getattr(cls, "stage", "pre_llm") == "in_llm":
            facts.append("selects inside the language model")
        if getattr(cls, "merges", False):
            facts.append("merges tokens: the budget counts the kept and the merged ones, which adapters with "
                         "`places_merged` put right after the kept ones")
    if kind == "adapter":
        if getattr(cls, "model_classes", ()):
            facts.append("model classes: " + ", ".join(f"`{c}`" for c in cls.model_classes))
        if getattr(cls, "provides", None):
            facts.append("provides " + ", ".join(f"`{p}`" for p in sorted(cls.provides)))
    return ("Facts: " + "; ".join(facts) + ".") if facts else ""


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    schema = model.model_json_schema(ref_template="{model}")
    properties = schema.get("properties", {})
    rows = ["| key | type | default | allowed | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        prop = properties.get(name, {})
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            if isinstance(value, BaseModel):
                value = value.model_dump(mode="json", exclude_none=True)
                if set(value) == {"name"}:
                    value = value["name"]
            default = f"`{json.dumps(value)}`"
        allowed = _allowed(prop)
        if name in KINDS and model is PipelineConfig:
            allowed = f"a registered {name} name ([below](#{name}s))" + ("; `null`" if name != "selector" else "")
        elif name == "budget" and model is PipelineConfig:
            allowed = "`keep` or `ratio` (below), or a shorthand"
        rows.append(f"| `{name}` | {_type_name(field.annotation)} | {default} | {allowed} | "
                    f"{_cell(field.description or '')} |")
    return rows


def _type_name(annotation: Any) -> str:
    import types
    import typing

    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        kinds = sorted({type(a).__name__ for a in typing.get_args(annotation)})
        return " or ".join(f"`{k}`" for k in kinds)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "`null`"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"ComponentSpec": "component", "Budget": "budget"}.get(annotation.__name__, annotation.__name__)
    name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
    return f"`{name}`"


def _allowed(prop: dict[str, Any]) -> str:
    options = prop.get("anyOf", [prop])
    parts = []
    for option in options:
        if option.get("type") == "null":
            continue
        bounds = []
        if "minimum" in option:
            bounds.append(f">= {option['minimum']}")
        if "exclusiveMinimum" in option:
            bounds.append(f"> {option['exclusiveMinimum']}")
        if "maximum" in option:
            bounds.append(f"<= {option['maximum']}")
        if "exclusiveMaximum" in option:
            bounds.append(f"< {option['exclusiveMaximum']}")
        if "minLength" in option:
            bounds.append(f"length >= {option['minLength']}")
        if bounds:
            parts.append(", ".join(bounds))
        if "enum" in option:
            parts.append(" \\| ".join(f"`{json.dumps(v)}`" for v in option["enum"]))
    if any(option.get("type") == "null" for option in options):
        parts.append("`null`")
    return "; ".join(parts) if parts else "any"


def _plain_default(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)
