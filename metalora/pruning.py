"""Magnitude-pruning sweeps (paper section 5.2, Table 2): ``metalora prune``.

For every learner and seed of a finished run (or, without a run directory,
for freshly built, untrained learners), and for every pruning ratio:

1. rebuild the learner in memory and load the adapters the run tested
   (``<learner>/seed-<s>/adapters.safetensors``); the base model is loaded
   from its name, so the saved run is only ever read;
2. collect the layers in scope (:func:`prune_targets`): the learner's adapted
   layers (``scope = "adapted"``, the default) or every linear layer of the
   transformer blocks (``scope = "all"``);
3. give the registered :class:`~metalora.interfaces.Pruner` the merged
   weights ``W = W0 + mu`` (``mu = s * B @ A`` of the learner's
   :attr:`~metalora.interfaces.Learner.mean_pair`; zero for a layer without
   adapters and for ``pretrained``) and zero the rows it selects
   (:func:`apply_pruning`);
4. evaluate exactly as ``metalora run`` tests (:func:`metalora.evaluation.evaluate`:
   test-time adaptation on each test task's support set, metrics on its query
   set, the run's own episodes, metrics and seeds);
5. put every changed value back (bit for bit) before the next ratio.

How the mean is "merged". The effective weight of a layer is
``W0 + s * B @ A`` of the mean pair. Pruning row ``i`` of the merged weight
zeroes row ``i`` of the base weight (and its bias entry) **and** row ``i`` of
the mean pair's ``B``; the other rows stay exactly as they were. The result
is exactly the pruned merged weight ``P(W0 + mu)`` (pruned rows are exact
zeros), nothing is added twice, and the learner's own factors are kept, so
test-time adaptation starts from the same ``A`` and ``B`` as in the run
(where a mean pair is also the pair that adapts, as for ``lora``, a pruned
row can be moved off zero by adaptation, as it could in a merged model with
fresh adapters). With ratio 0 nothing changes at all, so the ``0% Pruned``
column reproduces the run's own test results exactly. For ABMLL the mean pair
``mu_theta`` is pruned this way; its variance pair is left as learned (the
sampled weight of a pruned neuron is zero-mean noise at the learned
variance).

Scope ``all`` detection: every ``nn.Linear`` (or adapted linear layer) whose
qualified name has a numbered component, i.e. that lives in a block list such
as ``model.layers.3.mlp.up_proj``; ``lm_head``, embeddings and norms are never
pruned.

Results: ``RUN_DIR/prune/<YYYYmmdd-HHMMSS>-<pruner>-<scope>/results.csv`` and
``results.json`` (a new directory per sweep; nothing of the run is changed).
``results.csv`` holds the paper's Table 2 layout -- a row per learner for Acc
and for ECE, a column per ratio (``0% Pruned``, ``1% Pruned``, ...), mean ±
SE over seeds -- followed by rows ``<metric>_mean`` / ``<metric>_se`` with the
numbers of every metric. ``results.json`` holds the same plus every seed's
macro and per-task metrics and how many rows each layer lost.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import Tensor, nn

from metalora.adapters import AdaptedLinear, AdapterHandle, LoRAPair
from metalora.config import ResolvedConfig
from metalora.engine import Engine
from metalora.errors import MetaloraError, unknown_choice
from metalora.evaluation import EvalResult, evaluate
from metalora.interfaces import Learner, Pruner
from metalora.plugins import PluginManager
from metalora.reporting import format_mean_se, headline_columns, ordered_metrics
from metalora.rundir import (
    ADAPTERS_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    RESULTS_CSV,
    RESULTS_JSON,
    atomic_write_bytes,
    load_adapters,
    read_json,
    require_finished,
    seed_dir,
    write_json,
)
from metalora.settings import build_settings
from metalora.stats import mean_se

SCOPES: tuple[str, ...] = ("adapted", "all")
"""``adapted``: the learner's adapted layers; ``all``: every linear layer of the blocks."""
DEFAULT_RATIOS: tuple[float, ...] = (0.01, 0.1, 0.2, 0.3)
"""The paper's Table 2 sweep."""
PRUNE_DIR = "prune"
"""Sweeps are written under ``RUN_DIR/prune/``."""
RUN_OVERRIDES: tuple[str, ...] = ("learner", "seeds", "device")
"""Settings that may be given together with a run directory (learner/seed filters, device)."""
MATCH_TOLERANCE = 1e-6
"""How far the 0% column may be from the run's recorded test metrics before a note is shown."""

