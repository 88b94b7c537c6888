"""The uncertainty baselines beside ABMLL, scored per query on the same queries.

Usage::

    nohup python benchmarks/uncertainty.py > runs/benchmarks/uncertainty/driver.log 2>&1 &
    python benchmarks/uncertainty.py --report-only        # the tables of what has finished
    python benchmarks/uncertainty.py --arms laplace --seeds 0,1   # some arms and seeds first

The protocol is ``mechanism.py``'s (cls-45, the first 12 training tasks, 3
epochs, every arm tested at its last epoch, up to 100 test queries per task,
test-time adaptation 5 AdamW steps at 2e-4, SmolLM2-135M, float32; seeds 0, 1
and 2), so that ABMLL's runs there (arms A, the defaults, and D, the
learned-variance settings) can be this comparison's ABMLL rows
(``--mechanism-dir``); seeds they
lack are trained here with the same settings. Nothing checks which code made the
borrowed runs: re-evaluate one (``metalora eval RUN --split test``) and compare its
predictions when the code has changed since.
At one seed every learner sees the same support sets and queries, and the
task-structured learners the same training batches (common random numbers).

The arms:

* ``pretrained``: the frozen model, zero-shot; ``icl``: the same with the 10
  support examples in the prompt (``in_context = 10``), on the first 20 of each
  task's test queries (``query_cap = 20``: prompts ~10x longer); both at the
  first seed only (every seed would give the same predictions). The protocol's
  512-token prompts drop demonstrations from the front; an evaluation of the
  ``pretrained`` run with all ten (``max_length = WHOLE_PROMPT``) is paired with
  the ``icl`` row on the same queries (and ``lora``'s likewise with its own); the
  rows marked "every query" evaluate the ``pretrained`` and ``lora`` runs with the 10
  demonstrations on all their test queries, paired with the rows without them, and
  with all ten (``WHOLE_PROMPT``) on all of them, paired with their 512-token prompts;
* ``lora``, whose evaluations give ``lora`` with temperature scaling
  (``calibrate = temperature``) and ``lora`` with the support set also in the
  prompt (``in_context = 10``, the first 20 queries as ``icl``), for which the
  report says on how many queries it gives the frozen model's answer with the same
  demonstrations and on how many its own without them; the ``lora`` ensemble
  averages its seeds;
* ``laplace``: ``laplace-lora`` (trained exactly as ``lora``);
* ``mc-dropout-p0.1``, ``blob-kl0.02``: the other uncertainty baselines at their
  published strengths; ``mc-dropout-p0.01``, ``blob-kl0``: each at the strength the
  exception below chose. Each is a strength candidate's run (its own test with one draw),
  which the rows evaluate with the method's draws (8 masks, 10 weight draws).
  These and ``laplace`` add their uncertainty to ``lora``'s training, so the report also
  pairs each with ``lora`` (``Row.base``), as it does ``lora`` with temperature scaling;
* ``abmll`` and ``abmll-lv``: ABMLL at its defaults and with the learned-variance
  settings of ``mechanism.py``'s arm D.

How settings were chosen (one rule, written before these runs, for every
learner): a learner's training learning rate is the one ``protocol.py``'s
validation rule kept for it, and a learner built on ``lora``'s training
(mc-dropout, blob, laplace-lora) takes ``lora``'s (3e-4); ABMLL's are
``mechanism.py``'s (1e-3); each method's own settings are its published
defaults (BLoB's init_eps 0.05, prior_std 0.2, kl_lr 0.02, 10 test draws; MC
dropout 0.1 with 8 masks; Laplace's prior precision by marginal likelihood on each
support set). Nothing here is chosen by a test score.

One exception, written down (2026-12-04) after BLoB's defaults failed and before any
run of it: a method whose own strength setting moves its uncertainty gets that
setting from three values, its published one, a tenth of it, and zero, by the mean
NLL over seed 0's validation queries (15 validation tasks, the method's own test-time
draws); the published value stays unless another's per-query paired NLL difference
from it is more than 2 bootstrap SE below zero (then the lowest NLL). For BLoB that
setting is ``kl_lr`` (0.02, 0.002, 0), for MC dropout the dropout rate (0.1, 0.01,
0): ``strength_validation.py``. BLoB's choice (2026-12-04): ``kl_lr`` 0, the lowest
validation NLL, after 0.002 beat the published 0.02 by more than 2 SE. MC dropout's:
0.01, whose NLL is 0.0019 ± 0.0005 below the published 0.1's and the lowest, though
only 3e-6 below rate 0 (which is lora): the rule does not weigh noise between
the candidates that beat the published value.

The report gives, on the test queries, each arm's accuracy, NLL and Brier
(means over every query), its ECE, adaptive ECE, AURC, accuracy at 50% and
80% coverage, misclassification AUROC and macro-F1 (macro over tasks, mean
over seeds), the per-query paired
difference of accuracy, NLL and Brier against ABMLL at its defaults (bootstrap
SE, queries resampled within each seed), each row with a base paired with it (also as
the mean ± SE of the per-seed differences), and the always-first-option and
majority-answer references on the same queries.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metalora.paired import (
    QueryScore,
    chosen_option,
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
    seed_cell,
)

LORA_LR = "3e-4"
"""The learning rate protocol.py's validation rule kept for lora."""
IN_CONTEXT = 10
IN_CONTEXT_QUERIES = 20
"""The in-context rows read the first 20 of each task's (up to 100) test queries: their
prompts are ~10x longer, and 2 CPU cores afford no more. Their paired differences are
over those queries; their means are not comparable with the other rows' (fewer queries)."""
ICL = (("in_context", IN_CONTEXT), ("query_cap", IN_CONTEXT_QUERIES))
WHOLE_PROMPT = 4096
"""A ``max_length`` that holds all ten demonstrations before every test query: the longest
such prompt of the 15 test tasks is 3587 tokens (``yelp_polarity``; SmolLM2 reads 8192),
against the protocol's 512, where a query holds 5.5 of them on average."""
WHOLE_ICL = (*ICL, ("max_length", WHOLE_PROMPT))
EVERY_QUERY_ICL = (("in_context", IN_CONTEXT),)
"""The in-context rows again on every test query (the protocol's 100 a task, five times
the cost of the first 20), each paired with its row without demonstrations on all its
queries, so that their means compare with the other rows'."""
WHOLE_EVERY_QUERY_ICL = (*EVERY_QUERY_ICL, ("max_length", WHOLE_PROMPT))
"""All ten demonstrations on every test query (five times the first 20's cost), paired, as
the 300-query rows are, with the same queries' 512-token prompts (the frozen model's also
with zero-shot by ``metalora compare``)."""
METRICS = ("ece", "adaptive_ece", "aurc", "acc_at_50", "acc_at_80",
           "misclassification_auroc", "macro_f1")


