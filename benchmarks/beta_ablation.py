"""ABMLL's beta ablation (the paper's Table 3) under both readings of the outer step.

Usage::

    python benchmarks/beta_ablation.py                       # run every missing cell, then report
    python benchmarks/beta_ablation.py --report-only         # the table of the finished cells
    python benchmarks/beta_ablation.py --betas 1,1e-8 --readings literal -- --epochs 5

One ``metalora run --learner abmll --tasks cls45`` per (reading, beta), one
seed as in the paper, into ``--output-dir`` (default
``runs/benchmarks/beta-ablation``); a cell whose run directory has finished
is not run again. The scale is small enough for two CPU cores: the first
``--train-tasks`` cls-45 training tasks, ``--epochs`` epochs, validation after
every epoch on the 15 validation tasks (at most ``--query-cap`` queries), the
test at the best-validation epoch. Learning rates are raised from the
paper's so that theta moves at this scale (inner and outer 1e-3) and
test-time adaptation changes predictions (adapt_lr 2e-4). Arguments after
``--`` go to every ``metalora run``.

The report gives, per cell, the best validation accuracy and the validation
ECE at that epoch (what the paper's Table 3 reports), and the test accuracy
and ECE for reference, beside the accuracy of always answering A and of
always the query set's majority answer; settings are to be chosen on
validation only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "crossfit"


def cell_name(reading: str, beta: str) -> str:
    return f"{reading}-beta{beta}"


def run_cell(args: argparse.Namespace, reading: str, beta: str, extra: list[str]) -> None:
    out = args.output_dir / cell_name(reading, beta)
    state = out / "state.json"
    if state.exists() and json.loads(state.read_text()).get("status") == "finished":
        return
    if out.exists():
        cmd = ["run", "--resume", str(out)]
    else:
        cmd = ["run", "--learner", "abmll", "--tasks", "cls45", "--data-dir",
               str(args.data_dir), "--max-train-tasks", str(args.train_tasks),
               "--epochs", str(args.epochs), "--eval-every", "1",
               "--query-cap", str(args.query_cap), "--inner-lr", "1e-3", "--outer-lr", "1e-3",
               "--adapt-lr", "2e-4", "--beta", beta, "--meta-gradient", reading,
               "--log-var-init", str(args.log_var_init), "--seeds", "0", "--no-plots",
               "--output-dir", str(args.output_dir), "--run-name", cell_name(reading, beta),
               *extra]
    print("metalora " + " ".join(cmd), flush=True)
    subprocess.run([sys.executable, "-c", "from metalora.cli import main; main()", *cmd],
                   check=True)


def references(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """Always-A and majority-answer accuracy on this ablation's queries (see protocol.py)."""
    from protocol import references as protocol_references

    return protocol_references(args.data_dir, args.query_cap)


def report(args: argparse.Namespace) -> None:
    print(f"\n{'reading':<12}{'beta':>8}{'val acc':>9}{'val ECE':>9}{'@epoch':>8}"
          f"{'test acc':>10}{'test ECE':>10}")
    for reading in args.readings.split(","):
        for beta in args.betas.split(","):
            metrics = args.output_dir / cell_name(reading, beta) / "metrics.json"
            if not metrics.exists():
                print(f"{reading:<12}{beta:>8}  (not run)")
                continue
            seed = json.loads(metrics.read_text())["learners"]["abmll"]["seeds"]["0"]
            history = seed["validation"]
            best = max(history, key=lambda r: r["accuracy"])
            print(f"{reading:<12}{beta:>8}{100 * best['accuracy']:>8.1f}%{best['ece']:>9.3f}"
                  f"{best['epoch']:>8}{100 * seed['macro']['accuracy']:>9.1f}%"
                  f"{seed['macro']['ece']:>10.3f}")
    refs = references(args)
    print(f"{'always A':<20}{100 * refs['validation'][0]:>8.1f}%{'':>17}"
          f"{100 * refs['test'][0]:>9.1f}%")
    print(f"{'majority answer':<20}{100 * refs['validation'][1]:>8.1f}%{'':>17}"
          f"{100 * refs['test'][1]:>9.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--output-dir", type=Path,
                        default=REPO / "runs" / "benchmarks" / "beta-ablation")
    parser.add_argument("--readings", default="first-order,literal")
    parser.add_argument("--betas", default="1,1e-8,1e-16,1e-5")
    parser.add_argument("--train-tasks", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--query-cap", type=int, default=22)
    parser.add_argument("--log-var-init", type=float, default=-20.0)
    parser.add_argument("--report-only", action="store_true")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    if not args.report_only:  # beta by beta, both readings each, so that a cut run compares
        for beta in args.betas.split(","):
            for reading in args.readings.split(","):
                run_cell(args, reading, beta, extra)
    report(args)


if __name__ == "__main__":
    main()
