"""Paired comparisons: two sets of predictions scored query by query on the same queries.

A run's test (and every ``metalora eval``) writes each query's option
probabilities (``predictions.jsonl``). Two learners, or two settings, scored
on the *same* queries differ query by query far less than their scores vary
from query to query, so the per-query difference of a proper score has a
much smaller standard error than the difference of two means: that is how
small differences become decidable.

* :func:`query_scores`: per-query correctness, negative log-likelihood and
  Brier score, keyed by ``(task, index)``.
* :func:`mean_scores`: those scores averaged over queries.
* :func:`paired_difference`: the mean of ``a - b`` over the queries both
  have, with its bootstrap standard error (queries resampled with
  replacement, within each stratum, e.g. each seed).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from metalora.errors import MetaloraError

SCORES: tuple[str, ...] = ("accuracy", "nll", "brier")
"""Per-query scores: 1 if the most probable option is correct, -log p(correct), and the
squared error of the option probabilities against the one-hot answer."""
PROBABILITY_FLOOR = 1e-12
"""The probability an NLL is taken of at least (as the ``nll`` metric clamps it)."""
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class QueryScore:
    """The scores of one query's predicted option probabilities."""

    accuracy: float
    nll: float
    brier: float
    confidence: float
    """The probability of the chosen (most probable) option."""

    def get(self, name: str) -> float:
        return float(getattr(self, name))


def chosen_option(probs: Sequence[float]) -> int:
    """The index of the most probable option (the first of those tied)."""
    return max(range(len(probs)), key=probs.__getitem__)


def score(probs: Sequence[float], label: int) -> QueryScore:
    """One query's scores from its option probabilities and the correct option's index."""
    if not probs or not 0 <= label < len(probs):
        raise MetaloraError(f"a query with {len(probs)} option probabilities has no option "
                            f"{label}")
    chosen = chosen_option(probs)
    brier = sum((p - (1.0 if i == label else 0.0)) ** 2 for i, p in enumerate(probs))
    return QueryScore(accuracy=float(chosen == label),
                      nll=-math.log(max(probs[label], PROBABILITY_FLOOR)),
                      brier=brier, confidence=float(probs[chosen]))


def query_scores(records: Iterable[Mapping]) -> dict[tuple[str, int], QueryScore]:
    """Scores keyed by ``(task, index)`` from prediction records (``predictions.jsonl``
    lines: ``task``, ``index``, ``probs``, ``label``)."""
    out: dict[tuple[str, int], QueryScore] = {}
    for record in records:
        out[(str(record["task"]), int(record["index"]))] = score(
            [float(p) for p in record["probs"]], int(record["label"]))
    return out


def mean_scores(scores: Iterable[QueryScore]) -> dict[str, float]:
    """Each of :data:`SCORES` averaged over ``scores`` (at least one)."""
    values = list(scores)
    if not values:
        raise MetaloraError("no query to average scores over")
    return {name: sum(v.get(name) for v in values) / len(values) for name in SCORES}


def read_predictions(path: Path | str) -> list[dict]:
    """The records of a ``predictions.jsonl`` file (one line per query)."""
    path = Path(path)
    if not path.is_file():
        raise MetaloraError(f"predictions file {str(path)!r} does not exist")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` averaged over paired queries, with its bootstrap standard error."""

    mean: float
    se: float
    n: int

    def within_noise(self, ses: float = 2.0) -> bool:
        """Whether ``|mean|`` is at most ``ses`` standard errors."""
        return abs(self.mean) <= ses * self.se

    def format(self, digits: int = 4, scale: float = 1.0) -> str:
        return f"{scale * self.mean:+.{digits}f} ± {scale * self.se:.{digits}f}"


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float],
                      strata: Mapping[Hashable, Hashable] | None = None,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> PairedDifference:
    """The mean of ``a[k] - b[k]`` over the keys both have, and its bootstrap SE.

    Each resample draws, within each stratum (``strata[k]``; one stratum when
    None), as many keys as it holds, with replacement; the SE is the standard
    deviation of the resampled means. Keys in only one of ``a`` and ``b`` are
    not compared (none in common is an error).
    """
    keys = sorted((k for k in a if k in b), key=repr)
    if not keys:
        raise MetaloraError("the two sets of predictions share no query: were they made on "
                            "the same tasks and split?")
    diffs = {k: float(a[k]) - float(b[k]) for k in keys}
    groups: dict[Hashable, list[float]] = {}
    for k in keys:
        groups.setdefault(None if strata is None else strata[k], []).append(diffs[k])
    mean = sum(diffs.values()) / len(keys)
    rng = random.Random(seed)
    means = []
    for _ in range(resamples):
        total = 0.0
        for values in groups.values():
            total += sum(values[rng.randrange(len(values))] for _ in values)
        means.append(total / len(keys))
    centre = sum(means) / len(means)
    se = math.sqrt(sum((m - centre) ** 2 for m in means) / max(len(means) - 1, 1))
    return PairedDifference(mean=mean, se=se, n=len(keys))
