"""The figures of the documentation site, made from the code and from real runs.

Usage::

    python benchmarks/docs_figures.py                      # everything below
    python benchmarks/docs_figures.py --only diagram       # or: demo, protocol, uncertainty

Writes PNG files (200 dpi) into ``docs/images/``:

* ``architecture.png`` (``diagram``): the layers of the code and the data flow
  of a run, drawn with matplotlib from the names below.
* ``quickstart-validation.png``, ``quickstart-reliability.png`` and
  ``quickstart-pruning.png`` (``demo``): README command 1's demo run
  (``metalora run --learner pretrained,lora,abmll --tasks demo`` on
  SmolLM2-135M, the suite's recommended settings) and ``metalora prune`` on
  it; the figures every run and sweep writes into its own ``plots/``.
* ``benchmarks-validation.png``, ``benchmarks-reliability.png``
  (``protocol``): the validation curves (3 seeds) and the pooled test
  reliability of the learners of the cls-45 protocol (abmll under both
  readings of its outer step), read from the test runs that
  ``benchmarks/protocol.py`` reports (``--protocol-dir``).
* ``uncertainty-risk-coverage.png``, ``uncertainty-reliability.png``
  (``uncertainty``): the risk-coverage curves and the reliability of every row of
  ``benchmarks/uncertainty.py``'s report finished at every seed of
  ``--uncertainty-seeds`` (0, 1 and 2; the frozen model's rows, which do not depend on
  the seed, at the first), pooled over the test tasks and those seeds, as
  ``metalora compare`` draws them (``--uncertainty-dir``, ``--mechanism-dir``).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import protocol
import uncertainty

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "docs" / "images"

LAYERS = (
    ("metalora.cli",
     "one module per command: run, eval, adapt,\nprune, export, plugins, tasks, settings"),
    ("metalora.runs",
     "RunSetup, Engine (the training loop), results,\nrun directory, checkpoints, reports"),
    ("metalora  (the plugin API)",
     "Learner, Prior, TaskSampler, Metric, Pruner,\nLogger, setting, Task, adapters, ..."),
    ("components", "adapters, prompts, episodes, evaluation,\nscoring, models, settings, files"),
    ("interfaces", "hookspecs, records, settings, errors"),
)
LAYER_COLOURS = ("#dbe9f6", "#dcefdc", "#fdebd3", "#eee2f3", "#f2f2f2")
FLOW = (
    ("command line + config file", "settings, all validated before any work starts"),
    ("registry",
     "plugins found by entry point: learners, priors,\nsuites, metrics, pruners, loggers"),
    ("suite", "tasks for training, validation and test"),
    ("learner", "LoRA adapters on the frozen model, trained\nepoch by epoch, checkpointed"),
    ("evaluation", "adapt on each task's support set, score its queries"),
    ("metrics", "accuracy, ECE, NLL, Brier per task, macro-averaged"),
    ("run directory", "tables, figures, run.json, log.jsonl, predictions"),
)


def draw_architecture(path: Path) -> Path:
    """The layers (left, each importing only those below it) and a run's data flow (right)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    fig = Figure(figsize=(12, 6.4))
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.1))
    for ax in (left, right):
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.axis("off")

    def box(ax, x, y, w, h, title, text, colour):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.008", linewidth=1,
                                    edgecolor="#333333", facecolor=colour))
        ax.text(x + 0.02, y + h - 0.02, title, fontsize=9.5, weight="bold", va="top")
        ax.text(x + 0.02, y + h - 0.058, text, fontsize=8, va="top", color="#333333",
                linespacing=1.3)

    def arrow(ax, start, end):
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=11,
                                     linewidth=1, color="#555555"))

    left.set_title("Layers: each imports only the ones below it", fontsize=10.5)
    height, gap = 0.145, 0.04
    for i, (title, text) in enumerate(LAYERS):
        y = 0.96 - (i + 1) * height - i * gap
        box(left, 0.01, y, 0.76, height, title, text, LAYER_COLOURS[i])
        if i:
            arrow(left, (0.39, y + height + gap - 0.004), (0.39, y + height + 0.006))
    left.add_patch(FancyBboxPatch((0.82, 0.035), 0.15, 0.925, boxstyle="round,pad=0.008",
                                  linewidth=1, edgecolor="#333333", facecolor="#fff7c2"))
    left.text(0.895, 0.5, "plugins/ and third-party packages: they register through\n"
              "entry points and import only the plugin API", rotation=90, ha="center",
              va="center", fontsize=8.5, linespacing=1.4)

    right.set_title("A run, from the command line to the results", fontsize=10.5)
    height, gap = 0.112, 0.025
    for i, (title, text) in enumerate(FLOW):
        y = 0.96 - (i + 1) * height - i * gap
        box(right, 0.03, y, 0.94, height, title, text, "#eef4fb")
        if i:
            arrow(right, (0.5, y + height + gap - 0.004), (0.5, y + height + 0.006))
    fig.savefig(path, dpi=200, bbox_inches="tight")
    return path


def metalora(*args: str, cwd: Path) -> None:
    """Run the command line in a fresh process (as a user would)."""
    command = [sys.executable, "-c", "from metalora.cli import main; main()", *args]
    print("$ metalora", " ".join(args), flush=True)
    subprocess.run(command, check=True, cwd=cwd)