@dataclass(frozen=True)
class Arm:
    """One training (or zero-shot) run per seed, and the evaluations made of it."""

    name: str
    learner: str
    options: tuple[tuple[str, Any], ...]
    mechanism: str | None = None
    """The arm of mechanism.py whose runs this one is, where they exist."""
    seeded: bool = True
    """False for the frozen model: nothing is trained or drawn and every seed evaluates the
    same support sets and queries, so each seed's predictions are the first's (checked
    bitwise); it runs at the first seed only, lest copies count as more queries."""


@dataclass(frozen=True)
class Row:
    """One line of the report: an arm's run or one of its evaluations."""

    name: str
    arm: str
    evaluation: tuple[tuple[str, Any], ...] = ()
    """Settings changed for a ``metalora eval`` of the test split (none: the run's own test)."""
    base: str | None = None
    """The row this one adds to (``lora`` for a method built on its training, an in-context
    row's learner without demonstrations): the report pairs them on this row's queries."""


@dataclass(frozen=True)
class Strength:
    """A method's own strength setting, its candidates for the validation rule (the
    published value first), and its test-time draws."""

    setting: str
    tag: str
    """Names a candidate's arm (and run): ``<method>-<tag><value>``."""
    values: tuple[str, ...]
    draws: str
    count: int


STRENGTHS = {"blob": Strength("kl_lr", "kl", ("0.02", "0.002", "0"), "eval_samples", 10),
             "mc-dropout": Strength("dropout", "p", ("0.1", "0.01", "0"), "mc_samples", 8)}


def strength_arm(method: str, value: str) -> Arm:
    """``method`` (trained on lora's training) at one strength candidate, its own test at
    one draw: cheap, the candidates' runs being read on validation (and, once chosen, by a
    row's evaluation with the method's draws)."""
    strength = STRENGTHS[method]
    return Arm(f"{method}-{strength.tag}{value}", method,
               (("lr", LORA_LR), (strength.setting, value), (strength.draws, 1)))


