"""Declared bounds of settings: every value is checked before anything is loaded or trained."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
from typer.testing import CliRunner

from metalora import MetaloraError, setting
from metalora.cli import build_app
from metalora.config import ConfigFile, RunSettings, all_setting_infos, resolve_config
from metalora.runs.engine import Engine
from metalora.settings import build_settings, check_value, coerce, field_infos
from tests.conftest import make_config

runner = CliRunner()
TINY = ("--tasks", "demo", "--model", "tiny", "--max-train-tasks", "2", "--query-cap", "4",
        "--no-plots", "--no-tensorboard")


@dataclass(frozen=True)
class Bounded:
    rate: float = setting(0.1, "A rate.", gt=0, le=1)
    steps: int = setting(3, "Steps.", ge=0)
    sizes: list[int] = setting([1, 2], "Sizes.", ge=1)
    shift: float = setting(0.0, "Unbounded, but finite.")


@pytest.mark.parametrize(("values", "message"), [
    ({"rate": 0.0}, "setting 'rate' of 'toy' must be > 0 and <= 1, got 0.0"),
    ({"rate": 1.5}, "must be > 0 and <= 1, got 1.5"),
    ({"steps": -3}, "setting 'steps' of 'toy' must be >= 0, got -3"),
    ({"sizes": [2, 0]}, "setting 'sizes' of 'toy' must be >= 1, got 0"),
    ({"rate": math.nan}, "must be a finite number > 0 and <= 1, got nan"),
    ({"shift": math.inf}, "setting 'shift' of 'toy' must be a finite number, got inf"),
    ({"steps": "ten"}, "setting 'steps' of 'toy' must be int, got 'ten'"),
])
def test_a_value_out_of_its_bounds_is_one_error_naming_it(values, message):
    with pytest.raises(MetaloraError) as info:
        build_settings(Bounded, values, owner="toy")
    assert message in str(info.value)


def test_values_on_the_bounds_are_accepted():
    built = build_settings(Bounded, {"rate": 1.0, "steps": 0, "sizes": [1]}, owner="toy")
    assert (built.rate, built.steps, built.sizes) == (1.0, 0, [1])
    check_value("x", None, {"gt": 0})  # an unset optional value is never out of bounds


def test_reading_a_value_checks_the_cores_bounds_and_refuses_fractional_integers():
    infos = {i.name: i for i in field_infos(RunSettings, "run")}
    with pytest.raises(MetaloraError, match="setting 'query_cap' must be >= 1, got -1"):
        coerce(infos["query_cap"], "-1")
    with pytest.raises(MetaloraError, match="setting 'epochs' must be int, got 1.5"):
        coerce(infos["epochs"], 1.5)
    assert coerce(infos["epochs"], 2.0) == 2


@pytest.mark.parametrize(("args", "message"), [
    (("--query-cap", "-1"), "setting 'query_cap' must be >= 1, got -1"),
    (("--query-cap", "0"), "setting 'query_cap' must be >= 1, got 0"),
    (("--adapt-steps", "-3"), "setting 'adapt_steps' must be >= 0, got -3"),
    (("--max-train-tasks", "0"), "setting 'max_train_tasks' must be >= 1, got 0"),
    (("--rank", "0"), "setting 'rank' must be >= 1, got 0"),
    (("--eval-batch-size", "0"), "setting 'eval_batch_size' must be >= 1, got 0"),
    (("--learner", "lora", "--lr", "-1e-3"), "setting 'lr' of 'lora' must be > 0, got -0.001"),
    (("--learner", "lora", "--lr", "nan"), "setting 'lr' of 'lora' must be a finite number"),
    (("--learner", "reptile", "--inner-steps", "0"),
     "setting 'inner_steps' of 'reptile' must be >= 1, got 0"),
    (("--learner", "abmll", "--prior", "normal-gamma", "--a0", "0"),
     "setting 'a0' of 'normal-gamma' must be > 0, got 0.0"),
])
def test_the_command_line_refuses_bad_values_before_any_work(plugins, tmp_path, args, message):
    out = tmp_path / "runs"
    result = runner.invoke(build_app(plugins), ["run", *TINY, *args, "--output-dir", str(out)],
                           color=False)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not out.exists()  # no run directory: nothing was loaded or trained


def test_a_bad_value_for_the_second_learner_stops_the_run_before_the_first_trains(plugins):
    file = ConfigFile(shared={}, per_learner={"abmll": {"eval_samples": 0}})
    config = resolve_config(all_setting_infos(plugins), file,
                            {"learner": ["lora", "abmll"], "tasks": "demo", "model": "tiny"})
    with pytest.raises(MetaloraError, match="setting 'eval_samples' of 'abmll' must be >= 1"):
        Engine(config, plugins)  # the constructor: before any suite or model is loaded


def test_every_plugin_setting_is_checked_when_the_run_is_set_up(plugins):
    Engine(make_config(plugins, learner=["lora"], tasks="demo", model="tiny"), plugins)
    with pytest.raises(MetaloraError, match="of 'abmll' must be >= 0, got -1.0"):
        Engine(make_config(plugins, learner=["abmll"], tasks="demo", model="tiny", beta=-1.0),
               plugins)


def test_a_suites_recommended_settings_fill_in_only_what_was_not_given(plugins):
    from metalora import hookimpl
    from metalora.plugins import PluginManager
    from metalora_plugins.demo import DemoSuite

    class Recommending(DemoSuite):
        name = "recommending"
        recommended = {"epochs": 2, "adapt_lr": 1e-3, "lora": {"lr": 3e-4},
                       "not-installed": {"lr": 1.0}, "no_such_setting": 1}

    class Plugin:
        @hookimpl
        def register_task_samplers(self, register):
            register(Recommending())

    pm = PluginManager()
    pm.register(Plugin(), name="recommending-plugin")
    plain = Engine(make_config(pm, learner=["lora", "reptile"], tasks="recommending",
                               model="tiny"), pm)
    assert (plain.run.epochs, plain.run.adapt_lr) == (2, 1e-3)
    assert plain.learner_settings("lora").lr == 3e-4
    assert plain.learner_settings("reptile").lr == 1e-5  # its own default: not recommended
    assert plain.recommended == ["epochs=2", "adapt_lr=0.001", "lora.lr=0.0003"]
    assert plain.resolved_config()["learner_settings"]["lora"]["lr"] == 3e-4  # recorded
    given = Engine(make_config(pm, learner=["lora"], tasks="recommending", model="tiny",
                               epochs=1, lr=2e-3), pm)
    assert (given.run.epochs, given.learner_settings("lora").lr) == (1, 2e-3)
    assert given.recommended == ["adapt_lr=0.001"]
    demo = Engine(make_config(pm, learner=["lora"], tasks="demo", model="tiny"), pm)
    assert demo.recommended == [
        f"{k}={v}" if not isinstance(v, dict) else f"{k}.{name}={x}"
        for k, v in DemoSuite.recommended.items()
        for name, x in (v.items() if isinstance(v, dict) else [(None, None)])]
    assert demo.learner_settings("lora").lr == DemoSuite.recommended["lora"]["lr"]
