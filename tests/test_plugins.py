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


def test_a_name_collision_is_an_error_naming_both_plugins():
    class Impostor:
        @hookimpl
        def register_learners(self, register):
            register(EchoLearner, name="lora")

    pm = PluginManager()
    pm.register(Impostor(), name="impostor")
    with pytest.raises(PluginError, match="learner 'lora' is registered twice: .*lora.*impostor"):
        pm.registry("learner")


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
