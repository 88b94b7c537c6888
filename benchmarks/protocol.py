"""A cls-45 protocol at which the five learners can differ, on two CPU cores in 2 to 3 hours.

Usage::

    nohup python benchmarks/protocol.py > runs/benchmarks/protocol.log 2>&1 &
    python benchmarks/protocol.py --stages ablation     # then the beta ablation at this protocol
    python benchmarks/protocol.py --report-only         # the tables of the finished runs

Every run is one :func:`metalora.api.train` of the cls-45 suite (what ``metalora
run --tasks cls45`` does) into ``--output-dir`` (default
``runs/benchmarks/protocol``), in a process of its own (``api_job.py``); a
finished run is never run again and an interrupted one is resumed, so the
script can be stopped and started at will. ``--jobs`` runs go side by side, each on ``--threads``
threads (2 x 1 uses both cores better than 1 x 2 at batch 2).

The protocol, the same for every learner:

* training: the first ``--train-tasks`` (12) cls-45 training tasks,
  ``--epochs`` (3) epochs; per task and epoch every trained learner moves its
  adapters with 5 batches of 2 (lora: the same number of batches of the
  union of the tasks; structured-lora, reptile and abmll's inner loop: 5
  steps on the task; reptile and abmll add one meta-update per task);
* validation after every epoch on the 15 validation tasks (10 support and
  22 query examples each); the test at the best-validation epoch on the 15
  test tasks, 22 queries each; test-time adaptation of every learner but
  pretrained (zero-shot): 5 AdamW steps at ``--adapt-lr`` (2e-4: at the
  paper's 1e-5 adaptation changes no prediction of SmolLM2-135M);
* abmll runs under both readings of its outer step (``--meta-gradient
  literal``, its default, and ``first-order``), each a learner of its own
  here, with its own learning rate and seeds;
* learning rate: one rule for every trained learner. Each of its training
  learning rates (lora, structured-lora, reptile: ``lr``; abmll: ``inner_lr``
  and ``outer_lr``) is set to each value of ``--lr-grid`` (3e-4, 1e-3) for
  seed 0, and the value with the higher best-epoch *validation* accuracy is
  kept (an exact tie: the lower validation ECE). Test scores play no part;
* seeds: the kept value is run again with seeds 1 and 2 (seed 0 is the
  selection run); pretrained does not depend on the seed and runs once.

Stage ``ablation`` (the paper's Table 3 at this protocol, one seed as in the
paper): abmll at one learning rate, the one kept for its ``first-order``
reading (the reading the ablation was designed under; both readings' cells
run at it, so they differ in nothing else), for beta in {1, 1e-5, 1e-8, 1e-16}
under both readings of the outer step at c = -20; then c in {-12, -9} with
lambda = beta * e^-c held at the default's 4.85 (beta = 1e-8 * e^(20 + c):
2.98e-5 and 5.99e-4), first for the reading with the higher validation
accuracy at beta = 1e-8, then for the other (run before the other beta
cells, and evaluated with 8 samples first, since weight noise can only
matter at a larger variance). Holding lambda matters: under ``literal``
beta and c act on the means only through lambda (the strength of the pull
of phi towards theta, whose scale AdamW divides away), so a c cell at a
fixed beta would change that pull by e^8 or e^11 together with the noise.
Stage
``samples``: every finished ablation run evaluated again on the validation
tasks with 8 weight samples (``metalora eval RUN --split validation --set
eval_samples=8``: Bayesian model averaging, no retraining); with 1 sample that
evaluation equals the run's own validation at its tested epoch.

The report prints, per learner, validation and test accuracy, ECE and NLL
(test: also Brier) as mean +- standard error over seeds, and each learner's
paired difference to abmll at its default reading over the (seed, task)
cells, beside the always-first-option and majority-answer references on the
same queries; it is also written to ``OUTPUT_DIR/report.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from metalora.stats import improves, mean_se

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jobqueue import run_queue  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO.parent / "shared" / "data" / "crossfit"
METRICS = ("accuracy", "ece", "nll", "brier")
BETAS = ("1", "1e-5", "1e-8", "1e-16")
READINGS = ("literal", "first-order")
"""The two readings of abmll's outer step; the first is the learner's default."""
DEFAULT_BETA = "1e-8"
ABLATION_LR_READING = "first-order"
"""The reading whose kept learning rate every ablation cell runs at (see ablation_lr)."""
SAMPLES = 8
"""Weight samples of the Bayesian-model-averaging evaluation (stage ``samples``)."""
C_CELLS = ("-12", "-9")
"""The larger initial log-variances of the ablation, each with lambda held."""


def lambda_held_beta(c: str) -> str:
    """The beta that keeps lambda = beta * e^-c at the default's 1e-8 * e^20 for ``c``."""
    return f"{float(DEFAULT_BETA) * math.exp(20 + float(c)):.3g}"


