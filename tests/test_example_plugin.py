"""The example third-party plugin ``examples/metalora-metasgd`` (Meta-SGD), as a user meets it.

It must be installed (``pip install -e examples/metalora-metasgd``, as the
README's test command does): ``metalora plugins`` must list its learner with
its own package name, and ``metalora run --learner metasgd --tasks demo``
must run on the tiny model. The unit tests check the first-order Meta-SGD
meta-gradient against autograd and the two test-time adaptation modes.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import metalora.api as ml
from metalora.cli import build_app
from metalora.config import all_setting_infos, resolve_config
from metalora.plugins import PluginManager
from metalora.runs.engine import Engine
from metalora.scoring import answer_loss, option_probs

DISTRIBUTION = "metalora-metasgd"

try:
    importlib.metadata.distribution(DISTRIBUTION)
except importlib.metadata.PackageNotFoundError:
    pytest.skip(f"the example plugin {DISTRIBUTION} is not installed; install it with "
                "pip install -e examples/metalora-metasgd", allow_module_level=True)

import metalora_metasgd  # noqa: E402
from metalora_metasgd.learner import ALPHA, THETA, MetaSGDLearner, MetaSGDSettings  # noqa: E402


def _metalora(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed ``metalora`` console script, as a user runs it (wide terminal)."""
    script = Path(sys.executable).with_name("metalora")
    command = [str(script)] if script.exists() else [shutil.which("metalora") or "metalora"]
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("METALORA_PLUGINS", None)  # every installed plugin, as a user has them
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


# -- through the installed entry point -------------------------------------------------------
def test_the_entry_point_belongs_to_the_example_package():
    points = [ep for ep in importlib.metadata.entry_points(group="metalora")
              if ep.name == "metasgd"]
    assert len(points) == 1
    assert points[0].dist.name == DISTRIBUTION and points[0].value == "metalora_metasgd"


def test_metalora_plugins_lists_it_with_its_own_package():
    result = _metalora("plugins")
    assert result.returncode == 0, result.stderr
    learners = result.stdout.split("Learners (", 1)[1].split("\n\n", 1)[0]
    entry = learners.split("\n  metasgd ", 1)[1].split("]", 1)[0]  # its text to [package ..]
    assert " ".join(entry.split()).endswith(f"[package {DISTRIBUTION}"), result.stdout
    assert "failed" not in result.stderr


