"""The run directory: layout, atomic writes, and reading a finished run back.

::

    RUN_DIR/
      config.json                      resolved settings (usable with --config)
      metrics.json                     test metrics per learner and seed, mean ± SE
      log.jsonl                        one line per optimisation step
      <learner>/seed-<s>/adapters.safetensors
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from metalora.errors import MetaloraError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
ADAPTERS_FILE = "adapters.safetensors"


def seed_dir(run_dir: Path, learner: str, seed: int) -> Path:
    """Where one learner's artefacts for one seed live."""
    return run_dir / learner / f"seed-{seed}"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file next to ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Atomically write JSON."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, text.encode())


def save_adapters(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Atomically write adapter tensors as safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_adapters(path: Path) -> dict[str, torch.Tensor]:
    """Read adapter tensors written by :func:`save_adapters`."""
    if not path.exists():
        raise MetaloraError(f"adapter file {str(path)!r} does not exist")
    return load_file(str(path))


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The resolved config and metrics of a finished run, or a clear error."""
    if not run_dir.is_dir():
        raise MetaloraError(f"run directory {str(run_dir)!r} does not exist")
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise MetaloraError(f"{str(run_dir)!r} is not a complete run directory: no {CONFIG_FILE}")
    config = json.loads(config_path.read_text())
    metrics_path = run_dir / METRICS_FILE
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return config, metrics