@dataclass(frozen=True)
class Job:
    """One run of one learner and seed (through :mod:`metalora.api`)."""

    name: str
    learner: str
    seed: int
    options: tuple[tuple[str, str], ...] = field(default=())
    """Settings by name, beyond the protocol's: ``(("lr", "3e-4"), ...)``."""
    kind: str = "run"
    """``run`` (train and test) or ``samples`` (evaluate run ``name`` with 8 samples)."""

    @property
    def key(self) -> str:
        return self.name if self.kind == "run" else f"{self.name}:samples"


@dataclass(frozen=True)
class Variant:
    """One row of the protocol: a learner, and for abmll the reading of its outer step
    (abmll runs under both, each with its own learning-rate selection and seeds)."""

    learner: str
    reading: str | None = None

    @property
    def label(self) -> str:
        return self.learner if self.reading is None else f"{self.learner} ({self.reading})"

    def options(self, lr: str) -> tuple[tuple[str, str], ...]:
        """The settings that set this variant's training learning rates."""
        if self.reading is None:
            return (("lr", lr),)
        return (("inner_lr", lr), ("outer_lr", lr), ("meta_gradient", self.reading))

    def run_name(self, lr: str, seed: int) -> str:
        reading = "" if self.reading is None else f"-{self.reading}"
        return f"{self.learner}-lr{lr}{reading}-seed{seed}"


PRETRAINED = Variant("pretrained")
ABMLL = Variant("abmll", READINGS[0])
"""abmll at its default reading: the reference of the paired differences."""
TRAINED = (Variant("lora"), Variant("structured-lora"), Variant("reptile"),
           *(Variant("abmll", r) for r in READINGS))
VARIANTS = (PRETRAINED, *TRAINED)


