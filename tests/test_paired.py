"""Per-query scores and paired differences with bootstrap standard errors."""

from __future__ import annotations

import math
import random

import pytest
import torch

from metalora.errors import MetaloraError
from metalora.paired import paired_difference, query_scores, read_predictions, score
from metalora_plugins.metrics import Accuracy, BrierScore, NegativeLogLikelihood


def _records(n: int, seed: int, options: int = 3) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(n, options, generator=gen) * 2, dim=-1)
    labels = torch.randint(options, (n,), generator=gen)
    return [{"task": f"t{i % 4}", "index": i // 4, "probs": probs[i].tolist(),
             "label": int(labels[i])} for i in range(n)]


def test_per_query_scores_average_to_the_metrics() -> None:
    records = _records(200, seed=1)
    scores = query_scores(records)
    probs = torch.tensor([r["probs"] for r in records])
    targets = torch.tensor([r["label"] for r in records])
    mask = torch.ones_like(probs, dtype=torch.bool)
    for name, metric in (("accuracy", Accuracy()), ("nll", NegativeLogLikelihood()),
                         ("brier", BrierScore())):
        mean = sum(s.get(name) for s in scores.values()) / len(scores)
        assert mean == pytest.approx(metric.compute(probs, targets, mask), rel=1e-5), name


def test_a_score_by_hand() -> None:
    s = score([0.2, 0.7, 0.1], 0)
    assert s.accuracy == 0.0 and s.confidence == 0.7
    assert s.nll == pytest.approx(-math.log(0.2))
    assert s.brier == pytest.approx(0.8 ** 2 + 0.7 ** 2 + 0.1 ** 2)
    with pytest.raises(MetaloraError, match="no option 3"):
        score([0.5, 0.5], 3)


def test_paired_difference_matches_the_normal_theory_standard_error() -> None:
    rng = random.Random(0)
    a = {k: rng.gauss(0.0, 1.0) for k in range(2000)}
    b = {k: a[k] - 0.1 + rng.gauss(0.0, 0.2) for k in a}  # a - b ~ N(0.1, 0.2^2)
    diff = paired_difference(a, b, resamples=500)
    diffs = [a[k] - b[k] for k in a]
    mean = sum(diffs) / len(diffs)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    assert diff.mean == pytest.approx(mean)
    assert diff.se == pytest.approx(sd / math.sqrt(len(diffs)), rel=0.1)
    assert diff.n == 2000 and not diff.within_noise()
    # pairing is what makes it small: the unpaired SE of the same difference is 7x larger
    assert diff.se < 0.2 * math.sqrt(2 / len(diffs))


def test_identical_predictions_differ_by_exactly_nothing_and_strata_are_kept() -> None:
    a = {("s0", k): float(k) for k in range(10)}
    same = paired_difference(a, dict(a))
    assert same.mean == 0.0 and same.se == 0.0 and same.within_noise()
    # a constant shift within each stratum: no resample can change the mean
    b = {key: value - (1.0 if key[0] == "s0" else 0.0) for key, value in a.items()}
    b.update({("s1", k): 0.0 for k in range(10)})
    a.update({("s1", k): 0.0 for k in range(10)})
    shifted = paired_difference(a, b, strata={key: key[0] for key in a})
    assert shifted.mean == pytest.approx(0.5) and shifted.se == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(MetaloraError, match="share no query"):
        paired_difference({1: 0.0}, {2: 0.0})


def test_read_predictions(tmp_path) -> None:
    import json

    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _records(8, seed=2)))
    assert len(query_scores(read_predictions(path))) == 8
    with pytest.raises(MetaloraError, match="does not exist"):
        read_predictions(tmp_path / "nope.jsonl")
