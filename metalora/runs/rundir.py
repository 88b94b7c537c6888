"""The run directory: layout, atomic writes, and reading a run back.

::

    RUN_DIR/
      config.json                 resolved settings (usable with --config; --resume reads it)
      run.json                    versions, git commit, plugins, model identity, command
                                  line; wall time and peak memory per learner and seed
      state.json                  progress: run status, which learner/seed pairs are done
      metrics.json                test metrics per learner and seed, validation history, mean ± SE
      results.csv, results.json   the paper's Table 1 layout: one row per learner, mean ± SE
      log.jsonl                   one line per optimisation step and per validation
      progress.log                one plain line per finished epoch, validation and test
      tensorboard/<learner>/seed-<s>/   TensorBoard events (logger tensorboard, the default)
      wandb/                      Weights & Biases offline runs (--logger wandb)
      plots/training.png          training NLL over steps, mean ± SE over seeds (and .pdf)
      plots/validation.png        validation accuracy and ECE over epochs (paper Figure 2)
      plots/reliability.png       every learner's test reliability over per-bin counts
      plots/reliability-<learner>.png   one learner's reliability diagram
      prune/<sweep>/              metalora prune: results.csv/json, pruning.png
      <learner>/seed-<s>/
        adapters.safetensors      the tested adapters (best-validation epoch, else last epoch)
        metrics.json              test metrics of this seed, best epoch, validation history
        predictions.safetensors   test probabilities, targets and option masks per task
        predictions.jsonl         the same, readable: one line per test query
        checkpoints/
          checkpoints.json        which files are the latest and the best checkpoint
          epoch-<e>.safetensors   adapter tensors after <e> epochs
          epoch-<e>.pt            learner state (optimisers), RNG states, validation history

Every file is written atomically (a temporary file renamed over the target),
so an interrupted run never leaves a half-written file behind. A seed's
``metrics.json`` is written last: it marks the learner/seed pair as finished.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from metalora.errors import MetaloraError
from metalora.files import atomic_write_bytes, give_plain_permissions

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.json"
RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
LOG_FILE = "log.jsonl"
PROGRESS_FILE = "progress.log"
ADAPTERS_FILE = "adapters.safetensors"
PREDICTIONS_FILE = "predictions.safetensors"
PREDICTIONS_JSONL_FILE = "predictions.jsonl"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_INDEX_FILE = "checkpoints.json"
"""The checkpoint index in a learner/seed's ``checkpoints`` folder."""
PLOTS_DIR = "plots"


def seed_dir(run_dir: Path, learner: str, seed: int) -> Path:
    """Where one learner's artefacts for one seed live."""
    return run_dir / learner / f"seed-{seed}"


def write_json(path: Path, data: Any) -> None:
    """Atomically write JSON."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(path, text.encode())


def read_json(path: Path, what: str) -> Any:
    """Read a JSON file of a run directory, or raise one clear error."""
    if not path.exists():
        raise MetaloraError(f"{what} {str(path)!r} does not exist")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MetaloraError(f"{what} {str(path)!r} is unreadable: {exc}") from None


def save_adapters(path: Path, tensors: Mapping[str, torch.Tensor],
                  metadata: Mapping[str, str] | None = None) -> None:
    """Atomically write adapter tensors as safetensors."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata=dict(metadata) if metadata else None)
        give_plain_permissions(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_adapters(path: Path) -> dict[str, torch.Tensor]:
    """Read adapter tensors written by :func:`save_adapters`."""
    if not path.exists():
        raise MetaloraError(f"adapter file {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise MetaloraError(f"adapter file {str(path)!r} is unreadable: {exc}") from None


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run directory's ``config.json``, or one clear error if it is not a run directory."""
    if not run_dir.is_dir():
        raise MetaloraError(f"run directory {str(run_dir)!r} does not exist")
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise MetaloraError(f"{str(run_dir)!r} is not a complete run directory: no {CONFIG_FILE}")
    config = read_json(config_path, "run configuration")
    if not isinstance(config, dict):
        raise MetaloraError(f"run configuration {str(config_path)!r} is not a mapping")
    return config


def truncate_file(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (drops log lines of an epoch that did not finish)."""
    if path.exists() and path.stat().st_size > size:
        with path.open("r+b") as handle:
            handle.truncate(size)


def file_size(path: Path) -> int:
    """Size of ``path`` in bytes (0 when it does not exist)."""
    return path.stat().st_size if path.exists() else 0


def tested_checkpoint(where: Path) -> tuple[int, Path] | None:
    """For a finished learner/seed directory: its tested epoch and the adapters file of the
    checkpoint of that epoch, if one is still there (else ``None``)."""
    try:
        tested = read_json(where / METRICS_FILE, "seed metrics").get("tested_epoch")
        index = read_json(where / CHECKPOINT_DIR / CHECKPOINT_INDEX_FILE, "checkpoint index")
    except MetaloraError:
        return None
    for entry in (index.get("best"), index.get("latest")):
        if entry and entry.get("epoch") == tested:
            path = where / CHECKPOINT_DIR / entry["adapters"]
            if path.exists():
                return int(tested), path
    return None


def require_finished(run_dir: Path, learner: str, seed: int) -> Path:
    """The directory of a finished learner/seed pair, or one clear error saying what is
    wrong and a command that can put it right."""
    where = seed_dir(run_dir, learner, seed)
    resume = f"metalora run --resume {run_dir}"
    if not (where / METRICS_FILE).exists():
        raise MetaloraError(
            f"run directory {str(run_dir)!r} is incomplete: {learner} seed {seed} has not "
            f"finished (no {learner}/seed-{seed}/{METRICS_FILE}); finish it with: {resume}")
    if not (where / ADAPTERS_FILE).exists():
        missing = f"{learner}/seed-{seed}/{ADAPTERS_FILE} of run {str(run_dir)!r} is missing"
        if tested_checkpoint(where) is not None:
            raise MetaloraError(f"{missing}; {resume} rebuilds it from the checkpoint of its "
                                "tested epoch")
        raise MetaloraError(f"{missing}, and no checkpoint of its tested epoch is left: it "
                            f"cannot be rebuilt; to train this learner and seed again, delete "
                            f"{where} and run: {resume}")
    return where


def new_stamped_dir(base: Path, stem: str, create: bool = True) -> Path:
    """``base/stem``, or ``base/stem-2``, ``-3``, ... when that exists: never an existing
    directory (two runs, sweeps or evaluations started in the same second get their own).
    Created (atomically claimed) unless ``create`` is False."""
    if create:
        base.mkdir(parents=True, exist_ok=True)
    path, suffix = base / stem, 1
    while True:
        try:
            if create:
                path.mkdir()
                return path
            if not path.exists():
                return path
        except FileExistsError:
            pass
        suffix += 1
        path = base / f"{stem}-{suffix}"


def time_stamp() -> str:
    """The time stamp that starts run, sweep and evaluation directory names."""
    return f"{datetime.now():%Y%m%d-%H%M%S}"


def claim_named_run_dir(path: Path) -> Path:
    """Create the run directory a user named (``--run-name``); if it exists, one error line
    saying what it is (and how to continue it, when it can be), never another name."""
    if path.exists():
        state = path / "state.json"
        status = read_json(state, "run state").get("status") if state.exists() else None
        again = (f"continue it with: metalora run --resume {path}, or "
                 if status in ("running", "interrupted", "failed") else "")
        raise MetaloraError(f"run directory {str(path)!r} exists"
                            + (f" ({status})" if status else "")
                            + f"; {again}give another --run-name")
    path.mkdir(parents=True)
    return path