_BLOCK_INDEX = re.compile(r"(^|\.)\d+(\.|$)")


# -- ratios ------------------------------------------------------------------------------
def parse_ratios(value: str | float | Sequence[float]) -> list[float]:
    """Ratios from ``"0.01,0.1"`` (or numbers): each in ``[0, 1)``, sorted, duplicates dropped."""
    items: list[Any]
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",") if v.strip()]
    elif isinstance(value, int | float):
        items = [value]
    else:
        items = list(value)
    if not items:
        raise MetaloraError("no pruning ratio given; pass e.g. --ratio 0.2 or --ratio 0.01,0.1")
    ratios = []
    for item in items:
        try:
            ratio = float(item)
        except (TypeError, ValueError):
            raise MetaloraError(f"pruning ratio {item!r} is not a number") from None
        check_ratio(ratio)
        ratios.append(ratio)
    return sorted(set(ratios))


def check_ratio(ratio: float) -> None:
    """A ratio must lie in ``[0, 1)`` (pruning every neuron leaves no model)."""
    if not 0.0 <= ratio < 1.0:  # also rejects NaN
        raise MetaloraError(f"pruning ratio {ratio:g} is outside [0, 1)")


def ratio_label(ratio: float) -> str:
    """Column heading of the paper's Table 2: ``0.01`` -> ``1% Pruned``."""
    return f"{100 * ratio:g}% Pruned"


# -- which layers, merged weights, applying a selection ----------------------------------
@dataclass
class PruneTarget:
    """One layer in scope: its base linear layer and, if adapted, the learner's mean pair."""

    linear: nn.Linear
    """The frozen base layer whose weight rows (and bias entries) are zeroed."""
    mean: LoRAPair | None = None
    """The mean pair of this layer (``None`` for a layer without adapters)."""
    scaling: float = 1.0

    def merged(self) -> Tensor:
        """``W0 + s * B @ A`` in float32 (a new tensor)."""
        weight = self.linear.weight.detach().float().clone()
        if self.mean is not None:
            weight += self.mean.dense(self.scaling).detach().float()
        return weight


def is_block_linear(name: str) -> bool:
    """Whether a module name lies inside a numbered block (``model.layers.3.mlp.up_proj``)."""
    return bool(_BLOCK_INDEX.search(name))


def prune_targets(model: nn.Module, handle: AdapterHandle | None, mean_pair: str | None,
                  scope: str = "adapted") -> dict[str, PruneTarget]:
    """The layers pruning may touch, by module name; see the module docstring for ``scope``."""
    if scope not in SCOPES:
        raise unknown_choice("pruning scope", scope, SCOPES)
    adapted: dict[str, AdaptedLinear] = dict(handle.layers) if handle is not None else {}
    if mean_pair is not None and handle is not None and mean_pair not in handle.pair_names:
        raise MetaloraError(f"the learner's mean pair {mean_pair!r} is not one of its adapter "
                            f"pairs; valid choices: {', '.join(handle.pair_names)}")

    def target(layer: nn.Module) -> PruneTarget:
        if isinstance(layer, AdaptedLinear):
            mean = layer.pairs[mean_pair] if mean_pair is not None else None
            return PruneTarget(layer.base, mean, layer.scaling)
        return PruneTarget(layer)

    if scope == "adapted":
        if not adapted:
            raise MetaloraError("the learner has no adapted layers to prune; use --scope all")
        return {name: target(layer) for name, layer in adapted.items()}
    targets: dict[str, PruneTarget] = {}
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue  # the base layer of an adapted layer
        if isinstance(module, AdaptedLinear):
            inside.append(name + ".")
        if isinstance(module, AdaptedLinear | nn.Linear) and is_block_linear(name):
            targets[name] = target(module)
    if not targets:
        raise MetaloraError("no linear layer inside numbered transformer blocks was found to "
                            "prune; valid choices: --scope adapted")
    return targets


class MergedWeights(Mapping[str, Tensor]):
    """module name -> ``W0 + mu`` computed on access (never all layers in memory at once)."""

    def __init__(self, targets: Mapping[str, PruneTarget]) -> None:
        self._targets = targets

    def __getitem__(self, name: str) -> Tensor:
        return self._targets[name].merged()

    def __iter__(self) -> Iterator[str]:
        return iter(self._targets)

    def __len__(self) -> int:
        return len(self._targets)