def strength_row(name: str, method: str, value: str) -> Row:
    """The test row of ``method`` at the chosen strength ``value``, with its own draws."""
    strength = STRENGTHS[method]
    return Row(name, strength_arm(method, value).name, ((strength.draws, strength.count),),
               base="lora")


ABMLL_LR = (("inner_lr", "1e-3"), ("outer_lr", "1e-3"))
ARMS = (
    Arm("pretrained", "pretrained", (), seeded=False),
    Arm("icl", "pretrained", ICL, seeded=False),
    Arm("lora", "lora", (("lr", LORA_LR),)),
    Arm("laplace", "laplace-lora", (("lr", LORA_LR),)),
    strength_arm("mc-dropout", "0.1"),  # the published rate
    strength_arm("mc-dropout", "0.01"),  # chosen on validation: strength_validation.py
    strength_arm("blob", "0.02"),  # the published kl_lr
    strength_arm("blob", "0"),  # chosen on validation
    Arm("abmll", "abmll", ABMLL_LR, mechanism="A"),
    Arm("abmll-lv", "abmll", (*ABMLL_LR, ("log_var_relative", "0.013"), ("beta", "2.98e-5"),
                              ("prior_log_var", "relative"), ("b0", "1"),
                              ("prior_jacobian", True), ("variance_optimizer", "adamw"),
                              ("variance_lr", "1e-2")), mechanism="D"),
)
ROWS = (
    Row("pretrained (zero-shot)", "pretrained"),
    Row(f"in-context ({IN_CONTEXT} examples)", "icl", base="pretrained (zero-shot)"),
    Row(f"in-context (all {IN_CONTEXT} in a {WHOLE_PROMPT}-token prompt)", "pretrained",
        WHOLE_ICL, base=f"in-context ({IN_CONTEXT} examples)"),
    Row(f"in-context ({IN_CONTEXT} examples), every query", "pretrained", EVERY_QUERY_ICL,
        base="pretrained (zero-shot)"),
    Row(f"in-context (all {IN_CONTEXT} in {WHOLE_PROMPT} tokens), every query", "pretrained",
        WHOLE_EVERY_QUERY_ICL, base=f"in-context ({IN_CONTEXT} examples), every query"),
    Row("lora", "lora"),
    Row("lora + temperature", "lora", (("calibrate", "temperature"),), base="lora"),
    Row(f"lora + in-context ({IN_CONTEXT})", "lora", ICL, base="lora"),
    Row(f"lora + in-context (all {IN_CONTEXT}, {WHOLE_PROMPT} tokens)", "lora",
        WHOLE_ICL, base=f"lora + in-context ({IN_CONTEXT})"),
    Row(f"lora + in-context ({IN_CONTEXT}), every query", "lora", EVERY_QUERY_ICL,
        base="lora"),
    Row(f"lora + in-context (all {IN_CONTEXT}, {WHOLE_PROMPT} tokens), every query", "lora",
        WHOLE_EVERY_QUERY_ICL, base=f"lora + in-context ({IN_CONTEXT}), every query"),
    Row("laplace-lora", "laplace", base="lora"),
    strength_row("mc-dropout (published rate 0.1)", "mc-dropout", "0.1"),
    strength_row("mc-dropout (rate 0.01, chosen on validation)", "mc-dropout", "0.01"),
    strength_row("blob (published kl_lr 0.02)", "blob", "0.02"),
    strength_row("blob (kl_lr 0, chosen on validation)", "blob", "0"),
    Row("abmll (defaults)", "abmll"),
    Row("abmll (learned variance)", "abmll-lv"),
)
REFERENCE = "abmll (defaults)"
FROZEN = "pretrained"
"""The frozen model's learner: an adapted row with demonstrations is set beside the frozen
model's row with the same demonstrations, answer by answer."""
PROMPT = ("in_context", "max_length", "query_cap")
"""The settings that make the queries' prompts and say which queries are read."""
ENSEMBLE_OF = "lora"


