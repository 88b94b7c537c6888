"""``metalora.api``: the Python surface, the run specification, and the docs' notebook."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import metalora.api as ml
from metalora.cli import build_app
from metalora.config import RunSettings, all_setting_infos, resolve_config
from metalora.errors import MetaloraError
from metalora.runs.setup import RunSetup
from metalora.spec import GROUPS

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(model="tiny", tasks="demo", device="cpu", plots=False, tensorboard=False,
            max_train_tasks=2, max_eval_tasks=2, query_cap=6)


@pytest.fixture(scope="module")
def finished(finished_tiny_run):
    """The session's finished tiny run: pretrained, lora and abmll, seeds 0 and 1."""
    return finished_tiny_run


# -- the specification ------------------------------------------------------------------


def test_every_core_setting_is_in_exactly_one_group() -> None:
    grouped = [f.name for cls in GROUPS.values() for f in dataclasses.fields(cls)]
    assert sorted(grouped) == sorted(f.name for f in dataclasses.fields(RunSettings))


def test_a_spec_is_checked_once_groups_its_settings_and_keeps_each_plugins(plugins,
                                                                         tmp_path) -> None:
    config = tmp_path / "s.toml"
    config.write_text('epochs = 3\n[abmll]\nbeta = 1e-6\n')
    spec = ml.run_spec(config, plugins=plugins, learner="lora,abmll", epochs=2, **TINY)
    assert spec.training.learner == ("lora", "abmll") and spec.training.epochs == 2
    assert spec.protocol.adapt_steps == 5 and spec.system.model == "tiny"
    assert spec.adapter.rank == 8 and spec.data.tasks == "demo"
    assert spec.settings["abmll"].beta == 1e-6  # its config-file table
    assert spec.settings["normal-gamma"].a0 == 1.0  # every prior: a learner may choose any
    assert "lora" in spec.settings and spec.to_dict()["plugins"]["abmll"]["beta"] == 1e-6
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.run = None  # type: ignore[misc]


