"""Whether the Hugging Face hub can be reached, found out in a moment.

Offline, transformers and datasets retry every request for up to a minute and
print a line per retry. :func:`hub_reachable` asks once (``HF_HUB_OFFLINE``
set, or no TCP connection to the hub within a few seconds, means offline), and
:func:`offline_hub` makes the libraries use only their local caches, so an
offline run fails, or works from the cache, at once.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

HUB_HOST = "huggingface.co"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE`` is set or the hub does not answer within ``timeout``."""
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextmanager
def offline_hub() -> Iterator[None]:
    """While inside, transformers, the hub client and datasets read only their caches."""
    saved = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    os.environ.update({name: "1" for name in OFFLINE_VARIABLES})
    modules = _set_offline_flags()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _restore_flags(modules)


def _set_offline_flags() -> list[tuple[object, str, object]]:
    """Set the libraries' offline flags (read when they were imported); return the old ones."""
    import importlib

    changed: list[tuple[object, str, object]] = []
    for module_name, flag in (("huggingface_hub.constants", "HF_HUB_OFFLINE"),
                              ("datasets.config", "HF_HUB_OFFLINE"),
                              ("datasets.config", "HF_DATASETS_OFFLINE")):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, flag):
            changed.append((module, flag, getattr(module, flag)))
            setattr(module, flag, True)
    return changed


def _restore_flags(changed: list[tuple[object, str, object]]) -> None:
    for module, flag, value in changed:
        setattr(module, flag, value)
