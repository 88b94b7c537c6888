"""The results table in the layout of the paper's Table 1, as text, CSV and JSON.

One row per learner ("method"), one column per headline metric: test
accuracy and ECE, each the mean ± standard error over seeds of the
macro-average over test tasks (with one seed, ± the bootstrap standard error
over the query examples), the test taken at each seed's
best-validation epoch. ``results.csv`` holds the formatted columns (``Acc``,
``ECE``) followed by the numbers behind them for every metric
(``<metric>_mean``, ``<metric>_se``), the number of seeds and the tested
epoch of each seed; ``results.json`` holds the same rows plus per-task
means ± SE.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metalora.runs.rundir import RESULTS_CSV, RESULTS_JSON, atomic_write_bytes, write_json
from metalora.stats import mean_se

if TYPE_CHECKING:
    from metalora.runs.results import RunSummary



@dataclass(frozen=True)
class Column:
    """One Table-1 column."""

    metric: str
    label: str
    percent: bool
    """Shown as a percentage (accuracy) or as a fraction (ECE)."""
    arrow: str
    """``↑`` higher is better, ``↓`` lower is better."""


HEADLINE: tuple[Column, ...] = (Column("accuracy", "Acc", True, "↑"),
                                Column("ece", "ECE", False, "↓"))
"""The columns of the paper's Table 1."""


def format_mean_se(mean: float, se: float, percent: bool, n_seeds: int) -> str:
    """``71.6% ± 0.3%`` / ``0.318 ± 0.001``; the ``± SE`` part with several seeds, or with
    one seed when a standard error over query examples is known (``se > 0``)."""
    if mean != mean:  # NaN: no value
        return "-"
    show = n_seeds > 1 or se > 0
    if percent:
        text = f"{100 * mean:.1f}%"
        return text + (f" ± {100 * se:.1f}%" if show else "")
    return f"{mean:.3f}" + (f" ± {se:.3f}" if show else "")


def headline_columns(metric_names: Sequence[str]) -> list[Column]:
    """The Table-1 columns whose metric was computed in this run."""
    return [c for c in HEADLINE if c.metric in metric_names]


def ordered_metrics(metric_names: Sequence[str]) -> list[str]:
    """The Table-1 metrics first (accuracy, ECE), then the others in their given order."""
    headline = [c.metric for c in headline_columns(metric_names)]
    return headline + [m for m in metric_names if m not in headline]


def table_rows(summary: RunSummary) -> list[dict[str, Any]]:
    """One row per learner: formatted headline columns and mean/SE of every metric."""
    agg = summary.summary()
    rows = []
    for learner, seeds in summary.results.items():
        n = len(seeds)
        row: dict[str, Any] = {"method": learner, "n_seeds": n}
        for col in headline_columns(summary.metric_names):
            mean, se = agg[learner][col.metric]
            row[col.label] = format_mean_se(mean, se, col.percent, n)
        row["metrics"] = {m: {"mean": agg[learner][m][0], "se": agg[learner][m][1]}
                          for m in ordered_metrics(summary.metric_names)}
        row["seeds"] = [r.seed for r in seeds]
        row["tested_epochs"] = [r.tested_epoch for r in seeds]
        row["selection"] = sorted({r.selection for r in seeds})
        rows.append(row)
    return rows


def per_task_table(summary: RunSummary) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """learner -> task -> metric -> {mean, se} over seeds."""
    out: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for learner, seeds in summary.results.items():
        tasks: dict[str, dict[str, list[float]]] = {}
        for result in seeds:
            for task in result.test.tasks:
                for metric, value in task.metrics.items():
                    tasks.setdefault(task.task, {}).setdefault(metric, []).append(value)
        out[learner] = {
            task: {m: dict(zip(("mean", "se"), mean_se(v), strict=True))
                   for m, v in metrics.items()}
            for task, metrics in tasks.items()
        }
    return out


def results_csv(summary: RunSummary) -> str:
    """The Table-1 rows as CSV text."""
    labels = [c.label for c in headline_columns(summary.metric_names)]
    order = ordered_metrics(summary.metric_names)
    numbers = [f"{m}_{k}" for m in order for k in ("mean", "se")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", *labels, *numbers, "n_seeds", "tested_epochs"])
    for row in table_rows(summary):
        values = [row["metrics"][m][k] for m in order for k in ("mean", "se")]
        epochs = ";".join("-" if e is None else str(e) for e in row["tested_epochs"])
        writer.writerow([row["method"], *(row[label] for label in labels),
                         *(f"{v:.6g}" for v in values), row["n_seeds"], epochs])
    return buffer.getvalue()


def results_dict(summary: RunSummary) -> dict[str, Any]:
    """The Table-1 rows and per-task results as a JSON-ready mapping."""
    return {
        "suite": summary.suite,
        "protocol": summary.protocol,
        "columns": [c.label for c in headline_columns(summary.metric_names)],
        "metrics": summary.metric_names,
        "rows": table_rows(summary),
        "per_task": per_task_table(summary),
    }


def write_results(summary: RunSummary, run_dir: Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.json`` (atomically); return their paths."""
    csv_path, json_path = run_dir / RESULTS_CSV, run_dir / RESULTS_JSON
    atomic_write_bytes(csv_path, results_csv(summary).encode("utf-8"))
    write_json(json_path, results_dict(summary))
    return csv_path, json_path
