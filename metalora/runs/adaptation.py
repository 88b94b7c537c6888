"""A trained run applied to your own few-shot task: ``metalora adapt`` and :func:`adapt_run`.

The tested adapters of one learner and seed of a finished run are adapted on
the support records exactly as the evaluation protocol adapts them on an
unseen task (the learner's own ``adapt``, with the run's ``adapt_steps`` and
``adapt_lr``, the support in file order in batches of ``batch_size``), and
then every query record is scored: the chosen option, every option's
probability, and, for a learner that averages weight samples (ABMLL with
``eval_samples`` > 1), the standard deviation of each option's probability
over the samples. Query records may leave out ``output``; over those that
have it, the run's metrics (accuracy, ECE, NLL, ...) are computed too.

Records are MetaICL lines ``{"task", "input", "output", "options"}`` (``task``
optional). The run directory is only read; the randomness of adaptation and
sampling is seeded by ``seed``, so the same call gives the same predictions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metalora.errors import MetaloraError
from metalora.evaluation import compute_metrics, preserved_rng
from metalora.files import atomic_write_bytes
from metalora.paired import chosen_option
from metalora.plugins import PluginManager, get_plugin_manager
from metalora.records import MAX_OPTIONS, TaskRecord, option_problem
from metalora.runs.evaluate_run import change_settings
from metalora.runs.setup import RunSetup, load_tested_learner, select_from_run

ADAPT_TASK = "adapt"
"""The task name records without one are given."""


@dataclass
class QueryRecord:
    """A query record; ``labelled`` is False when its file gave no ``output``."""

    record: TaskRecord
    labelled: bool


@dataclass
class Prediction:
    """What the adapted learner says about one query record."""

    index: int
    input: str
    options: list[str]
    probs: list[float]
    chosen: str
    label: str | None = None
    spread: list[float] | None = None
    """Per option, the standard deviation of its probability over weight samples."""
    demonstrations: int | None = None
    """Support examples shown in its prompt (``in_context``; ``None`` when none asked for)."""

    def to_dict(self) -> dict[str, Any]:
        """One JSON line of the output."""
        data: dict[str, Any] = {"index": self.index, "input": self.input,
                                "options": self.options, "probs": self.probs,
                                "chosen": self.chosen}
        if self.label is not None:
            data["label"] = self.label
            data["correct"] = self.chosen == self.label
        if self.spread is not None:
            data["spread"] = self.spread
        if self.demonstrations is not None:
            data["demonstrations"] = self.demonstrations
        return data


@dataclass
class Adaptation:
    """The result of :func:`adapt_run`."""

    learner: str
    seed: int
    support: int
    predictions: list[Prediction] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    """The run's metrics over the query records that have a label (empty when none has)."""
    labelled: int = 0
    """How many query records have a label."""
    samples: int = 1
    """Weight samples averaged per prediction (1: a single set of weights)."""
    adapted: bool = True
    """Whether adaptation changed the adapters (not for ``pretrained`` without
    ``pretrained_adapt``, or with ``adapt_steps`` 0)."""
    saved: list[str] = field(default_factory=list)
    """The files of the task-adapted adapter written (``save_adapter``), if any."""

    def write_jsonl(self, path: Path | str) -> None:
        """Every prediction as one JSON line (written atomically)."""
        lines = [json.dumps(p.to_dict()) for p in self.predictions]
        atomic_write_bytes(Path(path), "".join(line + "\n" for line in lines).encode())


def read_records(path: Path | str, *, labelled: bool = True) -> list[QueryRecord]:
    """The records of a jsonl file; with ``labelled`` every record must have an ``output``.
    A bad line is one error naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise MetaloraError(f"records file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise MetaloraError(f"cannot read records file {str(path)!r}: {exc}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(record_from_mapping(json.loads(line), labelled,
                                               source=f"{path}:{number}"))
        except (ValueError, MetaloraError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            raise MetaloraError(f"{path}, line {number}: {reason}") from None
    if not records:
        raise MetaloraError(f"records file {str(path)!r} has no records")
    return records


def record_from_mapping(data: Any, labelled: bool, source: str | None = None) -> QueryRecord:
    """A record from a MetaICL-style mapping ``{"input", "options", "output"}`` (``output``
    required when ``labelled``); ``ValueError`` saying what is wrong otherwise."""
    if not isinstance(data, Mapping):
        raise ValueError("expected a JSON object {\"input\", \"output\", \"options\"}")
    options = data.get("options")
    if not isinstance(options, list) or not options or not all(isinstance(o, str)
                                                               for o in options):
        raise ValueError("'options' must be a non-empty list of strings")
    if not isinstance(data.get("input"), str):
        raise ValueError("'input' must be a string")
    has_output = data.get("output") is not None
    if labelled and not has_output:
        raise ValueError("record has no 'output' (support records must be labelled)")
    if len(options) > MAX_OPTIONS:
        raise ValueError(f"record has {len(options)} options; at most {MAX_OPTIONS} are "
                         "supported")
    problem = option_problem(options)
    if problem is not None:
        raise ValueError(problem)
    output = str(data["output"]) if has_output else options[0]
    task = str(data.get("task") or ADAPT_TASK)
    return QueryRecord(TaskRecord(task=task, input=data["input"], output=output,
                                  options=tuple(options), source=source), labelled=has_output)


def adapt_run(run_dir: Path | str, support: Path | str | Sequence[QueryRecord],
              query: Path | str | Sequence[QueryRecord], *, learner: str | None = None,
              seed: int | None = None, settings: Mapping[str, Any] | None = None,
              device: str | None = None, save_adapter: Path | str | None = None,
              plugins: PluginManager | None = None) -> Adaptation:
    """Adapt a finished run's tested adapters on ``support`` and score ``query`` (see the
    module). ``learner`` and ``seed`` default to the run's only (else first trained) learner
    and its first seed; ``settings`` changes evaluation-time settings (``eval_samples``).
    ``save_adapter``: a directory (new or empty) the task-adapted adapter is written to in
    PEFT format (its mean; for ABMLL the variance pair beside it)."""
    plugins = plugins or get_plugin_manager()
    if save_adapter is not None:
        _empty_directory(Path(save_adapter))
    support_records = read_records(support) if isinstance(support, str | Path) else support
    query_records = (read_records(query, labelled=False) if isinstance(query, str | Path)
                     else query)
    setup = RunSetup.from_run_dir(run_dir, plugins)
    name = learner or _default_learner(list(setup.run.learner))
    chosen_seed = setup.run.seeds[0] if seed is None else seed
    select_from_run(setup, run_dir, {"learner": [name], "seeds": [chosen_seed],
                                     **({"device": device} if device else {})})
    change_settings(setup, settings or {})
    setup.load_model()
    fitted = load_tested_learner(setup, Path(run_dir), name, chosen_seed)
    try:
        return _adapt_and_predict(setup, fitted, name, chosen_seed, support_records,
                                  query_records, save_adapter=save_adapter,
                                  run_dir=Path(run_dir))
    finally:
        fitted.adapters.remove()


def _empty_directory(path: Path) -> None:
    """``path`` is a new or empty directory that can be written: else one error line."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise MetaloraError(f"--save-adapter {str(path)!r} exists and is not an empty "
                            "directory; give a new one")
    from metalora.files import require_writable_directory

    require_writable_directory(path, "--save-adapter directory")


