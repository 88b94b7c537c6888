"""Everything the commands print: the consoles, the result tables, plugin warnings."""

from __future__ import annotations

import warnings

from rich.console import Console
from rich.table import Table

from metalora.plugins import PluginLoadWarning
from metalora.pruning import ratio_label
from metalora.runs.prune import PruneSummary
from metalora.runs.reporting import (
    Column,
    format_mean_se,
    headline_columns,
    per_task_table,
    table_rows,
)
from metalora.runs.results import SELECTION_BEST, SELECTION_LAST, RunSummary
from metalora.runs.rundir import RESULTS_CSV, RESULTS_JSON

console = Console()
"""Results (stdout)."""
err_console = Console(stderr=True)
"""Progress, notes, warnings and errors (stderr)."""


def shown_columns(summary: RunSummary) -> list[Column]:
    """The paper's Table 1 columns (Acc, ECE) that were computed, then every other metric
    that was asked for with ``--metrics`` (so ``--metrics nll`` shows NLL)."""
    columns = headline_columns(summary.metric_names)
    given = summary.protocol.get("metrics_given") or []
    directions = summary.protocol.get("higher_is_better") or {}
    shown = {c.metric for c in columns}
    for name in summary.metric_names:
        if name in given and name not in shown:
            direction = directions.get(name)
            arrow = "" if direction is None else ("↑" if direction else "↓")
            label = name.upper() if len(name) <= 3 else name.capitalize()
            columns.append(Column(name, label, False, arrow))
    return columns


def print_results(summary: RunSummary, per_task: bool = False) -> None:
    """The paper's Table 1 layout: one row per learner, test Acc and ECE as mean ± SE over
    seeds (each seed tested at its best-validation epoch); optionally the per-task table."""
    columns = shown_columns(summary)
    seeds = len(summary.protocol.get("seeds", [])) or max(
        (len(r) for r in summary.results.values()), default=0)
    test_at = summary.protocol.get("test_at", SELECTION_LAST)
    when = {SELECTION_BEST: "the best-validation epoch", SELECTION_LAST: "the last epoch"}.get(
        test_at, "the best-validation epoch where validated, else the last epoch")
    split = summary.protocol.get("split", "test")
    table = Table(
        title=f"{split.capitalize()} results on '{summary.suite}'",
        caption=(f"mean ± SE over {seeds} seeds" if seeds != 1 else
                 "1 seed: ± bootstrap SE over query examples")
                + f"; macro-average over {split} tasks; tested at {when}")
    table.add_column("Method")
    for col in columns:
        table.add_column(f"{col.label} {col.arrow}", justify="right")
    table.add_column("tested epoch(s)", justify="right")
    agg = summary.summary()
    for row in table_rows(summary):
        epochs = ",".join("-" if e is None else str(e) for e in row["tested_epochs"])
        cells = [format_mean_se(*agg[row["method"]][col.metric], col.percent, row["n_seeds"])
                 for col in columns]
        table.add_row(row["method"], *cells, epochs)
    if per_task:
        for per_task_table_ in per_task_rich_tables(summary):
            console.print(per_task_table_)
    console.print(table)
    console.print(f"Run directory: {summary.run_dir}", soft_wrap=True)


def per_task_rich_tables(summary: RunSummary) -> list[Table]:
    """Per-task results (mean over seeds), then each learner's macro average: a row per task
    and learner, a column per headline metric, so that 80 columns hold any number of
    learners; a long task name wraps onto a second line instead of being cut."""
    split = summary.protocol.get("split", "test")
    columns = shown_columns(summary)
    tasks = per_task_table(summary)
    names: list[str] = []
    for learner_tasks in tasks.values():
        names += [t for t in learner_tasks if t not in names]
    table = Table(title=f"Per-task {split} results on '{summary.suite}' (mean over seeds)")
    table.add_column("task", overflow="fold")
    table.add_column("method", no_wrap=True)
    for col in columns:
        table.add_column(f"{col.label} {col.arrow}", justify="right", no_wrap=True)
    for task in names:
        for k, learner in enumerate(summary.results):
            values = [tasks[learner].get(task, {}).get(col.metric) for col in columns]
            table.add_row(task if k == 0 else "", learner, *(
                "-" if v is None else format_mean_se(v["mean"], 0.0, col.percent, 1)
                for v, col in zip(values, columns, strict=True)),
                end_section=k == len(summary.results) - 1)
    agg = summary.summary()
    for k, (learner, seeds) in enumerate(summary.results.items()):
        table.add_row("macro" if k == 0 else "", learner, *(
            format_mean_se(*agg[learner][col.metric], col.percent, len(seeds))
            for col in columns), style="bold")
    return [table]


def prune_tables(summary: PruneSummary) -> list[Table]:
    """The paper's Table 2 layout: one table per headline metric (Acc, then ECE)."""
    seeds = max((len(s) for by in summary.results.values() for s in by.values()), default=0)
    where = ("adapted layers" if summary.scope == "adapted"
             else "every linear layer of the transformer blocks")
    tables = []
    for col in headline_columns(summary.metric_names):
        table = Table(
            title=f"{col.label} {col.arrow} after {summary.pruner} pruning of the {where} "
                  f"('{summary.suite}')",
            caption=f"mean ± SE over {seeds} seed{'s' if seeds != 1 else ''}; "
                    "macro-average over test tasks; test-time adaptation as in the run")
        table.add_column("Method")
        for ratio in summary.ratios:
            table.add_column(ratio_label(ratio), justify="right")
        for row in summary.table_rows(col.metric, col.percent):
            table.add_row(*row)
        tables.append(table)
    return tables


def print_prune_results(summary: PruneSummary, console: Console) -> None:
    """Print the Table-2 layout and where the results are."""
    for table in prune_tables(summary):
        console.print(table)
    if summary.source == "fresh":
        console.print("Learners were evaluated untrained (no RUN_DIR): the mean adapters are "
                      "as initialised.", soft_wrap=True)
    mismatch = summary.baseline_mismatch()
    if mismatch:
        console.print(f"Note: the 0% column differs from the run's recorded test results for "
                      f"{', '.join(mismatch)} (non-deterministic evaluation, or a changed "
                      "device or plugin version).", soft_wrap=True)
    console.print(f"Results: {summary.out_dir / RESULTS_CSV} and {RESULTS_JSON}", soft_wrap=True)


def _format_plugin_warning(message, category, filename, lineno, line=None) -> str:
    if issubclass(category, PluginLoadWarning):
        return f"Warning: {message}\n"
    return _original_formatwarning(message, category, filename, lineno, line)


_original_formatwarning = warnings.formatwarning


def install_warning_format() -> None:
    """Show plugin load warnings as one ``Warning:`` line (other warnings as usual)."""
    warnings.formatwarning = _format_plugin_warning