def test_metalora_run_learner_metasgd_tasks_demo_on_the_tiny_model(tmp_path):
    result = _metalora("run", "--learner", "metasgd", "--tasks", "demo", "--model", "tiny",
                       "--epochs", "1", "--max-train-tasks", "3", "--query-cap", "16",
                       "--output-dir", str(tmp_path), "--run-name", "metasgd",
                       "--no-plots", "--no-tensorboard", "--metasgd-alpha-lr", "1e-4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "metasgd" in result.stdout and "Acc" in result.stdout
    run_dir = tmp_path / "metasgd"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["learner_settings"]["metasgd"]["metasgd_alpha_lr"] == 1e-4
    logs = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    outer = [r for r in logs if r.get("phase") == "outer"]
    assert len(outer) == 3 and all("alpha_mean" in r for r in outer)
    assert outer[-1]["alpha_mean"] != pytest.approx(1e-3, abs=1e-9)  # alpha was learned
    adapters = load_file(run_dir / "metasgd" / "seed-0" / "adapters.safetensors")
    assert any(f".pairs.{ALPHA}." in name for name in adapters)
    metrics = json.loads((run_dir / "metasgd" / "seed-0" / "metrics.json").read_text())
    assert 0.0 <= metrics["macro"]["accuracy"] <= 1.0


def test_its_settings_are_options_of_metalora_run():
    app = build_app(PluginManager())
    result = CliRunner().invoke(app, ["run", "--help"], color=False, terminal_width=200)
    for option in ("--metasgd-lr", "--metasgd-alpha-init", "--metasgd-alpha-lr",
                   "--metasgd-test-adapt"):
        assert option in result.output


def test_the_example_readme_lists_every_setting_with_its_default():
    readme = (Path(__file__).resolve().parents[1] / "examples" / "metalora-metasgd"
              / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) == 3:
            rows[cells[0]] = cells[1]
    for field in dataclasses.fields(MetaSGDSettings):
        assert field.name in rows, f"{field.name} is missing from the example's README"
        written = rows[field.name]
        if isinstance(field.default, str):
            assert written == field.default
        else:
            assert float(written) == field.default, field.name


# The tutorial (docs/writing-a-plugin.md) includes this test between the markers.
# --8<-- [start:unit-test]
def test_metasgd_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("METALORA_PLUGINS", "demo,metrics")  # installed plugins to load
    plugins = ml.plugins(metalora_metasgd)  # and this one, registered in code
    summary = ml.train(plugins=plugins, learner=["metasgd"], tasks="demo", model="tiny",
                       output_dir=str(tmp_path), max_train_tasks=2, max_eval_tasks=1,
                       query_cap=8, plots=False)
    accuracy, _ = summary.summary()["metasgd"]["accuracy"]
    assert 0.0 <= accuracy <= 1.0
    outer = [log for log in map(json.loads, (summary.run_dir / "log.jsonl").open())
             if log.get("phase") == "outer"]
    assert outer[0]["alpha_mean"] != outer[-1]["alpha_mean"]  # the learned rates moved
# --8<-- [end:unit-test]


# -- the algorithm ---------------------------------------------------------------------------
@pytest.fixture
def build() -> Iterator:
    """``build(**settings) -> (learner, suite)``: a Meta-SGD learner on the tiny model."""
    plugins = PluginManager()
    made = []

    def _build(**values):
        config = resolve_config(all_setting_infos(plugins), {}, {
            "learner": ["metasgd"], "model": "tiny", "device": "cpu", "tasks": "demo",
            **values})
        engine = Engine(config, plugins)
        suite = engine.load_suite()
        learner = engine.build_learner("metasgd", 0)
        made.append(learner)
        return learner, suite

    yield _build
    for learner in made:
        learner.adapters.remove()


def _grads(learner: MetaSGDLearner, batch) -> list[torch.Tensor]:
    loss = answer_loss(learner.context.model, batch, over=learner.context.train_loss)
    return list(torch.autograd.grad(loss, [t for t, _ in learner.pairs]))


def test_the_outer_step_uses_the_first_order_meta_gradients(build):
    learner, suite = build(inner_steps=2, metasgd_alpha_init=0.05)
    assert isinstance(learner, MetaSGDLearner)
    with torch.no_grad():  # make theta non-trivial so that every gradient is non-zero
        for theta, _ in learner.pairs:
            theta.normal_(0, 0.05)
    task = suite.train[0]
    theta0 = learner.adapters.snapshot([THETA])
    rng_state = learner.context.rng.getstate()
    seen: dict[str, list[torch.Tensor]] = {}

    def record_step(*args, **kwargs):
        seen["theta"] = [t.grad.clone() for t, _ in learner.pairs]
        seen["alpha"] = [a.grad.clone() for _, a in learner.pairs]
        seen["after"] = [t.detach().clone() for t, _ in learner.pairs]

    learner.optimizer.step = record_step
    logs = list(learner.train_epoch([task], epoch=0))
    assert [log.phase for log in logs] == ["inner", "inner", "outer"]
    # The adapters were put back to theta before the outer step.
    for after, name in zip(seen["after"], theta0, strict=True):
        assert torch.equal(after, theta0[name])

    # Recompute by hand: same batches (same RNG draws), plain autograd.
    learner.context.rng.setstate(rng_state)
    episodes = learner.context.batches
    alphas = [a.detach().clone() for _, a in learner.pairs]
    sums = [torch.zeros_like(a) for a in alphas]
    for _ in range(2):
        grads = _grads(learner, episodes.train_batch(task, learner.context.rng))
        with torch.no_grad():
            for (theta, _), alpha, g, total in zip(learner.pairs, alphas, grads, sums,
                                                   strict=True):
                theta.sub_(alpha * g)
                total.add_(g)
    # the query batch comes from a stream of its own (common random numbers)
    g_query = _grads(learner, episodes.train_batch(task,
                                                   learner.context.stream("query", 0, task.name)))
    for got, want in zip(seen["theta"], g_query, strict=True):
        torch.testing.assert_close(got, want)
    for got, total, g_q in zip(seen["alpha"], sums, g_query, strict=True):
        torch.testing.assert_close(got, -total * g_q)
    assert any(float(g.abs().sum()) > 0 for g in seen["alpha"])


def test_the_lr_pair_is_never_read_by_the_forward_pass(build):
    learner, suite = build()
    batch = learner.context.batches.encode(suite.test[0].records[:4])
    before = option_probs(learner.context.model, batch)
    with torch.no_grad():
        for _, alpha in learner.pairs:
            alpha.normal_()
    torch.testing.assert_close(option_probs(learner.context.model, batch), before,
                               rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["learned", "adamw"])
def test_test_time_adaptation_moves_theta_and_never_alpha(build, mode):
    learner, suite = build(metasgd_test_adapt=mode, adapt_lr=1e-3)
    episode = learner.context.batches.episode(suite.test[0])
    theta0 = learner.adapters.snapshot([THETA])
    alpha0 = learner.adapters.snapshot([ALPHA])
    learner.adapt(episode.support)
    theta1 = learner.adapters.snapshot([THETA])
    assert any(not torch.equal(theta0[k], theta1[k]) for k in theta0)
    alpha1 = learner.adapters.snapshot([ALPHA])
    assert all(torch.equal(alpha0[k], alpha1[k]) for k in alpha0)


def test_zero_learning_rates_adapt_nothing(build):
    learner, suite = build(metasgd_alpha_init=0.0)
    episode = learner.context.batches.episode(suite.test[0])
    theta0 = learner.adapters.snapshot([THETA])
    learner.adapt(episode.support)
    theta1 = learner.adapters.snapshot([THETA])
    assert all(torch.equal(theta0[k], theta1[k]) for k in theta0)


def test_bad_settings_are_one_clear_error(build):
    from metalora.errors import MetaloraError

    with pytest.raises(MetaloraError, match="inner_steps must be at least 0"):
        build(inner_steps=-1)
    with pytest.raises(MetaloraError, match="metasgd_test_adapt"):
        build(metasgd_test_adapt="sgd")


# -- the tutorial's minimal plugin ---------------------------------------------------------
def test_the_tutorials_minimal_plugin_registers_trains_and_learns(tmp_path, monkeypatch):
    import importlib.util
    import sys

    root = Path(__file__).resolve().parents[1]
    path = root / "examples" / "minimal" / "minimal_plugin.py"
    spec = importlib.util.spec_from_file_location("minimal_plugin", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "minimal_plugin", module)  # as an installed module is
    spec.loader.exec_module(module)
    plugins = PluginManager()
    plugins.register(module, name="first-steps")
    result = CliRunner().invoke(build_app(plugins), [
        "run", "--learner", "first-steps", "--tasks", "demo", "--model", "tiny", "--epochs", "2",
        "--first-steps-lr", "1e-2", "--max-train-tasks", "3", "--max-eval-tasks", "1",
        "--query-cap", "8", "--no-plots", "--output-dir", str(tmp_path), "--run-name", "m"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["learner_settings"]["first-steps"] == {"first_steps_lr": 0.01,
                                                         "first_steps_per_task": 3}
    steps = [json.loads(x) for x in (tmp_path / "m" / "log.jsonl").read_text().splitlines()
             if '"step"' in x and json.loads(x)["kind"] == "step"]
    assert len(steps) == 2 * 3 * 3
    first, last = steps[:9], steps[-9:]  # learning happens: epoch 2's loss is lower
    assert sum(s["loss"] for s in last) < sum(s["loss"] for s in first)
    tutorial = (root / "docs" / "writing-a-plugin.md").read_text(encoding="utf-8")
    assert '--8<-- "examples/minimal/minimal_plugin.py"' in tutorial
