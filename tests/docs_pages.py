"""Reading documentation pages as a reader sees them, without building the site: snippet includes resolved
(``--8<-- "path:section"``, as pymdownx.snippets does) and the shapes examples filled (as docs_tools/hooks.py does),
then the fenced code blocks taken out so tests can run them."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_INCLUDE = re.compile(r'^(?P<indent>[ \t]*)--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"[ \t]*$', re.M)
_MARKER = re.compile(r"--8<-- \[(?:start|end):[\w-]+\]")
_FENCE = re.compile(r"^```(?P<lang>\w*)[^\n]*\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)


def hooks():
    spec = importlib.util.spec_from_file_location("zoprune_docs_hooks", ROOT / "docs_tools" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def include(path: str, section: str | None) -> str:
    text = (ROOT / path).read_text()
    if section is not None:
        start, end = f"--8<-- [start:{section}]", f"--8<-- [end:{section}]"
        assert start in text and end in text, (path, section)
        text = text.split(start, 1)[1].split("\n", 1)[1].split(end, 1)[0].rsplit("\n", 1)[0] + "\n"
    return "".join(line + "\n" for line in text.splitlines() if not _MARKER.search(line))


def page_markdown(page: str) -> str:
    """docs/``page`` with its includes resolved and its shapes examples filled."""
    markdown = (ROOT / "docs" / page).read_text()
    markdown = _INCLUDE.sub(lambda m: include(m["path"], m["section"]).rstrip("\n"), markdown)
    return hooks().shapes_examples(markdown)


def code_blocks(page: str, lang: str) -> list[str]:
    """The fenced ``lang`` code blocks of docs/``page``, in order, as the reader sees them."""
    return [m["body"] for m in _FENCE.finditer(page_markdown(page)) if m["lang"] == lang]