def test_a_setting_wrong_with_another_fails_before_the_first_learner_trains(plugins,
                                                                          tmp_path) -> None:
    with pytest.raises(MetaloraError, match=r"^abmll: log_var_init 10.0 must lie in "
                                            r"\[log_var_min, log_var_max\]"):
        ml.run_spec(plugins=plugins, learner=["lora", "abmll"], log_var_init=10.0, **TINY)
    result = CliRunner().invoke(build_app(plugins), [
        "run", "--learner", "lora,abmll", "--model", "tiny", "--log-var-init", "10",
        "--output-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert [line for line in result.output.splitlines() if line.strip()] == [
        "Error: abmll: log_var_init 10.0 must lie in [log_var_min, log_var_max] = "
        "[-30.0, 5.0]"]
    assert not any(tmp_path.iterdir())  # no run directory, nothing trained


def test_setting_a_run_up_never_changes_the_callers_configuration(plugins) -> None:
    config = resolve_config(all_setting_infos(plugins), {},
                            {"learner": ["abmll"], "tasks": "demo", "model": "tiny"})
    before = (dict(config.values), json.dumps(config.learner_values, sort_keys=True))
    setup = RunSetup(config, plugins, console=Console(quiet=True))
    assert setup.recommended  # the demo suite recommends settings ...
    assert (dict(config.values), json.dumps(config.learner_values, sort_keys=True)) == before
    recorded = setup.resolved_config()["given"]  # ... which are not recorded as given
    assert "adapt_lr" not in recorded
    assert setup.run.adapt_lr != RunSettings().adapt_lr  # but are used


# -- train, open, evaluate, adapt, prune, export ----------------------------------------


def test_train_returns_the_summary_the_command_line_prints(finished) -> None:
    table = finished.summary()
    assert set(table) == {"pretrained", "lora", "abmll"}
    recorded = json.loads((finished.run_dir / "metrics.json").read_text())
    for name in table:
        saved = recorded["learners"][name]["summary"]["accuracy"]
        assert table[name]["accuracy"] == pytest.approx((saved["mean"], saved["se"]))


def test_open_run_gives_the_runs_settings_results_and_predictions(plugins, finished) -> None:
    run = ml.open_run(finished.run_dir, plugins=plugins)
    assert run.learners == ["pretrained", "lora", "abmll"] and run.seeds == [0, 1]
    assert run.spec.training.epochs == 2 and run.spec.settings["abmll"].inner_lr == 1e-2
    assert run.results["lora"][0].test.macro == finished.results["lora"][0].test.macro
    records = run.predictions("abmll")
    assert records and set(records[0]) == {"task", "index", "probs", "label", "source", "input",
                                           "options"}
    only = ml.open_run(finished.run_dir, learner=["abmll"], seeds=[1], plugins=plugins)
    assert only.learners == ["abmll"] and only.seeds == [1]
    with pytest.raises(MetaloraError, match="learner 'maml' is not in run"):
        ml.open_run(finished.run_dir, learner=["maml"], plugins=plugins)


def test_evaluate_reproduces_the_test_and_changes_evaluation_settings(plugins,
                                                                      finished) -> None:
    again = ml.evaluate(finished.run_dir, learner=["lora"], plugins=plugins)
    assert again.summary()["lora"] == finished.summary()["lora"]
    sampled = ml.evaluate(finished.run_dir, learner=["abmll"], settings={"eval_samples": 3},
                          plugins=plugins)
    assert json.loads((sampled.run_dir / "metrics.json").read_text())["protocol"][
        "changed_settings"] == {"eval_samples": 3}
    # the evaluations' progress, a line per task as each finishes, in RUN_DIR/eval
    log = (finished.run_dir / "eval" / "progress.log").read_text()
    tasks = [t.task for t in finished.results["lora"][0].test.tasks]
    assert tasks
    for seed in (0, 1):
        done = re.findall(rf"lora seed {seed}: eval (\S+) done \((\d+)/(\d+), [\d.]+ s\)", log)
        assert done == [(t, str(i), str(len(tasks))) for i, t in enumerate(tasks, 1)]
        assert re.search(rf"lora seed {seed}: evaluated \({len(tasks)} tasks, [\d.]+ s\): "
                         r"accuracy", log)
    assert "settings changed: {'eval_samples': 3}" in log


OPTIONS = ["yes", "no"]
SUPPORT = [{"input": f"is {w} good?", "options": OPTIONS, "output": OPTIONS[i % 2]}
           for i, w in enumerate(["rain", "sun", "snow", "wind", "fog"])]
QUERY = [{"input": "is hail good?", "options": OPTIONS},
         {"input": "is mist good?", "options": OPTIONS, "output": "no"}]


def _peft_probs(out: Path, adapted_records) -> torch.Tensor:
    """Option probabilities of the queries under the saved adapter, loaded by peft."""
    from peft import PeftModel

    from metalora.models import load_model
    from metalora.prompts import PromptEncoder
    from metalora.runs.adaptation import record_from_mapping
    from metalora.scoring import option_probs

    loaded = load_model("tiny")
    model = PeftModel.from_pretrained(loaded.model, str(out))
    batch = PromptEncoder(loaded.tokenizer).encode(
        [record_from_mapping(r, False).record for r in adapted_records])
    with torch.no_grad():
        return option_probs(model.get_base_model(), batch)[:, :len(OPTIONS)]


@pytest.mark.parametrize("learner", ["lora", "abmll"])
def test_adapt_takes_records_and_saves_the_adapted_adapter_for_peft(plugins, finished,
                                                                   tmp_path, learner) -> None:
    out = tmp_path / "adapted"
    settings = {"sampling": "mean"} if learner == "abmll" else {}  # the mean weights
    result = ml.adapt(finished.run_dir, SUPPORT, QUERY, learner=learner, settings=settings,
                      save_adapter=out, plugins=plugins)
    assert result.support == 5 and result.labelled == 1 and len(result.predictions) == 2
    assert "adapter_model.safetensors" in result.saved
    assert (out / "metalora_pairs.safetensors").exists() == (learner == "abmll")
    got = _peft_probs(out, QUERY)
    want = torch.tensor([p.probs for p in result.predictions])
    torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
    # the adapted adapter is not the run's tested one: adaptation acted
    unadapted = ml.adapt(finished.run_dir, SUPPORT, QUERY, learner=learner,
                         settings={**settings, "adapt_steps": 0}, plugins=plugins)
    assert [p.probs for p in unadapted.predictions] != [p.probs for p in result.predictions]
    with pytest.raises(MetaloraError, match="is not an empty directory"):
        ml.adapt(finished.run_dir, SUPPORT, QUERY, learner=learner, save_adapter=out,
                 plugins=plugins)


def test_prune_and_export_through_the_api(plugins, finished, tmp_path) -> None:
    swept = ml.prune(finished.run_dir, [0.5], learner=["lora"], plugins=plugins)
    assert set(swept.summary()["lora"]) == {0.0, 0.5}
    exported = ml.export(finished.run_dir, tmp_path / "peft", learner="lora", plugins=plugins)
    assert (exported.out / "adapter_config.json").exists()


# -- the docs' notebook runs as written ---------------------------------------------------


def test_the_notebook_on_the_python_api_page_runs(tmp_path) -> None:
    text = (ROOT / "docs" / "python-api.md").read_text()
    code = re.search(r"<!-- notebook .*?-->\n```python\n(.*?)\n```", text, re.S)[1]
    script = tmp_path / "notebook.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test accuracy" in done.stdout and "->" in done.stdout
    assert (tmp_path / "reliability.png").stat().st_size > 1000
    assert (tmp_path / "abmll-my-task" / "adapter_model.safetensors").exists()


# -- a run directory written by version 0.1.0 still opens ---------------------------------


def test_a_run_written_by_the_previous_version_still_opens(plugins, tmp_path) -> None:
    """tests/data/run-0.1.0 was written by metalora at commit 6cf6985 (its config.json has no
    tf32 and none of abmll's later settings; checkpoints and logs left out)."""
    import shutil

    run_dir = tmp_path / "old"
    shutil.copytree(ROOT / "tests" / "data" / "run-0.1.0", run_dir)
    run = ml.open_run(run_dir, plugins=plugins)
    assert run.learners == ["lora", "abmll"]
    assert run.spec.settings["abmll"].outer_eps == 1e-8  # a later setting: its default
    again = ml.evaluate(run_dir, plugins=plugins)
    for name in run.learners:
        recorded = run.results[name][0].test.macro  # the metrics registered then
        now = again.results[name][0].test.macro  # every metric registered now
        assert {k: now[k] for k in recorded} == pytest.approx(recorded, abs=1e-6), name
        assert set(recorded) < set(now)
    exported = ml.export(run_dir, tmp_path / "peft", learner="lora", plugins=plugins)
    assert exported.rank == 8 and exported.target_modules == ["q_proj", "v_proj", "o_proj"]


def test_config_json_holds_every_owners_table_and_reads_back(plugins, finished) -> None:
    path = finished.run_dir / "config.json"
    recorded = json.loads(path.read_text())
    assert recorded["learner_settings"]["abmll"]["inner_lr"] == 1e-2
    assert recorded["plugin_settings"]["normal-gamma"] == {"a0": 1.0, "b0": 0.01,
                                                          "prior_jacobian": False}
    again = ml.run_spec(path, plugins=plugins)  # a run's config.json is a config file
    assert again.settings["abmll"].inner_lr == 1e-2 and again.training.seeds == (0, 1)