class Protocol:
    """The runs of the protocol, their state on disk and the choices made from them."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out: Path = args.output_dir
        self.grid: list[str] = args.lr_grid.split(",")

    # -- state on disk -------------------------------------------------------
    def finished(self, name: str) -> bool:
        state = self.out / name / "state.json"
        return state.exists() and json.loads(state.read_text()).get("status") == "finished"

    def sampled(self, name: str) -> dict | None:
        """The abmll seed record of run ``name`` evaluated on the validation tasks with
        ``SAMPLES`` weight samples (``metalora eval --set eval_samples=8``), if done."""
        for metrics in sorted((self.out / name / "eval").glob("*-validation/metrics.json")):
            data = json.loads(metrics.read_text())
            changed = data.get("protocol", {}).get("changed_settings", {})
            if changed.get("eval_samples") == SAMPLES:
                return next(iter(data["learners"]["abmll"]["seeds"].values()))
        return None

    def done(self, job: Job) -> bool:
        return self.finished(job.name) if job.kind == "run" else self.sampled(job.name) is not None

    def seed_record(self, name: str, learner: str) -> dict:
        metrics = json.loads((self.out / name / "metrics.json").read_text())
        return next(iter(metrics["learners"][learner]["seeds"].values()))

    def best_validation(self, name: str, learner: str) -> dict:
        history = self.seed_record(name, learner)["validation"]
        return history[chosen(history)]

    # -- the jobs ------------------------------------------------------------
    def selection_jobs(self) -> list[Job]:
        jobs = [Job("pretrained-seed0", "pretrained", 0)]
        for variant in TRAINED:
            jobs += [Job(variant.run_name(lr, 0), variant.learner, 0, variant.options(lr))
                     for lr in self.grid]
        return jobs

    def chosen_lr(self, variant: Variant) -> str | None:
        """The grid value kept for ``variant``, or None while a selection run is unfinished."""
        names = [variant.run_name(lr, 0) for lr in self.grid]
        if not all(self.finished(n) for n in names):
            return None
        scores = [self.best_validation(n, variant.learner) for n in names]
        return self.grid[chosen(scores)]

    def seed_jobs(self) -> list[Job]:
        jobs = []
        for variant in TRAINED:
            lr = self.chosen_lr(variant)
            if lr is not None:
                jobs += [Job(variant.run_name(lr, s), variant.learner, s, variant.options(lr))
                         for s in self.args.more_seeds]
        return jobs

    def ablation_lr(self) -> str | None:
        """The one learning rate of every ablation cell: the value kept for abmll under
        ABLATION_LR_READING (both readings' cells run at it, so they differ in nothing
        else)."""
        return self.chosen_lr(Variant("abmll", ABLATION_LR_READING))

    def ablation_name(self, reading: str, beta: str, c: str = "-20") -> str:
        lr = self.ablation_lr()
        if beta == DEFAULT_BETA and c == "-20":
            return Variant("abmll", reading).run_name(lr, 0)  # that reading's selection run
        suffix = "" if c == "-20" else f"-c{c}-lambda-held"
        return f"abmll-lr{lr}-{reading}-beta{beta}{suffix}-seed0"

    def better_reading(self) -> str | None:
        names = [self.ablation_name(r, DEFAULT_BETA) for r in READINGS]
        if not all(self.finished(n) for n in names):
            return None
        scores = [self.best_validation(n, "abmll") for n in names]
        return READINGS[chosen(scores)]

    def ablation_jobs(self) -> list[Job]:
        lr = self.ablation_lr()
        if lr is None:
            return []
        jobs = []
        for beta in (DEFAULT_BETA, *[b for b in BETAS if b != DEFAULT_BETA]):
            for reading in READINGS:
                options = (*Variant("abmll", reading).options(lr), ("beta", beta))
                jobs.append(Job(self.ablation_name(reading, beta), "abmll", 0, options))
        if self.better_reading() is not None:
            for reading in READINGS:
                for c in C_CELLS:
                    beta = lambda_held_beta(c)
                    options = (*Variant("abmll", reading).options(lr), ("beta", beta),
                               ("log_var_init", c))
                    jobs.append(Job(self.ablation_name(reading, beta, c), "abmll", 0,
                                    options))
        return jobs

    def samples_jobs(self) -> list[Job]:
        """Every finished ablation cell, evaluated again on validation with 8 samples."""
        return [Job(j.name, "abmll", 0, kind="samples") for j in self.ablation_jobs()
                if self.finished(j.name)]

    def jobs(self) -> list[Job]:
        """Every job of the selected stages, in the order they are started (see priority)."""
        jobs = []
        if "protocol" in self.args.stages:
            jobs += self.selection_jobs() + self.seed_jobs()
        if "ablation" in self.args.stages:
            jobs += self.ablation_jobs()
        if "samples" in self.args.stages:
            jobs += self.samples_jobs()
        unique = {job.key: job for job in jobs}
        return sorted(unique.values(), key=self.priority)

    def priority(self, job: Job) -> int:
        """Start order: the protocol; the two beta = 1e-8 cells (they choose the reading);
        the larger-variance cells and their 8-sample evaluations (where weight noise can
        matter); the other beta cells; the remaining 8-sample evaluations."""
        if not job.name.startswith("abmll") or job in self.selection_jobs() + self.seed_jobs():
            return 0 if job.kind == "run" else 5
        larger_variance = "-c-" in job.name
        if job.kind == "samples":
            return 3 if larger_variance else 5
        if larger_variance:
            return 2
        return 1 if f"beta{DEFAULT_BETA}" in job.name else 4

    # -- running -------------------------------------------------------------
    def command(self, job: Job) -> dict:
        """The job for ``api_job.py``: evaluate, resume or train through the Python API."""
        if job.kind == "samples":
            return {"kind": "evaluate", "run_dir": str(self.out / job.name), "options": {
                "split": "validation", "settings": {"eval_samples": SAMPLES}}}
        if (self.out / job.name).exists():
            return {"kind": "resume", "run_dir": str(self.out / job.name)}
        a = self.args
        return {"kind": "train", "settings": {
            "learner": job.learner, "tasks": "cls45", "data_dir": str(a.data_dir),
            "max_train_tasks": a.train_tasks, "epochs": a.epochs, "eval_every": 1,
            "query_cap": a.query_cap, "adapt_lr": a.adapt_lr, "dtype": "float32",
            "seeds": [job.seed], "plots": False, "output_dir": str(self.out),
            "run_name": job.name, **dict(job.options)}}

    def run(self) -> None:
        """Start every ready job, ``--jobs`` at a time, until none is left."""
        run_queue(lambda: [(j.key, self.command(j)) for j in self.jobs() if not self.done(j)],
                  self.out, self.args.jobs, self.args.threads)

    # -- the report ----------------------------------------------------------
    def test_runs(self, variant: Variant) -> list[str]:
        """The finished runs, one per seed, of ``variant`` at its kept learning rate."""
        if variant == PRETRAINED:
            return ["pretrained-seed0"] if self.finished("pretrained-seed0") else []
        lr = self.chosen_lr(variant)
        if lr is None:
            return []
        names = [variant.run_name(lr, s) for s in (0, *self.args.more_seeds)]
        return [n for n in names if self.finished(n)]

    def report(self) -> str:
        lines = ["## Learning-rate selection (seed 0, validation)", "",
                 "| learner | lr | best val acc | val ECE | epoch | kept |",
                 "| --- | --- | --- | --- | --- | --- |"]
        for variant in TRAINED:
            kept = self.chosen_lr(variant)
            for lr in self.grid:
                name = variant.run_name(lr, 0)
                if not self.finished(name):
                    lines.append(f"| {variant.label} | {lr} | (not finished) | | | |")
                    continue
                best = self.best_validation(name, variant.learner)
                lines.append(f"| {variant.label} | {lr} | {pct(best['accuracy'])} | "
                             f"{best['ece']:.3f} | {best['epoch']} | "
                             f"{'yes' if lr == kept else ''} |")
        lines += ["", "## Validation at the kept learning rates (best epoch, mean +- SE over "
                  "seeds)", "", "| learner | lr | seeds | val acc | val ECE | val NLL |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for variant in VARIANTS:
            runs = self.test_runs(variant)
            if runs:
                best = [self.best_validation(n, variant.learner) for n in runs]
                acc, ece, nll = (mean_se([b[k] for b in best]) for k in ("accuracy", "ece", "nll"))
                lr = "" if variant == PRETRAINED else self.chosen_lr(variant)
                lines.append(f"| {variant.label} | {lr} | {len(runs)} | {pct(acc[0])} +- "
                             f"{pct(acc[1])} | {ece[0]:.3f} +- {ece[1]:.3f} | "
                             f"{nll[0]:.3f} +- {nll[1]:.3f} |")
        lines += ["", "## Test (mean +- SE over seeds; paired difference to "
                  f"{ABMLL.label}, the default, over (seed, task))", "",
                  "| learner | lr | seeds | Acc | ECE | NLL | Brier | Acc - abmll | "
                  "ECE - abmll |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        cells = {variant: self.task_cells(variant) for variant in VARIANTS}
        for variant in VARIANTS:
            runs = self.test_runs(variant)
            if not runs:
                lines.append(f"| {variant.label} | | 0 | | | | | | |")
                continue
            macros = [self.seed_record(n, variant.learner)["macro"] for n in runs]
            row = [mean_se([m[k] for m in macros]) for k in METRICS]
            text = [f"{pct(m)} +- {pct(s)}" if k == "accuracy" else f"{m:.3f} +- {s:.3f}"
                    for k, (m, s) in zip(METRICS, row, strict=True)]
            diffs = [paired(cells[variant], cells[ABMLL], k) for k in ("accuracy", "ece")]
            diff_text = ["" if d is None else
                         (f"{100 * d[0]:+.1f} +- {100 * d[1]:.1f} (n={d[2]})" if k == "accuracy"
                          else f"{d[0]:+.3f} +- {d[1]:.3f}")
                         for k, d in zip(("accuracy", "ece"), diffs, strict=True)]
            lr = "" if variant == PRETRAINED else self.chosen_lr(variant)
            lines.append(f"| {variant.label} | {lr} | {len(runs)} | " + " | ".join(text + diff_text)
                         + " |")
        if self.args.references:
            refs = references(self.args.data_dir, self.args.query_cap)
            lines += ["", f"References on the same queries: always the first option: "
                      f"validation {pct(refs['validation'][0])}, test {pct(refs['test'][0])}; "
                      f"always the query set's majority answer: validation "
                      f"{pct(refs['validation'][1])}, test {pct(refs['test'][1])}."]
        lines += ["", *self.ablation_report()]
        return "\n".join(lines) + "\n"

    def task_cells(self, variant: Variant) -> dict[tuple[int, str], dict]:
        """Per (seed, task) test metrics; pretrained's one run stands for every seed."""
        out = {}
        for name in self.test_runs(variant):
            record = self.seed_record(name, variant.learner)
            seeds = (0, *self.args.more_seeds) if variant == PRETRAINED else (
                int(name.rsplit("seed", 1)[1]),)
            for seed in seeds:
                for task, metrics in record["tasks"].items():
                    out[(seed, task)] = metrics
        return out

    def ablation_report(self) -> list[str]:
        if self.ablation_lr() is None:
            return []
        lines = ["## Beta ablation at this protocol (abmll, seed 0, validation at the best "
                 f"epoch with 1 and {SAMPLES} weight samples; test for reference)", "",
                 "| reading | beta | c | val acc | val ECE | val NLL | epoch | "
                 f"val acc, {SAMPLES} samples | val ECE, {SAMPLES} | val NLL, {SAMPLES} | "
                 "test acc | test ECE | max sigma_theta |",
                 "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        cells = [(r, b, "-20") for b in BETAS for r in READINGS]
        cells += [(r, lambda_held_beta(c), c) for r in READINGS for c in C_CELLS]
        for reading, beta, c in cells:
            name = self.ablation_name(reading, beta, c)
            if not self.finished(name):
                lines.append(f"| {reading} | {beta} | {c} | (not finished) |" + " |" * 8)
                continue
            best = self.best_validation(name, "abmll")
            macro = self.seed_record(name, "abmll")["macro"]
            sampled = self.sampled(name)
            many = ("| | | " if sampled is None else
                    f"| {pct(sampled['macro']['accuracy'])} | {sampled['macro']['ece']:.3f} | "
                    f"{sampled['macro']['nll']:.3f} ")
            lines.append(f"| {reading} | {beta} | {c} | {pct(best['accuracy'])} | "
                         f"{best['ece']:.3f} | {best['nll']:.3f} | {best['epoch']} {many}| "
                         f"{pct(macro['accuracy'])} | {macro['ece']:.3f} | "
                         f"{largest_sigma(self.out / name):.1e} |")
        lines += ["", "max sigma_theta: the largest standard deviation sqrt(exp(logv_theta)) "
                  "of any adapted weight in the tested global pairs (the weights' own rms is "
                  "about 0.19)."]
        return lines


def best_index(values: Sequence[float], tie_break: Sequence[float] | None = None) -> int:
    """The index of the highest value. Values that tie by the engine's rule
    (:func:`metalora.stats.improves`: equal counts of correct answers, macro-averaged in float32,
    differ in the 9th digit, e.g. 0.5636363685 and 0.5636363626 for 186 of 330) go to the lower
    ``tie_break`` value, and then to the first."""
    best = 0
    for i, value in enumerate(values):
        if improves(value, values[best], higher_is_better=True) or (
                tie_break is not None and tie_break[i] < tie_break[best]
                and not improves(values[best], value, higher_is_better=True)):
            best = i
    return best


def chosen(records: Sequence[dict]) -> int:
    """The validation record every choice here keeps: the highest accuracy, a tie going to
    the lower ECE (see best_index)."""
    return best_index([r["accuracy"] for r in records], [r["ece"] for r in records])


def largest_sigma(run_dir: Path) -> float:
    """The largest sigma_theta = exp(logv_theta / 2) over every adapted weight of the run's
    tested abmll adapters, logv_theta = s B_v A_v + c clamped as the learner clamps it."""
    import torch
    from safetensors.torch import load_file

    config = json.loads((run_dir / "config.json").read_text())
    settings = config["learner_settings"]["abmll"]
    scale = config["alpha"] / config["rank"]
    tensors = load_file(str(run_dir / "abmll" / "seed-0" / "adapters.safetensors"))
    largest = -math.inf
    for key in tensors:
        if key.endswith("logv_theta.A"):
            stem = key[:-1]
            logv = scale * tensors[stem + "B"].double() @ tensors[stem + "A"].double()
            logv = (logv + settings["log_var_init"]).clamp(settings["log_var_min"],
                                                           settings["log_var_max"])
            largest = max(largest, float(logv.max()))
    return float(torch.tensor(largest / 2).exp())


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def paired(a: dict, b: dict, metric: str) -> tuple[float, float, int] | None:
    """Mean and SE of ``a - b`` over the (seed, task) cells both have."""
    keys = sorted(set(a) & set(b))
    if not keys or a is b:
        return None
    mean, se = mean_se([a[k][metric] - b[k][metric] for k in keys])
    return mean, se, len(keys)


def references(data_dir: Path, query_cap: int) -> dict[str, tuple[float, float]]:
    """Macro accuracy of always answering the first option, and of always the query set's
    majority answer, on the validation and the test queries of this protocol."""
    import torch
    from transformers import AutoTokenizer

    from metalora.episodes import EpisodeSampler
    from metalora.interfaces import DataOptions
    from metalora.models.smollm2 import cached_checkpoint
    from metalora.plugins import get_plugin_manager
    from metalora.prompts import PromptEncoder

    suite = get_plugin_manager().registry("suite").get("cls45").load(
        DataOptions(data_dir=data_dir, seed=0))
    encoder = PromptEncoder(AutoTokenizer.from_pretrained(cached_checkpoint()))
    sampler = EpisodeSampler(encoder, query_cap=query_cap)
    out = {}
    for role, tasks in (("validation", suite.validation), ("test", suite.test)):
        first, majority = [], []
        for task in tasks:
            targets = torch.cat([b.targets for b in sampler.episode(task).query])
            first.append(float((targets == 0).float().mean()))
            majority.append(int(torch.bincount(targets).max()) / targets.numel())
        out[role] = (sum(first) / len(first), sum(majority) / len(majority))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The protocol's settings from ``argv`` (the command line when None)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--output-dir", type=Path,
                        default=REPO / "runs" / "benchmarks" / "protocol")
    parser.add_argument("--stages", default="protocol",
                        help="comma-separated: protocol, ablation, samples (default: protocol)")
    parser.add_argument("--lr-grid", default="3e-4,1e-3")
    parser.add_argument("--adapt-lr", default="2e-4")
    parser.add_argument("--train-tasks", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--query-cap", type=int, default=22)
    parser.add_argument("--more-seeds", type=lambda s: tuple(int(x) for x in s.split(",") if x),
                        default=(1, 2), help="seeds run after the selection's seed 0")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--no-references", dest="references", action="store_false")
    args = parser.parse_args(argv)
    args.stages = set(args.stages.split(","))
    return args


def main() -> None:
    args = parse_args()
    protocol = Protocol(args)
    if not args.report_only:
        protocol.run()
    text = protocol.report()
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
