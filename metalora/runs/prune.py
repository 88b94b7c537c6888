"""Pruning sweeps over a run: ``metalora prune`` (paper Table 2).

For every learner and seed of a finished run (or freshly built, untrained
learners) and every ratio, the learner is pruned in memory
(:func:`metalora.pruning.prune_targets`, :func:`~metalora.pruning.apply_pruning`),
evaluated exactly as the run tested it, and restored bit for bit. Results go
to ``RUN_DIR/prune/<stamp>-<pruner>-<scope>/`` (a new directory per sweep;
nothing of the run is changed): ``results.csv`` holds the paper's Table 2
layout -- a row per learner for Acc and for ECE, a column per ratio (``0%
Pruned``, ``1% Pruned``, ...), mean ± SE over seeds -- followed by rows
``<metric>_mean`` / ``<metric>_se`` with the numbers of every metric;
``results.json`` holds the same plus every seed's macro and per-task metrics
and how many rows each layer lost.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from metalora.config import ResolvedConfig
from metalora.errors import MetaloraError, unknown_choice
from metalora.evaluation import EvalResult, evaluate
from metalora.files import atomic_write_bytes, require_writable_directory
from metalora.interfaces import Pruner
from metalora.plugins import PluginManager
from metalora.pruning import (
    SCOPES,
    MergedWeights,
    apply_pruning,
    parse_ratios,
    prune_targets,
    ratio_label,
)
from metalora.runs.plots import PRUNING_FIGURE, matplotlib_available, plot_pruning
from metalora.runs.progress import progress_bars
from metalora.runs.reporting import format_mean_se, headline_columns, ordered_metrics
from metalora.runs.rundir import (
    CONFIG_FILE,
    METRICS_FILE,
    RESULTS_CSV,
    RESULTS_JSON,
    new_stamped_dir,
    read_json,
    seed_dir,
    time_stamp,
    write_json,
)
from metalora.runs.setup import RunSetup, check_tested_adapters, load_tested_learner, open_run
from metalora.settings import build_settings
from metalora.spec import RunSpec
from metalora.stats import mean_se

PRUNE_DIR = "prune"
"""Sweeps are written under ``RUN_DIR/prune/``."""
MATCH_TOLERANCE = 1e-6
"""How far the 0% column may be from the run's recorded test metrics before a note is shown."""


@dataclass
class PrunedSeed:
    """One learner and seed evaluated after pruning with one ratio."""

    learner: str
    seed: int
    ratio: float
    test: EvalResult
    pruned: dict[str, int]
    """module name -> zeroed rows."""

    def to_dict(self) -> dict[str, Any]:
        total = sum(self.pruned.values())
        return {**self.test.to_dict(), "pruned_rows": self.pruned, "pruned_total": total}


