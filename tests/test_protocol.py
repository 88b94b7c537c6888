"""The run protocol: validation schedule, best-validation test epoch, mean ± SE over
seeds, Table-1 results (CSV/JSON), plots and logging sinks.

A stub learner registered through a test plugin controls its validation
accuracy exactly: its "training" writes the epoch number into one adapter
tensor, and its predictions are correct for a fraction of each batch that a
schedule assigns to that epoch (minus 1/8 per seed index). Because the
epoch lives in the adapters, the tested adapters being the best epoch's
checkpoint shows in the test accuracy.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from torch import Tensor
from typer.testing import CliRunner

import metalora.runs.plots as plots
import metalora_plugins.loggers.tensorboard as tensorboard_logger
from metalora import hookimpl
from metalora.adapters import AdapterHandle, attach_adapters
from metalora.cli import build_app
from metalora.config import all_setting_infos, resolve_config
from metalora.interfaces import DataOptions, Learner, LearnerContext, StepLog
from metalora.plugins import PluginManager
from metalora.prompts import Batch
from metalora.records import Suite, Task
from metalora.runs.engine import Engine
from metalora.runs.results import RunSummary, SeedResult
from metalora.runs.rundir import load_adapters, seed_dir
from metalora.runs.setup import RunSetup
from metalora.stats import improves, mean_se
from metalora_plugins.demo import DemoSuite

SCHEDULE: dict[int, float] = {1: 0.25, 2: 0.5, 3: 0.875, 4: 0.625, 5: 0.75}
"""Validation/test accuracy of the stub after each epoch (seed 0); multiples of 1/8."""
CONFIDENCE = 0.9


class StubLearner(Learner):
    """Accuracy = SCHEDULE[epochs trained] - seed_index / 8, decided by the adapters."""

    name = "stub"
    description = "Test stub with scheduled accuracy."

    def __init__(self, context: LearnerContext) -> None:
        super().__init__(context)
        self._adapters = attach_adapters(context.model, context.adapter, ["default"])
        self.seed_index = context.seed
        self.marker = next(iter(self._adapters.layers.values())).pairs["default"].B

    @property
    def adapters(self) -> AdapterHandle:
        return self._adapters

    def steps_per_epoch(self, tasks: Sequence[Task]) -> int:
        return 1

    def train_epoch(self, tasks: Sequence[Task], epoch: int) -> Iterator[StepLog]:
        with torch.no_grad():
            self.marker[0, 0] = epoch + 1
        yield StepLog(epoch=epoch, task=None, step=0, loss=1.0 / (epoch + 1),
                      components={"nll": 1.0 / (epoch + 1), "kl": 0.5})

    def adapt(self, support: Sequence[Batch]) -> None:
        with torch.no_grad():  # test-time adaptation changes adapters; the protocol restores them
            self.marker[0, 1] += 1

    def predict_proba(self, batch: Batch) -> Tensor:
        epoch = int(self.marker[0, 0])
        quality = SCHEDULE.get(epoch, 0.0) - self.seed_index / 8
        n, width = batch.option_mask.shape
        probs = torch.zeros(n, width)
        for i in range(n):
            target, options = int(batch.targets[i]), int(batch.option_mask[i].sum())
            wrong = (target + 1) % options
            pick, other = (target, wrong) if i < round(quality * n) else (wrong, target)
            probs[i, pick] = CONFIDENCE
            probs[i, other] = 1 - CONFIDENCE
        return probs


class NoValidationDemo(DemoSuite):
    """The demo suite without validation tasks."""

    name = "demo-noval"

    def load(self, options: DataOptions) -> Suite:
        suite = super().load(options)
        suite.validation = []
        return suite


class StubPlugin:
    @hookimpl
    def register_learners(self, register):
        register(StubLearner)

    @hookimpl
    def register_task_samplers(self, register):
        register(NoValidationDemo())


@pytest.fixture(scope="module")
def plugins() -> PluginManager:
    pm = PluginManager(load_entry_points=True)
    pm.register(StubPlugin(), name="protocol-stub")
    return pm


def small(**values: Any) -> dict[str, Any]:
    """A fast run: tiny model, 1 validation and 1 test task of 8 query examples."""
    base = {"tasks": "demo", "model": "tiny", "max_train_tasks": 2, "max_eval_tasks": 1,
            "query_cap": 8, "support_batches": 1, "adapt_steps": 1, "eval_batch_size": 8,
            "tensorboard": False, "plots": False, "run_name": "run"}
    return {**base, **values}


def run(plugins: PluginManager, tmp_path: Path, console: Console | None = None,
        **values: Any) -> RunSummary:
    config = resolve_config(all_setting_infos(plugins), {},
                            {"output_dir": str(tmp_path), **small(**values)})
    engine = Engine(config, plugins, console=console or Console(file=io.StringIO()))
    return engine.execute()


def accuracies(history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(r["epoch"], r["accuracy"]) for r in history]


# -- best-validation epoch -------------------------------------------------------------
def test_test_metrics_come_from_the_best_validation_epoch(plugins, tmp_path) -> None:
    summary = run(plugins, tmp_path, learner="stub", epochs=5, seeds="0")
    (result,) = summary.results["stub"]
    assert accuracies(result.history) == [(e, SCHEDULE[e]) for e in range(1, 6)]
    assert result.tested_epoch == 3 and result.selection == "best-validation"
    assert result.test.macro["accuracy"] == SCHEDULE[3]
    assert math.isclose(result.test.macro["ece"], abs(CONFIDENCE - SCHEDULE[3]), abs_tol=1e-6)
    tested = load_adapters(seed_dir(summary.run_dir, "stub", 0) / "adapters.safetensors")
    marker = tested["model.layers.0.self_attn.q_proj.pairs.default.B"]
    assert marker[0, 0] == 3 and marker[0, 1] == 0, "tested adapters: epoch 3, unadapted"
    index = json.loads((seed_dir(summary.run_dir, "stub", 0) / "checkpoints"
                        / "checkpoints.json").read_text())
    assert (index["best"]["epoch"], index["latest"]["epoch"]) == (3, 5)
    lines = [json.loads(x) for x in (summary.run_dir / "log.jsonl").read_text().splitlines()]
    validations = [x for x in lines if x["kind"] == "validation"]
    assert [(x["epoch"], x["best"]) for x in validations] == [
        (1, True), (2, True), (3, True), (4, False), (5, False)]
    steps = [x for x in lines if x["kind"] == "step"]
    assert [x["kl"] for x in steps] == [0.5] * 5 and all(x["learner"] == "stub" for x in steps)


def test_ties_keep_the_earlier_epoch(plugins, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(SCHEDULE, 4, SCHEDULE[3])
    summary = run(plugins, tmp_path, learner="stub", epochs=4, seeds="0")
    assert summary.results["stub"][0].tested_epoch == 3


def test_equal_counts_averaged_in_another_order_tie() -> None:
    # 183 of 330 correct in two epochs of a real run, macro-averaged over 15 tasks in float32
    once, again = 0.5545454541842143, 0.5545454581578573
    assert not improves(again, once, higher_is_better=True)
    assert not improves(once, again, higher_is_better=False)
    one_more = once + 1 / 330
    assert improves(one_more, once, higher_is_better=True)
    assert not improves(one_more, once, higher_is_better=False)
    assert improves(0.81, 0.8101, higher_is_better=False)  # an NLL 1e-4 lower is better
    assert not improves(1000.0005, 1000.0, higher_is_better=True)  # relative above 1


@pytest.mark.parametrize(("epochs", "eval_every", "validated", "tested", "selection"), [
    (5, 2, [2, 4], 4, "best-validation"),
    (5, 0, [], 5, "last-epoch"),
    (3, 4, [], 3, "last-epoch"),
])
def test_eval_every_is_respected(plugins, tmp_path, epochs, eval_every, validated, tested,
                                 selection) -> None:
    summary = run(plugins, tmp_path, learner="stub", epochs=epochs, eval_every=eval_every,
                  seeds="0")
    (result,) = summary.results["stub"]
    assert [r["epoch"] for r in result.history] == validated
    assert (result.tested_epoch, result.selection) == (tested, selection)
    assert result.test.macro["accuracy"] == SCHEDULE[tested]
    expected = "best-validation" if validated else "last-epoch"
    assert summary.protocol["test_at"] == expected


def test_a_suite_without_validation_tasks_tests_the_last_epoch(plugins, tmp_path) -> None:
    out = io.StringIO()
    summary = run(plugins, tmp_path, console=Console(file=out, width=200), learner="stub",
                  tasks="demo-noval", epochs=4, seeds="0")
    (result,) = summary.results["stub"]
    assert result.history == [] and result.tested_epoch == 4
    assert result.test.macro["accuracy"] == SCHEDULE[4]
    assert "has no validation tasks" in out.getvalue()


def test_a_learner_that_does_not_train_is_validated_once(plugins, tmp_path) -> None:
    summary = run(plugins, tmp_path, learner="pretrained", epochs=3, seeds="0")
    (result,) = summary.results["pretrained"]
    assert [r["epoch"] for r in result.history] == [0]
    assert result.tested_epoch == 0


def test_validation_does_not_change_training(plugins, tmp_path) -> None:
    finals = []
    for every in (1, 0):
        summary = run(plugins, tmp_path / str(every), learner="lora", epochs=2, seeds="0",
                      eval_every=every, lr=1e-2, steps_per_task=2)
        checkpoints = seed_dir(summary.run_dir, "lora", 0) / "checkpoints"
        finals.append(load_adapters(checkpoints / "epoch-0002.safetensors"))
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][k], finals[1][k]) for k in finals[0])


# -- mean ± SE over seeds and the Table-1 files ---------------------------------------------
def test_mean_and_standard_error_over_seeds_in_csv_and_json(plugins, tmp_path) -> None:
    summary = run(plugins, tmp_path, learner="stub,pretrained", epochs=3, seeds="0,1,2")
    per_seed = [r.test.macro["accuracy"] for r in summary.results["stub"]]
    assert per_seed == [SCHEDULE[3] - i / 8 for i in range(3)]
    mean, se = mean_se(per_seed)
    assert math.isclose(se, 0.125 / math.sqrt(3))
    assert summary.summary()["stub"]["accuracy"] == (mean, se)

    rows = list(csv.DictReader((summary.run_dir / "results.csv").open(encoding="utf-8")))
    header = next(csv.reader((summary.run_dir / "results.csv").open(encoding="utf-8")))
    assert header[:3] == ["method", "Acc", "ECE"]
    assert header[3:7] == ["accuracy_mean", "accuracy_se", "ece_mean", "ece_se"]
    assert [r["method"] for r in rows] == ["stub", "pretrained"]
    assert rows[0]["Acc"] == f"{100 * mean:.1f}% ± {100 * se:.1f}%" == "75.0% ± 7.2%"
    assert math.isclose(float(rows[0]["accuracy_mean"]), mean, rel_tol=1e-5)
    assert math.isclose(float(rows[0]["accuracy_se"]), se, rel_tol=1e-5)
    assert re_fraction(rows[0]["ECE"]) and rows[0]["n_seeds"] == "3"
    assert rows[0]["tested_epochs"] == "3;3;3" and rows[1]["tested_epochs"] == "0;0;0"

    data = json.loads((summary.run_dir / "results.json").read_text())
    assert data["columns"] == ["Acc", "ECE"] and data["suite"] == "demo"
    assert data["protocol"]["test_at"] == "best-validation"
    stub = data["rows"][0]
    assert stub["method"] == "stub" and stub["Acc"] == rows[0]["Acc"]
    assert math.isclose(stub["metrics"]["accuracy"]["se"], se)
    assert set(data["per_task"]["stub"]) == {t.task for t in summary.results["stub"][0].test.tasks}
    metrics = json.loads((summary.run_dir / "metrics.json").read_text())
    assert metrics["learners"]["stub"]["seeds"]["2"]["tested_epoch"] == 3


def re_fraction(text: str) -> bool:
    """``0.xyz ± 0.xyz``."""
    import re

    return re.fullmatch(r"\d\.\d{3} ± \d\.\d{3}", text) is not None


def test_cli_prints_the_table_1_layout(plugins, tmp_path) -> None:
    args = ["run", "--learner", "stub", "--seeds", "0,1", "--epochs", "3",
            "--output-dir", str(tmp_path)]
    for key, value in small().items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            args += [f"--{flag}", str(value)]
    result = CliRunner().invoke(build_app(plugins), args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Acc ↑" in result.output and "ECE ↓" in result.output
    assert "81.2% ± 6.2%" in result.output  # mean of 0.875 and 0.75
    assert "best-validation epoch" in result.output
    assert "Per-task" in result.output  # printed by default
    quiet = CliRunner().invoke(build_app(plugins), [*args, "--no-per-task", "--run-name", "q"],
                               env={"COLUMNS": "200"})
    assert quiet.exit_code == 0, quiet.output
    assert "Per-task" not in quiet.output and "81.2% ± 6.2%" in quiet.output


# -- plots ---------------------------------------------------------------------------------
def test_plots_are_written_when_matplotlib_is_present(plugins, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    summary = run(plugins, tmp_path, learner="stub,pretrained", epochs=4, seeds="0,1",
                  plots=True)
    figures = sorted(p.name for p in (summary.run_dir / "plots").iterdir())
    stems = ["reliability", "reliability-pretrained", "reliability-stub", "training",
             "validation"]
    assert figures == sorted(f"{stem}.{kind}" for stem in stems for kind in ("pdf", "png"))
    for stem in stems:
        png = (summary.run_dir / "plots" / f"{stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width = int.from_bytes(png[16:20], "big")  # the IHDR chunk: at least 200 dpi
        assert width >= 4 * 200, f"{stem}.png is {width} px wide"
        assert (summary.run_dir / "plots" / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"


def test_plots_are_skipped_with_a_note_without_matplotlib(plugins, tmp_path,
                                                          monkeypatch) -> None:
    monkeypatch.setattr(plots, "matplotlib_available", lambda: False)
    out = io.StringIO()
    summary = run(plugins, tmp_path, console=Console(file=out, width=200), learner="stub",
                  epochs=1, seeds="0", plots=True)
    assert not (summary.run_dir / "plots").exists()
    notes = [line for line in out.getvalue().splitlines() if "matplotlib" in line]
    assert notes == ["matplotlib is not installed: plots skipped (pip install "
                     "'metalora[plots]')"]


def test_moving_average_and_validation_curve() -> None:
    assert plots.moving_average([1, 2, 3, 4, 5]) == [1, 1.5, 2, 3, 4]
    histories = [[{"epoch": e, "accuracy": a} for e, a in zip([1, 2, 3], values, strict=True)]
                 for values in ([0.0, 0.3, 0.6], [0.3, 0.3, 0.3])]
    epochs, curve = plots.validation_curve(histories, "accuracy")
    assert epochs == [1, 2, 3]
    assert [round(v, 6) for v in curve] == [0.15, 0.225, 0.3]


def test_bands_are_the_mean_and_standard_error_over_seeds() -> None:
    series = [[(1, 1.0), (2, 3.0), (3, 5.0)], [(1, 3.0), (2, 3.0), (3, 3.0)], [(2, 9.0)]]
    xs, means, errors = plots.band(series[:2], window=1)
    assert xs == [1, 2, 3] and means == [2.0, 3.0, 4.0]
    reference = torch.tensor([[1.0, 3.0], [3.0, 3.0], [5.0, 3.0]], dtype=torch.float64)
    expected = (reference.std(dim=1) / 2 ** 0.5).tolist()
    assert errors == pytest.approx(expected)
    assert plots.band(series, window=1)[0] == [2]  # only steps every seed has
    assert plots.band(series[:1], window=2)[1:] == ([1.0, 2.0, 4.0], [0.0, 0.0, 0.0])


def test_training_series_reads_the_nll_of_every_logged_step(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    rows = [{"learner": "abmll", "seed": 0, "kind": "step", "global_step": 1, "loss": 9e9,
             "nll": 2.5},
            {"learner": "abmll", "seed": 0, "kind": "validation", "global_step": 1},
            {"learner": "lora", "seed": 1, "kind": "step", "global_step": 1, "loss": 1.5},
            {"learner": "abmll", "seed": 0, "kind": "step", "global_step": 2, "loss": 9e9,
             "nll": 2.0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert plots.training_series(log) == {"abmll": [[(1, 2.5), (2, 2.0)]],
                                          "lora": [[(1, 1.5)]]}


def test_reliability_bins_match_the_ece_metric() -> None:
    from metalora_plugins.metrics import ExpectedCalibrationError

    generator = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(200, 4, generator=generator), dim=-1)
    targets = torch.randint(0, 4, (200,), generator=generator)
    stats = plots.reliability_bins(probs, targets)
    expected = ExpectedCalibrationError().compute(probs, targets, torch.ones(200, 4, dtype=bool))
    assert math.isclose(stats["ece"], expected, rel_tol=1e-4, abs_tol=1e-6)
    assert sum(stats["count"]) == 200


# -- TensorBoard ---------------------------------------------------------------------------
class FakeWriter:
    """Records what a ``SummaryWriter`` would write."""

    instances: list[FakeWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step, self.scalars = log_dir, purge_step, []
        FakeWriter.instances.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def test_tensorboard_scalars_when_available(plugins, tmp_path, monkeypatch) -> None:
    FakeWriter.instances = []
    monkeypatch.setattr(tensorboard_logger, "writer_class", lambda: FakeWriter)
    monkeypatch.setattr(tensorboard_logger.TensorBoardLogger, "missing", classmethod(
        lambda cls: None))
    summary = run(plugins, tmp_path, learner="stub", epochs=2, seeds="0", tensorboard=True)
    (writer,) = FakeWriter.instances
    assert Path(writer.log_dir) == summary.run_dir / "tensorboard" / "stub" / "seed-0"
    assert ("train/loss", 1.0, 1) in writer.scalars and ("train/kl", 0.5, 2) in writer.scalars
    assert ("validation/accuracy", SCHEDULE[2], 2) in writer.scalars


def without_tensorboard(monkeypatch) -> None:
    monkeypatch.setattr(tensorboard_logger.TensorBoardLogger, "missing", classmethod(
        lambda cls: "needs the tensorboard package: pip install tensorboard"))


def test_tensorboard_asked_for_but_missing_is_one_note(plugins, tmp_path, monkeypatch) -> None:
    without_tensorboard(monkeypatch)
    for index, given in enumerate(({"tensorboard": True}, {"logger": ["tensorboard"]})):
        out = io.StringIO()
        run(plugins, tmp_path / str(index), console=Console(file=out, width=200),
            learner="stub", epochs=1, seeds="0,1", **given)
        assert out.getvalue().count("logger 'tensorboard' skipped: it needs the tensorboard "
                                    "package: pip install tensorboard") == 1


def test_tensorboard_missing_is_said_only_when_asked_for(plugins, tmp_path, monkeypatch) -> None:
    without_tensorboard(monkeypatch)
    FakeWriter.instances = []
    monkeypatch.setattr(tensorboard_logger, "writer_class", lambda: FakeWriter)
    values = {k: v for k, v in small(learner="stub", epochs=1, seeds="0").items()
              if k != "tensorboard"}  # the default logger, not asked for
    config = resolve_config(all_setting_infos(plugins), {}, {"output_dir": str(tmp_path),
                                                             **values})
    out = io.StringIO()
    Engine(config, plugins, console=Console(file=out, width=200)).execute()
    assert "tensorboard package" not in out.getvalue() and "pip install" not in out.getvalue()
    assert FakeWriter.instances == []  # left out, not made


@pytest.mark.parametrize("tensorboard", [False, True])
def test_a_reopened_run_keeps_its_loggers(plugins, tmp_path, monkeypatch, tensorboard) -> None:
    """A run continued from its directory writes to the loggers its first command chose:
    --no-tensorboard stays off although the recorded settings list the default logger."""
    FakeWriter.instances = []
    monkeypatch.setattr(tensorboard_logger, "writer_class", lambda: FakeWriter)
    monkeypatch.setattr(tensorboard_logger.TensorBoardLogger, "missing", classmethod(
        lambda cls: None))
    summary = run(plugins, tmp_path, learner="stub", epochs=1, seeds="0",
                  tensorboard=tensorboard)
    assert len(FakeWriter.instances) == int(tensorboard)
    reopened = RunSetup.from_run_dir(summary.run_dir, plugins, console=Console(
        file=io.StringIO()))
    expected = [tensorboard_logger.TensorBoardLogger] if tensorboard else []
    assert reopened.logger_classes(note=True) == expected


def test_a_reopened_run_skips_a_default_logger_that_is_not_loaded(tmp_path, monkeypatch) -> None:
    """As a fresh run does: reopened under an allow-list without the loggers plugin, a run
    that never asked for tensorboard is set up, not refused as naming an unknown logger."""
    pm = PluginManager(load_entry_points=True)
    pm.register(StubPlugin(), name="protocol-stub")
    summary = run(pm, tmp_path, learner="stub", epochs=1, seeds="0")
    monkeypatch.setenv("METALORA_PLUGINS", "demo,metrics")
    allowed = PluginManager(load_entry_points=True)
    allowed.register(StubPlugin(), name="protocol-stub")
    assert "tensorboard" not in allowed.registry("logger")
    reopened = RunSetup.from_run_dir(summary.run_dir, allowed, console=Console(
        file=io.StringIO()))
    assert reopened.logger_classes() == []


# -- progress a person can follow ---------------------------------------------------------
def test_progress_lines_when_the_output_is_not_a_terminal(plugins, tmp_path) -> None:
    out = io.StringIO()
    summary = run(plugins, tmp_path, console=Console(file=out, width=200), learner="stub",
                  epochs=2, seeds="0")
    lines = out.getvalue().splitlines()

    def one(prefix: str) -> str:
        (line,) = [line for line in lines if prefix in line]
        return line

    assert re.search(r"stub seed 0: epoch 1/2 done, [\d.]+ s elapsed, \d+ steps, "
                     r"mean NLL 1\.0000", one("epoch 1/2 done"))
    assert "accuracy 25.0%" in one("validated epoch 1 ") and "best accuracy at epoch 1" in \
        one("validated epoch 1 ")
    assert "accuracy 50.0%" in one("validated epoch 2 ")
    assert one("stub seed 0: tested (")
    tested = [t.task for t in summary.results["stub"][0].test.tasks]
    assert tested
    assert [m.groups() for m in (re.search(r"stub seed 0: test (\S+) done \((\d+)/(\d+), "
                                           r"[\d.]+ s\)$", line) for line in lines) if m] == [
        (t, str(i), str(len(tested))) for i, t in enumerate(tested, 1)]  # each as it ends
    assert sum("stub seed 0: validate " in line for line in lines) > 0
    assert not any("━" in line for line in lines)  # no progress bar drawn
    log = (summary.run_dir / "progress.log").read_text().splitlines()
    assert [line.split(" ", 1)[1] for line in log] == [line.split("] ", 1)[1] for line in lines
                                                      if line.startswith("[")]
    assert all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ", line) for line in log)
    assert log[-1].endswith(" finished")


def test_no_progress_lines_on_a_terminal_but_still_in_the_log(plugins, tmp_path) -> None:
    out = io.StringIO()
    summary = run(plugins, tmp_path, console=Console(file=out, width=200, force_terminal=True),
                  learner="stub", epochs=1, seeds="0")
    assert "epoch 1/1 done" not in out.getvalue()
    assert "epoch 1/1 done" in (summary.run_dir / "progress.log").read_text()


def test_one_seed_shows_the_bootstrap_se_over_query_examples(plugins, tmp_path) -> None:
    summary = run(plugins, tmp_path, learner="stub", epochs=1, seeds="0")
    (result,) = summary.results["stub"]
    se = result.test.example_se
    assert set(se) == set(summary.metric_names) and se["accuracy"] > 0
    assert summary.summary()["stub"]["accuracy"][1] == se["accuracy"]
    saved = json.loads((result.path / "metrics.json").read_text())
    assert saved["macro_se_over_examples"] == pytest.approx(se)
    again = SeedResult.load("stub", 0, result.path)
    assert again.test.example_se == pytest.approx(se)
    (row,) = json.loads((summary.run_dir / "results.json").read_text())["rows"]
    assert " ± " in row["Acc"] and row["metrics"]["accuracy"]["se"] == pytest.approx(
        se["accuracy"])
