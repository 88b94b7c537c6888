"""Run benchmark jobs in the background, a few at a time, resumably.

Shared by the benchmark drivers (``protocol.py``, ``mechanism.py``): each job
is a name and a job for the Python API (``api_job.py``: train, resume or
evaluate); a job whose result is already on disk is skipped, so a driver can
be stopped and started again at will. Each job runs in its own process with
``threads`` threads and logs to ``<out>/<name>.console.log``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

JOB_SCRIPT = Path(__file__).resolve().parent / "api_job.py"


def start(name: str, job: dict[str, Any], out: Path, threads: int) -> subprocess.Popen:
    """Start ``job`` (see ``api_job.py``) in the background, logging to
    ``out/<name>.console.log``."""
    text = json.dumps(job)
    print(f"{time.strftime('%H:%M:%S')} start {name}: {text}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"{name.replace(':', '-')}.console.log", "a")  # noqa: SIM115 (closed by the OS)
    return subprocess.Popen([sys.executable, str(JOB_SCRIPT), text], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def run_queue(ready: Callable[[], list[tuple[str, dict[str, Any]]]], out: Path, jobs: int,
              threads: int, poll: float = 5.0) -> set[str]:
    """Keep ``jobs`` commands running until ``ready()`` offers none; return the failed names.

    ``ready()`` is asked again after every job ends (a finished job may make
    others ready) and must leave out the jobs already done.
    """
    running: dict[str, subprocess.Popen] = {}
    failed: set[str] = set()
    while True:
        waiting = [(n, a) for n, a in ready() if n not in running and n not in failed]
        while waiting and len(running) < jobs:
            name, job = waiting.pop(0)
            running[name] = start(name, job, out, threads)
        if not running:
            break
        time.sleep(poll)
        for name, proc in list(running.items()):
            if proc.poll() is not None:
                del running[name]
                status = "done" if proc.returncode == 0 else f"FAILED ({proc.returncode})"
                if proc.returncode != 0:
                    failed.add(name)
                print(f"{time.strftime('%H:%M:%S')} {status} {name}", flush=True)
    if failed:
        print(f"failed: {', '.join(sorted(failed))} (see their console logs)", flush=True)
    return failed
