"""What a run produces: one :class:`SeedResult` per learner and seed, and the
:class:`RunSummary` of all of them with mean ± SE over seeds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metalora.evaluation import EvalResult
from metalora.runs.rundir import METRICS_FILE, PREDICTIONS_FILE, read_json
from metalora.stats import mean_se

if TYPE_CHECKING:
    from metalora.config import RunSettings
    from metalora.interfaces import Metric

SELECTION_BEST = "best-validation"
SELECTION_LAST = "last-epoch"
SELECTION_MIXED = "mixed"


@dataclass
class SeedResult:
    """One learner trained and tested with one seed."""

    learner: str
    seed: int
    test: EvalResult
    path: Path
    tested_epoch: int | None = None
    """The epoch whose adapters were tested (epochs finished; 0 = untrained)."""
    selection: str = SELECTION_LAST
    """How the tested epoch was chosen: ``best-validation`` or ``last-epoch``."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Validation records: ``{"epoch": e, "<metric>": value, ...}``."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (a seed's ``metrics.json``)."""
        return {**self.test.to_dict(), "tested_epoch": self.tested_epoch,
                "selection": self.selection, "validation": self.history}

    @classmethod
    def load(cls, learner: str, seed: int, path: Path) -> SeedResult:
        """Read back a finished seed from its directory."""
        data = read_json(path / METRICS_FILE, "seed metrics")
        return cls(learner=learner, seed=seed,
                   test=EvalResult.load(data, path / PREDICTIONS_FILE), path=path,
                   tested_epoch=data.get("tested_epoch"),
                   selection=data.get("selection", SELECTION_LAST),
                   history=list(data.get("validation", [])))


@dataclass
class RunSummary:
    """All results of a run, with mean ± SE over seeds."""

    run_dir: Path
    suite: str
    metric_names: list[str]
    results: dict[str, list[SeedResult]] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)
    """Epochs, validation schedule and selection rule the results come from."""

    def summary(self) -> dict[str, dict[str, tuple[float, float]]]:
        """learner -> metric -> (mean, standard error) of the macro average over seeds.

        With one seed there is no spread over seeds; the standard error is then
        the bootstrap one over the query examples, where it was computed.
        """
        out: dict[str, dict[str, tuple[float, float]]] = {}
        for learner, seeds in self.results.items():
            out[learner] = {}
            for metric in self.metric_names:
                mean, se = mean_se([r.test.macro[metric] for r in seeds])
                if len(seeds) == 1:
                    se = seeds[0].test.example_se.get(metric, 0.0)
                out[learner][metric] = (mean, se)
        return out

    def test_at(self) -> str:
        """How the tested epochs were chosen: one selection rule, or ``mixed``."""
        selections = {r.selection for seeds in self.results.values() for r in seeds}
        return selections.pop() if len(selections) == 1 else SELECTION_MIXED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``metrics.json``)."""
        summary = self.summary()
        return {
            "suite": self.suite,
            "metrics": self.metric_names,
            "protocol": self.protocol,
            "learners": {
                learner: {
                    "summary": {m: {"mean": v[0], "se": v[1]} for m, v in summary[learner].items()},
                    "seeds": {str(r.seed): r.to_dict() for r in seeds},
                }
                for learner, seeds in self.results.items()
            },
        }


def protocol_record(run: RunSettings, validated: bool,
                    metrics: Mapping[str, Metric]) -> dict[str, Any]:
    """The protocol the results come from (stored in metrics.json and results.json).

    ``test_at`` is ``best-validation``, ``last-epoch``, or ``mixed`` when
    some learner/seed was never validated (``epochs < eval_every``);
    ``metrics_given`` the metrics asked for (none: every registered one).
    """
    return {
        "epochs": run.epochs,
        "eval_every": run.eval_every,
        "select_metric": run.select_metric,
        "test_at": SELECTION_BEST if validated else SELECTION_LAST,
        "seeds": list(run.seeds),
        "metrics_given": list(run.metrics),
        "higher_is_better": {n: bool(m.higher_is_better) for n, m in metrics.items()},
    }
