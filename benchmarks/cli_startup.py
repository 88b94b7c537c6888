"""How long the commands that load no model take to answer.

Usage::

    python benchmarks/cli_startup.py [--metalora PATH] [--repeats 5]

Runs ``metalora --help``, ``metalora plugins``, ``metalora tasks`` and
``metalora --version`` as a user would (a new process each time, output
discarded), alternating the commands, and prints the median wall time of
each beside ``python -c "import torch"`` (the floor: every plugin module
imports torch). ``--metalora`` points at another installation's console
script, e.g. a checkout of an older commit in its own venv, to compare.
It also names the heavy packages (transformers, datasets, torchmetrics,
matplotlib) that ``metalora --help`` imports; there should be none.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = (["--help"], ["plugins"], ["tasks"], ["--version"])
HEAVY = ("transformers", "datasets", "torchmetrics", "matplotlib", "peft")


def wall_time(argv: list[str]) -> float:
    """Seconds one process takes from start to exit."""
    start = time.perf_counter()
    subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def heavy_imports(python: str) -> list[str]:
    """The heavy packages that building the CLI imports, in the given interpreter."""
    code = ("import sys; from metalora.cli import build_app; build_app(); "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return [m for m in out.stdout.strip().split(",") if m]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metalora", default=shutil.which("metalora") or "metalora",
                        help="the console script to time (default: the one on PATH)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    script = Path(args.metalora)
    python = str(script.with_name("python")) if script.with_name("python").exists() \
        else sys.executable
    runs: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        runs.setdefault("python -c 'import torch'", []).append(
            wall_time([python, "-c", "import torch"]))
        for command in COMMANDS:
            runs.setdefault("metalora " + " ".join(command), []).append(
                wall_time([str(script), *command]))
    print(f"{script} ({args.repeats} runs each, median wall time)")
    for name, times in runs.items():
        print(f"  {name:<28} {statistics.median(times):6.2f} s")
    heavy = heavy_imports(python)
    print(f"heavy packages imported by the CLI: {', '.join(heavy) or 'none'}")


if __name__ == "__main__":
    main()