class Comparison:
    """The runs and evaluations, their state on disk, and the report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.output_dir
        self.arms = {arm.name: arm for arm in ARMS}

    # -- state on disk -------------------------------------------------------
    def run_dir(self, arm: Arm, seed: int) -> Path:
        if arm.mechanism is not None and self.args.mechanism_dir is not None:
            borrowed = self.args.mechanism_dir / f"{arm.mechanism}-seed{seed}"
            if finished(borrowed):
                return borrowed
        return self.out / f"{arm.name}-seed{seed}"

    def predictions_dir(self, row: Row, seed: int) -> Path | None:
        """Where ``row``'s test predictions of ``seed`` are, once they exist."""
        run_dir = self.run_dir(self.arms[row.arm], seed)
        if not finished(run_dir):
            return None
        return evaluation_dir(run_dir, "test", dict(row.evaluation)) if row.evaluation else run_dir

    def seeds(self, arm: Arm) -> list[int]:
        """The seeds ``arm`` runs and counts at (the first only, unless seeded)."""
        return self.args.seeds if arm.seeded else self.args.seeds[:1]

    # -- the jobs ------------------------------------------------------------
    def ready(self) -> list[tuple[str, dict[str, Any]]]:
        """The jobs (for ``api_job.py``) not done whose inputs exist: trainings first, then
        each arm's first evaluation at every seed before its second (the in-context ones,
        several times dearer, last)."""
        a = self.args
        jobs: list[tuple[int, str, dict[str, Any]]] = []
        for seed in a.seeds:
            for order, arm in enumerate(ARMS):
                if arm.name not in a.arms or seed not in self.seeds(arm):
                    continue
                run_dir = self.run_dir(arm, seed)
                if not finished(run_dir):
                    jobs.append((100 * seed + order, f"{arm.name}-seed{seed}",
                                 run_job(a, run_dir, arm.learner, seed, dict(arm.options))))
                    continue
                for rank, row in enumerate(r for r in ROWS if r.arm == arm.name):
                    if row.evaluation and self.predictions_dir(row, seed) is None:
                        jobs.append((1000 + 100 * rank + 10 * seed + order,
                                     f"{arm.name}-seed{seed}:{rank}",
                                     {"kind": "evaluate", "run_dir": str(run_dir), "options": {
                                         "split": "test", "settings": dict(row.evaluation)}}))
        return [(n, job) for _, n, job in sorted(jobs, key=lambda j: j[0])]

    # -- reading results -------------------------------------------------------
    def records(self, row: Row) -> dict[int, list[dict[str, Any]]]:
        """Each finished seed's prediction records of ``row``."""
        arm, out = self.arms[row.arm], {}
        for seed in self.seeds(arm):
            where = self.predictions_dir(row, seed)
            if where is not None:
                out[seed] = read_predictions(where / arm.learner / f"seed-{seed}"
                                             / "predictions.jsonl")
        return out

    def report(self) -> str:
        from metalora.plugins import PluginManager

        registry = PluginManager().registry("metric")
        metrics = {name: registry.get(name)(registry.get(name).Settings()) for name in METRICS}
        table = [("| row | seeds | queries | accuracy | NLL | Brier | "
                  + " | ".join(METRICS) + f" | Δacc vs {REFERENCE} (points) | ΔNLL | ΔBrier |"),
                 "| --- " * (9 + len(METRICS)) + "|"]
        reference = _keyed(self.records(next(r for r in ROWS if r.name == REFERENCE)))
        all_records: dict[int, list[dict[str, Any]]] = {}
        for row in ROWS:
            by_seed = self.records(row)
            if not by_seed:
                table.append(f"| {row.name} | 0 | (not finished) |" + " |" * (6 + len(METRICS)))
                continue
            all_records.update(by_seed)
            table.append(_line(row.name, by_seed, metrics, reference))
            if row.name == ENSEMBLE_OF and len(by_seed) >= 2:
                table.append(_ensemble_line(by_seed, reference))
        lines = ["# Uncertainty baselines beside ABMLL at the cls-45 protocol (test queries)",
                 "", *table, "", *_references(all_records), "", *self._with_base(), "",
                 *self._agreement(), "",
                 "Accuracy, NLL and Brier: means over every query of the seeds finished (as "
                 "the differences are); the other metrics: macro over tasks, mean over the "
                 "seeds. Differences are per "
                 "query, paired over (seed, task, query), with the bootstrap SE (queries "
                 "resampled within each seed); accuracy in points; * marks a difference beyond "
                 "2 SE, the rest are within the noise; that SE leaves out how much the training "
                 "seed moves a difference, which the per-seed spread beside the pairs with a "
                 "base shows. The ensemble averages the lora seeds' "
                 "probabilities and is paired with the reference's seed-mean scores.", ""]
        return "\n".join(lines)

    def _with_base(self) -> list[str]:
        """Each row that adds to another, paired with it on the added row's queries."""
        lines = []
        for row in ROWS:
            if row.base is None or not (added := _keyed(self.records(row))):
                continue
            base = {k: s for k, s in
                    _keyed(self.records(next(r for r in ROWS if r.name == row.base))).items()
                    if k in added}
            if not base:
                continue
            accuracy = 100 * sum(s.accuracy for s in base.values()) / len(base)
            cells = ", ".join(f"{m} {paired_cell(added, base, m)}"
                              for m in ("accuracy", "nll", "brier"))
            seeds = ", ".join(f"{m} {cell}" for m in ("accuracy", "nll", "brier")
                              if (cell := seed_cell(added, base, m)))
            lines.append(f"{row.name} minus {row.base}, on the {len(base)} queries both have "
                         f"({row.base} {accuracy:.1f}% there): {cells}"
                         + (f"; over seeds (mean ± SE of the per-seed differences): {seeds}"
                            if seeds else "") + ".")
        return lines

    def prompt(self, row: Row) -> dict[str, Any]:
        """The settings of ``row``'s prompts (its arm's, then its evaluation's)."""
        both = {**dict(self.arms[row.arm].options), **dict(row.evaluation)}
        return {k: v for k, v in both.items() if k in PROMPT}

    def _agreement(self) -> list[str]:
        """Whose answer an adapted learner gives with demonstrations in its prompt: on each
        of its queries, the frozen model's with the same demonstrations, or its own without."""
        lines = []
        for row in ROWS:
            shown = self.prompt(row)
            if self.arms[row.arm].learner == FROZEN or not shown.get("in_context"):
                continue
            frozen = next((r for r in ROWS if self.arms[r.arm].learner == FROZEN
                           and self.prompt(r) == shown), None)
            alone = next((r for r in ROWS if r.arm == row.arm and not r.evaluation), None)
            if frozen is None or alone is None:
                continue
            given, without = _answers(self.records(row)), _answers(self.records(alone))
            # the frozen model's answers are the same at every seed: keyed by (task, index)
            frozen_given = {key[1:]: a for key, a in _answers(self.records(frozen)).items()}
            keys = [k for k in given if k in without and k[1:] in frozen_given]
            if not keys:
                continue
            by_frozen = {k: frozen_given[k[1:]] for k in keys}
            lines.append(
                f"{row.name} gives {frozen.name}'s answer on {_share(given, by_frozen, keys)} of "
                f"the {len(keys)} queries all three have, and {alone.name}'s on "
                f"{_share(given, without, keys)}; {alone.name} gives {frozen.name}'s on "
                f"{_share(without, by_frozen, keys)}.")
        return lines


