"""The options several commands share (``run``, ``embed``): one definition each, so their names, defaults and help
stay the same everywhere. Each is a type for a parameter with a default: ``model: ModelOption = None``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

ModelOption = Annotated[Optional[str], typer.Option("--model", help="checkpoint directory or hub id "
                                                                     "[default: shipped]")]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="pipeline config (YAML, TOML or JSON)")]
MethodOption = Annotated[Optional[str], typer.Option("--method", "-m", help="method name (`zoprune plugins` lists "
                                                     "them), selector or SCORER+SELECTOR, instead of --config")]
KeepOption = Annotated[Optional[int], typer.Option("--keep", help="visual tokens kept per image (overrides the "
                                                   "config)")]
RatioOption = Annotated[Optional[float], typer.Option("--ratio", help="fraction of visual tokens kept, in (0, 1]")]
DtypeOption = Annotated[str, typer.Option("--dtype", help="model dtype: float32, bfloat16 or float16")]
