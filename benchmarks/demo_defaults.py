"""Choosing the demo's settings (epochs, learning rates) on its validation families only.

Usage::

    nohup python benchmarks/demo_defaults.py > runs/benchmarks/demo-defaults.log 2>&1 &
    python benchmarks/demo_defaults.py --report-only

README command 1 runs ``pretrained``, ``lora`` and ``abmll`` on the generated
``demo`` suite with SmolLM2-135M in a few minutes. Which epochs and learning
rates make that comparison informative is chosen here, by one rule, on the
suite's two validation families; the three test families play no part:

1. for each training learning rate in ``--lr-grid`` (lora ``lr``; abmll
   ``inner_lr`` = ``outer_lr``), one run of lora and abmll with
   ``--max-epochs`` epochs, validating after every epoch (test-time adaptation
   at ``--adapt-lr``, seed 0);
2. each learner keeps the learning rate with the highest best-epoch
   validation accuracy (a tie, as in ``protocol.py``: the lower ECE); the
   epochs are the best epoch of the mean validation accuracy of the two
   learners at their kept rates (epochs are one setting for the whole run; a
   tie: the earlier epoch);
3. the kept runs are evaluated again on the validation tasks with each
   test-time adaptation rate of ``--adapt-grid`` (``metalora eval --split
   validation --set adapt_lr=...``), and the rate with the highest mean
   validation accuracy of the two learners is kept (it is one setting too).

The report prints every validation number and the choice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from protocol import best_index, chosen

REPO = Path(__file__).resolve().parents[1]
LEARNERS = ("lora", "abmll")


def metalora(args: argparse.Namespace, *argv: str) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    print("metalora " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-c", "from metalora.cli import main; main()", *argv],
                   check=True, env=env)


def run_dir(args: argparse.Namespace, lr: str) -> Path:
    return args.output_dir / f"lr{lr}"


def finished(path: Path) -> bool:
    state = path / "state.json"
    return state.exists() and json.loads(state.read_text()).get("status") == "finished"


def train(args: argparse.Namespace, lr: str) -> None:
    out = run_dir(args, lr)
    if finished(out):
        return
    if out.exists():
        metalora(args, "run", "--resume", str(out))
        return
    metalora(args, "run", "--learner", ",".join(LEARNERS), "--tasks", "demo",
             "--epochs", str(args.max_epochs), "--eval-every", "1", "--seeds", "0",
             "--lr", lr, "--inner-lr", lr, "--outer-lr", lr, "--adapt-lr", args.adapt_lr,
             "--no-plots", "--no-per-task", "--output-dir", str(args.output_dir),
             "--run-name", out.name)


def history(path: Path, learner: str) -> list[dict]:
    metrics = json.loads((path / "metrics.json").read_text())
    return metrics["learners"][learner]["seeds"]["0"]["validation"]


def best(records: list[dict]) -> dict:
    return records[chosen(records)]


def adapted(path: Path, adapt_lr: str) -> dict[str, float] | None:
    """learner -> validation accuracy of the tested adapters at ``adapt_lr``, if evaluated."""
    for metrics in sorted((path / "eval").glob("*-validation/metrics.json")):
        data = json.loads(metrics.read_text())
        if data["protocol"].get("changed_settings", {}).get("adapt_lr") == float(adapt_lr):
            return {n: v["seeds"]["0"]["macro"]["accuracy"]
                    for n, v in data["learners"].items()}
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", type=Path,
                        default=REPO / "runs" / "benchmarks" / "demo-defaults")
    parser.add_argument("--lr-grid", default="1e-4,3e-4,1e-3")
    parser.add_argument("--adapt-lr", default="2e-4")
    parser.add_argument("--adapt-grid", default="1e-5,1e-3")
    parser.add_argument("--max-epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    grid = args.lr_grid.split(",")
    if not args.report_only:
        for lr in grid:
            train(args, lr)
    done = [lr for lr in grid if finished(run_dir(args, lr))]
    print("\n| lr | learner | val acc per epoch | val ECE per epoch |")
    print("| --- | --- | --- | --- |")
    for lr in done:
        for learner in LEARNERS:
            records = history(run_dir(args, lr), learner)
            accs = ", ".join(f"{100 * r['accuracy']:.1f}%" for r in records)
            eces = ", ".join(f"{r['ece']:.3f}" for r in records)
            print(f"| {lr} | {learner} | {accs} | {eces} |")
    if len(done) < len(grid):
        print(f"\n{len(grid) - len(done)} learning rate(s) not finished")
        return
    kept = {n: grid[chosen([best(history(run_dir(args, lr), n)) for lr in grid])]
            for n in LEARNERS}
    curves = [[r["accuracy"] for r in history(run_dir(args, kept[n]), n)] for n in LEARNERS]
    mean = [sum(c[e] for c in curves) / len(curves) for e in range(args.max_epochs)]
    epochs = 1 + best_index(mean)
    print(f"\nkept learning rates: {kept}; mean validation accuracy per epoch "
          f"{', '.join(f'{100 * m:.1f}%' for m in mean)}: epochs = {epochs}")
    scores = {args.adapt_lr: {n: best(history(run_dir(args, kept[n]), n))["accuracy"]
                              for n in LEARNERS}}
    for adapt_lr in args.adapt_grid.split(","):
        for learner in LEARNERS:
            path = run_dir(args, kept[learner])
            if adapted(path, adapt_lr) is None and not args.report_only:
                metalora(args, "eval", str(path), "--split", "validation", "--set",
                         f"adapt_lr={adapt_lr}", "--no-per-task")
        got = {n: (adapted(run_dir(args, kept[n]), adapt_lr) or {}).get(n) for n in LEARNERS}
        if None not in got.values():
            scores[adapt_lr] = got
    print("\n| adapt_lr | " + " | ".join(f"{n} val acc" for n in LEARNERS) + " | mean |")
    print("| --- |" + " --- |" * (len(LEARNERS) + 1))
    for adapt_lr, got in scores.items():
        mean_acc = sum(got.values()) / len(got)
        print(f"| {adapt_lr} | " + " | ".join(f"{100 * got[n]:.1f}%" for n in LEARNERS)
              + f" | {100 * mean_acc:.1f}% |")
    choice = list(scores)[best_index([sum(got.values()) for got in scores.values()])]
    print(f"\nchosen on validation: epochs {epochs}, lora lr {kept['lora']}, abmll inner/outer "
          f"lr {kept['abmll']}, adapt_lr {choice}")


if __name__ == "__main__":
    main()
