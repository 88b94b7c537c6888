"""Declarative settings shared by the CLI, config files and plugins.

Every tunable value is a field of a dataclass declared with :func:`setting`.
The core declares the run settings (:class:`metalora.config.RunSettings`);
each learner, prior, task sampler or pruner may declare its own ``Settings``
dataclass. The CLI turns every field into an option of ``metalora run`` and a
config file may set any of them, so a plugin's settings are first-class
without the core knowing the plugin.
"""

from __future__ import annotations

import dataclasses
import math
import operator
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from metalora.errors import MetaloraError

BOUNDS: dict[str, tuple[Any, str]] = {
    "gt": (operator.gt, ">"), "ge": (operator.ge, ">="),
    "lt": (operator.lt, "<"), "le": (operator.le, "<="),
}
"""The bounds a setting may declare, with how they read."""


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
            gt: float | None = None, ge: float | None = None, lt: float | None = None,
            le: float | None = None) -> Any:
    """Declare a settings field with its default, help text, and optional choices or bounds.

    ``gt``/``ge``/``lt``/``le`` bound a number (each item of a list): a value outside
    them is one error line, before anything runs. A float is always finite (never nan
    or inf). ``None`` (where the type allows it) is never out of bounds.
    """
    bounds = {k: v for k, v in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le))
              if v is not None}
    meta = {"help": help, "choices": choices, "bounds": bounds}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe_bounds(bounds: Mapping[str, float]) -> str:
    """``> 0``, ``>= 1 and <= 10``: how declared bounds read."""
    return " and ".join(f"{BOUNDS[k][1]} {v:g}" for k, v in bounds.items())


def check_value(name: str, value: Any, bounds: Mapping[str, float]) -> None:
    """Raise one clear error when ``value`` (each item of a list) is not finite or out of
    ``bounds``; ``name`` is how the error names the setting."""
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, bool) or not isinstance(item, int | float):
            continue
        if isinstance(item, float) and not math.isfinite(item):
            raise MetaloraError(f"setting '{name}' must be a finite number"
                                + (f" {describe_bounds(bounds)}" if bounds else "")
                                + f", got {item!r}")
        for key, limit in bounds.items():
            if not BOUNDS[key][0](item, limit):
                raise MetaloraError(
                    f"setting '{name}' must be {describe_bounds(bounds)}, got {item!r}")


def check_choice(name: str, value: Any, choices: tuple[str, ...] | None) -> None:
    """Raise one clear error when ``value`` is not one of a setting's ``choices``."""
    if choices and value not in choices:
        raise MetaloraError(f"setting '{name}' got {value!r}; valid choices: "
                            + ", ".join(choices))


def validate_settings(settings: Any, owner: str | None = None) -> Any:
    """Check every field of a settings dataclass instance: its type, choices and bounds.

    ``owner`` (a plugin's name) is named in the error.
    """
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        name = f"{f.name}' of '{owner}" if owner else f.name
        value = getattr(settings, f.name)
        if value is None:
            continue
        kind = _base_type(hints[f.name])
        wrong = (kind in (int, float, str, bool, list) and not isinstance(value, kind)
                 and not (kind is float and isinstance(value, int)))
        if wrong or (kind in (int, float) and isinstance(value, bool)):
            raise MetaloraError(f"setting '{name}' must be {kind.__name__}, got {value!r}")
        check_choice(name, value, f.metadata.get("choices"))
        check_value(name, value, f.metadata.get("bounds") or {})
    return settings


@dataclass(frozen=True)
class NoSettings:
    """The settings of a plugin that has none."""


