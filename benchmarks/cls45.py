"""cls-45 on real CrossFit data with SmolLM2-135M: the paper's Table 1 at a CPU-feasible scale.

Usage::

    python benchmarks/cls45.py                      # the CPU scale below (about 30-60 min)
    python benchmarks/cls45.py --dry-run            # print the `metalora run` command only
    python benchmarks/cls45.py --epochs 2 --query-cap 64 --seeds 0,1,2   # scale up
    python benchmarks/cls45.py --scale paper        # the paper's protocol (GPU-sized)
    python benchmarks/cls45.py --learners lora,abmll -- --lr 1e-3 --inner-lr 1e-3
    python benchmarks/cls45.py --report runs/benchmarks/cls45-...   # table of a finished run

A thin wrapper around ``metalora run``: it builds one invocation that runs
``pretrained``, ``lora``, ``structured-lora``, ``reptile`` and ``abmll`` on
the ``cls45`` suite read from ``--data-dir`` (MetaICL-format CrossFit files;
by default ``shared/data/crossfit`` in the repository's parent folder), prints it, runs it
(the CLI prints its own per-task table and Table 1), then prints a compact
comparison with each learner's validation accuracy, tested epoch and wall
time, and where the results were written (``results.csv``/``results.json``
in the run directory).

Protocol, identical for every learner: the 34 cls-45
training tasks (every row of each), the 15 cls-45 test tasks' k-shot files
``<task>_16_100_{train,dev}.jsonl`` as the validation tasks (32 records:
support = 5 batches of 2 = 10, query = the other 22), and the test tasks
evaluated on their other k-shot files (seeds 13, 21, 42, 87, ...; minus the
validation records). Every evaluated task: 5 AdamW steps at lr 1e-5 on the
support set, then scoring of the query set, then restore. The learners'
learning rates are the paper's (lora 5e-5, structured-lora and reptile 1e-5,
abmll inner 1e-5 / outer 5e-5); extra ``metalora run`` options after ``--``
override anything.

CPU scale (``--scale cpu``, the default), chosen so that all five learners
finish in well under an hour on two shared CPU cores (see
``benchmarks/README.md`` for measured times):

* all 34 training tasks, 1 epoch (= 34 tasks x 5 steps of batch 2 for the
  task-structured learners, the same number of batches for lora);
* validation after the epoch on all 15 validation tasks (all 22 query examples);
* test on all 15 test tasks with at most 32 query examples each;
* seed 0, float32 weights, one thread per process (``--threads``).

``--scale paper`` sets the paper's 500 epochs, seeds 0,1,2 and no query cap
(far beyond a CPU). Explicit flags override either scale.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "crossfit"
DEFAULT_OUTPUT_DIR = REPO / "runs" / "benchmarks"
LEARNERS = "pretrained,lora,structured-lora,reptile,abmll"

SCALES: dict[str, dict[str, Any]] = {
    "cpu": {"epochs": 1, "eval_every": 1, "query_cap": 32, "seeds": "0",
            "max_train_tasks": None, "max_eval_tasks": None, "dtype": "float32"},
    "paper": {"epochs": 500, "eval_every": 1, "query_cap": None, "seeds": "0,1,2",
              "max_train_tasks": None, "max_eval_tasks": None, "dtype": "float32"},
}
"""Named scales; every value can be overridden by the flag of the same name."""


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """Parse the wrapper's flags; everything after ``--`` is passed to ``metalora run``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Options after -- go to `metalora run` unchanged (see `metalora run --help`).")
    parser.add_argument("--scale", choices=sorted(SCALES), default="cpu",
                        help="preset scale (default cpu); the flags below override it")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="MetaICL-format CrossFit data (default ../shared/data/crossfit)")
    parser.add_argument("--learners", default=LEARNERS,
                        help=f"comma-separated learners (default {LEARNERS})")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--epochs", type=int, help="passes over the training tasks")
    parser.add_argument("--eval-every", type=int, help="validate every N epochs (0 = never)")
    parser.add_argument("--query-cap", type=int,
                        help="query examples per evaluated task; validation tasks have 22 "
                             "at most (0 = no cap)")
    parser.add_argument("--seeds", help="comma-separated seeds")
    parser.add_argument("--max-train-tasks", type=int, help="use only the first N training tasks")
    parser.add_argument("--max-eval-tasks", type=int,
                        help="use only the first N validation and test tasks")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), help="model weights' dtype")
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS for the run when not already set (default 1)")
    parser.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    parser.add_argument("--run-name", help="run directory name (default cls45-<timestamp>)")
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    parser.add_argument("--report", type=Path, metavar="RUN_DIR",
                        help="print the comparison of a finished (or resumed) run and exit")
    args = parser.parse_args(argv)
    for key, value in SCALES[args.scale].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.query_cap == 0:
        args.query_cap = None
    return args, extra


