"""Checkpoints of one learner and seed: the latest and the best-validation one.

A checkpoint taken after ``epoch`` finished epochs is two files,

* ``epoch-<e>.safetensors`` — every adapter tensor of the learner;
* ``epoch-<e>.pt`` — ``learner.state_dict()`` (optimiser states), the RNG
  states (the learner's ``context.rng``, Python's ``random``, NumPy, torch
  CPU and, when the model is on a GPU, CUDA) and the :class:`TrainingState`
  (epochs done, global step, validation history, best epoch, log offset);

and ``checkpoints.json`` names the files of the ``latest`` and the ``best``
checkpoint. Each file is written atomically and the index last, so the index
always points at complete files: an interruption at any moment leaves the
previous checkpoint usable. Files no longer named by the index are deleted.

Checkpoints are taken at epoch boundaries (after validation), where the
learner's state is fully described by the above, so resuming from one
reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import io
import pickle
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from metalora.errors import MetaloraError
from metalora.files import atomic_write_bytes
from metalora.runs.rundir import (
    ADAPTERS_FILE,
    CHECKPOINT_INDEX_FILE,
    load_adapters,
    read_json,
    save_adapters,
    tested_checkpoint,
    write_json,
)

INDEX_FILE = CHECKPOINT_INDEX_FILE
FORMAT_VERSION = 1


@dataclass
class TrainingState:
    """Where training of one learner and seed stands (saved with every checkpoint)."""

    epoch: int = 0
    """Epochs finished."""
    global_step: int = 0
    """Optimisation steps logged so far (the TensorBoard step)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One record per validation: ``{"epoch": e, "<metric>": value, ...}``."""
    best_epoch: int | None = None
    """The epoch whose validation score was best so far (``None``: no validation yet)."""
    best_value: float | None = None
    log_offset: int = 0
    """Size of ``log.jsonl`` when the checkpoint was taken (later lines are dropped on resume)."""
    trains: bool = True
    """False once a learner's epoch yielded no optimisation step (e.g. ``pretrained``)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingState:
        """Rebuild from :func:`dataclasses.asdict` output."""
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Checkpoint:
    """A checkpoint read back from disk."""

    adapters: dict[str, Tensor]
    learner_state: dict[str, Any]
    rng: dict[str, Any]
    training: TrainingState


# -- RNG states ------------------------------------------------------------------------
def capture_rng(learner_rng: random.Random, device: torch.device | None = None) -> dict[str, Any]:
    """Every RNG state training may consume, in a form ``torch.load(weights_only=True)`` reads.

    On a GPU only that GPU's generator is saved (not every GPU's), so that a
    checkpoint can be resumed on a machine with another number of GPUs.
    """
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "learner": learner_rng.getstate(),
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": [int(v) for v in np_state["state"]["key"]],
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict[str, Any], learner_rng: random.Random,
                device: torch.device | None = None) -> None:
    """Put back what :func:`capture_rng` captured; a GPU generator goes to ``device``'s GPU.

    Checkpoints of earlier versions hold every GPU's generator (a list): the
    entry of ``device``'s index is used, if the list has one. Without a GPU
    the GPU state is left out (the run then continues on the CPU).
    """
    learner_rng.setstate(_as_tuple(state["learner"]))
    random.setstate(_as_tuple(state["python"]))
    npy = state["numpy"]
    np.random.set_state({
        "bit_generator": npy["bit_generator"],
        "state": {"key": np.asarray(npy["key"], dtype=np.uint32), "pos": npy["pos"]},
        "has_gauss": npy["has_gauss"], "gauss": npy["gauss"],
    })
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or device is None or device.type != "cuda" or not torch.cuda.is_available():
        return
    if isinstance(cuda, list | tuple):  # every GPU's, from an earlier version
        index = device.index or 0
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def _as_tuple(value: Any) -> Any:
    """``random.setstate`` wants nested tuples; serialisation may give lists."""
    if isinstance(value, list | tuple):
        return tuple(_as_tuple(v) for v in value)
    return value