def save_adapted(setup: RunSetup, learner: Any, name: str, seed: int, run_dir: Path,
                 out: Path, support: int) -> list[str]:
    """The learner's task-adapted adapter (after ``adapt``) as a PEFT adapter in ``out``."""
    from metalora.runs.export import write_peft_adapter

    pairs = learner.adapted_pairs or (learner.mean_pair,)
    tensors = learner.adapters.snapshot(pairs)
    return write_peft_adapter(
        out, tensors, pairs[0], list(pairs[1:]), rank=setup.run.rank, alpha=setup.run.alpha,
        target_modules=list(setup.run.target_modules), base_model=setup.run.model,
        info={"run_dir": str(run_dir.resolve()), "learner": name, "seed": seed,
              "adapted_on": f"{support} support records (metalora adapt)"})


def _default_learner(names: Sequence[str]) -> str:
    trained = [n for n in names if n != "pretrained"]
    return (trained or names or ["pretrained"])[0]


def _adapt_and_predict(setup: RunSetup, learner: Any, name: str, seed: int,
                       support: Sequence[QueryRecord], query: Sequence[QueryRecord],
                       save_adapter: Path | str | None = None,
                       run_dir: Path | None = None) -> Adaptation:
    episodes = setup.episodes
    size, eval_size = setup.run.batch_size, setup.run.eval_batch_size
    support_batches = [episodes.encode([r.record for r in support[i: i + size]])
                       for i in range(0, len(support), size)]
    result = Adaptation(learner=name, seed=seed, support=len(support))
    model = learner.context.model
    model.eval()
    all_probs, all_targets, all_masks = [], [], []
    with preserved_rng(learner.context.rng, learner.context.device):
        torch.manual_seed(seed)
        before = learner.adapters.snapshot()
        with setup.precision():
            learner.adapt(support_batches)
        after = learner.adapters.snapshot()
        result.adapted = any(not torch.equal(before[k], after[k]) for k in before)
        if save_adapter is not None and run_dir is not None:
            result.saved = save_adapted(setup, learner, name, seed, run_dir,
                                        Path(save_adapter), len(support))
        with torch.no_grad(), setup.precision():
            for start in range(0, len(query), eval_size):
                chunk = query[start: start + eval_size]
                ids, demos = episodes.query_ids([r.record for r in chunk],
                                                [r.record for r in support])
                batch = episodes.encode([r.record for r in chunk], ids)
                samples = learner.predict_samples(batch)
                probs = (samples.mean(0) if samples is not None
                         else learner.predict_proba(batch)).float().cpu()
                spread = samples.float().std(0).cpu() if samples is not None else None
                if samples is not None:
                    result.samples = int(samples.shape[0])
                for row, item in enumerate(chunk):
                    result.predictions.append(_prediction(
                        start + row, item, probs[row], None if spread is None else spread[row],
                        None if demos is None else demos[row]))
                all_probs.append(probs)
                all_targets.append(batch.targets.cpu())
                all_masks.append(batch.option_mask.cpu())
    labelled = torch.tensor([item.labelled for item in query])
    result.labelled = int(labelled.sum())
    if result.labelled:
        result.metrics = compute_metrics(setup.metrics(), torch.cat(all_probs)[labelled],
                                         torch.cat(all_targets)[labelled],
                                         torch.cat(all_masks)[labelled])
    return result


def _prediction(index: int, item: QueryRecord, probs: torch.Tensor,
                spread: torch.Tensor | None, demonstrations: int | None) -> Prediction:
    options = list(item.record.options)
    values = [round(float(p), 6) for p in probs[: len(options)]]
    best = chosen_option(values)
    return Prediction(
        index=index, input=item.record.input, options=options, probs=values,
        chosen=options[best], label=item.record.output if item.labelled else None,
        spread=None if spread is None else [round(float(s), 6) for s in
                                            spread[: len(options)]],
        demonstrations=demonstrations)


__all__ = ["Adaptation", "Prediction", "QueryRecord", "adapt_run", "read_records",
           "record_from_mapping"]

