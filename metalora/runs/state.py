"""A run's state on disk (``state.json``), interruption and resume.

``state.json`` records the run's status (``running``, ``interrupted``,
``failed``, ``finished``), the process that runs it, and which learner/seed
pairs are done. Ctrl-C or SIGTERM stops a run with :class:`RunInterrupted`;
``metalora run --resume RUN_DIR`` continues it (:func:`resume_command`).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from metalora.errors import MetaloraError
from metalora.runs.rundir import STATE_FILE, read_json, write_json


def resume_command(run_dir: Path) -> str:
    """The shell command that continues the run in ``run_dir``."""
    return f"metalora run --resume {shlex.quote(str(run_dir))}"


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C; its directory can be resumed (see :func:`resume_command`)."""

    def __init__(self, run_dir: Path, detail: str = "") -> None:
        super().__init__(detail)
        self.run_dir = run_dir
        self.detail = detail

    @property
    def resume_command(self) -> str:
        return resume_command(self.run_dir)


def write_state(run_dir: Path, state: dict[str, Any], status: str | None = None) -> None:
    """Write ``state`` (with ``status``, when given, and the time) to ``RUN_DIR/state.json``."""
    if status is not None:
        state["status"] = status
    state["updated"] = datetime.now().isoformat(timespec="seconds")
    write_json(run_dir / STATE_FILE, state)


def load_state(run_dir: Path) -> dict[str, Any]:
    """The state of a run to resume; one error line when another process still runs it."""
    path = run_dir / STATE_FILE
    state = read_json(path, "run state") if path.exists() else {}
    if state.get("status") == "running" and process_alive(state):
        raise MetaloraError(
            f"run {str(run_dir)!r} is still running (process {state.get('pid')}); "
            "wait for it or stop it before resuming (if it is not running, set \"status\" "
            f"in {STATE_FILE} to \"interrupted\")")
    state.setdefault("pairs", {})
    return state


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into ``KeyboardInterrupt`` (main thread only; the old handler comes back)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def process_alive(state: dict[str, Any]) -> bool:
    """Whether the process recorded in ``state`` still runs on this host."""
    pid, host = state.get("pid"), state.get("host")
    if not isinstance(pid, int) or host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():  # Linux: a recycled pid of another program is not our run
        try:
            return b"metalora" in cmdline.read_bytes()
        except OSError:
            return True
    return True
