"""The ``device`` setting: which devices it accepts and what ``auto`` resolves to."""

from __future__ import annotations

import re

import torch

from metalora.errors import MetaloraError

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
"""The devices ``device`` accepts."""


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; a name that is no device, or CUDA
    where there is none, is one error line."""
    if not DEVICE_PATTERN.match(name):
        raise MetaloraError(f"unknown device {name!r}; valid choices: auto, cpu, cuda, cuda:N, "
                            "mps")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetaloraError(
            f"device {name!r} requested but CUDA is not available; valid choices: auto, cpu")
    return name
