"""The plugin manager: loads entry points and builds the registries.

Every implementation, built-in or third-party, arrives the same way: a module
listed under the ``metalora`` entry-point group defines ``@hookimpl``
functions from :mod:`metalora.hookspecs`. Set ``METALORA_PLUGINS`` to a
comma-separated list of entry-point names to load only those (an empty value
loads none). A plugin that fails to import is reported as a warning and the
others still load, and so does everything else when a plugin's ``register_*``
hook raises (the plugin is skipped with one warning). Two implementations of
one kind under one name are an error naming both providers, raised only when
that name is asked for: commands that do not need it still work.
"""

from __future__ import annotations

import importlib.metadata
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from metalora import hookspecs
from metalora.errors import MetaloraError, PluginError, unknown_choice

ENTRY_POINT_GROUP = "metalora"
ALLOW_LIST_ENV = "METALORA_PLUGINS"


class PluginLoadWarning(UserWarning):
    """A plugin could not be imported or failed while registering."""


@dataclass(frozen=True)
class Registration:
    """One registered implementation and where it came from."""

    kind: str
    name: str
    implementation: Any
    plugin: str
    """The plugin (entry-point or registration) name."""
    provider: str
    """The distribution that provides it, or the plugin name if it was registered in code."""


class Registry:
    """The implementations of one kind, by name."""

    def __init__(self, kind: str, note: str = "") -> None:
        self.kind = kind
        self.note = note
        """Added to an "unknown name" error (e.g. that an allow-list limits the plugins)."""
        self._entries: dict[str, Registration] = {}
        self.conflicts: dict[str, list[Registration]] = {}
        """Names registered more than once, with every registration (none is usable)."""

    def add(self, registration: Registration) -> None:
        """Add one implementation; a second one with the same name makes the name a conflict."""
        name = registration.name
        if name in self.conflicts:
            self.conflicts[name].append(registration)
            return
        seen = self._entries.pop(name, None)
        if seen is not None:
            self.conflicts[name] = [seen, registration]
            return
        self._entries[name] = registration

    def conflict_error(self, name: str) -> PluginError:
        """The error for a name registered twice, naming both plugins and providers."""
        first, second = self.conflicts[name][:2]
        return PluginError(
            f"{self.kind} '{name}' is registered twice: by plugin '{first.plugin}' "
            f"({first.provider}) and by plugin '{second.plugin}' ({second.provider}); "
            f"uninstall one, or leave one out with {ALLOW_LIST_ENV}")

    def get(self, name: str) -> Any:
        """The implementation registered as ``name``, or a clear error listing the choices."""
        if name in self.conflicts:
            raise self.conflict_error(name)
        try:
            return self._entries[name].implementation
        except KeyError:
            error = unknown_choice(self.kind, name, self._entries)
            if self.note:
                error = PluginError(f"{error} ({self.note})")
            raise error from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Registration]:
        return iter(sorted(self._entries.values(), key=lambda r: r.name))