@dataclass
class AppliedPruning:
    """What :func:`apply_pruning` zeroed, with the original values to put back."""

    rows: dict[str, Tensor]
    """module name -> indices of the zeroed rows."""
    _saved: list[tuple[Tensor, Tensor, Tensor]] = field(default_factory=list, repr=False)

    @property
    def counts(self) -> dict[str, int]:
        """module name -> number of zeroed rows."""
        return {name: int(rows.numel()) for name, rows in self.rows.items()}

    @torch.no_grad()
    def restore(self) -> None:
        """Put every zeroed value back, bit for bit (idempotent)."""
        for tensor, index, values in reversed(self._saved):
            tensor[index] = values
        self._saved.clear()


@torch.no_grad()
def apply_pruning(targets: Mapping[str, PruneTarget],
                  rows: Mapping[str, Tensor]) -> AppliedPruning:
    """Zero the selected rows: base weight row, bias entry and the mean pair's ``B`` row."""
    unknown = set(rows) - set(targets)
    if unknown:
        raise MetaloraError(f"the pruner selected rows of {sorted(unknown)[0]!r}, which is not "
                            "a layer in scope")
    applied = AppliedPruning(rows={})
    try:
        for name, target in targets.items():
            index = rows.get(name)
            d_out = target.linear.out_features
            index = (torch.empty(0, dtype=torch.int64) if index is None
                     else torch.as_tensor(index, dtype=torch.int64).flatten().cpu())
            if index.numel() and (int(index.min()) < 0 or int(index.max()) >= d_out
                                  or index.unique().numel() != index.numel()):
                raise MetaloraError(f"the pruner selected invalid rows for {name!r} (indices "
                                    f"must be unique and in [0, {d_out}))")
            applied.rows[name] = index
            if not index.numel():
                continue
            tensors = [target.linear.weight]
            if target.linear.bias is not None:
                tensors.append(target.linear.bias)
            if target.mean is not None:
                tensors.append(target.mean.B)
            for tensor in tensors:
                where = index.to(tensor.device)
                applied._saved.append((tensor.data, where, tensor.data[where].clone()))
                tensor.data[where] = 0
    except BaseException:
        applied.restore()
        raise
    return applied


def prune_learner(learner: Learner, pruner: Pruner, ratio: float,
                  scope: str = "adapted") -> AppliedPruning:
    """Prune a learner's model in place (merged-mean semantics); undo with ``.restore()``."""
    check_ratio(ratio)
    targets = prune_targets(learner.context.model, learner.adapters, learner.mean_pair, scope)
    rows = pruner.select(MergedWeights(targets), ratio)
    return apply_pruning(targets, rows)


# -- results ---------------------------------------------------------------------------------
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
        """Write ``results.csv`` and ``results.json`` into :attr:`out_dir`."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = self.out_dir / RESULTS_CSV, self.out_dir / RESULTS_JSON
        atomic_write_bytes(csv_path, self.to_csv().encode("utf-8"))
        write_json(json_path, self.to_dict())
        return csv_path, json_path

    def rich_tables(self) -> list[Table]:
        """The paper's Table 2 layout: one table per headline metric (Acc, then ECE)."""
        seeds = max((len(s) for by in self.results.values() for s in by.values()), default=0)
        where = ("adapted layers" if self.scope == "adapted"
                 else "every linear layer of the transformer blocks")
        tables = []
        for col in headline_columns(self.metric_names):
            table = Table(
                title=f"{col.label} {col.arrow} after {self.pruner} pruning of the {where} "
                      f"('{self.suite}')",
                caption=f"mean ± SE over {seeds} seed{'s' if seeds != 1 else ''}; "
                        "macro-average over test tasks; test-time adaptation as in the run")
            table.add_column("Method")
            for ratio in self.ratios:
                table.add_column(ratio_label(ratio), justify="right")
            for row in self.table_rows(col.metric, col.percent):
                table.add_row(*row)
            tables.append(table)
        return tables


# -- the sweep ---------------------------------------------------------------------------------
def make_pruner(plugins: PluginManager, name: str, values: Mapping[str, Any] | None = None
                ) -> Pruner:
    """A registered pruner with its settings resolved from ``values``."""
    cls = plugins.registry("pruner").get(name)
    return cls(build_settings(cls.Settings, dict(values or {})))


def open_run(run_dir: Path | str, plugins: PluginManager, console: Console | None = None,
             overrides: Mapping[str, Any] | None = None) -> Engine:
    """An engine for a finished run directory, with learner/seed filters and device applied.

    Raises one clear :class:`MetaloraError` when the directory does not exist,
    is not a run directory, or a selected learner/seed has not finished.
    """
    run_dir = Path(run_dir)
    engine = Engine.from_run_dir(run_dir, plugins, console=console)
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - set(RUN_OVERRIDES))
    if bad:
        raise MetaloraError(
            f"--{bad[0].replace('_', '-')} cannot be changed for a saved run (its recorded "
            f"settings are used); with RUN_DIR only --{', --'.join(RUN_OVERRIDES)} may be given")
    run = engine.run
    changes: dict[str, Any] = {}
    for key, recorded in (("learner", run.learner), ("seeds", run.seeds)):
        chosen = overrides.get(key)
        if chosen is None:
            continue
        for value in chosen:
            if value not in recorded:
                what = "learner" if key == "learner" else "seed"
                raise MetaloraError(
                    f"{what} {value!r} is not in run {str(run_dir)!r}; valid choices: "
                    + ", ".join(str(v) for v in recorded))
        changes[key] = [v for v in recorded if v in chosen]
    if overrides.get("device") is not None:
        changes["device"] = overrides["device"]
    if changes:
        engine.run = dataclasses.replace(run, **changes)
    for name in engine.run.learner:
        for seed in engine.run.seeds:
            require_finished(run_dir, name, seed)
    return engine


def load_tested_learner(engine: Engine, run_dir: Path, name: str, seed: int) -> Learner:
    """Build a learner of a finished run and load the adapters its test used.

    The caller must call ``learner.adapters.remove()`` when done.
    """
    learner = engine.build_learner(name, seed)
    path = seed_dir(run_dir, name, seed) / ADAPTERS_FILE
    try:
        saved = load_adapters(path)
        expected = set(learner.adapters.named_parameters())
        if set(saved) != expected:
            odd = sorted(set(saved) ^ expected)[0]
            raise MetaloraError(f"adapter file {str(path)!r} does not match learner "
                                f"{name!r} with the run's settings (tensor {odd!r})")
        learner.adapters.restore(saved)
    except BaseException:
        learner.adapters.remove()
        raise
    return learner


def sweep_dir(run_dir: Path, pruner: str, scope: str) -> Path:
    """A new directory for one sweep's results: ``RUN_DIR/prune/<stamp>-<pruner>-<scope>``."""
    base = run_dir / PRUNE_DIR
    stem = f"{datetime.now():%Y%m%d-%H%M%S}-{pruner}-{scope}"
    path, suffix = base / stem, 1
    while path.exists():
        suffix += 1
        path = base / f"{stem}-{suffix}"
    return path


def run_sweep(engine: Engine, run_dir: Path, ratios: Sequence[float], pruner: Pruner,
              scope: str = "adapted", source: str = "run",
              out_dir: Path | None = None) -> PruneSummary:
    """Evaluate every learner x seed x ratio of ``engine``'s run; write and return the results.

    With ``source = "run"`` each learner's adapters come from the run
    directory (the tested ones); with ``"fresh"`` the learners are used as
    built (untrained).
    """
    ratios = parse_ratios(list(ratios))
    if scope not in SCOPES:
        raise unknown_choice("pruning scope", scope, SCOPES)
    suite, metrics, episodes = engine.load_test_episodes()
    summary = PruneSummary(
        run_dir=run_dir, out_dir=out_dir or sweep_dir(run_dir, pruner.name, scope),
        suite=suite.name, metric_names=list(metrics), ratios=ratios, pruner=pruner.name,
        scope=scope, source=source,
        protocol={"seeds": list(engine.run.seeds), "adapt_steps": engine.run.adapt_steps,
                  "adapt_lr": engine.run.adapt_lr, "model": engine.run.model,
                  "learners": list(engine.run.learner)})
    console = engine.console
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        for name in engine.run.learner:
            summary.results[name] = {r: [] for r in ratios}
            for seed in engine.run.seeds:
                if source == "run":
                    record = read_json(seed_dir(run_dir, name, seed) / METRICS_FILE,
                                       "seed metrics")
                    summary.recorded.setdefault(name, {})[seed] = dict(record.get("macro", {}))
                    summary.tested_epochs.setdefault(name, {})[seed] = record.get("tested_epoch")
                bar = progress.add_task(f"{name} seed {seed}: prune",
                                        total=len(ratios) * len(episodes))
                for ratio, result in _sweep_seed(engine, name, seed, run_dir, source, ratios,
                                                 pruner, scope, episodes, metrics, progress, bar):
                    summary.results[name][ratio].append(result)
    summary.write()
    return summary


def _sweep_seed(engine: Engine, name: str, seed: int, run_dir: Path, source: str,
                ratios: Sequence[float], pruner: Pruner, scope: str, episodes: list,
                metrics: dict, progress: Progress, bar: Any) -> Iterator[tuple[float, PrunedSeed]]:
    learner = (load_tested_learner(engine, run_dir, name, seed) if source == "run"
               else engine.build_learner(name, seed))
    try:
        handle = learner.adapters
        targets = prune_targets(learner.context.model, handle, learner.mean_pair, scope)
        for ratio in ratios:
            progress.update(bar, description=f"{name} seed {seed}: {100 * ratio:g}% pruned")
            rows = pruner.select(MergedWeights(targets), ratio)
            applied = apply_pruning(targets, rows)
            try:
                with engine.precision():
                    result = evaluate(learner, episodes, metrics, seed=seed,
                                      on_task=lambda _task: progress.advance(bar))
            finally:
                applied.restore()
            yield ratio, PrunedSeed(name, seed, ratio, result, applied.counts)
    finally:
        learner.adapters.remove()


def prune_run(run_dir: Path | str, ratios: Sequence[float], plugins: PluginManager, *,
              pruner: str = "magnitude", scope: str = "adapted", baseline: bool = True,
              overrides: Mapping[str, Any] | None = None,
              console: Console | None = None) -> PruneSummary:
    """The sweep on a finished run directory (``metalora prune RUN_DIR``)."""
    ratios = _with_baseline(ratios, baseline)
    if scope not in SCOPES:
        raise unknown_choice("pruning scope", scope, SCOPES)
    engine = open_run(run_dir, plugins, console=console, overrides=overrides)
    chosen = make_pruner(plugins, pruner, engine.config.values)
    return run_sweep(engine, Path(run_dir), ratios, chosen, scope=scope, source="run")


def prune_fresh(config: ResolvedConfig, ratios: Sequence[float], plugins: PluginManager, *,
                pruner: str = "magnitude", scope: str = "adapted", baseline: bool = True,
                console: Console | None = None) -> PruneSummary:
    """The sweep on untrained learners built from ``config`` (``metalora prune --learner ...``).

    A new run directory is created under ``output_dir`` holding ``config.json``
    and the sweep's results under ``prune/``.
    """
    ratios = _with_baseline(ratios, baseline)
    if scope not in SCOPES:
        raise unknown_choice("pruning scope", scope, SCOPES)
    engine = Engine(config, plugins, console=console)
    chosen = make_pruner(plugins, pruner, config.values)
    suite = engine.load_suite()  # fail on data problems before creating a directory
    if not suite.test:
        raise MetaloraError(f"suite '{suite.name}' has no test tasks")
    engine.load_model()
    run_dir = engine.make_run_dir()
    write_json(run_dir / CONFIG_FILE, engine.resolved_config())
    return run_sweep(engine, run_dir, ratios, chosen, scope=scope, source="fresh")


def _with_baseline(ratios: Sequence[float] | str, baseline: bool) -> list[float]:
    parsed = parse_ratios(ratios if isinstance(ratios, str) else list(ratios))
    return sorted({0.0, *parsed}) if baseline else parsed


# -- the command ---------------------------------------------------------------------------
PRUNE_HELP = (
    "Magnitude-pruning sweep (paper section 5.2, Table 2). For each learner and seed of a "
    "finished RUN_DIR, merge the global mean into the base weights of an in-memory copy, zero "
    "the fraction --ratio of output neurons (rows) with the smallest L2 norm in each layer in "
    "--scope, and evaluate on the run's test tasks with its own protocol (test-time adaptation "
    "included). Prints accuracy and ECE per ratio (mean ± SE over seeds) and writes "
    "RUN_DIR/prune/<stamp>-<pruner>-<scope>/results.csv/json; the run itself is never modified. "
    "Without RUN_DIR, untrained learners are built from run settings given as options (e.g. "
    "--learner pretrained --tasks demo) in a new run directory under --output-dir.")


