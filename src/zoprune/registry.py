"""Finds components by name: loads the ``zoprune`` entry points into one pluggy manager and collects what the
plugins register.

A plugin that fails to import is recorded with its error and named whenever a lookup fails; it never stops the
other plugins from loading.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Literal

import pluggy

from zoprune import hookspecs
from zoprune.errors import PluginError
from zoprune.interfaces import ModelAdapter, Scorer, Selector

ENTRY_POINT_GROUP = "zoprune"
Kind = Literal["scorer", "selector", "adapter"]
_BASES: dict[str, type] = {"scorer": Scorer, "selector": Selector, "adapter": ModelAdapter}


@dataclass(frozen=True)
class Registered:
    """A component class and where it came from."""

    kind: Kind
    name: str
    cls: type
    plugin: str  # the entry point's (or plugin object's) name
    distribution: str  # the distribution that provides it, e.g. "zoprune"


@dataclass(frozen=True)
class Method:
    """A named pipeline (a partial PipelineConfig without budget) and where it came from."""

    name: str
    config: dict
    description: str
    plugin: str
    distribution: str


@dataclass
class Registry:
    """All components registered by the loaded plugins, by kind and name."""

    manager: pluggy.PluginManager
    components: dict[str, dict[str, Registered]] = field(default_factory=lambda: {k: {} for k in _BASES})
    failures: dict[str, str] = field(default_factory=dict)  # plugin name -> "distribution: error"
    methods: dict[str, Method] = field(default_factory=dict)

    def register_plugin(self, plugin: object, name: str, distribution: str = "(local)") -> None:
        """Register a plugin object (a module or class with hook implementations) and collect its components.

        All or nothing: when one of its hooks raises, what it registered before is removed again and the error is
        a PluginError naming the plugin and its distribution.
        """
        before = ({kind: dict(found) for kind, found in self.components.items()}, dict(self.methods))
        self.manager.register(plugin, name=name)
        try:
            for kind in _BASES:
                hook = getattr(self.manager.hook, f"register_{kind}s")
                # call only this plugin's implementations, so components are attributed to the plugin that made them
                for impl in (impl for impl in hook.get_hookimpls() if impl.plugin is plugin):
                    impl.function(register=self._collector(kind, name, distribution))
            for impl in (impl for impl in self.manager.hook.register_methods.get_hookimpls()
                         if impl.plugin is plugin):
                impl.function(register=self._method_collector(name, distribution))
        except Exception as error:
            self.components, self.methods = before
            self.manager.unregister(plugin)
            if isinstance(error, PluginError):
                raise
            raise PluginError(f"plugin {name!r} ({distribution}) failed while registering its components: "
                              f"{type(error).__name__}: {error}") from error

    def _method_collector(self, plugin: str, distribution: str):
        def register(name: str, config: dict, description: str = "") -> None:
            if "budget" in config:
                raise PluginError(f"plugin {plugin!r}: method {name!r} must not fix a budget")
            existing = self.methods.get(name)
            if existing is not None and existing.config != config:
                raise PluginError(f"method name {name!r} is registered twice: by {existing.plugin!r} "
                                  f"({existing.distribution}) and by {plugin!r} ({distribution})")
            self.methods[name] = Method(name, dict(config), description, plugin, distribution)

        return register

    def _collector(self, kind: Kind, plugin: str, distribution: str):
        base = _BASES[kind]

        def register(cls: type) -> None:
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise PluginError(f"plugin {plugin!r} registered {cls!r} as a {kind}, but it is not a {base.__name__}")
            name = getattr(cls, "name", None)
            if not isinstance(name, str) or not name:
                raise PluginError(f"plugin {plugin!r} registered {cls.__name__} without a `name`")
            existing = self.components[kind].get(name)
            # a second registration under a taken name is an error even for the same class: the first one would be
            # silently replaced, and with it the plugin and distribution a user is told provide the component.
            # Only a plugin repeating its own registration of the same class is harmless.
            if existing is not None and (existing.cls is not cls or existing.plugin != plugin):
                raise PluginError(
                    f"{kind} name {name!r} is registered twice: by {existing.plugin!r} ({existing.distribution}) "
                    f"and by {plugin!r} ({distribution})"
                )
            self.components[kind][name] = Registered(kind, name, cls, plugin, distribution)

        return register

    def names(self, kind: Kind) -> list[str]:
        """The registered names of one kind ("scorer", "selector" or "adapter"), sorted."""
        return sorted(self.components[kind])

    def get(self, kind: Kind, name: str) -> Registered:
        """The component of that kind and name, or a PluginError listing the known names and failed plugins."""
        found = self.components[kind].get(name)
        if found is not None:
            return found
        known = ", ".join(self.names(kind)) or "none"
        message = f"unknown {kind} {name!r}; known {kind}s: {known}"
        if self.failures:
            failed = "; ".join(f"{plugin} ({why})" for plugin, why in sorted(self.failures.items()))
            message += f". Plugins that failed to load: {failed}"
        raise PluginError(message)

    def method(self, name: str) -> Method:
        """The named method, or a PluginError listing the known ones."""
        if name not in self.methods:
            raise PluginError(f"unknown method {name!r}; known methods: {', '.join(sorted(self.methods)) or 'none'}")
        return self.methods[name]

    def method_available(self, name: str) -> str | None:
        """None when every component the method names is registered; otherwise why not."""
        config = self.method(name).config
        for kind in ("adapter", "scorer", "selector"):
            spec = config.get(kind)
            spec_name = spec.get("name") if isinstance(spec, dict) else spec
            if isinstance(spec_name, str) and spec_name.lower() != "none" and spec_name not in self.components[kind]:
                return f"{kind} {spec_name!r} is not installed"
        return None

    def restricted_to(self, distributions: set[str] | frozenset[str]) -> "Registry":
        """A view holding only the components and methods that these distributions provide (no failures): the
        documentation site documents zoprune's own, whatever else happens to be installed."""
        components = {kind: {name: reg for name, reg in regs.items() if reg.distribution in distributions}
                      for kind, regs in self.components.items()}
        methods = {name: m for name, m in self.methods.items() if m.distribution in distributions}
        return Registry(self.manager, components=components, methods=methods)

    def all(self) -> list[Registered]:
        """Every registered component: adapters, then scorers, then selectors, each sorted by name."""
        return [reg for kind in _BASES for _, reg in sorted(self.components[kind].items())]


def load_registry() -> Registry:
    """A fresh registry with every ``zoprune`` entry point loaded."""
    manager = pluggy.PluginManager(ENTRY_POINT_GROUP)
    manager.add_hookspecs(hookspecs)
    registry = Registry(manager)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = ep.dist.name if ep.dist is not None else "(unknown)"
        if manager.has_plugin(ep.name):
            continue  # the same distribution seen twice on sys.path
        try:
            plugin = ep.load()
            registry.register_plugin(plugin, ep.name, distribution)
        except Exception as error:  # a broken plugin must not take the others down
            if manager.has_plugin(ep.name):
                manager.unregister(name=ep.name)
            registry.failures[ep.name] = f"{distribution}: {type(error).__name__}: {error}"
    return registry


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = load_registry()
    return _registry


def reload_registry() -> Registry:
    """Forget the loaded plugins and load the entry points again (after installing a plugin, in tests)."""
    global _registry
    _registry = None
    return get_registry()