@dataclass
class PruneSummary:
    """A pruning sweep: ratio x learner x seed, and where it came from."""

    run_dir: Path
    out_dir: Path
    suite: str
    metric_names: list[str]
    ratios: list[float]
    pruner: str
    scope: str
    source: str
    """``run`` (adapters the run tested) or ``fresh`` (untrained learners, no run directory)."""
    protocol: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict[float, list[PrunedSeed]]] = field(default_factory=dict)
    recorded: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    """learner -> seed -> the run's recorded test macro metrics (source ``run``)."""
    tested_epochs: dict[str, dict[int, Any]] = field(default_factory=dict)

    def summary(self) -> dict[str, dict[float, dict[str, tuple[float, float]]]]:
        """learner -> ratio -> metric -> (mean, SE) over seeds of the macro average."""
        return {
            learner: {
                ratio: {m: mean_se([r.test.macro[m] for r in seeds]) for m in self.metric_names}
                for ratio, seeds in by_ratio.items()
            }
            for learner, by_ratio in self.results.items()
        }

    def baseline_mismatch(self) -> list[str]:
        """Learner/seed pairs whose 0% result differs from the run's recorded test result."""
        out = []
        for learner, by_ratio in self.results.items():
            for result in by_ratio.get(0.0, []):
                recorded = self.recorded.get(learner, {}).get(result.seed)
                if not recorded:
                    continue
                macro = result.test.macro
                if any(abs(macro[m] - recorded[m]) > MATCH_TOLERANCE
                       for m in macro if m in recorded):
                    out.append(f"{learner} seed {result.seed}")
        return out

    def table_rows(self, metric: str, percent: bool) -> list[list[str]]:
        """Formatted Table-2 rows of one metric: ``[method, cell per ratio...]``."""
        agg = self.summary()
        rows = []
        for learner, by_ratio in self.results.items():
            cells = [learner]
            for ratio in self.ratios:
                seeds = by_ratio.get(ratio, [])
                mean, se = agg[learner][ratio][metric] if seeds else (float("nan"), 0.0)
                cells.append(format_mean_se(mean, se, percent, len(seeds)))
            rows.append(cells)
        return rows

    def to_csv(self) -> str:
        """Table 2 (Acc and ECE blocks), then ``<metric>_mean`` / ``_se`` rows of every metric."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["metric", "method", *(ratio_label(r) for r in self.ratios)])
        for col in headline_columns(self.metric_names):
            for row in self.table_rows(col.metric, col.percent):
                writer.writerow([col.label, *row])
        agg = self.summary()
        for metric in ordered_metrics(self.metric_names):
            for k, stat in enumerate(("mean", "se")):
                for learner in self.results:
                    writer.writerow([f"{metric}_{stat}", learner,
                                     *(f"{agg[learner][r][metric][k]:.6g}" for r in self.ratios)])
        return buffer.getvalue()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``results.json``)."""
        agg = self.summary()
        columns = headline_columns(self.metric_names)
        labels = [ratio_label(r) for r in self.ratios]
        cells = {col.label: {row[0]: row[1:] for row in self.table_rows(col.metric, col.percent)}
                 for col in columns}
        rows = []
        for learner, by_ratio in self.results.items():
            n = max((len(s) for s in by_ratio.values()), default=0)
            row: dict[str, Any] = {"method": learner, "n_seeds": n,
                                   "seeds": [r.seed for r in next(iter(by_ratio.values()), [])],
                                   "tested_epochs": self.tested_epochs.get(learner, {})}
            for col in columns:
                row[col.label] = dict(zip(labels, cells[col.label][learner], strict=True))
            row["ratios"] = {
                f"{ratio:g}": {
                    "summary": {m: {"mean": v[0], "se": v[1]}
                                for m, v in agg[learner][ratio].items()},
                    "seeds": {str(r.seed): r.to_dict() for r in seeds},
                }
                for ratio, seeds in by_ratio.items()
            }
            if learner in self.recorded:
                row["recorded_test"] = {str(s): v for s, v in self.recorded[learner].items()}
            rows.append(row)
        return {
            "run_dir": str(self.run_dir),
            "source": self.source,
            "suite": self.suite,
            "pruner": self.pruner,
            "scope": self.scope,
            "ratios": self.ratios,
            "columns": [ratio_label(r) for r in self.ratios],
            "metrics": self.metric_names,
            "protocol": self.protocol,
            "baseline_matches_run": not self.baseline_mismatch() if self.recorded
            and 0.0 in self.ratios else None,
            "rows": rows,
        }

    def write(self) -> tuple[Path, Path]:
        """Write ``results.csv`` and ``results.json`` into :attr:`out_dir`, and the pruning
        curve (``pruning.png`` and ``.pdf``) when matplotlib is installed."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = self.out_dir / RESULTS_CSV, self.out_dir / RESULTS_JSON
        atomic_write_bytes(csv_path, self.to_csv().encode("utf-8"))
        write_json(json_path, self.to_dict())
        if matplotlib_available():
            plot_pruning(self.summary(), self.out_dir / PRUNING_FIGURE,
                         title=f"Pruning on '{self.suite}' ({self.pruner}, {self.scope} "
                               f"layers; mean over seeds, bars: ± 1 SE)")
        return csv_path, json_path


def make_pruner(plugins: PluginManager, name: str, values: Mapping[str, Any] | None = None
                ) -> Pruner:
    """A registered pruner with its settings resolved from ``values``."""
    cls = plugins.registry("pruner").get(name)
    return cls(build_settings(cls.Settings, dict(values or {}), owner=name))


def sweep_dir(run_dir: Path, pruner: str, scope: str) -> Path:
    """A new directory for one sweep's results: ``RUN_DIR/prune/<stamp>-<pruner>-<scope>``."""
    return new_stamped_dir(run_dir / PRUNE_DIR, f"{time_stamp()}-{pruner}-{scope}",
                           create=False)