def run_command(args: argparse.Namespace, run_name: str, extra: list[str]) -> list[str]:
    """The ``metalora run`` arguments (without the program name) for ``args``."""
    cmd = [
        "run", "--learner", args.learners, "--tasks", "cls45",
        "--data-dir", str(args.data_dir), "--model", args.model,
        "--epochs", str(args.epochs), "--eval-every", str(args.eval_every),
        "--seeds", args.seeds, "--dtype", args.dtype,
        "--output-dir", str(args.output_dir), "--run-name", run_name,
        "--no-tensorboard",
    ]
    if args.query_cap is not None:
        cmd += ["--query-cap", str(args.query_cap)]
    if args.max_train_tasks is not None:
        cmd += ["--max-train-tasks", str(args.max_train_tasks)]
    if args.max_eval_tasks is not None:
        cmd += ["--max-eval-tasks", str(args.max_eval_tasks)]
    return cmd + extra


def learner_times(run_dir: Path, learners: list[str], seeds: list[str]) -> dict[str, float]:
    """Seconds each learner took (all its seeds), from when its last seed's metrics were written.

    The clock starts when the run wrote ``config.json`` (suite and model
    loaded); a learner's time ends when its last seed's ``metrics.json`` was
    written and the next learner's starts there. Missing learners are left out.
    """
    start = (run_dir / "config.json").stat().st_mtime
    times: dict[str, float] = {}
    for learner in learners:
        done = [run_dir / learner / f"seed-{s}" / "metrics.json" for s in seeds]
        if not all(p.exists() for p in done):
            break
        end = max(p.stat().st_mtime for p in done)
        times[learner] = end - start
        start = end
    return times


def fmt_minutes(seconds: float | None) -> str:
    """``12.3 min`` (or ``-``)."""
    return "-" if seconds is None else f"{seconds / 60:.1f} min"


def report(run_dir: Path) -> None:
    """Print the Table-1 comparison of a run directory, with validation and timing columns."""
    results_path = run_dir / "results.json"
    if not results_path.exists():
        raise SystemExit(f"{results_path} does not exist (the run has not finished a learner)")
    results = json.loads(results_path.read_text())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    seeds = [str(s) for s in config.get("seeds", [0])]
    rows = results["rows"]
    times = learner_times(run_dir, [r["method"] for r in rows], seeds)
    header = (f"{'method':16s} {'test Acc':>14s} {'test ECE':>14s} {'val Acc':>8s} "
              f"{'tested epoch':>12s} {'wall':>9s}")
    print()
    print(f"cls-45 Table 1 ({run_dir})")
    print(f"  {config.get('model')} {config.get('dtype')}; epochs {config.get('epochs')}, "
          f"eval_every {config.get('eval_every')}, query_cap {config.get('query_cap')}, "
          f"max_train_tasks {config.get('max_train_tasks')}, max_eval_tasks "
          f"{config.get('max_eval_tasks')}, seeds {','.join(seeds)}; "
          f"test at {results['protocol'].get('test_at')}")
    print(header)
    print("-" * len(header))
    for row in rows:
        name = row["method"]
        seed_data = metrics["learners"][name]["seeds"]
        val = []
        for s in seed_data.values():
            at = {h["epoch"]: h for h in s.get("validation", [])}
            if s.get("tested_epoch") in at:
                val.append(at[s["tested_epoch"]]["accuracy"])
        val_text = f"{100 * sum(val) / len(val):.1f}%" if val else "-"
        epochs = ",".join("-" if e is None else str(e) for e in row["tested_epochs"])
        print(f"{name:16s} {row['Acc']:>14s} {row['ECE']:>14s} {val_text:>8s} {epochs:>12s} "
              f"{fmt_minutes(times.get(name)):>9s}")
    per_task_accuracy(results)
    baselines = constant_baselines(run_dir / rows[0]["method"] / f"seed-{seeds[0]}")
    if baselines is not None:
        print(f"reference (same test queries): always the first option (A) "
              f"{100 * baselines[0]:.1f}%, always the query set's majority answer "
              f"{100 * baselines[1]:.1f}% (macro)")
    print(f"Acc/ECE: macro over {len(next(iter(results['per_task'].values())))} test tasks, "
          f"mean ± SE over seeds; val Acc: validation macro accuracy at the tested epoch")
    print(f"results: {run_dir / 'results.csv'}, {run_dir / 'results.json'}")


