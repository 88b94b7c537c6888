"""Loggers are plugins: ``register_loggers``, ``--logger``, and the built-in ``wandb``."""

from __future__ import annotations

import importlib.util
import io
import json
import sys
import types
from pathlib import Path

import pytest
from rich.console import Console

from metalora import Logger, MetaloraError, hookimpl
from metalora.config import all_setting_infos, resolve_config
from metalora.plugins import PluginManager
from metalora.runs.engine import Engine

QUICK = {"tasks": "demo", "model": "tiny", "max_train_tasks": 2, "max_eval_tasks": 1,
         "query_cap": 4, "support_batches": 1, "adapt_steps": 1, "plots": False,
         "learner": ["lora"], "epochs": 2, "run_name": "r"}


def run(plugins: PluginManager, tmp_path: Path, **values):
    config = resolve_config(all_setting_infos(plugins), {},
                            {"output_dir": str(tmp_path), **QUICK, **values})
    return Engine(config, plugins, console=Console(file=io.StringIO())).execute()


class Recorder(Logger):
    """A third-party logger that keeps what it is given."""

    name = "recorder"
    made: list[Recorder] = []

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps: list[tuple[int, float]] = []
        self.validations: list[tuple[int, dict, int]] = []
        self.closed = False
        Recorder.made.append(self)

    def log_step(self, step, global_step):
        self.steps.append((global_step, step.loss))

    def log_validation(self, epoch, metrics, global_step):
        self.validations.append((epoch, dict(metrics), global_step))

    def close(self):
        self.closed = True


class RecorderPlugin:
    @hookimpl
    def register_loggers(self, register):
        register(Recorder)


def test_hook_register_loggers_gets_every_record_of_log_jsonl(tmp_path):
    manager = PluginManager()
    manager.register(RecorderPlugin(), name="recorder-plugin")
    Recorder.made = []
    summary = run(manager, tmp_path, logger=["recorder"], seeds=[0, 1])
    assert [(r.learner, r.seed) for r in Recorder.made] == [("lora", 0), ("lora", 1)]
    lines = [json.loads(x) for x in (summary.run_dir / "log.jsonl").read_text().splitlines()]
    for recorder in Recorder.made:
        mine = [x for x in lines if x["seed"] == recorder.seed]
        assert recorder.steps == [(x["global_step"], x["loss"]) for x in mine
                                  if x["kind"] == "step"]
        assert [(e, m["accuracy"], g) for e, m, g in recorder.validations] == [
            (x["epoch"], x["accuracy"], x["global_step"]) for x in mine
            if x["kind"] == "validation"]
        assert recorder.closed and recorder.run_dir == summary.run_dir
    assert not (summary.run_dir / "tensorboard").exists()  # --logger replaced the default


def test_an_unknown_or_unusable_logger_is_one_line_before_the_run(plugins, tmp_path,
                                                                  monkeypatch):
    with pytest.raises(MetaloraError, match="unknown logger 'tensorbord'; valid choices: "
                                            "tensorboard, wandb"):
        run(plugins, tmp_path, logger=["tensorbord"])
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else spec(name, *a))
    with pytest.raises(MetaloraError, match=r"logger 'wandb' needs the wandb package: pip "
                                            r"install 'metalora\[wandb\]'"):
        run(plugins, tmp_path, logger=["wandb"])
    assert not any(tmp_path.iterdir())


spec = importlib.util.find_spec


class FakeRun:
    def __init__(self, **kwargs) -> None:
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


def test_wandb_logs_steps_and_validations_offline_with_a_stable_id(plugins, tmp_path,
                                                                   monkeypatch):
    runs: list[FakeRun] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "wandb" else spec(name, *a))
    summary = run(plugins, tmp_path, logger=["wandb"], seeds=[0])
    (made,) = runs
    assert made.kwargs["mode"] == "offline" and made.kwargs["project"] == "metalora"
    assert made.kwargs["dir"] == str(summary.run_dir)
    assert made.kwargs["name"] == "r/lora/seed-0" and made.kwargs["resume"] == "allow"
    steps = [step for step, values in made.logged if "train/loss" in values]
    assert steps == list(range(1, len(steps) + 1))
    validations = [(step, values) for step, values in made.logged if "epoch" in values]
    assert [v["epoch"] for _, v in validations] == [1, 2]
    assert all("validation/accuracy" in v for _, v in validations) and made.finished
    again = run(plugins, tmp_path / "other", logger=["wandb"], seeds=[0], wandb_mode="disabled")
    assert runs[1].kwargs["mode"] == "disabled"
    assert runs[1].kwargs["id"] != made.kwargs["id"]  # another run directory, another id
    assert again.run_dir != summary.run_dir


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="wandb not installed")
def test_wandb_offline_really_writes_a_run_without_a_network(plugins, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    summary = run(plugins, tmp_path, logger=["wandb"], seeds=[0], epochs=1)
    (offline,) = (summary.run_dir / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))