def run_sweep(setup: RunSetup, run_dir: Path, ratios: Sequence[float], pruner: Pruner,
              scope: str = "adapted", source: str = "run",
              out_dir: Path | None = None) -> PruneSummary:
    """Evaluate every learner x seed x ratio of ``setup``'s run; write and return the results.

    With ``source = "run"`` each learner's adapters come from the run
    directory (the tested ones); with ``"fresh"`` the learners are used as
    built (untrained).
    """
    ratios = parse_ratios(list(ratios))
    if scope not in SCOPES:
        raise unknown_choice("pruning scope", scope, SCOPES)
    out_dir = out_dir or sweep_dir(run_dir, pruner.name, scope)
    require_writable_directory(out_dir.parent, "pruning results directory")
    suite, metrics, episodes = setup.load_test_episodes()
    if source == "run":
        check_tested_adapters(setup, run_dir)
    summary = PruneSummary(
        run_dir=run_dir, out_dir=out_dir,
        suite=suite.name, metric_names=list(metrics), ratios=ratios, pruner=pruner.name,
        scope=scope, source=source,
        protocol={"seeds": list(setup.run.seeds), "adapt_steps": setup.run.adapt_steps,
                  "adapt_lr": setup.run.adapt_lr, "model": setup.run.model,
                  "learners": list(setup.run.learner)})
    console = setup.console
    with progress_bars(console) as progress:
        for name in setup.run.learner:
            summary.results[name] = {r: [] for r in ratios}
            for seed in setup.run.seeds:
                if source == "run":
                    record = read_json(seed_dir(run_dir, name, seed) / METRICS_FILE,
                                       "seed metrics")
                    summary.recorded.setdefault(name, {})[seed] = dict(record.get("macro", {}))
                    summary.tested_epochs.setdefault(name, {})[seed] = record.get("tested_epoch")
                bar = progress.add_task(f"{name} seed {seed}: prune",
                                        total=len(ratios) * len(episodes))
                for ratio, result in _sweep_seed(setup, name, seed, run_dir, source, ratios,
                                                 pruner, scope, episodes, metrics, progress, bar):
                    summary.results[name][ratio].append(result)
    summary.write()
    return summary


def _sweep_seed(setup: RunSetup, name: str, seed: int, run_dir: Path, source: str,
                ratios: Sequence[float], pruner: Pruner, scope: str, episodes: list,
                metrics: dict, progress: Progress, bar: Any) -> Iterator[tuple[float, PrunedSeed]]:
    learner = (load_tested_learner(setup, run_dir, name, seed) if source == "run"
               else setup.build_learner(name, seed))
    try:
        handle = learner.adapters
        targets = prune_targets(learner.context.model, handle, learner.mean_pair, scope)
        for ratio in ratios:
            progress.update(bar, description=f"{name} seed {seed}: {100 * ratio:g}% pruned")
            rows = pruner.select(MergedWeights(targets), ratio)
            applied = apply_pruning(targets, rows)
            try:
                with setup.precision():
                    result = evaluate(learner, episodes, metrics, seed=seed,
                                      on_task=lambda _task: progress.advance(bar))
            finally:
                applied.restore()
            yield ratio, PrunedSeed(name, seed, ratio, result, applied.counts)
    finally:
        learner.adapters.remove()


def prune_run(run_dir: Path | str, ratios: Sequence[float] | str, plugins: PluginManager, *,
              pruner: str = "magnitude", scope: str = "adapted", baseline: bool = True,
              overrides: Mapping[str, Any] | None = None,
              console: Console | None = None) -> PruneSummary:
    """The sweep on a finished run directory (``metalora prune RUN_DIR``)."""
    ratios = _with_baseline(ratios, baseline)
    if scope not in SCOPES:
        raise unknown_choice("pruning scope", scope, SCOPES)
    setup = open_run(run_dir, plugins, console=console, overrides=overrides)
    chosen = make_pruner(plugins, pruner, setup.config.values)
    return run_sweep(setup, Path(run_dir), ratios, chosen, scope=scope, source="run")


def prune_fresh(config: ResolvedConfig | RunSpec, ratios: Sequence[float] | str,
                plugins: PluginManager, *,
                pruner: str = "magnitude", scope: str = "adapted", baseline: bool = True,
                console: Console | None = None) -> PruneSummary:
    """The sweep on untrained learners built from ``config`` (``metalora prune --learner ...``).

    A new run directory is created under ``output_dir`` holding ``config.json``
    and the sweep's results under ``prune/``.
    """
    ratios = _with_baseline(ratios, baseline)
    if scope not in SCOPES:
        raise unknown_choice("pruning scope", scope, SCOPES)
    setup = RunSetup(config, plugins, console=console)
    chosen = make_pruner(plugins, pruner, setup.config.values)
    suite = setup.load_suite()  # fail on data problems before creating a directory
    if not suite.test:
        raise MetaloraError(f"suite '{suite.name}' has no test tasks")
    setup.load_model()
    run_dir = setup.make_run_dir()
    write_json(run_dir / CONFIG_FILE, setup.resolved_config())
    return run_sweep(setup, run_dir, ratios, chosen, scope=scope, source="fresh")


def _with_baseline(ratios: Sequence[float] | str, baseline: bool) -> list[float]:
    parsed = parse_ratios(ratios if isinstance(ratios, str) else list(ratios))
    return sorted({0.0, *parsed}) if baseline else parsed
