"""Peak memory of one cls-45 training epoch per learner, over 10 and over 34 training tasks.

Usage::

    python benchmarks/epoch_memory.py [--data-dir DIR] [--learners lora,structured-lora,...]
                                      [--task-counts 10,34] [--model smollm2-135m]
                                      [--max-length 64] [--steps 1]

Each (learner, task count) is one ``metalora run`` process on the real
cls-45 suite (``--data-dir``, by default ``shared/data/crossfit`` in the
repository's parent folder): one epoch over the first N training tasks, no validation, and a
minimal test (one task, two queries) so that the epoch is what is measured.
Every learner takes ``--steps`` steps per task (``steps_per_task`` /
``inner_steps``; what persists between steps does not depend on how many
there are), and prompts are cut to ``--max-length`` tokens (64: nearly every
task has prompts that long): the peak of an epoch follows its longest batch,
and cls-45's later training tasks have much longer prompts than its first
ten (imdb, ethos), so without a common cap the comparison would measure
prompt length, not the number of tasks.
The peak resident set size of that process (``ru_maxrss`` from ``wait4``,
glibc's mmap threshold pinned at 128 KiB so that freed tensors go back to
the system) is printed per learner and task count, with the ratio between
the counts: a learner whose state does not grow with the number of tasks
shows a ratio of about 1.00.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "crossfit"
PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def peak_rss(argv: list[str], env: dict[str, str]) -> tuple[int, float]:
    """Run ``argv``; its peak RSS in bytes and its wall time in seconds."""
    start = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{process.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss * 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--learners", default="lora,structured-lora,reptile,maml,abmll")
    parser.add_argument("--task-counts", default="10,34")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1)
    args = parser.parse_args()
    counts = [int(c) for c in args.task_counts.split(",")]
    env = {**os.environ, **PINNED_MALLOC, "OMP_NUM_THREADS": str(args.threads)}
    print(f"one cls-45 epoch, model {args.model}, {args.threads} thread(s), {args.steps} "
          f"step(s) per task, prompts <= {args.max_length} tokens; peak RSS of the whole "
          "process (model and data included)")
    header = f"{'learner':<16}" + "".join(f"{f'{n} tasks MiB':>15}" for n in counts) + \
        f"{'ratio':>8}{'wall s':>9}"
    print(header)
    print("-" * len(header))
    with tempfile.TemporaryDirectory() as out:
        for learner in args.learners.split(","):
            peaks, walls = [], []
            for n in counts:
                argv = [sys.executable, "-c", "from metalora.cli import main; main()", "run",
                        "--learner", learner, "--tasks", "cls45", "--data-dir",
                        str(args.data_dir), "--model", args.model, "--epochs", "1",
                        "--eval-every", "0", "--max-train-tasks", str(n),
                        "--max-eval-tasks", "1", "--query-cap", "2", "--no-plots",
                        "--max-length", str(args.max_length),
                        "--steps-per-task", str(args.steps), "--inner-steps", str(args.steps),
                        "--output-dir", out, "--run-name", f"{learner}-{n}"]
                peak, wall = peak_rss(argv, env)
                peaks.append(peak)
                walls.append(wall)
            cells = "".join(f"{p / 2**20:>15,.0f}" for p in peaks)
            print(f"{learner:<16}{cells}{peaks[-1] / peaks[0]:>8.3f}{sum(walls):>9.0f}",
                  flush=True)


if __name__ == "__main__":
    main()
