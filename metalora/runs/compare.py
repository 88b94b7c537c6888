"""Finished predictions side by side on the same queries (``metalora compare``).

A *source* is ``[NAME=]PATH[:LEARNER]``: a run directory, one of its ``eval/``
directories or an ensemble's output, and the learner whose
``LEARNER/seed-*/predictions.jsonl`` to read (may be left out when ``PATH`` holds one
learner); ``NAME`` is how the table, the figures and ``comparison.json`` call it
(``PATH:LEARNER`` when left out). The first source is the
reference. For every other source, each query's accuracy, NLL and Brier score minus
the reference's, averaged over the queries both scored, with a bootstrap SE
(:mod:`metalora.paired`): resampled within each seed when both sources have the same
seeds (common random numbers: the same seed saw the same batches), and over queries
with each source's scores averaged over its seeds otherwise. Figures: the
risk-coverage curves and the reliability diagrams of every source, pooled over tasks
and seeds, in PNG and PDF.
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metalora.errors import MetaloraError
from metalora.files import atomic_write_bytes
from metalora.paired import (
    SCORES,
    PairedDifference,
    QueryScore,
    mean_scores,
    paired_difference,
    query_scores,
    read_predictions,
)
from metalora.records import MAX_OPTIONS

SEED_DIR = re.compile(r"^seed-(\d+)$")
COMPARISON_FILE = "comparison.json"
RISK_COVERAGE_FIGURE = "risk_coverage.png"
RELIABILITY_FIGURE = "reliability.png"


@dataclass
class PredictionSource:
    """One learner's per-query predictions, for each of its seeds."""

    label: str
    """How the comparison names it: the source's ``NAME``, else ``PATH:LEARNER``."""
    learner: str
    seeds: dict[int, list[dict[str, Any]]]
    """Seed -> the ``predictions.jsonl`` records of its queries."""

    def scores(self) -> dict[tuple[int, str, int], QueryScore]:
        """Every query's scores, keyed ``(seed, task, index)``."""
        return {(seed, *key): value for seed, records in self.seeds.items()
                for key, value in query_scores(records).items()}

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(probs, targets)`` over every seed's queries, probs padded to the options."""
        rows = [r for records in self.seeds.values() for r in records]
        probs = torch.zeros(len(rows), MAX_OPTIONS)
        for i, r in enumerate(rows):
            probs[i, : len(r["probs"])] = torch.tensor(r["probs"], dtype=torch.float32)
        return probs, torch.tensor([int(r["label"]) for r in rows])


def read_source(text: str) -> PredictionSource:
    """The source ``[NAME=]PATH[:LEARNER]`` (see the module); one error line when it is
    not one."""
    name, equals, rest = text.partition("=")
    if equals and not Path(text).is_dir() and "/" not in name:
        if not name.strip() or not rest:
            raise MetaloraError(f"{text!r} names no source; give NAME=RUN_DIR[:LEARNER]")
        text = rest
    else:
        name = ""
    path_text, _, learner = text.rpartition(":") if ":" in text else (text, "", "")
    if not path_text or not Path(path_text).is_dir():
        path_text, learner = text, ""
    path = Path(path_text)
    if not path.is_dir():
        raise MetaloraError(f"{text!r} is not a directory of predictions; give RUN_DIR or "
                            "RUN_DIR:LEARNER")
    learners = sorted(p.name for p in path.iterdir()
                      if p.is_dir() and any(SEED_DIR.match(s.name) for s in p.iterdir()))
    if not learner:
        if len(learners) != 1:
            raise MetaloraError(f"{str(path)!r} holds predictions of {learners or 'no learner'}"
                                "; name one as PATH:LEARNER")
        learner = learners[0]
    if learner not in learners:
        raise MetaloraError(f"{str(path)!r} has no predictions of {learner!r}; valid "
                            f"choices: {', '.join(learners) or 'none'}")
    seeds = {}
    for seed_path in sorted((path / learner).iterdir()):
        match = SEED_DIR.match(seed_path.name)
        if match and (seed_path / "predictions.jsonl").exists():
            seeds[int(match.group(1))] = read_predictions(seed_path / "predictions.jsonl")
    if not seeds:
        raise MetaloraError(f"{str(path / learner)!r} has no finished seed "
                            "(seed-N/predictions.jsonl)")
    return PredictionSource(label=name.strip() or f"{path}:{learner}", learner=learner,
                            seeds=seeds)


