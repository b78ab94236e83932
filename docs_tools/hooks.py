"""MkDocs hooks of the zoprune site (``hooks:`` in mkdocs.yml).

- Generates, at every build, the pages that must not drift from the code: ``reference/config.md`` (the parameters of
  zoprune's own components, from their pydantic models), ``reference/zoprune.schema.json`` (the JSON Schema of
  config files) and ``reference/cli.md`` (each command's ``--help``). They come from :mod:`zoprune.reference`; the
  site documents the ``zoprune`` distribution only, so what the builder has installed does not change it
  (``zoprune schema --reference`` writes the page for everything installed).
- Fills ``{{ shapes_example(SEED).question }}`` (and ``.answer``) with what ``make_example`` draws for that seed,
  so a page's example scene, its question and its expected answer cannot drift from the data generator.
- Renders the Sphinx-style roles of docstrings (``:class:`zoprune.Budget```) as plain code.
- Links from a page to a repository file outside ``docs/`` (``../src/zoprune/...``) point to the repository when
  ``repo_url`` is configured, and become plain code otherwise; a link to a file that does not exist is left alone,
  so the strict build still fails on it.
"""

from __future__ import annotations

import json
import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File

GENERATED = {
    "reference/config.md": lambda: _reference().config_reference(_own_registry(), site=True),
    "reference/cli.md": lambda: _reference().cli_reference(),
    "reference/zoprune.schema.json": lambda: json.dumps(_reference().pipeline_schema(_own_registry()), indent=2) + "\n",
}

_SHAPES_EXAMPLE = re.compile(r"\{\{ *shapes_example\((\d+)\)\.(question|answer) *\}\}")
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):(<code>)~?")
_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\(([^)\s]+)\)")


def _reference():
    from zoprune import reference

    return reference


def _own_registry():
    """zoprune's own components only: the site must not depend on which plugins the builder has installed."""
    from zoprune.registry import get_registry

    return get_registry().restricted_to({_reference().OWN_DISTRIBUTION})


def on_files(files, config):
    """Add the generated pages to the site (replacing stale copies, if any)."""
    for path, render in GENERATED.items():
        existing = files.get_file_from_path(path)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, path, content=render()))
    return files


def shapes_examples(markdown: str) -> str:
    """``{{ shapes_example(1).question }}`` becomes the question of ``make_example(numpy.random.default_rng(1))``."""

    def fill(match: re.Match) -> str:
        import numpy as np

        from zoprune.shapes.data import make_example

        return getattr(make_example(np.random.default_rng(int(match.group(1)))), match.group(2))

    return _SHAPES_EXAMPLE.sub(fill, markdown)


def on_page_markdown(markdown, page, config, files):
    """Fill the shapes examples, and point links to repository files outside docs/ at the repository (or drop the
    link when there is none)."""
    markdown = shapes_examples(markdown)
    docs_dir = Path(config["docs_dir"]).resolve()
    root = docs_dir.parent
    page_dir = (docs_dir / page.file.src_uri).parent
    repo_url = (config.get("repo_url") or "").rstrip("/")

    def rewrite(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = Path(posixpath.normpath((page_dir / path).as_posix()))
        try:
            resolved.relative_to(docs_dir)
            return match.group(0)  # inside docs/: mkdocs validates it
        except ValueError:
            pass
        if not resolved.exists():
            return match.group(0)  # broken: let mkdocs report it
        relative = resolved.relative_to(root).as_posix()
        if repo_url:
            return f"[{text}]({repo_url}/blob/main/{relative}{'#' + anchor if anchor else ''})"
        return text if text.startswith("`") else f"`{relative}`" if text == relative else text

    return _LINK.sub(rewrite, markdown)


def on_page_content(html, page, config, files):
    """``:class:`x``` in docstrings becomes ``x`` (mkdocstrings renders the backquoted part as code)."""
    return _ROLE.sub(r"\1", html)
