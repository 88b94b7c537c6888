"""The per-query experiments' shared protocol: its options, its jobs and their state on disk.

``mechanism.py`` and ``uncertainty.py`` run learners at one cls-45 protocol
(SmolLM2-135M, the first 12 training tasks, 3 epochs, every arm tested at its
last epoch, up to 100 test queries per task, test-time adaptation at 2e-4,
float32), one run directory per arm and seed, and evaluate finished runs again
with changed settings. This module holds what they share: the command-line
options, the job that trains (or resumes) one run, and how to tell whether a
run or an evaluation of it has finished; and the driver's main loop and the
paired-difference cells of its report.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from jobqueue import run_queue

from metalora.paired import PairedDifference, QueryScore, paired_difference
from metalora.stats import mean_se

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "crossfit"


def add_protocol_arguments(parser: argparse.ArgumentParser, output_dir: Path) -> None:
    """The options every such driver takes (``output_dir`` is its default output)."""
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--output-dir", type=Path, default=output_dir)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    # the protocol; change them only to try the driver out (e.g. --model tiny --tasks demo)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="cls45")
    parser.add_argument("--train-tasks", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--query-cap", type=int, default=100)
    parser.add_argument("--extra", default="{}",
                        help="more settings for every arm, as JSON (e.g. '{\"device\": \"cpu\"}')")


def finished(run_dir: Path) -> bool:
    """Whether the run in ``run_dir`` has finished."""
    state = run_dir / "state.json"
    return state.exists() and json.loads(state.read_text()).get("status") == "finished"


def run_job(args: argparse.Namespace, run_dir: Path, learner: str, seed: int,
            options: dict[str, Any]) -> dict[str, Any]:
    """The job (for ``api_job.py``) that resumes the run in ``run_dir``, or starts it: one
    ``learner`` at one ``seed`` at the protocol, with ``options`` beyond it."""
    if run_dir.exists():
        return {"kind": "resume", "run_dir": str(run_dir)}
    return {"kind": "train", "settings": {
        "learner": learner, "tasks": args.tasks, "model": args.model,
        **({"data_dir": str(args.data_dir)} if args.tasks == "cls45" else {}),
        "max_train_tasks": args.train_tasks, "epochs": args.epochs, "eval_every": 0,
        "query_cap": args.query_cap, "adapt_lr": "2e-4", "dtype": "float32", "seeds": [seed],
        "plots": False, "tensorboard": False, "output_dir": str(run_dir.parent),
        "run_name": run_dir.name, **json.loads(args.extra), **options}}


def evaluation_dir(run_dir: Path, split: str, settings: dict[str, Any]) -> Path | None:
    """The finished ``metalora eval`` of ``run_dir`` on ``split`` with exactly ``settings``
    changed, if any."""
    wanted = {k: str(v) for k, v in settings.items()}
    for metrics in sorted((run_dir / "eval").glob("*/metrics.json")):
        protocol = json.loads(metrics.read_text()).get("protocol", {})
        changed = {k: str(v) for k, v in protocol.get("changed_settings", {}).items()}
        if protocol.get("split") == split and changed == wanted:
            return metrics.parent
    return None


def paired_cell(a: Mapping[Any, QueryScore], b: Mapping[Any, QueryScore], metric: str,
                strata: bool = True) -> str:
    """``a - b`` of one per-query score over the keys both have, ``mean ± SE`` (bootstrap;
    within each seed, the key's first element, when ``strata``), accuracy in points, ``*``
    beyond 2 SE; empty when they share no key."""
    if not any(k in b for k in a):
        return ""
    diff = paired_difference({k: s.get(metric) for k, s in a.items()},
                             {k: s.get(metric) for k, s in b.items()},
                             strata={k: k[0] for k in a} if strata else None)
    return _formatted(diff, metric) + ("" if diff.within_noise() else " *")


def _formatted(diff: PairedDifference, metric: str) -> str:
    """``mean ± SE``, accuracy in points to one digit, the proper scores to four."""
    scale, digits = (100.0, 1) if metric == "accuracy" else (1.0, 4)
    return diff.format(digits, scale)


def seed_cell(a: Mapping[Any, QueryScore], b: Mapping[Any, QueryScore], metric: str) -> str:
    """``a - b`` of one score as the mean and standard error of its per-seed mean
    differences (a seed: the key's first element), over the seeds both have; empty under two
    seeds. Unlike :func:`paired_cell`'s bootstrap over queries, its SE counts how much the
    training seed moves the difference."""
    by_seed: dict[Any, list[float]] = {}
    for k, s in a.items():
        if k in b:
            by_seed.setdefault(k[0], []).append(s.get(metric) - b[k].get(metric))
    if len(by_seed) < 2:
        return ""
    mean, se = mean_se([sum(v) / len(v) for v in by_seed.values()])
    return _formatted(PairedDifference(mean, se, len(by_seed)), metric)


class Driver(Protocol):
    """What :func:`run_and_report` drives."""

    def ready(self) -> list[tuple[str, dict[str, Any]]]: ...

    def report(self) -> str: ...


def run_and_report(driver: Driver, args: argparse.Namespace,
                   queue: Callable[..., Any] = run_queue, report: str = "report.md") -> None:
    """Run ``driver``'s jobs (unless ``--report-only``), then write its report into the
    output directory as ``report`` and print it."""
    if not args.report_only:
        queue(driver.ready, args.output_dir, args.jobs, args.threads)
    text = driver.report()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / report).write_text(text)
    print(text)
