"""The ``zoprune`` command. Each sub-command lives in its own module and registers itself on :data:`app`."""

from zoprune.cli.app import app
from zoprune.cli import (  # noqa: F401  (registers the commands)
    bench_cmd, embed_cmd, eval_cmd, lmms_task_cmd, plugins_cmd, report_cmd, run_cmd, schema_cmd, show_cmd)

__all__ = ["app"]