def seed_averaged(scores: Mapping[tuple[int, str, int], QueryScore], name: str
                  ) -> dict[Hashable, float]:
    """Each query's score ``name`` averaged over the seeds that scored it."""
    sums: dict[Hashable, list[float]] = {}
    for (_, task, index), value in scores.items():
        sums.setdefault((task, index), []).append(value.get(name))
    return {k: sum(v) / len(v) for k, v in sums.items()}


@dataclass
class Comparison:
    """Every source's mean scores and, for each after the first, its paired differences
    from the first (the reference)."""

    sources: list[str]
    means: dict[str, dict[str, float]]
    """Source -> score -> mean over its queries (and seeds)."""
    differences: dict[str, dict[str, PairedDifference]] = field(default_factory=dict)
    """Source -> score -> its paired difference from the reference (source minus it)."""
    stratified: dict[str, bool] = field(default_factory=dict)
    """Source -> whether its differences were paired seed by seed."""
    figures: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.sources[0], "sources": self.sources, "means": self.means,
                "differences": {s: {k: {"mean": d.mean, "se": d.se, "n": d.n}
                                    for k, d in diffs.items()}
                                for s, diffs in self.differences.items()},
                "paired_by_seed": self.stratified,
                "figures": [str(f) for f in self.figures]}


def compare_sources(sources: Sequence[PredictionSource]) -> Comparison:
    """The paired comparison of ``sources`` against the first (see the module)."""
    if len(sources) < 2:
        raise MetaloraError(f"compare needs at least two sources, got {len(sources)}")
    labels = [s.label for s in sources]
    if len(set(labels)) != len(labels):
        raise MetaloraError(f"a source is given twice in {labels}")
    scored = [s.scores() for s in sources]
    means = {s.label: mean_scores(sc.values()) for s, sc in zip(sources, scored, strict=True)}
    result = Comparison(sources=labels, means=means)
    reference, ref_scores = sources[0], scored[0]
    for source, scores in zip(sources[1:], scored[1:], strict=True):
        by_seed = set(source.seeds) == set(reference.seeds)
        result.stratified[source.label] = by_seed
        result.differences[source.label] = {}
        for name in SCORES:
            if by_seed:
                diff = paired_difference({k: v.get(name) for k, v in scores.items()},
                                         {k: v.get(name) for k, v in ref_scores.items()},
                                         strata={k: k[0] for k in scores})
            else:
                diff = paired_difference(seed_averaged(scores, name),
                                         seed_averaged(ref_scores, name))
            result.differences[source.label][name] = diff
    return result


def compare(sources: Sequence[str], output: Path | None = None, plots: bool = True
            ) -> Comparison:
    """Read ``sources`` (``[NAME=]PATH[:LEARNER]``), compare them, and write ``comparison.json``
    and the figures into ``output`` when given."""
    read = [read_source(s) for s in sources]
    result = compare_sources(read)
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        if plots:
            from metalora.runs.plots import (
                matplotlib_available,
                plot_reliability_combined,
                plot_risk_coverage,
            )

            if not matplotlib_available():
                raise MetaloraError("matplotlib is not installed: pip install "
                                    "'metalora[plots]', or pass --no-plots")
            pooled = {s.label: s.pooled() for s in read}
            made = [
                plot_risk_coverage(pooled, output / RISK_COVERAGE_FIGURE,
                                   title="Risk-coverage (pooled over tasks and seeds)"),
                plot_reliability_combined(pooled, output / RELIABILITY_FIGURE,
                                          title="Reliability (pooled over tasks and seeds)")]
            result.figures = [f for f in made if f is not None]
        atomic_write_bytes(output / COMPARISON_FILE,
                           json.dumps(result.to_dict(), indent=2).encode())
    return result
