"""``zoprune plugins``: every registered component and method, and the distribution that provides it."""

from __future__ import annotations

import json
import textwrap

import typer
from rich.text import Text

from zoprune.cli.app import app, console, err_console
from zoprune.cli.output import summary

_TITLES = {"adapter": "Adapters", "scorer": "Scorers", "selector": "Selectors"}


@app.command(short_help="Registered adapters, scorers, selectors and methods.")
def plugins() -> None:
    """List every registered adapter, scorer, selector and method, with the plugin and distribution providing it.

    One line per name (so `zoprune plugins | grep NAME` finds it), then its description and origin, indented
    and wrapped to the terminal.
    """
    from zoprune.registry import get_registry

    registry = get_registry()
    for kind, title in _TITLES.items():
        console.print(Text(title, style="bold"))
        for reg in (r for r in registry.all() if r.kind == kind):
            _entry(f"{reg.name}  ({kind})", summary(reg.cls.__doc__),
                   f"from {reg.distribution}, plugin {reg.plugin}")
        console.print()
    console.print(Text("Methods", style="bold") + Text("  (for --method; the budget comes from the command)",
                                                         style="dim"))
    for name, method in sorted(registry.methods.items()):
        why = registry.method_available(name)
        label = f"{name}  (method{', not available: ' + why if why else ''})"
        config = json.dumps(method.config, separators=(", ", ": "))
        _entry(label, method.description, f"{config}, from {method.distribution}, plugin {method.plugin}")
    for plugin, why in sorted(registry.failures.items()):
        err_console.print(Text(f"plugin {plugin!r} failed to load: ", style="red") + Text(why), highlight=False)
    if registry.failures:
        raise typer.Exit(1)


def _entry(label: str, description: str, origin: str) -> None:
    """``label`` on its own line, then the description and the origin indented below it, wrapped to the console
    without trailing spaces (plain text: brackets in descriptions, like ``[CLS]``, are not markup)."""
    console.print(Text("  " + label, style="cyan"), highlight=False)
    width = max(console.width, 40)
    for text, style in ((description, ""), (origin, "dim")):
        if text:
            console.print(Text(textwrap.fill(text, width, initial_indent=" " * 6, subsequent_indent=" " * 6),
                               style=style), highlight=False, soft_wrap=True)
