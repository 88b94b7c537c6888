"""Hostile and careless input: one ``Error:`` line, no traceback, no work started, nothing left.

The last test is generated: it feeds an out-of-range, a wrong-type and a non-finite value to
every setting of every registered plugin (and the core's) and checks each is refused that way.
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from typer.testing import CliRunner

from metalora.cli import build_app
from metalora.config import all_setting_infos
from metalora.files import atomic_write_bytes, remove_stale_temporaries
from metalora.plugins import ALLOW_LIST_ENV, PluginLoadWarning, PluginManager
from metalora.runs.engine import Engine
from metalora.runs.evaluate_run import evaluate_run
from metalora.runs.rundir import ADAPTERS_FILE, load_adapters, save_adapters, seed_dir
from tests.conftest import make_config

runner = CliRunner()
TINY = ["--tasks", "demo", "--model", "tiny", "--max-train-tasks", "2", "--query-cap", "4",
        "--no-plots", "--no-tensorboard"]


@pytest.fixture(scope="module")
def app(plugins):
    return build_app(plugins)


def refused(app, args, out, message=None):
    """Run ``args``; assert one Error line (with ``message``), exit 1, no traceback."""
    result = runner.invoke(app, args, color=False)
    text = result.output
    errors = [line for line in text.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1, text
    assert "Traceback" not in text and len(errors) == 1, text
    if message is not None:
        assert message in errors[0], errors[0]
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), f"work left in {out}"
    return errors[0]


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "gpu"], "unknown device 'gpu'; valid choices: auto, cpu, cuda, cuda:N"),
    (["--target-modules", ""], "no target module given"),
    (["--model", ""], "no model given"),
    (["--seeds", "a,b"], "setting 'seeds' must be a comma-separated list of int, got 'a,b'"),
    (["--max-eval-tasks", "0"], "setting 'max_eval_tasks' must be >= 1, got 0"),
])
def test_bad_run_input_is_one_line_before_anything_loads(app, tmp_path, args, message):
    out = tmp_path / "runs"
    refused(app, ["run", *TINY, *args, "--output-dir", str(out)], out, message)


def test_an_unwritable_output_directory_is_one_line_before_the_work(app, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    line = refused(app, ["run", *TINY, "--output-dir", str(blocker)], None, "output directory")
    assert "is a file, not a directory" in line
    refused(app, ["run", *TINY, "--output-dir", "/proc/metalora-runs"], None,
            "cannot write output directory '/proc/metalora-runs'")


@pytest.fixture(scope="module")
def finished(plugins, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = make_config(plugins, model="tiny", learner=["lora"], epochs=1, query_cap=4,
                         max_train_tasks=2, plots=False, tensorboard=False,
                         output_dir=str(out), run_name="r")
    return Engine(config, plugins).execute().run_dir


def test_eval_and_prune_on_an_unwritable_run_refuse_before_evaluating(app, finished):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    mode = finished.stat().st_mode
    try:
        finished.chmod(stat.S_IRUSR | stat.S_IXUSR)
        refused(app, ["eval", str(finished)], None, "cannot write evaluation directory")
        refused(app, ["prune", str(finished), "--ratio", "0.1"], None,
                "cannot write pruning results directory")
    finally:
        finished.chmod(mode)


def test_eval_and_prune_refuse_an_occupied_results_path_before_evaluating(app, finished):
    (finished / "eval").write_text("in the way")
    try:
        refused(app, ["eval", str(finished)], None, "is a file, not a directory")
    finally:
        (finished / "eval").unlink()
    (finished / "prune").write_text("in the way")
    try:
        refused(app, ["prune", str(finished), "--ratio", "0.1"], None,
                "is a file, not a directory")
    finally:
        (finished / "prune").unlink()


def test_adapters_of_the_wrong_shape_are_one_line_for_eval_and_prune(app, plugins, finished):
    path = seed_dir(finished, "lora", 0) / ADAPTERS_FILE
    original = load_adapters(path)
    key = sorted(original)[0]
    save_adapters(path, {**original, key: torch.zeros(3, 3)})
    try:
        for args in (["eval", str(finished)], ["prune", str(finished), "--ratio", "0.1"]):
            refused(app, args, None, f"tensor {key!r} has shape (3, 3)")
        for results in (finished / "eval", finished / "prune"):  # checked, nothing written
            assert not results.exists() or not any(results.iterdir())
    finally:
        save_adapters(path, original)
    evaluate_run(finished, plugins)  # and the intact run still evaluates


def test_resume_of_a_config_with_a_wrong_type_names_the_file(app, tmp_path, finished):
    broken = tmp_path / "broken"
    broken.mkdir()
    config = json.loads((finished / "config.json").read_text())
    config["epochs"] = "ten"
    (broken / "config.json").write_text(json.dumps(config))
    refused(app, ["run", "--resume", str(broken)], None, "config.json': setting 'epochs' "
                                                         "must be int, got 'ten'")


def test_unknown_names_in_the_allow_list_are_a_warning_and_named_later(monkeypatch):
    monkeypatch.setenv(ALLOW_LIST_ENV, "demo,metrics,lorra")
    with pytest.warns(PluginLoadWarning, match="METALORA_PLUGINS names 'lorra', which is no "
                                               "installed plugin; installed: .*lora"):
        pm = PluginManager()
    with pytest.raises(Exception, match="unknown learner 'lora'.*METALORA_PLUGINS="):
        pm.registry("learner").get("lora")


def test_temporaries_of_killed_writes_go_and_files_follow_the_umask(tmp_path):
    stale = tmp_path / "seed-0" / ".metrics.json.a1b2c3d4"
    stale.parent.mkdir()
    stale.write_text("{half")
    keep = tmp_path / ".gitignore"
    keep.write_text("*")
    assert remove_stale_temporaries(tmp_path) == 1
    assert not stale.exists() and keep.exists()
    previous = os.umask(0o022)
    try:
        target = tmp_path / "written.json"
        atomic_write_bytes(target, b"{}")
        save_adapters(tmp_path / "a.safetensors", {"x": torch.zeros(1)})
    finally:
        os.umask(previous)
    for path in (target, tmp_path / "a.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


# -- generated: every setting of every plugin --------------------------------------------------
CORE_BAD = {
    "learner": "nope", "tasks": "nope", "model": "", "data_dir": "/no/such/dir",
    "select_metric": "nope", "metrics": "nope", "device": "gpu", "target_modules": "",
    "output_dir": "/proc/metalora-out",
}
"""A bad value for each core str setting (any string is of the right type)."""


def bad_values(info):
    """(value, why) pairs that must be refused for ``info``."""
    if info.name in CORE_BAD:
        yield CORE_BAD[info.name], "bad value"
    if info.type is bool or info.name in ("run_name",):
        return
    if info.type is list:
        if info.item_type in (int, float):
            yield "a,b", "wrong type"
        return
    if info.type is str:
        if info.choices:
            yield "not-a-choice", "not a choice"
        return
    yield "abc", "wrong type"
    if info.type is float:
        yield "nan", "not finite"
        yield "inf", "not finite"
    bounds = info.bounds
    if "ge" in bounds:
        yield str(bounds["ge"] - 1), "below its bound"
    if "gt" in bounds:
        yield str(bounds["gt"]), "on its open bound"
    if "le" in bounds:
        yield str(bounds["le"] + 1), "above its bound"


def _owner_args(info, plugins) -> list[str]:
    """Select a learner / suite that owns the setting, so that its settings are built."""
    owners = set(info.owners)
    learners = plugins.registry("learner").names()
    if "run" in owners:
        return []
    mine = [o for o in info.owners if o in learners]
    if mine:
        return ["--learner", mine[0]]
    suites = [o for o in info.owners if o in plugins.registry("suite").names()]
    if suites:
        return ["--tasks", suites[0]]
    return ["--learner", "abmll"]  # a prior's setting: abmll builds priors


def _cases():
    from metalora.plugins import get_plugin_manager

    plugins = get_plugin_manager()
    for info in all_setting_infos(plugins).values():
        for value, why in bad_values(info):
            yield pytest.param(info.name, value, _owner_args(info, plugins),
                               id=f"{info.name}={value!r} ({why})")


@pytest.mark.parametrize(("name", "value", "owner_args"), list(_cases()))
def test_every_setting_refuses_bad_values_in_one_line(app, tmp_path, name, value, owner_args):
    out = tmp_path / "runs"
    flag = "--" + name.replace("_", "-")
    args = ["run", *TINY, *owner_args, flag, value]
    if name != "output_dir":
        args += ["--output-dir", str(out)]
    refused(app, args, out)


def test_the_generated_cases_cover_every_kind_of_setting():
    names = {c.values[0] for c in _cases()}
    assert {"lr", "beta", "a0", "kshot_k", "query_cap", "seeds", "device", "sampling"} <= names
    assert len(list(_cases())) > 80


def test_offline_a_hub_model_id_is_one_line_without_retries(monkeypatch):
    import os as _os

    import metalora.hub
    import metalora.models as models
    from metalora.errors import MetaloraError

    metalora.hub.hub_reachable.cache_clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert metalora.hub.hub_reachable() is False  # the variable alone says offline
    metalora.hub.hub_reachable.cache_clear()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    before = {name: _os.environ.get(name) for name in metalora.hub.OFFLINE_VARIABLES}
    with pytest.raises(MetaloraError, match="the hub is unreachable \\(offline\\); valid "
                                            "aliases: smollm2-135m, tiny"):
        models.load_model("no-such-org/no-such-model-xyz")
    assert {name: _os.environ.get(name) for name in metalora.hub.OFFLINE_VARIABLES} == before


class _Payload:
    """Unpickling this runs ``os.system`` (what a crafted file could do)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["eval", "prune", "export"])
