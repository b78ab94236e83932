"""``zoprune plugins``: every registered component and the distribution that provides it."""

from __future__ import annotations

import typer
from rich.table import Table

from zoprune.cli.app import app, console, err_console


@app.command()
def plugins() -> None:
    """List every registered scorer, selector and adapter, with the plugin and distribution providing it."""
    from zoprune.registry import get_registry

    registry = get_registry()
    table = Table(title="zoprune components")
    for column in ("kind", "name", "distribution", "plugin"):
        table.add_column(column, no_wrap=True)
    table.add_column("description", overflow="fold")
    for reg in registry.all():
        doc = (reg.cls.__doc__ or "").strip().splitlines()
        table.add_row(reg.kind, reg.name, reg.distribution, reg.plugin, doc[0] if doc else "")
    console.print(table)
    for plugin, why in sorted(registry.failures.items()):
        err_console.print(f"[red]plugin {plugin!r} failed to load:[/] {why}", highlight=False)
    if registry.failures:
        raise typer.Exit(1)
