"""What the commands print, readable at 80 columns and when redirected to a file.

Rich renders to the terminal's width, and to 80 columns when the output is piped. A table with more columns than
fit would squeeze them to a few characters or cut them with "…"; :func:`print_table` prints such a table as one
block of ``column: value`` lines per row instead. Docstrings are shown as plain text (:func:`summary`), without
their reStructuredText markup.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.table import Table
from rich.text import Text

_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc):`~?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``")


def plain(text: str) -> str:
    """``text`` without reStructuredText markup: ``x`` and :class:`x` become x, whitespace runs one space."""
    text = _ROLE.sub(r"\1", text)
    text = _LITERAL.sub(r"\1", text)
    return " ".join(text.split())


def summary(doc: str | None) -> str:
    """The first paragraph of a docstring as plain text: whole sentences, never cut at a line break."""
    return plain((doc or "").strip().split("\n\n")[0])


def table_fits(console: Console, table: Table) -> bool:
    """Whether every column of ``table`` gets at least its longest word and its header's longest word."""
    from rich.measure import Measurement

    # measured as if the console were unlimited: a measurement is otherwise clamped to the console's width
    needed = Measurement.get(console, console.options.update_width(10_000), table).minimum
    return needed <= console.width


def print_table(console: Console, table: Table) -> None:
    """``table`` as a table when it fits the console, otherwise one block per row of ``header: value`` lines
    (the first column heads the block), so nothing is squeezed or cut."""
    if table_fits(console, table):
        console.print(table)
        return
    headers = [column.header for column in table.columns]
    cells = [list(column.cells) for column in table.columns]
    if table.title:
        console.print(Text(str(table.title), style="bold"))
    for row in range(table.row_count):
        console.print(Text(str(cells[0][row]), style="bold"))
        for i in range(1, len(headers)):
            console.print(Text(f"  {headers[i]}: ", style="dim") + Text(str(cells[i][row])), highlight=False)