def constant_baselines(seed_dir: Path) -> tuple[float, float] | None:
    """Macro accuracy of answering always ``A``, and always the majority answer of each query set.

    Read from a seed's ``predictions.safetensors`` (the targets are the same
    for every learner); ``None`` when the file is missing.
    """
    path = seed_dir / "predictions.safetensors"
    if not path.exists():
        return None
    import torch
    from safetensors import safe_open

    first, majority = [], []
    with safe_open(str(path), framework="pt") as handle:
        for i in range(len(json.loads((handle.metadata() or {}).get("tasks", "[]")))):
            targets = handle.get_tensor(f"{i}.targets")
            if targets.numel() == 0:
                continue
            first.append(float((targets == 0).float().mean()))
            majority.append(int(torch.bincount(targets).max()) / targets.numel())
    if not first:
        return None
    return sum(first) / len(first), sum(majority) / len(majority)


def per_task_accuracy(results: dict[str, Any]) -> None:
    """Print test accuracy per task (rows) and learner (columns), mean over seeds."""
    per_task = results["per_task"]
    learners = [row["method"] for row in results["rows"]]
    tasks = sorted({t for name in learners for t in per_task.get(name, {})})
    width = max(11, *(len(name) + 1 for name in learners))
    print(f"{'test accuracy per task':28s}" + "".join(f"{name:>{width}s}" for name in learners))
    for task in tasks:
        cells = []
        for name in learners:
            value = per_task.get(name, {}).get(task, {}).get("accuracy")
            cells.append("-" if value is None else f"{100 * value['mean']:.1f}%")
        print(f"{task:28s}" + "".join(f"{c:>{width}s}" for c in cells))


def main(argv: list[str] | None = None) -> int:
    """Build, print and run the ``metalora run`` invocation, then print the comparison."""
    args, extra = parse_args(argv)
    if args.report is not None:
        report(args.report)
        return 0
    if not args.data_dir.is_dir():
        raise SystemExit(f"data directory {args.data_dir} does not exist (see --data-dir)")
    run_name = args.run_name or f"cls45-{datetime.now():%Y%m%d-%H%M%S}"
    if (args.output_dir / run_name).exists():
        raise SystemExit(f"{args.output_dir / run_name} exists; pick another --run-name")
    cmd = run_command(args, run_name, extra)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    env.setdefault("MKL_NUM_THREADS", env["OMP_NUM_THREADS"])
    env.setdefault("COLUMNS", "200")  # rich tables are not cut to 80 columns in a log file
    print(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} metalora {shlex.join(cmd)}", flush=True)
    if args.dry_run:
        return 0
    start = time.perf_counter()
    code = subprocess.call(
        [sys.executable, "-c", "from metalora.cli import main; main()", *cmd], env=env)
    wall = time.perf_counter() - start
    print(f"metalora run exited with status {code} after {fmt_minutes(wall)}", flush=True)
    run_dir = args.output_dir / run_name
    if (run_dir / "results.json").exists():
        report(run_dir)
    if code != 0 and run_dir.exists():
        print(f"resume with: metalora run --resume {shlex.quote(str(run_dir))}, then "
              f"python benchmarks/cls45.py --report {shlex.quote(str(run_dir))}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
