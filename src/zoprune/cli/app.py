"""The typer application every sub-command registers on, and the error handling they share."""

from __future__ import annotations

import functools
from typing import Callable

import typer
from rich.console import Console
from rich.text import Text

from zoprune.errors import ZopruneError

app = typer.Typer(help="Prune the visual tokens of vision-language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, rich_markup_mode=None)
console = Console()
err_console = Console(stderr=True)


def friendly_errors(command: Callable) -> Callable:
    """Show zoprune's own errors as one readable message and exit 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ZopruneError as error:
            # the message is plain text: brackets in it (``zoprune[plot]``) are not markup
            err_console.print(Text("error: ", style="bold red") + Text(str(error)), highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper
