"""The Python API: everything the command line does, from a script or a notebook.

::

    import metalora.api as ml

    spec = ml.run_spec(learner=["lora", "abmll"], tasks="demo", model="tiny", epochs=2)
    summary = ml.train(spec)                      # what `metalora run` prints, as an object
    run = ml.open_run(summary.run_dir)            # a finished run: its settings and results
    again = ml.evaluate(run.run_dir, split="validation", settings={"eval_samples": 8})
    adapted = ml.adapt(run.run_dir, support=[...], query=[...])   # your own few-shot task
    swept = ml.prune(run.run_dir, [0.1, 0.2])
    exported = ml.export(run.run_dir, learner="lora")
    paired = ml.compare([f"{run.run_dir}:lora", f"{run.run_dir}:abmll"], output="cmp")

Settings are passed by their names (``epochs=2``, ``beta=1e-8``, ``learner=["abmll"]``),
as keyword arguments, a config file, or both (the arguments win), exactly as on the
command line; every check runs when the specification is built, before anything loads.
Each command of the CLI is a thin wrapper over one function here. This module and the
names in ``metalora.__all__`` are the stable surface; the rest is internal.

Records for :func:`adapt` are MetaICL-style mappings (``{"input", "options", "output"}``,
``output`` optional for queries) or the paths of jsonl files holding them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from metalora.config import (
    ConfigFile,
    all_setting_infos,
    config_sections,
    read_config_file,
    resolve_config,
)
from metalora.paired import mean_scores as _mean_scores
from metalora.paired import query_scores
from metalora.plugins import PluginManager, get_plugin_manager
from metalora.runs.adaptation import Adaptation, QueryRecord, adapt_run, record_from_mapping
from metalora.runs.compare import Comparison, PredictionSource, read_source
from metalora.runs.compare import compare as _compare
from metalora.runs.engine import Engine, RunCallback
from metalora.runs.evaluate_run import evaluate_run
from metalora.runs.export import ExportResult, export_peft
from metalora.runs.prune import PruneSummary, prune_fresh, prune_run
from metalora.runs.results import RunSummary, SeedResult
from metalora.runs.rundir import seed_dir
from metalora.runs.setup import RunSetup
from metalora.runs.setup import open_run as _open_setup
from metalora.spec import RunSpec

__all__ = ["Comparison", "FinishedRun", "PluginManager", "PredictionSource", "RunCallback",
           "RunSpec", "RunSummary", "adapt", "compare", "evaluate", "export", "open_run",
           "mean_scores", "plugins", "predictions", "prune", "resume", "run_spec", "train"]

Records = Path | str | Sequence[Mapping[str, Any] | QueryRecord]


def _plugins(plugins: PluginManager | None) -> PluginManager:
    return plugins if plugins is not None else get_plugin_manager()


def plugins(*modules: Any, installed: bool = True) -> PluginManager:
    """A plugin manager: the installed plugins (their entry points; ``METALORA_PLUGINS``
    limits which) unless ``installed`` is False, plus ``modules`` registered in code, each
    under its module name. Pass it as ``plugins=`` to the functions here: a plugin's tests
    can use it without installing the plugin."""
    manager = PluginManager(load_entry_points=installed)
    for module in modules:
        manager.register(module, name=getattr(module, "__name__", None))
    return manager


def run_spec(config: Path | str | None = None, *, plugins: PluginManager | None = None,
             **settings: Any) -> RunSpec:
    """A checked run specification from a config file and/or settings by name.

    ``config`` is a TOML or YAML file as ``metalora run --config`` reads; the keyword
    settings override it. Lists may be given as lists or comma-separated strings. Raises
    :class:`~metalora.errors.MetaloraError` (one line) on anything that would stop the run.
    """
    plugins = _plugins(plugins)
    learners = plugins.registry("learner").names()
    file_values: ConfigFile | dict[str, Any] = (
        read_config_file(Path(config), learners, config_sections(plugins))
        if config is not None else {})
    resolved = resolve_config(all_setting_infos(plugins), file_values, settings)
    return RunSetup(resolved, plugins, console=Console(quiet=True)).spec


def train(spec: RunSpec | None = None, *, plugins: PluginManager | None = None,
          console: Console | None = None, callbacks: Sequence[RunCallback] = (),
          **settings: Any) -> RunSummary:
    """Train and test every learner and seed of ``spec`` (or of ``run_spec(**settings)``),
    writing a run directory; returns the summary ``metalora run`` prints (``.summary()``:
    mean and standard error per learner and metric; ``.run_dir``)."""
    plugins = _plugins(plugins)
    if spec is None:
        spec = run_spec(plugins=plugins, **settings)
    elif settings:
        raise TypeError("give either a RunSpec or settings, not both")
    return Engine(spec, plugins, console=console, callbacks=callbacks).execute()


def resume(run_dir: Path | str, *, plugins: PluginManager | None = None,
           console: Console | None = None) -> RunSummary:
    """Continue an interrupted run with its recorded settings (``metalora run --resume``)."""
    return Engine.from_run_dir(run_dir, _plugins(plugins), console=console).execute()


@dataclass
class FinishedRun:
    """A finished run directory: its settings and each learner and seed's recorded results."""

    run_dir: Path
    spec: RunSpec
    results: dict[str, list[SeedResult]] = field(default_factory=dict)
    """Per learner, per selected seed: test metrics, tested epoch, validation history."""

    @property
    def learners(self) -> list[str]:
        return list(self.results)

    @property
    def seeds(self) -> list[int]:
        return list(self.spec.run.seeds)

    def predictions(self, learner: str, seed: int | None = None) -> list[dict[str, Any]]:
        """The test's per-query predictions of one learner and seed (default: the first):
        ``{"task", "index", "probs", "label", "source", "input", "options"}`` per query, as
        ``predictions.jsonl`` holds."""
        from metalora.paired import read_predictions

        chosen = self.seeds[0] if seed is None else seed
        return read_predictions(seed_dir(self.run_dir, learner, chosen) / "predictions.jsonl")


def open_run(run_dir: Path | str, *, learner: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None, plugins: PluginManager | None = None
             ) -> FinishedRun:
    """A finished run, optionally a subset of its learners and seeds; one clear error when
    the directory is not a run or a selected learner and seed has not finished."""
    overrides: dict[str, Any] = {}
    if learner is not None:
        overrides["learner"] = list(learner)
    if seeds is not None:
        overrides["seeds"] = list(seeds)
    setup = _open_setup(run_dir, _plugins(plugins), console=Console(quiet=True),
                        overrides=overrides)
    results = {name: [SeedResult.load(name, s, seed_dir(Path(run_dir), name, s))
                      for s in setup.run.seeds] for name in setup.run.learner}
    return FinishedRun(run_dir=Path(run_dir), spec=setup.spec, results=results)


def evaluate(run_dir: Path | str, *, split: str = "test", tasks: str | None = None,
             data_dir: str | None = None, learner: Sequence[str] | None = None,
             seeds: Sequence[int] | None = None, device: str | None = None,
             settings: Mapping[str, Any] | None = None, plugins: PluginManager | None = None,
             console: Console | None = None) -> RunSummary:
    """Evaluate a finished run's tested adapters again (``metalora eval``): on its test
    tasks, another suite's (``tasks``) or its validation tasks, with evaluation-time
    ``settings`` changed (e.g. ``{"eval_samples": 8}``). The run is only read; results and
    per-query predictions go to ``RUN_DIR/eval/``."""
    overrides: dict[str, Any] = {}
    if learner is not None:
        overrides["learner"] = list(learner)
    if seeds is not None:
        overrides["seeds"] = list(seeds)
    if device is not None:
        overrides["device"] = device
    return evaluate_run(run_dir, _plugins(plugins), tasks=tasks, data_dir=data_dir,
                        overrides=overrides, split=split, settings=settings, console=console)


def _records(records: Records, labelled: bool) -> Path | str | list[QueryRecord]:
    if isinstance(records, str | Path):
        return records
    return [r if isinstance(r, QueryRecord) else record_from_mapping(r, labelled)
            for r in records]


def adapt(run_dir: Path | str, support: Records, query: Records, *,
          learner: str | None = None, seed: int | None = None,
          settings: Mapping[str, Any] | None = None, device: str | None = None,
          save_adapter: Path | str | None = None,
          plugins: PluginManager | None = None) -> Adaptation:
    """A finished run's tested adapters adapted to your task on ``support`` (labelled
    records), then each ``query`` record's chosen option and every option's probability
    (``.predictions``), with metrics over the labelled queries (``.metrics``).
    ``save_adapter`` writes the task-adapted adapter as a PEFT adapter there."""
    return adapt_run(run_dir, _records(support, True), _records(query, False),
                     learner=learner, seed=seed, settings=settings, device=device,
                     save_adapter=save_adapter, plugins=_plugins(plugins))


def prune(run_dir: Path | str | None, ratios: Sequence[float] | str, *,
          pruner: str = "magnitude", scope: str = "adapted", baseline: bool = True,
          spec: RunSpec | None = None, plugins: PluginManager | None = None,
          console: Console | None = None, **overrides: Any) -> PruneSummary:
    """The magnitude-pruning sweep of ``metalora prune``: of a finished run's tested adapters
    (``overrides``: ``learner``, ``seeds``, ``device``), or, with ``run_dir=None``, of
    untrained learners built from ``spec``."""
    plugins = _plugins(plugins)
    if run_dir is None:
        if spec is None:
            raise TypeError("without a run directory, give the spec of the learners to build")
        return prune_fresh(spec, ratios, plugins, pruner=pruner, scope=scope,
                           baseline=baseline, console=console)
    return prune_run(run_dir, ratios, plugins, pruner=pruner, scope=scope, baseline=baseline,
                     overrides=overrides, console=console)


def export(run_dir: Path | str, out: Path | str | None = None, *, learner: str | None = None,
           seed: int | None = None, overwrite: bool = False,
           plugins: PluginManager | None = None) -> ExportResult:
    """One learner and seed's tested global mean adapters as a PEFT adapter (``metalora
    export --format peft``), loadable with ``PeftModel.from_pretrained``."""
    return export_peft(run_dir, _plugins(plugins), out, learner=learner, seed=seed,
                       overwrite=overwrite)


def predictions(source: Path | str) -> PredictionSource:
    """The per-query predictions of ``[NAME=]PATH[:LEARNER]`` (a run directory, one of
    its ``eval/`` directories or an ensemble's output), for each of its seeds."""
    return read_source(str(source))


def mean_scores(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean accuracy, NLL and Brier over prediction records (``predictions.jsonl`` lines:
    ``task``, ``index``, ``probs``, ``label``), as :func:`compare` reports them."""
    return _mean_scores(query_scores(records).values())


def compare(sources: Sequence[Path | str], output: Path | str | None = None,
            plots: bool = True) -> Comparison:
    """Two or more sources (``[NAME=]PATH[:LEARNER]``) on the same queries: each one's mean
    accuracy, NLL and Brier, and every source's paired per-query differences from the
    first with bootstrap SE (``metalora compare``). With ``output``, ``comparison.json``
    and the risk-coverage and reliability figures (PNG and PDF) are written there."""
    return _compare([str(s) for s in sources], None if output is None else Path(output),
                    plots=plots)