# -- the store --------------------------------------------------------------------------
class CheckpointStore:
    """The checkpoints of one learner and seed, in one directory. See the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @property
    def index_path(self) -> Path:
        return self.directory / INDEX_FILE

    def index(self) -> dict[str, Any] | None:
        """The index (``{"latest": {...}, "best": {...} | None}``), or ``None`` if none yet."""
        if not self.index_path.exists():
            return None
        return read_json(self.index_path, "checkpoint index")

    def exists(self) -> bool:
        """Whether a checkpoint has been taken."""
        return self.index_path.exists()

    def save(self, adapters: dict[str, Tensor], learner_state: dict[str, Any],
             rng: dict[str, Any], training: TrainingState, is_best: bool) -> None:
        """Write the checkpoint of ``training.epoch`` as the latest (and as the best if asked)."""
        stem = f"epoch-{training.epoch:04d}"
        entry: dict[str, Any] = {"epoch": training.epoch, "adapters": f"{stem}.safetensors",
                                 "state": f"{stem}.pt"}
        save_adapters(self.directory / entry["adapters"], adapters,
                      metadata={"epoch": str(training.epoch)})
        buffer = io.BytesIO()
        torch.save({"format": FORMAT_VERSION, "learner": learner_state, "rng": rng,
                    "training": asdict(training)}, buffer)
        atomic_write_bytes(self.directory / entry["state"], buffer.getvalue())
        previous = self.index() or {}
        best = entry if is_best else previous.get("best")
        write_json(self.index_path, {"format": FORMAT_VERSION, "latest": entry, "best": best})
        keep = {INDEX_FILE, entry["adapters"], entry["state"]}
        if best:
            keep |= {best["adapters"], best["state"]}
        for path in self.directory.iterdir():
            if path.name not in keep and not path.name.startswith("."):
                path.unlink(missing_ok=True)

    def load(self, which: str = "latest") -> Checkpoint | None:
        """Read the ``latest`` or ``best`` checkpoint (``None`` if there is none)."""
        index = self.index()
        entry = (index or {}).get(which)
        if not entry:
            return None
        state_path = self.directory / entry["state"]
        adapters_path = self.directory / entry["adapters"]
        for path in (state_path, adapters_path):
            if not path.exists():
                raise MetaloraError(
                    f"checkpoint {str(path)!r} is missing; delete {str(self.directory)!r} to "
                    f"restart this learner and seed from scratch")
        state = _load_state(state_path)
        return Checkpoint(adapters=load_adapters(adapters_path),
                          learner_state=state.get("learner") or {}, rng=state["rng"],
                          training=TrainingState.from_dict(state["training"]))

    def best(self) -> Checkpoint:
        """The best checkpoint, which exists once a best epoch was recorded."""
        checkpoint = self.load("best")
        if checkpoint is None:
            raise MetaloraError(f"no best checkpoint in {str(self.directory)!r}")
        return checkpoint


def _load_state(path: Path) -> dict[str, Any]:
    """Read a checkpoint's state file, never unpickling arbitrary objects.

    Only tensors, numbers, strings and containers load (``weights_only=True``):
    a run directory may come from someone else, and full unpickling can run
    any code. A learner's ``state_dict()`` must therefore hold only those.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise MetaloraError(
            f"checkpoint {str(path)!r} holds objects other than tensors, numbers, strings and "
            "containers; it is not loaded (unpickling them could run code)") from None
    except (OSError, RuntimeError, EOFError) as exc:
        raise MetaloraError(f"checkpoint {str(path)!r} is unreadable: {exc}") from None


def rebuild_tested_adapters(where: Path) -> int | None:
    """A finished learner/seed whose ``adapters.safetensors`` is missing: rebuild it from the
    checkpoint of its tested epoch and return that epoch (``None``: nothing was missing).
    With no such checkpoint left, one error line naming the file and what can be done."""
    if (where / ADAPTERS_FILE).exists():
        return None
    found = tested_checkpoint(where)
    if found is None:
        raise MetaloraError(f"{where / ADAPTERS_FILE} is missing and no checkpoint of its tested "
                            f"epoch is left, so it cannot be rebuilt; delete {where} to train "
                            "this learner and seed again, then resume")
    epoch, path = found
    save_adapters(where / ADAPTERS_FILE, load_adapters(path), metadata={"epoch": str(epoch)})
    return epoch