def test_a_pickle_in_place_of_the_adapters_runs_nothing(app, plugins, tmp_path, command):
    import pickle
    import shutil

    run = tmp_path / "run"
    shutil.copytree(Engine(make_config(plugins, model="tiny", learner=["lora"], epochs=1,
                                       query_cap=2, max_train_tasks=1, plots=False,
                                       tensorboard=False, output_dir=str(tmp_path / "src"),
                                       run_name="r"), plugins).execute().run_dir, run)
    marker = tmp_path / "pwned"
    adapters = seed_dir(run, "lora", 0) / ADAPTERS_FILE
    adapters.write_bytes(pickle.dumps({"weights": _Payload(marker)}))
    args = {"eval": ["eval", str(run)], "prune": ["prune", str(run), "--ratio", "0.1"],
            "export": ["export", str(run), "--out", str(tmp_path / "peft")]}[command]
    line = refused(app, args, None)
    assert not marker.exists(), "the file's code ran"
    assert str(adapters) in line


def test_a_task_too_small_to_evaluate_leaves_no_run_directory(app, tmp_path):
    # 50 support examples for the demo's 60-example tasks leave no query: caught before any
    # directory is made (the episodes are built first)
    out = tmp_path / "runs"
    line = refused(app, ["run", *TINY, "--support-batches", "30", "--output-dir", str(out)],
                   out)
    assert "evaluation needs more than the 60 support examples" in line
