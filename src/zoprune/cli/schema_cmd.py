"""``zoprune schema``: the JSON Schema of pipeline config files, for editors and validators."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from zoprune.cli.app import app, console, friendly_errors


@app.command(short_help="The JSON Schema of pipeline config files.")
@friendly_errors
def schema(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="write the schema to this file instead of stdout"),
    reference: bool = typer.Option(False, "--reference",
                                   help="print the config reference page (Markdown) instead: every installed "
                                        "component's parameters, plugins included"),
) -> None:
    """Print the JSON Schema of a pipeline config, with every installed component's parameters (or, with
    --reference, the config reference page for them).

    Point an editor at it (e.g. `# yaml-language-server: $schema=zoprune.schema.json` at the top of a YAML
    config) to get completion and errors while typing: `zoprune schema > zoprune.schema.json`.
    """
    from zoprune.reference import config_reference, pipeline_schema

    text = config_reference() if reference else json.dumps(pipeline_schema(), indent=2) + "\n"
    if out is None:
        typer.echo(text, nl=False)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    console.print(f"wrote {out}", highlight=False)
