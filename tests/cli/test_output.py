"""What the commands print is readable at 80 columns and when piped to a file: no column squeezed to "…", no
line longer than the terminal, no reStructuredText markup, and every registered method listed."""

import os
import subprocess
import sys

from rich.console import Console
from rich.table import Table
from typer.testing import CliRunner

import zoprune
from zoprune.cli import app
from zoprune.cli.output import plain, print_table, summary

runner = CliRunner()


def assert_readable(output: str, width: int = 80) -> None:
    assert "…" not in output, output
    assert "``" not in output and ":class:" not in output, output
    for line in output.splitlines():
        assert len(line) <= width and line == line.rstrip(), repr(line)


def unwrapped(output: str) -> str:
    return " ".join(output.split())


def test_plugins_lists_every_component_and_method_at_80_columns():
    result = runner.invoke(app, ["plugins"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert_readable(result.output)
    registry = zoprune.get_registry()
    lines = result.output.splitlines()
    for reg in registry.all():
        assert f"  {reg.name}  ({reg.kind})" in lines, reg.name
        assert summary(reg.cls.__doc__) in unwrapped(result.output), reg.name  # the whole first paragraph
    assert len(registry.methods) >= 10
    for name, method in registry.methods.items():
        assert f"  {name}  (method)" in lines, name  # `zoprune plugins | grep zoo-prune` finds it
        assert method.description in unwrapped(result.output)
    assert "from zoprune-example, plugin example" in unwrapped(result.output)


def test_plugins_piped_to_a_file_is_plain_and_80_columns():
    # a real pipe: rich sees no terminal and no COLUMNS, so it must fall back to 80 columns without colour codes
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TERM")}
    code = "from zoprune.cli import app; app(['plugins'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout
    assert_readable(result.stdout)
    assert [line for line in result.stdout.splitlines() if "zoo-prune " in line] == ["  zoo-prune  (method)"]


def test_a_table_too_wide_for_the_console_prints_one_block_per_row():
    table = Table(title="wide")
    for header in ("method", *(f"column number {i}" for i in range(12))):
        table.add_column(header)
    table.add_row("zoo @ 4", *(f"{i}.123" for i in range(12)))
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    print_table(console, table)
    text = console.export_text()
    assert_readable(text)
    assert text.splitlines()[:3] == ["wide", "zoo @ 4", "  column number 0: 0.123"]
    assert "  column number 11: 11.123" in text.splitlines()
    narrow = Table()
    narrow.add_column("method")
    narrow.add_column("accuracy")
    narrow.add_row("zoo", "91.0%")
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    print_table(console, narrow)
    assert "┃ method ┃ accuracy ┃" in console.export_text()  # a table that fits stays a table


def test_bench_at_80_columns_shows_every_value():
    result = runner.invoke(app, ["bench", "--preset", "tiny", "--methods", "zoo", "--budgets", "4",
                                 "--new-tokens", "2"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert_readable(result.output)
    lines = result.output.splitlines()
    assert "zoo @ 4" in lines and "unpruned" in lines
    assert any(line.startswith("  vs oracle at 2 layers (est.): 1.") or
               line.startswith("  vs oracle at 2 layers (est.): 0.") for line in lines), result.output


def test_docstrings_become_plain_text():
    assert plain("keeps ``k`` tokens of :class:`~zoprune.Budget`\n    over two lines") == \
        "keeps k tokens of zoprune.Budget over two lines"
    assert summary("First paragraph\n    continues.\n\n    Second.") == "First paragraph continues."


def command_names():
    return [info.name or info.callback.__name__ for info in app.registered_commands if not info.hidden]


def test_help_at_80_columns_is_whole_and_flags_take_no_value():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert_readable(result.output)
    assert "..." not in result.output.split("Commands:")[1]  # no command's summary cut short (set short_help)
    for name in command_names():
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (name, result.output)
        assert_readable(result.output)
        assert "<bool>" not in result.output, name
    flags = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "80"}).output
    assert any(line.split()[:1] == ["--compare"] and "also answer" in line for line in flags.splitlines())
