"""A method's own strength setting chosen on validation, by the rule in ``uncertainty.py``'s
docstring: ``python benchmarks/strength_validation.py blob|mc-dropout``.

Each candidate of ``uncertainty.STRENGTHS`` (the published value, a tenth of it, zero) is
trained at seed 0 as ``uncertainty.py`` trains that candidate's arm (the same job, into
the same run directory, its own test at one draw), then evaluated on seed 0's validation
tasks with the method's own test-time draws. The report pairs every candidate with the
published value per query (NLL, Brier, accuracy; bootstrap SE) and applies the rule: the
published value stays unless another's NLL is more than 2 SE below it, then the lowest
mean NLL wins. Resumes where it stopped; ``--report-only`` reads what is there.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from metalora.paired import (
    PairedDifference,
    QueryScore,
    paired_difference,
    query_scores,
    read_predictions,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol_runs import (  # noqa: E402
    REPO,
    add_protocol_arguments,
    evaluation_dir,
    finished,
    paired_cell,
    run_and_report,
    run_job,
)
from uncertainty import STRENGTHS, strength_arm  # noqa: E402

SEED = 0


class Validation:
    """One method's candidates: their jobs, their state on disk, and the rule's report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.strength = STRENGTHS[args.method]

    def run_dir(self, value: str) -> Path:
        return self.args.output_dir / f"{strength_arm(self.args.method, value).name}-seed{SEED}"

    def evaluation(self, value: str) -> Path | None:
        """The candidate's finished validation evaluation with the method's draws."""
        run_dir = self.run_dir(value)
        return evaluation_dir(run_dir, "validation",
                              {self.strength.draws: self.strength.count}) if finished(
                                  run_dir) else None

    def ready(self) -> list[tuple[str, dict[str, Any]]]:
        """Trainings of the candidates not trained, then evaluations of those not evaluated."""
        jobs = []
        for value in self.strength.values:
            arm, run_dir = strength_arm(self.args.method, value), self.run_dir(value)
            if not finished(run_dir):
                jobs.append((run_dir.name, run_job(self.args, run_dir, arm.learner, SEED,
                                                   dict(arm.options))))
            elif self.evaluation(value) is None:
                jobs.append((f"{run_dir.name}:validation", {
                    "kind": "evaluate", "run_dir": str(run_dir), "options": {
                        "split": "validation",
                        "settings": {self.strength.draws: self.strength.count}}}))
        return jobs

    def scores(self, value: str) -> dict[tuple, QueryScore] | None:
        where = self.evaluation(value)
        if where is None:
            return None
        return query_scores(read_predictions(where / self.args.method / f"seed-{SEED}"
                                             / "predictions.jsonl"))

    def report(self) -> str:
        name, published = self.strength.setting, self.strength.values[0]
        lines = [f"# {self.args.method}: {name} on seed {SEED}'s validation queries", ""]
        scored = {value: self.scores(value) for value in self.strength.values}
        missing = [value for value, scores in scored.items() if scores is None]
        base = scored[published]
        for value, scores in scored.items():
            if scores is None or base is None:
                continue
            mean = sum(s.nll for s in scores.values()) / len(scores)
            cells = ", ".join(f"{m} {paired_cell(scores, base, m, strata=False)}"
                              for m in ("accuracy", "nll", "brier"))
            lines.append(f"- {name} {value}: {len(scores)} queries, mean NLL {mean:.6f}"
                         + ("" if value == published else f"; minus {published}: {cells}"))
        if missing:
            lines += ["", f"Not evaluated yet: {name} {', '.join(missing)}."]
            return "\n".join(lines)
        assert base is not None
        nll = {value: _nll(scores) for value, scores in scored.items() if scores is not None}
        beaten = [value for value in self.strength.values[1:]
                  if _below(paired_difference(nll[value], nll[published]))]
        chosen = min(beaten, key=lambda v: sum(nll[v].values())) if beaten else published
        lines += ["", f"The rule chooses {name} {chosen}" + (
            f" (the lowest NLL of those more than 2 SE below {published})" if beaten
            else " (the published value: none is more than 2 SE below it)") + "."]
        return "\n".join(lines)


def _nll(scores: dict[tuple, QueryScore]) -> dict[Hashable, float]:
    return {key: s.nll for key, s in scores.items()}


def _below(diff: PairedDifference) -> bool:
    """More than 2 SE below zero (the rule's test)."""
    return diff.mean < 0 and not diff.within_noise()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("method", choices=sorted(STRENGTHS))
    add_protocol_arguments(parser, REPO / "runs" / "benchmarks" / "uncertainty")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    run_and_report(Validation(args), args, report=f"strength-{args.method}.md")


if __name__ == "__main__":
    main()
