"""The plugin manager: entry points, registration in code, allow-list, failures, collisions."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterator, Sequence

import pytest
import torch

from metalora import hookimpl
from metalora.adapters import AdapterHandle
from metalora.errors import MetaloraError, PluginError
from metalora.interfaces import Learner, StepLog
from metalora.plugins import ALLOW_LIST_ENV, PluginLoadWarning, PluginManager

BUILTIN_LEARNERS = {"pretrained", "lora"}


class EchoLearner(Learner):
    """A learner defined inside a test."""

    name = "echo"
    description = "test learner"

    @property
    def adapters(self) -> AdapterHandle:
        raise NotImplementedError

    def train_epoch(self, tasks: Sequence, epoch: int) -> Iterator[StepLog]:
        return iter(())

    def adapt(self, support) -> None:
        pass

    def predict_proba(self, batch) -> torch.Tensor:
        return torch.full((len(batch), 4), 0.25)


class EchoPlugin:
    @hookimpl
    def register_learners(self, register):
        register(EchoLearner)


def test_builtins_arrive_through_entry_points_with_their_package():
    pm = PluginManager()
    learners = {r.name: r for r in pm.registry("learner")}
    assert set(learners) >= BUILTIN_LEARNERS
    assert learners["lora"].provider == "metalora"
    assert "demo" in pm.registry("suite")
    assert {"accuracy", "ece"} <= set(pm.registry("metric").names())


def test_register_a_plugin_defined_in_a_test_then_unregister_it():
    pm = PluginManager()
    pm.register(EchoPlugin(), name="echo-plugin")
    registration = {r.name: r for r in pm.registry("learner")}["echo"]
    assert registration.implementation is EchoLearner
    assert registration.plugin == "echo-plugin"
    pm.unregister("echo-plugin")
    assert "echo" not in pm.registry("learner")
    with pytest.raises(MetaloraError, match="unknown learner 'echo'; valid choices: .*lora"):
        pm.registry("learner").get("echo")


class Impostor:
    """A plugin that registers a learner under a built-in's name."""

    @hookimpl
    def register_learners(self, register):
        register(EchoLearner, name="lora")


def test_a_name_collision_is_an_error_naming_both_plugins():
    pm = PluginManager()
    pm.register(Impostor(), name="impostor")
    learners = pm.registry("learner")  # building the registry still works
    with pytest.raises(PluginError, match="learner 'lora' is registered twice: .*lora.*impostor"):
        learners.get("lora")
    assert "lora" not in learners.names() and "pretrained" in learners.names()
    assert learners.get("pretrained").name == "pretrained"  # what does not collide still works


def test_allow_list_loads_only_the_named_entry_points(monkeypatch):
    monkeypatch.setenv(ALLOW_LIST_ENV, "metrics")
    pm = PluginManager()
    assert pm.plugin_names() == ["metrics"]
    assert pm.registry("learner").names() == []
    assert "accuracy" in pm.registry("metric")
    monkeypatch.setenv(ALLOW_LIST_ENV, "")
    assert PluginManager().plugin_names() == []


def test_a_plugin_that_fails_to_import_is_a_warning_and_the_rest_still_load(monkeypatch):
    real = importlib.metadata.entry_points

    def with_broken(**kwargs):
        eps = list(real(**kwargs))
        broken = importlib.metadata.EntryPoint(
            name="broken", value="metalora_no_such_module_xyz", group="metalora")
        return [*eps, broken]

    monkeypatch.setattr(importlib.metadata, "entry_points", with_broken)
    with pytest.warns(PluginLoadWarning, match="'broken' failed to import"):
        pm = PluginManager()
    assert "broken" in pm.failures
    assert set(pm.registry("learner").names()) >= BUILTIN_LEARNERS


def assert_pretrained_runs(runner, app, out) -> None:
    """A short zero-shot run through ``app`` still succeeds (what no clash touches)."""
    ok = runner.invoke(app, ["run", "--learner", "pretrained", "--tasks", "demo", "--model",
                             "tiny", "--max-eval-tasks", "1", "--query-cap", "2", "--no-plots",
                             "--output-dir", str(out)])
    assert ok.exit_code == 0, ok.output


class Broken:
    """A plugin whose register hook raises after registering one learner."""

    @hookimpl
    def register_learners(self, register):
        register(EchoLearner)
        raise RuntimeError("registry exploded")


def test_a_plugin_whose_register_hook_raises_is_one_warning_and_skipped_whole():
    pm = PluginManager()
    pm.register(Broken(), name="broken-hook")
    with pytest.warns(PluginLoadWarning, match="plugin 'broken-hook' failed in register_learners "
                                               r"\(RuntimeError: registry exploded\)"):
        learners = pm.registry("learner")
    assert "echo" not in learners  # nothing of the broken plugin half-registered
    assert set(learners.names()) >= BUILTIN_LEARNERS
    assert "broken-hook" in pm.failures


def test_the_cli_works_with_a_broken_or_colliding_plugin(tmp_path):
    from typer.testing import CliRunner

    from metalora.cli import build_app

    pm = PluginManager()
    pm.register(Broken(), name="broken-hook")
    pm.register(Impostor(), name="impostor")
    with pytest.warns(PluginLoadWarning):
        app = build_app(pm)
    runner = CliRunner()
    for args in (["--help"], ["run", "--help"], ["tasks"]):
        assert runner.invoke(app, args).exit_code == 0, args
    listing = runner.invoke(app, ["plugins"])
    assert listing.exit_code == 0
    assert "broken-hook' failed in register_learners" in listing.output
    assert "learner 'lora' is registered twice" in listing.output
    assert_pretrained_runs(runner, app, tmp_path)
    clash = runner.invoke(app, ["run", "--learner", "lora", "--tasks", "demo", "--model", "tiny",
                                "--output-dir", str(tmp_path / "clash")])
    assert clash.exit_code == 1
    assert "learner 'lora' is registered twice: by plugin 'lora' (metalora) and by plugin " \
           "'impostor'" in clash.output
    assert not (tmp_path / "clash").exists()


def test_a_setting_that_clashes_in_type_disables_only_its_owner(tmp_path):
    from dataclasses import dataclass

    from typer.testing import CliRunner

    from metalora import setting
    from metalora.cli import build_app

    @dataclass(frozen=True)
    class ClashSettings:
        lr: str = setting("fast", "A learning rate spelt as a word.")

    class ClashLearner(EchoLearner):
        name = "clash"
        Settings = ClashSettings

    class ClashPlugin:
        @hookimpl
        def register_learners(self, register):
            register(ClashLearner)

    pm = PluginManager()
    pm.register(ClashPlugin(), name="clash-plugin", provider="clash-dist")
    runner = CliRunner()
    app = build_app(pm)
    assert_pretrained_runs(runner, app, tmp_path)
    bad = runner.invoke(app, ["run", "--learner", "clash", "--tasks", "demo", "--model", "tiny",
                              "--output-dir", str(tmp_path / "clash")])
    assert bad.exit_code == 1
    assert "'clash' cannot run: setting 'lr' is declared as float by " in bad.output
    assert "(metalora)" in bad.output and "clash (clash-dist)" in bad.output