def _answers(by_seed: dict[int, list[dict[str, Any]]]) -> dict[tuple, int]:
    """Each query's answer (:func:`chosen_option`), keyed by (seed, task, index)."""
    return {(seed, r["task"], r["index"]): chosen_option(r["probs"])
            for seed, records in by_seed.items() for r in records}


def _share(a: dict[tuple, int], b: dict[tuple, int], keys: list[tuple]) -> str:
    """On how many of ``keys`` (seed first) ``a`` and ``b`` give the same answer: pooled, and
    per seed when there are several."""
    seeds = sorted({k[0] for k in keys})
    pooled = sum(a[k] == b[k] for k in keys) / len(keys)
    if len(seeds) == 1:
        return f"{100 * pooled:.1f}%"
    per_seed = [sum(a[k] == b[k] for k in keys if k[0] == s) / sum(k[0] == s for k in keys)
                for s in seeds]
    return f"{100 * pooled:.1f}% (per seed " + ", ".join(f"{100 * v:.1f}" for v in per_seed) + ")"


def _keyed(by_seed: dict[int, list[dict[str, Any]]]) -> dict[tuple, QueryScore]:
    return {(seed, *key): s for seed, records in by_seed.items()
            for key, s in query_scores(records).items()}


def _task_tensors(records: list[dict[str, Any]]) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per task: ``(probs, targets, option_mask)`` padded to the most options."""
    tasks: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        tasks.setdefault(record["task"], []).append(record)
    out = {}
    for task, rows in tasks.items():
        width = max(len(r["probs"]) for r in rows)
        probs = torch.zeros(len(rows), width)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            probs[i, :len(r["probs"])] = torch.tensor(r["probs"])
            mask[i, :len(r["probs"])] = True
        out[task] = (probs, torch.tensor([int(r["label"]) for r in rows]), mask)
    return out


def _macro(metric: Any, records: list[dict[str, Any]]) -> float:
    values = [float(metric.compute(*t)) for t in _task_tensors(records).values()]
    defined = [v for v in values if math.isfinite(v)]
    return sum(defined) / len(defined) if defined else float("nan")


def _line(name: str, by_seed: dict[int, list[dict[str, Any]]], metrics: dict[str, Any],
          reference: dict) -> str:
    scores = _keyed(by_seed)
    means = {m: sum(s.get(m) for s in scores.values()) / len(scores)
             for m in ("accuracy", "nll", "brier")}
    macro = [sum(_macro(metric, r) for r in by_seed.values()) / len(by_seed)
             for metric in metrics.values()]
    diffs = ["", "", ""] if name == REFERENCE else [
        paired_cell(scores, reference, m) for m in ("accuracy", "nll", "brier")]
    return (f"| {name} | {len(by_seed)} | {len(scores)} | {100 * means['accuracy']:.1f}% | "
            f"{means['nll']:.4f} | {means['brier']:.4f} | "
            + " | ".join(f"{v:.3f}" for v in macro) + " | " + " | ".join(diffs) + " |")


def _ensemble_line(by_seed: dict[int, list[dict[str, Any]]], reference: dict) -> str:
    from metalora_plugins.ensemble import average_members

    averaged = query_scores(average_members({str(s): r for s, r in by_seed.items()}))
    seed_mean: dict[tuple, list[QueryScore]] = {}
    for (_, *key), s in reference.items():
        seed_mean.setdefault(tuple(key), []).append(s)
    ref = {k: QueryScore(*(sum(getattr(s, f) for s in v) / len(v)
                           for f in ("accuracy", "nll", "brier", "confidence")))
           for k, v in seed_mean.items()}
    means = {m: sum(s.get(m) for s in averaged.values()) / len(averaged)
             for m in ("accuracy", "nll", "brier")}
    diffs = [paired_cell(averaged, ref, m, strata=False) for m in ("accuracy", "nll", "brier")]
    return (f"| lora ensemble ({len(by_seed)} seeds) | - | {len(averaged)} | "
            f"{100 * means['accuracy']:.1f}% | {means['nll']:.4f} | {means['brier']:.4f} | "
            + " | " * len(METRICS) + " | ".join(diffs) + " |")


def _references(by_seed: dict[int, list[dict[str, Any]]]) -> list[str]:
    """Always-the-first-option and each task's majority answer, over the same queries as the
    accuracy column (every seed's)."""
    first = majority = total = 0
    for records in by_seed.values():
        for _, targets, _ in _task_tensors(records).values():
            first += int((targets == 0).sum())
            majority += int(torch.bincount(targets).max())
            total += targets.numel()
    if not total:
        return []
    return [f"References on the same queries: always the first option "
            f"{100 * first / total:.1f}%, always the task's majority answer among its queries "
            f"{100 * majority / total:.1f}% (an oracle: it reads the query labels)."]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_arguments(parser, REPO / "runs" / "benchmarks" / "uncertainty")
    parser.add_argument("--mechanism-dir", type=Path, default=None,
                        help="mechanism.py's output: its finished A and D runs become the abmll "
                             "arms' runs, taken as they are (nothing checks which code made them)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        default=[0, 1, 2])
    parser.add_argument("--arms", type=_arm_names, default=[arm.name for arm in ARMS],
                        help="the arms to run, comma-separated (default: all; the report "
                             "shows every finished one)")
    return parser.parse_args(argv)


def _arm_names(text: str) -> list[str]:
    names = [name for name in text.split(",") if name]
    known = [arm.name for arm in ARMS]
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown arm {','.join(unknown) or text!r}; valid "
                                         f"choices: {', '.join(known)}")
    return names


def main() -> None:
    args = parse_args()
    run_and_report(Comparison(args), args)


if __name__ == "__main__":
    main()
