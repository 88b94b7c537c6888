"""LoRA ensembles (``metalora ensemble``): K independently trained members, predictions
averaged.

A member is one learner's tested adapters at one seed of one finished run: the members
of ``metalora ensemble RUN_DIR... --learner lora`` are every seed of every run given
(K seeds of one run, or K runs). Each member was evaluated under the same protocol
(same support sets, same queries, its own test-time adaptation), so the ensemble's
prediction for a query is the mean of the members' option probabilities for it. The
output directory holds the ensemble's predictions in the layout of a run
(``<learner>-ensemble/seed-0/predictions.jsonl``), so ``metalora compare`` reads it
beside its members, and ``ensemble.json`` with each member's and the ensemble's mean
accuracy, NLL and Brier score.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metalora import MetaloraError, hookimpl

ENSEMBLE_FILE = "ensemble.json"


@dataclass
class Ensemble:
    """The averaged predictions of ``members`` and the mean scores of each."""

    learner: str
    members: list[str]
    records: list[dict[str, Any]]
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    """Member (and ``"ensemble"``) -> accuracy, nll, brier averaged over the queries."""


def average_members(members: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each query's option probabilities averaged over the members; the members must hold
    the same queries with the same answers (one error line naming the first that does not)."""
    if len(members) < 2:
        raise MetaloraError(f"an ensemble needs at least 2 members, got {len(members)}; give "
                            "more seeds or more runs")
    names = list(members)
    keyed = {m: {(r["task"], int(r["index"])): r for r in records}
             for m, records in members.items()}
    first = keyed[names[0]]
    for name in names[1:]:
        if set(keyed[name]) != set(first):
            raise MetaloraError(f"members {names[0]!r} and {name!r} were not evaluated on the "
                                "same queries (different suites, splits or query caps?)")
        for key, record in keyed[name].items():
            if (int(record["label"]) != int(first[key]["label"])
                    or len(record["probs"]) != len(first[key]["probs"])):
                raise MetaloraError(f"members {names[0]!r} and {name!r} disagree on query "
                                    f"{key}: not the same tasks")
    out = []
    for record in members[names[0]]:
        key = (record["task"], int(record["index"]))
        rows = [keyed[m][key]["probs"] for m in names]
        probs = [round(sum(col) / len(rows), 6) for col in zip(*rows, strict=True)]
        out.append({**record, "probs": probs, "members": len(names)})
    return out


def build_ensemble(runs: Sequence[Path | str], learner: str | None = None,
                   output: Path | str | None = None) -> Ensemble:
    """The ensemble of every seed of ``learner`` in every run of ``runs`` (see the module),
    written to ``output`` when given."""
    from metalora.api import mean_scores, predictions

    members: dict[str, list[dict[str, Any]]] = {}
    chosen = learner
    for run in runs:
        source = predictions(f"{run}:{chosen}" if chosen else run)
        chosen = source.learner
        for seed, records in source.seeds.items():
            members[f"{source.label}/seed-{seed}"] = records
    assert chosen is not None
    result = Ensemble(learner=chosen, members=list(members),
                      records=average_members(members))
    result.scores = {m: mean_scores(r) for m, r in members.items()}
    result.scores["ensemble"] = mean_scores(result.records)
    if output is not None:
        where = Path(output) / f"{chosen}-ensemble" / "seed-0"
        where.mkdir(parents=True, exist_ok=True)
        (where / "predictions.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in result.records))
        (Path(output) / ENSEMBLE_FILE).write_text(json.dumps(
            {"learner": chosen, "members": result.members, "scores": result.scores}, indent=2))
    return result


@hookimpl
def register_commands(app):
    import typer

    @app.command("ensemble")
    def ensemble(
        runs: list[Path] = typer.Argument(..., help="Finished run directories (or eval/ "
                                          "directories); every seed of each is a member."),
        learner: str | None = typer.Option(None, "--learner", help="Whose predictions "
                                           "(default: the one learner the runs hold)."),
        output: Path = typer.Option(..., "--output", "-o", help="Directory for the "
                                    "ensemble's predictions and ensemble.json."),
    ) -> None:
        """Average K independently trained members' test predictions (a LoRA ensemble);
        compare it with `metalora compare MEMBER_RUN:LEARNER OUTPUT`."""
        result = build_ensemble(runs, learner, output)
        for name, scores in result.scores.items():
            typer.echo(f"{name}: accuracy {scores['accuracy']:.4f}, NLL {scores['nll']:.4f}, "
                       f"Brier {scores['brier']:.4f}")
        typer.echo(f"{len(result.members)} members; written to {output}")