def make_prune_command(plugins: PluginManager):
    """The ``prune`` command: its own options plus one option per run setting (as ``run``)."""
    import inspect

    import typer

    from metalora import cli
    from metalora.config import all_setting_infos, read_config_file, resolve_config

    infos = all_setting_infos(plugins)
    own = {"run_dir", "ratio", "scope", "pruner", "baseline", "config"}

    def prune(**kwargs: Any) -> None:
        run_dir: Path | None = kwargs.pop("run_dir")
        ratio: str = kwargs.pop("ratio")
        scope: str = kwargs.pop("scope")
        pruner: str = kwargs.pop("pruner")
        baseline: bool = kwargs.pop("baseline")
        config_path: Path | None = kwargs.pop("config")
        ratios = parse_ratios(ratio)
        if scope not in SCOPES:
            raise unknown_choice("pruning scope", scope, SCOPES)
        plugins.registry("pruner").get(pruner)
        if run_dir is not None:
            if config_path is not None:
                raise MetaloraError("--config builds fresh learners; it cannot be combined "
                                    "with RUN_DIR (the run's recorded settings are used)")
            given = {k: v for k, v in kwargs.items() if v is not None}
            overrides = resolve_config(infos, {}, given).values
            summary = prune_run(run_dir, ratios, plugins, pruner=pruner, scope=scope,
                                baseline=baseline, overrides=overrides,
                                console=cli.err_console)
        else:
            learners = plugins.registry("learner").names()
            file_values = read_config_file(config_path, learners) if config_path else {}
            resolved = resolve_config(infos, file_values, kwargs)
            summary = prune_fresh(resolved, ratios, plugins, pruner=pruner, scope=scope,
                                  baseline=baseline, console=cli.err_console)
        print_prune_results(summary, cli.console)

    params = [
        inspect.Parameter(
            "run_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Argument(None, metavar="RUN_DIR", show_default=False,
                                   help="A run directory written by `metalora run` (omit it to "
                                        "prune untrained learners built from the settings).")),
        inspect.Parameter(
            "ratio", inspect.Parameter.KEYWORD_ONLY, annotation=str,
            default=typer.Option(
                ",".join(f"{r:g}" for r in DEFAULT_RATIOS), "--ratio", "-r",
                help="Fraction(s) of output neurons to prune per layer, each in [0, 1), "
                     "comma-separated for a sweep.", rich_help_panel="Pruning")),
        inspect.Parameter(
            "scope", inspect.Parameter.KEYWORD_ONLY, annotation=str,
            default=typer.Option(
                "adapted", "--scope",
                help="Layers to prune: 'adapted' (the learner's adapted layers) or 'all' (every "
                     "linear layer of the transformer blocks; never lm_head or embeddings).",
                rich_help_panel="Pruning")),
        inspect.Parameter(
            "pruner", inspect.Parameter.KEYWORD_ONLY, annotation=str,
            default=typer.Option(
                "magnitude", "--pruner",
                help="Registered pruner (see `metalora plugins`).", rich_help_panel="Pruning")),
        inspect.Parameter(
            "baseline", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
            default=typer.Option(
                True, "--baseline/--no-baseline",
                help="Also evaluate the unpruned model (the '0% Pruned' column; for a run it "
                     "reproduces the run's test results).", rich_help_panel="Pruning")),
        inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(
                None, "--config", "-c", help="Without RUN_DIR: TOML or YAML file of run "
                                             "settings (the command line overrides it).",
                rich_help_panel="Without RUN_DIR")),
    ]
    for info in infos.values():
        if info.name in own:
            continue
        flag = info.name.replace("_", "-")
        decls = [f"--{flag}/--no-{flag}"] if info.type is bool else [f"--{flag}"]
        text = cli._option_help(info)
        if info.name in RUN_OVERRIDES:
            text += " With RUN_DIR: " + ("a subset of the run's to prune." if info.name
                                         != "device" else "the device to evaluate on.")
        params.append(inspect.Parameter(
            info.name, inspect.Parameter.KEYWORD_ONLY, annotation=cli.OPTION_TYPES[info.type],
            default=typer.Option(None, *decls, help=text, show_default=False,
                                 rich_help_panel="Without RUN_DIR (settings as in `metalora "
                                                 "run`)")))
    prune.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    prune.__annotations__ = {p.name: p.annotation for p in params}
    return prune


def print_prune_results(summary: PruneSummary, console: Console) -> None:
    """Print the Table-2 layout and where the results are."""
    for table in summary.rich_tables():
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
