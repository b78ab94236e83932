"""The module map in docs/development.md against the code's real imports (read with ast, imports inside functions
included): every module has a row, every import is one its row allows, no import cycle, the core and integrations do
not import the CLI (except the generated CLI reference) nor the built-in plugins, and no selector imports another."""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"zoprune": ROOT / "src" / "zoprune", "zoprune_plugins": ROOT / "plugins" / "zoprune_plugins"}
#: the one core module that may import the CLI: it generates the CLI reference page from the typer app
CLI_REFERENCE = "zoprune.reference"


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """Every module of ``packages`` (top-level name -> folder) by dotted name; a package by its own name."""
    modules = {}
    for top, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [top, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules``' packages that ``name`` imports: ``from a import b`` counts as ``a.b`` when that
    is a module, else as ``a``; relative imports are resolved."""
    tops = {module.split(".")[0] for module in modules}
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in tops}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] not in tops:
                continue
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return found - {name}


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    modules = module_files(packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def read_map(text: str) -> dict[str, list[str]]:
    """The ``## Module map`` table: module (or pattern) -> the modules (or patterns) it may import."""
    section = text.split("\n## Module map\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        module, _, allowed = cells
        rows[module.strip("`")] = re.findall(r"`([^`]+)`", allowed)
    return rows


def row_of(module: str, rows: dict[str, list[str]]) -> str | None:
    """The row that describes ``module``: its own, else the most specific ``*`` pattern that matches it."""
    if module in rows:
        return module
    patterns = [row for row in rows if "*" in row and fnmatch.fnmatchcase(module, row)]
    return max(patterns, key=len) if patterns else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm): each holds a cycle."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def problems(graph: dict[str, set[str]], rows: dict[str, list[str]]) -> list[str]:
    """Everything wrong with ``graph`` against the map ``rows`` and the layering rules, one line each."""
    found = []
    for module in sorted(graph):
        row = row_of(module, rows)
        if row is None:
            found.append(f"{module}: no row in the module map (docs/development.md)")
            continue
        for target in sorted(graph[module]):
            if not any(fnmatch.fnmatchcase(target, allowed) for allowed in rows[row]):
                found.append(f"{module} imports {target}, which its row `{row}` does not allow")
    for row in sorted(rows):
        if not any(row_of(module, rows) == row for module in graph):
            found.append(f"`{row}`: a row in the module map that no module matches")
    for component in cycles(graph):
        found.append(f"import cycle among {', '.join(component)}")
    for module in sorted(graph):
        for target in sorted(graph[module]):
            core = module.split(".")[0] == "zoprune" and not (module == "zoprune.cli"
                                                               or module.startswith("zoprune.cli."))
            if core and (target == "zoprune.cli" or target.startswith("zoprune.cli.")) and module != CLI_REFERENCE:
                found.append(f"{module} imports the CLI ({target}); only {CLI_REFERENCE} may")
            if module.split(".")[0] == "zoprune" and target.split(".")[0] == "zoprune_plugins":
                found.append(f"{module} imports the built-in plugins ({target}): the core finds them through "
                             f"entry points")
            if module.startswith("zoprune_plugins.selectors.") and target.startswith("zoprune_plugins.selectors."):
                found.append(f"selector {module} imports selector {target}: shared code goes in "
                             f"zoprune_plugins.selection")
    return found


def test_the_module_map_matches_the_real_imports():
    rows = read_map((ROOT / "docs" / "development.md").read_text(encoding="utf-8"))
    graph = import_graph(PACKAGES)
    assert len(graph) > 50 and "zoprune.pipeline" in graph and "zoprune_plugins.selection.greedy" in graph
    assert graph["zoprune_plugins.selectors.coverage"] >= {"zoprune_plugins.selection.greedy"}
    assert problems(graph, rows) == []


MAP = """
## Module map

| module | what it does | may import |
| --- | --- | --- |
| `pkg` | the package | `pkg.a` |
| `pkg.a` | a | `pkg.b` |
| `pkg.b` | b | none |
| `pkg.sel` | the selectors (package) | none |
| `pkg.sel.*` | one selector each | `pkg` |

## Next
"""


@pytest.mark.parametrize("files, expected", [
    ({"a.py": "from pkg import b\n"}, []),
    ({"b.py": None, "c.py": ""}, ["pkg.c: no row in the module map (docs/development.md)",
                                  "`pkg.b`: a row in the module map that no module matches"]),
    ({"a.py": "def f():\n    import pkg.sel.one\n"},
     ["pkg.a imports pkg.sel.one, which its row `pkg.a` does not allow",
      "import cycle among pkg, pkg.a, pkg.sel.one"]),
    ({"a.py": "from . import b\n", "b.py": "from pkg.a import x\n"},
     ["pkg.b imports pkg.a, which its row `pkg.b` does not allow", "import cycle among pkg.a, pkg.b"]),
    ({"sel/one.py": "from pkg.sel import two\n", "sel/two.py": "import pkg\n"},
     ["pkg.sel.one imports pkg.sel.two, which its row `pkg.sel.*` does not allow"]),
])
def test_the_check_finds_missing_rows_unlisted_imports_and_cycles(tmp_path, files, expected):
    # a small package laid out in tmp_path (None: a file left out): what the real check reports on it
    layout = {"__init__.py": "from pkg import a\n", "a.py": "", "b.py": "", "sel/__init__.py": "",
              "sel/one.py": "import pkg\n", **files}
    for name, text in layout.items():
        if text is not None:
            (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "pkg" / name).write_text(text)
    assert problems(import_graph({"pkg": tmp_path / "pkg"}), read_map(MAP)) == expected


def test_the_layering_rules_hold_whatever_the_map_allows():
    graph = {"zoprune.config": {"zoprune.cli.app", "zoprune_plugins.selectors.coverage"},
             "zoprune.reference": {"zoprune.cli.app"}, "zoprune.cli.app": set(),
             "zoprune_plugins.selectors.coverage": {"zoprune_plugins.selectors.divprune"},
             "zoprune_plugins.selectors.divprune": set()}
    rows = {"zoprune.*": ["*"], "zoprune_plugins.selectors.*": ["*"]}
    assert problems(graph, rows) == [
        "zoprune.config imports the CLI (zoprune.cli.app); only zoprune.reference may",
        "zoprune.config imports the built-in plugins (zoprune_plugins.selectors.coverage): the core finds them "
        "through entry points",
        "selector zoprune_plugins.selectors.coverage imports selector zoprune_plugins.selectors.divprune: shared "
        "code goes in zoprune_plugins.selection",
    ]
