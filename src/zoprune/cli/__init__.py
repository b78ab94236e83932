"""The ``zoprune`` command. Each sub-command lives in its own module and registers itself on :data:`app`."""

from zoprune.cli.app import app
from zoprune.cli import bench_cmd, eval_cmd, plugins_cmd, run_cmd, schema_cmd, show_cmd  # noqa: F401  (registers the commands)

__all__ = ["app"]
