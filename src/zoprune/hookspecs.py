"""The hooks through which plugins contribute components to zoprune.

A plugin is a module (or any object) with functions decorated by :data:`zoprune.hookimpl`, registered under the
``zoprune`` entry-point group of its distribution, in its ``pyproject.toml``:

```toml
[project.entry-points.zoprune]
my_scorer = "my_package.zoprune_plugin"
```

Each hook receives a ``register`` callback; call it once per component class. The built-in scorers, selectors and
adapters are registered exactly this way (see ``plugins/zoprune_plugins``).
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("zoprune")
hookimpl = pluggy.HookimplMarker("zoprune")
"""The decorator of a plugin's hook implementations: ``@zoprune.hookimpl`` above ``def register_scorers(register)``
(or any hook of this module) makes pluggy call it when the registry loads the plugin."""


@hookspec
def register_scorers(register: Callable[[type], None]) -> None:
    """Register :class:`zoprune.Scorer` subclasses: ``register(MyScorer)``.

    Called once, when the registry first loads plugins. A scorer turns the visual tokens of one image into one
    importance score per token; its ``name`` is how configs refer to it.
    """


@hookspec
def register_selectors(register: Callable[[type], None]) -> None:
    """Register :class:`zoprune.Selector` subclasses: ``register(MySelector)``.

    Called once, when the registry first loads plugins. A selector turns scores and projected features into the
    indices of the kept tokens, in their original order.
    """


@hookspec
def register_adapters(register: Callable[[type], None]) -> None:
    """Register :class:`zoprune.ModelAdapter` subclasses: ``register(MyAdapter)``.

    Called once, when the registry first loads plugins. An adapter knows one model family: where its visual tokens
    and projector are, and how to run the model with only the kept tokens. Auto-detection asks each registered
    adapter, in registration order, whether it ``supports`` the model.
    """


@hookspec
def register_methods(register: Callable[..., None]) -> None:
    """Register named pipelines: ``register("zoo-prune", {"selector": "coverage"}, "ZOO-Prune (the paper)")``.

    Called once, when the registry first loads plugins. A method is a partial :class:`zoprune.PipelineConfig`
    (without a budget) that commands such as ``zoprune eval --method NAME`` refer to by name. A method whose
    components are not installed is listed as unavailable instead of failing.
    """
