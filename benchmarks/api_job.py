"""One benchmark job, through the Python API: ``python benchmarks/api_job.py JSON``.

The drivers (``protocol.py``, ``mechanism.py``) run their jobs side by side as separate
processes, each on its own thread budget; each process runs this script with one job:

* ``{"kind": "train", "settings": {...}}``: :func:`metalora.api.train` of
  :func:`metalora.api.run_spec` ``(**settings)``;
* ``{"kind": "resume", "run_dir": ...}``: :func:`metalora.api.resume`;
* ``{"kind": "evaluate", "run_dir": ..., "options": {...}}``:
  :func:`metalora.api.evaluate`.

Settings are named as in Python (``inner_lr``, ``plots``); values may be strings, as on
the command line. Progress goes to standard error (the job's log).
"""

from __future__ import annotations

import json
import sys

from rich.console import Console

import metalora.api as ml
from metalora.errors import MetaloraError


def run(job: dict) -> None:
    """Run one job (see the module)."""
    console = Console(stderr=True)
    kind = job.get("kind")
    if kind == "train":
        ml.train(ml.run_spec(**job["settings"]), console=console)
    elif kind == "resume":
        ml.resume(job["run_dir"], console=console)
    elif kind == "evaluate":
        ml.evaluate(job["run_dir"], console=console, **job.get("options", {}))
    else:
        raise MetaloraError(f"unknown job kind {kind!r}; valid choices: train, resume, evaluate")


def main() -> None:
    try:
        run(json.loads(sys.argv[1]))
    except MetaloraError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
