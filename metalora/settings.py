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
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from metalora.errors import MetaloraError


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """Declare a settings field with its default and help text."""
    meta = {"help": help, "choices": choices}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoSettings:
    """The settings of a plugin that has none."""


@dataclass(frozen=True)
class SettingInfo:
    """One settings field as the CLI and config loader see it."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None
    owners: tuple[str, ...]
    """Who declares it: ``"run"`` for the core, else plugin names."""
    defaults: Mapping[str, Any]
    """The default of each owner (owners may disagree, e.g. learning rates)."""
    item_type: type = str
    """For list settings: the type of the items."""


def field_infos(settings_cls: type, owner: str) -> list[SettingInfo]:
    """The fields of a settings dataclass as :class:`SettingInfo` records."""
    hints = typing.get_type_hints(settings_cls)
    infos = []
    for f in dataclasses.fields(settings_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
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
            )
        )
    return infos


def merge_infos(groups: list[list[SettingInfo]]) -> dict[str, SettingInfo]:
    """Merge settings declared by several owners; one name must keep one type."""
    merged: dict[str, SettingInfo] = {}
    for group in groups:
        for info in group:
            seen = merged.get(info.name)
            if seen is None:
                merged[info.name] = info
                continue
            if seen.type is not info.type:
                raise MetaloraError(
                    f"setting '{info.name}' is declared as {seen.type.__name__} by "
                    f"{', '.join(seen.owners)} and as {info.type.__name__} by {info.owners[0]}"
                )
            merged[info.name] = dataclasses.replace(
                seen,
                owners=seen.owners + info.owners,
                defaults={**seen.defaults, **info.defaults},
                help=seen.help if seen.help else info.help,
            )
    return merged


def build_settings(settings_cls: type, values: Mapping[str, Any]) -> Any:
    """Instantiate ``settings_cls`` from the values that were given (others keep defaults)."""
    names = {f.name for f in dataclasses.fields(settings_cls)}
    given = {k: v for k, v in values.items() if k in names and v is not None}
    return settings_cls(**given)


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
            return [info.item_type(v.strip() if isinstance(v, str) else v)
                    for v in items if not (isinstance(v, str) and not v.strip())]
        if kind is float and isinstance(value, str):
            return float(value)
        if kind in (int, float) and isinstance(value, bool):
            raise ValueError
        converted = kind(value)
    except (TypeError, ValueError):
        raise MetaloraError(
            f"setting '{info.name}' must be {info.type.__name__}, got {value!r}"
        ) from None
    if info.choices and converted not in info.choices:
        raise MetaloraError(
            f"setting '{info.name}' got {converted!r}; valid choices: {', '.join(info.choices)}"
        )
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