def demo_figures(images: Path) -> list[Path]:
    """README command 1's demo, then a pruning sweep of it; copy their figures."""
    work = Path(tempfile.mkdtemp(prefix="metalora-docs-figures-"))
    try:
        metalora("run", "--learner", "pretrained,lora,abmll", "--tasks", "demo",
                 "--output-dir", str(work), "--run-name", "demo", "--no-per-task", cwd=work)
        run_dir = work / "demo"
        metalora("prune", str(run_dir), "--ratio", "0.01,0.1,0.2,0.3", cwd=work)
        (sweep,) = (run_dir / "prune").iterdir()
        copies = {run_dir / "plots" / "validation.png": "quickstart-validation.png",
                  run_dir / "plots" / "reliability.png": "quickstart-reliability.png",
                  sweep / "pruning.png": "quickstart-pruning.png"}
        return [Path(shutil.copyfile(src, images / name)) for src, name in copies.items()]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def protocol_figures(protocol_dir: Path, images: Path) -> list[Path]:
    """The protocol's test runs (each learner at its kept learning rate, every seed):
    validation curves and pooled test reliability, one series per row of its report."""
    import json

    import torch

    from metalora.evaluation import EvalResult
    from metalora.runs.plots import plot_reliability_combined, plot_validation
    from metalora.runs.rundir import PREDICTIONS_FILE

    runs_of = protocol.Protocol(protocol.parse_args(["--output-dir", str(protocol_dir)]))
    histories: dict[str, list] = {}
    pooled: dict[str, tuple] = {}
    for variant in protocol.VARIANTS:
        probs, targets = [], []
        for name in runs_of.test_runs(variant):
            run, learner = protocol_dir / name, variant.learner
            seeds = json.loads((run / "metrics.json").read_text())["learners"][learner]["seeds"]
            for seed, record in seeds.items():
                histories.setdefault(variant.label, []).append(record["validation"])
                result = EvalResult.load(record, run / learner / f"seed-{seed}" /
                                         PREDICTIONS_FILE)
                for task in result.tasks:
                    probs.append(torch.nn.functional.pad(task.probs.float(),
                                                         (0, 4 - task.probs.shape[1])))
                    targets.append(task.targets)
        if probs:
            pooled[variant.label] = (torch.cat(probs), torch.cat(targets))
    written = [plot_validation(histories, images / "benchmarks-validation.png",
                               title="cls-45 protocol: validation (moving average of the last "
                                     "3, mean over 3 seeds, band: ± 1 SE)"),
               plot_reliability_combined(pooled, images / "benchmarks-reliability.png",
                                         title="cls-45 protocol: test reliability (pooled over "
                                               "15 tasks and 3 seeds)")]
    for path in written:
        path.with_suffix(".pdf").unlink(missing_ok=True)  # the site shows the PNGs
    return written


def uncertainty_figures(args: argparse.Namespace, images: Path) -> list[Path]:
    """The uncertainty comparison's rows finished at every seed asked for, pooled."""
    from metalora.runs.compare import PredictionSource
    from metalora.runs.plots import plot_reliability_combined, plot_risk_coverage

    seeds = ",".join(map(str, args.uncertainty_seeds))
    shown = ", ".join(map(str, args.uncertainty_seeds))
    comparison = uncertainty.Comparison(uncertainty.parse_args(
        ["--output-dir", str(args.uncertainty_dir), "--mechanism-dir", str(args.mechanism_dir),
         "--seeds", seeds]))
    pooled = {}
    for row in uncertainty.ROWS:
        arm = comparison.arms[row.arm]
        records = comparison.records(row)
        if sorted(records) == sorted(comparison.seeds(arm)):  # the frozen model: its one seed
            learner = arm.learner
            pooled[row.name] = PredictionSource(row.name, learner, records).pooled()
    where = f"15 test tasks, seeds {shown}, pooled"
    drawn = (plot_risk_coverage(pooled, images / "uncertainty-risk-coverage.png",
                                title=f"cls-45 risk-coverage ({where})"),
             plot_reliability_combined(pooled, images / "uncertainty-reliability.png",
                                       title=f"cls-45 reliability ({where})"))
    written = [path for path in drawn if path is not None]  # None: no row finished
    for path in written:
        path.with_suffix(".pdf").unlink(missing_ok=True)  # the site shows the PNGs
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("diagram", "demo", "protocol", "uncertainty"))
    parser.add_argument("--protocol-dir", type=Path,
                        default=REPO / "runs" / "benchmarks" / "protocol")
    parser.add_argument("--uncertainty-dir", type=Path,
                        default=REPO / "runs" / "benchmarks" / "uncertainty")
    parser.add_argument("--mechanism-dir", type=Path,
                        default=REPO / "runs" / "benchmarks" / "mechanism")
    parser.add_argument("--uncertainty-seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=[0, 1, 2])
    args = parser.parse_args()
    IMAGES.mkdir(parents=True, exist_ok=True)
    written = []
    if args.only in (None, "diagram"):
        written.append(draw_architecture(IMAGES / "architecture.png"))
    if args.only in (None, "protocol"):
        written += protocol_figures(args.protocol_dir, IMAGES)
    if args.only in (None, "uncertainty"):
        written += uncertainty_figures(args, IMAGES)
    if args.only in (None, "demo"):
        written += demo_figures(IMAGES)
    for path in written:
        print(f"wrote {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