@dataclass(frozen=True)
class SettingInfo:
    """One settings field as the CLI and config loader see it."""

    name: str
    type: Any
    """The field's base type (``int``, ``float``, ``str``, ``bool``, ``list``)."""
    default: Any
    help: str
    choices: tuple[str, ...] | None
    owners: tuple[str, ...]
    """Who declares it: ``"run"`` for the core, else plugin names."""
    defaults: Mapping[str, Any]
    """The default of each owner (owners may disagree, e.g. learning rates)."""
    item_type: Any = str
    """For list settings: the type of the items."""
    bounds: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Declared bounds (``gt``, ``ge``, ``lt``, ``le``). Values of the core's settings are
    checked against them as they are read; a plugin's (owners of one name may bound it
    differently) when its settings are built (:func:`build_settings`), before a run starts."""


def field_infos(settings_cls: type, owner: str) -> list[SettingInfo]:
    """The fields of a settings dataclass as :class:`SettingInfo` records."""
    hints = typing.get_type_hints(settings_cls)
    infos = []
    for f in dataclasses.fields(settings_cls):
        factory: Any = f.default_factory
        default = f.default if f.default is not dataclasses.MISSING else factory()
        infos.append(
            SettingInfo(
                name=f.name,
                type=_base_type(hints[f.name]),
                default=default,
                help=f.metadata.get("help", ""),
                choices=f.metadata.get("choices"),
                owners=(owner,),
                defaults={owner: default},
                item_type=_item_type(hints[f.name]),
                bounds=dict(f.metadata.get("bounds") or {}),
            )
        )
    return infos


def merge_infos(groups: list[list[SettingInfo]], conflicts: dict[str, str] | None = None,
                label: Callable[[str], str] = str) -> dict[str, SettingInfo]:
    """Merge settings declared by several owners; one name must keep one type.

    A name declared with another type is an error; with ``conflicts`` given, the later
    declaration is left out instead and ``conflicts[owner]`` says why (owners named
    with ``label``).
    """
    merged: dict[str, SettingInfo] = {}
    for group in groups:
        for info in group:
            seen = merged.get(info.name)
            if seen is None:
                merged[info.name] = info
                continue
            if seen.type is not info.type:
                message = (f"setting '{info.name}' is declared as {seen.type.__name__} by "
                           f"{', '.join(label(o) for o in seen.owners)} and as "
                           f"{info.type.__name__} by {label(info.owners[0])}")
                if conflicts is None:
                    raise MetaloraError(message)
                conflicts[info.owners[0]] = message
                continue
            merged[info.name] = dataclasses.replace(
                seen,
                owners=seen.owners + info.owners,
                defaults={**seen.defaults, **info.defaults},
                help=_merged_help(seen.help, info.help),
                bounds=seen.bounds if seen.bounds == info.bounds else {},
            )
    return merged


def _merged_help(first: str, other: str) -> str:
    """One help text for a name two owners declare: both, unless they say the same (each
    owner's own text names it, e.g. ``lora: AdamW learning rate``)."""
    if not first or other in first:
        return first or other
    return f"{first} {other}"


def build_settings(settings_cls: type, values: Mapping[str, Any],
                   owner: str | None = None) -> Any:
    """Instantiate ``settings_cls`` from the values that were given (others keep defaults),
    checked field by field (:func:`validate_settings`; ``owner`` is named in an error) and
    then as a whole: a settings class may define ``check(self)``, raising
    :class:`~metalora.errors.MetaloraError` for values that are fine alone but not together
    (e.g. an initial value outside its own clamp). The core builds every selected plugin's
    settings before anything loads, so such an error is one line before any work."""
    names = {f.name for f in dataclasses.fields(settings_cls)}
    given = {k: v for k, v in values.items() if k in names and v is not None}
    settings = validate_settings(settings_cls(**given), owner)
    check = getattr(settings, "check", None)
    if callable(check):
        try:
            check()
        except MetaloraError as exc:
            prefix = f"{owner}: " if owner and not str(exc).startswith(f"{owner}:") else ""
            raise MetaloraError(f"{prefix}{exc}") from None
    return settings


def coerce(info: SettingInfo, value: Any) -> Any:
    """Convert a value from a config file to the setting's type, or raise one clear error."""
    if value is None:
        return None
    kind = info.type
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
                return value.lower() in {"true", "1", "yes"}
            raise ValueError
        if kind is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            listed = [info.item_type(v.strip() if isinstance(v, str) else v)
                      for v in items if not (isinstance(v, str) and not v.strip())]
            if "run" in info.owners:
                check_value(info.name, listed, info.bounds)
            return listed
        converted: Any
        if kind is float and isinstance(value, str):
            converted = float(value)
        elif kind in (int, float) and isinstance(value, bool):
            raise ValueError
        elif kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError  # 1.5 epochs is a mistake, not 1
        else:
            converted = kind(value)
    except (TypeError, ValueError):
        kind_name = (f"a comma-separated list of {info.item_type.__name__}" if kind is list
                     else info.type.__name__)
        raise MetaloraError(f"setting '{info.name}' must be {kind_name}, got {value!r}") from None
    check_choice(info.name, converted, info.choices)
    if "run" in info.owners:  # a plugin's are checked with its own bounds when built
        check_value(info.name, converted, info.bounds)
    return converted


def _item_type(hint: Any) -> type:
    """``list[int] | None`` -> ``int``; anything else -> ``str``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _item_type(args[0])
    if origin is list:
        (item,) = typing.get_args(hint) or (str,)
        return item
    return str


def _base_type(hint: Any) -> type:
    """``int | None`` -> ``int``; ``list[str]`` -> ``list``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0])
    if origin is not None:
        return origin
    return hint