class PluginManager:
    """Loads plugins and answers "which learners, priors, ... are there?"."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._providers: dict[str, str] = {}
        self._path_suites: dict[Path, Any] = {}
        self._registries: dict[str, Registry] | None = None
        self.failures: dict[str, str] = {}
        """Plugins that failed to load, with the reason."""
        self.allow_note = ""
        """Set when ``METALORA_PLUGINS`` limits the plugins: said with an unknown name."""
        if load_entry_points:
            self._load_entry_points()

    # -- loading -------------------------------------------------------------
    def _load_entry_points(self) -> None:
        allowed = _allow_list()
        entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        if allowed is not None:
            installed = sorted({ep.name for ep in entry_points})
            self.allow_note = (f"{ALLOW_LIST_ENV}={os.environ[ALLOW_LIST_ENV]!r} loads only "
                               "those plugins")
            for name in sorted(allowed - set(installed)):
                warnings.warn(f"{ALLOW_LIST_ENV} names {name!r}, which is no installed plugin; "
                              f"installed: {', '.join(installed)}", PluginLoadWarning,
                              stacklevel=3)
        for ep in entry_points:
            if allowed is not None and ep.name not in allowed:
                continue
            if self._pm.get_plugin(ep.name) is not None:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not take the others down
                self._warn(ep.name, f"failed to import ({type(exc).__name__}: {exc})")
                continue
            provider = ep.dist.name if ep.dist is not None else ep.name
            self.register(module, name=ep.name, provider=provider)

    def _warn(self, plugin: str, reason: str) -> None:
        self.failures[plugin] = reason
        warnings.warn(f"metalora plugin '{plugin}' {reason}; skipped", PluginLoadWarning,
                      stacklevel=3)

    def register(self, plugin: ModuleType | object, name: str | None = None,
                 provider: str | None = None) -> str:
        """Register a plugin object (a module or any object with ``@hookimpl`` methods)."""
        registered = self._pm.register(plugin, name=name)
        if registered is None:
            raise PluginError(f"plugin '{name}' is already registered")
        self._providers[registered] = provider or registered
        self._registries = None
        self._path_suites.clear()
        return registered

    def unregister(self, name: str) -> None:
        """Remove a plugin by name (its implementations disappear from the registries)."""
        plugin = self._pm.get_plugin(name)
        if plugin is None:
            raise unknown_choice("plugin", name, self.plugin_names())
        self._pm.unregister(plugin)
        self._providers.pop(name, None)
        self._registries = None
        self._path_suites.clear()

    def plugin_names(self) -> list[str]:
        """Names of the registered plugins."""
        return sorted(n for n, _ in self._pm.list_name_plugin())

    def provider(self, plugin: str) -> str:
        """The distribution that provides a plugin."""
        return self._providers.get(plugin, plugin)

    # -- registries -------------------------------------------------------------
    def registry(self, kind: str) -> Registry:
        """The registry of ``kind``: learner, prior, suite, metric, pruner or logger."""
        if self._registries is None:
            self._registries = self._collect()
        if kind not in self._registries:
            raise unknown_choice("registry kind", kind, self._registries)
        return self._registries[kind]

    def suite_path(self, tasks: str) -> Path | None:
        """The absolute path ``tasks`` names, or ``None`` when it names a registered suite
        (or one registered twice) or no existing file or folder."""
        registry = self.registry("suite")
        if not tasks or tasks in registry or tasks in registry.conflicts:
            return None
        path = Path(tasks).expanduser()
        return path.resolve() if path.exists() else None

    def suite(self, tasks: str) -> Any:
        """The task sampler ``tasks`` names: a registered suite, or else an existing folder or
        suite file, read by the first plugin whose ``suite_from_path`` hook answers (the
        answer is kept, so a path is read once). Anything else is one error line."""
        registry = self.registry("suite")
        if tasks in registry or tasks in registry.conflicts:
            return registry.get(tasks)
        path = self.suite_path(tasks)
        if path is None:
            raise MetaloraError(f"{unknown_choice('suite', tasks, registry.names())}, or the "
                                "path of a task folder or suite file")
        if path not in self._path_suites:
            sampler = self._pm.hook.suite_from_path(path=path)
            if sampler is None:
                raise MetaloraError(f"no plugin reads {tasks!r} as a suite (a folder of "
                                    "train/ and test/ task files or a suite file)")
            self._path_suites[path] = sampler
        return self._path_suites[path]

    def _collect(self) -> dict[str, Registry]:
        """Call every ``register_*`` hook; a plugin whose hook raises is skipped, whole."""
        collected: dict[str, list[Registration]] = {}
        broken: set[str] = set()
        for hook_name, kind in hookspecs.HOOK_KINDS.items():
            caller = getattr(self._pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                plugin = self._pm.get_name(impl.plugin) or repr(impl.plugin)
                if plugin in broken:
                    continue
                made: list[Registration] = []

                def register(implementation: Any, name: str | None = None, *,
                             _kind: str = kind, _plugin: str = plugin,
                             _made: list[Registration] = made) -> None:
                    reg_name = name or getattr(implementation, "name", None)
                    if not reg_name:
                        raise PluginError(
                            f"plugin '{_plugin}' registered a {_kind} without a name"
                        )
                    _made.append(Registration(
                        kind=_kind, name=reg_name, implementation=implementation,
                        plugin=_plugin, provider=self.provider(_plugin)))

                kwargs = {"register": register} if "register" in impl.argnames else {}
                try:
                    impl.function(**kwargs)
                except Exception as exc:  # a broken plugin must not take the CLI down
                    broken.add(plugin)
                    collected.pop(plugin, None)
                    self._warn(plugin, f"failed in {hook_name} ({type(exc).__name__}: {exc})")
                    continue
                collected.setdefault(plugin, []).extend(made)
        registries = {kind: Registry(kind, note=self.allow_note)
                      for kind in hookspecs.HOOK_KINDS.values()}
        for registrations in collected.values():
            for registration in registrations:
                registries[registration.kind].add(registration)
        return registries

    def add_commands(self, app: Any) -> None:
        """Let every plugin add its CLI commands to ``app``."""
        for impl in self._pm.hook.register_commands.get_hookimpls():
            plugin = self._pm.get_name(impl.plugin)
            try:
                impl.function(app=app)
            except Exception as exc:
                self._warn(plugin or "?", f"failed to add commands ({type(exc).__name__}: {exc})")

    def registrations(self) -> Iterator[Registration]:
        """Every registered implementation of every kind."""
        for kind in hookspecs.HOOK_KINDS.values():
            yield from self.registry(kind)


def _allow_list() -> set[str] | None:
    value = os.environ.get(ALLOW_LIST_ENV)
    if value is None:
        return None
    return {name.strip() for name in value.split(",") if name.strip()}


_manager: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    global _manager
    if _manager is None:
        _manager = PluginManager()
    return _manager
