"""Every setting check runs before a run directory exists, and a damaged run is repaired or
named as damaged, never pointed at a command that cannot succeed."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from metalora.cli import build_app
from metalora.runs.rundir import ADAPTERS_FILE, load_adapters, seed_dir

runner = CliRunner()
TINY = ["--model", "tiny", "--tasks", "demo", "--epochs", "1", "--max-train-tasks", "1",
        "--max-eval-tasks", "1", "--query-cap", "4", "--no-plots", "--no-tensorboard"]


@pytest.mark.parametrize(("args", "message"), [
    (["--learner", "abmll", "--log-var-min", "10", "--log-var-max", "-10"],
     "abmll: log_var_min 10.0 must be below log_var_max -10.0"),
    (["--learner", "lora", "--target-modules", "q_proj,nope"], "no linear layer named 'nope'"),
])
def test_a_check_that_fails_leaves_no_run_directory(plugins, tmp_path, args, message):
    out = tmp_path / "runs"
    result = runner.invoke(build_app(plugins), ["run", *TINY, *args, "--output-dir", str(out)],
                           color=False)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture
def damaged(plugins, finished_tiny_run, tmp_path):
    """A copy of the shared finished run whose lora seed-0 adapters file is gone."""
    run_dir = tmp_path / "run"
    shutil.copytree(finished_tiny_run.run_dir, run_dir)
    (seed_dir(run_dir, "lora", 0) / ADAPTERS_FILE).unlink()
    return run_dir


def test_eval_names_the_missing_file_and_resume_rebuilds_it(plugins, finished_tiny_run,
                                                             damaged):
    app = build_app(plugins)
    said = runner.invoke(app, ["eval", str(damaged), "--learner", "lora"], color=False)
    assert said.exit_code == 1
    assert (f"lora/seed-0/{ADAPTERS_FILE} of run {str(damaged)!r} is missing; metalora run "
            f"--resume {damaged} rebuilds it from the checkpoint of its tested epoch"
            in " ".join(said.output.split())), said.output
    resumed = runner.invoke(app, ["run", "--resume", str(damaged)], color=False)
    assert resumed.exit_code == 0, resumed.output
    assert f"{ADAPTERS_FILE} rebuilt from epoch" in resumed.output
    rebuilt = load_adapters(seed_dir(damaged, "lora", 0) / ADAPTERS_FILE)
    original = load_adapters(seed_dir(finished_tiny_run.run_dir, "lora", 0) / ADAPTERS_FILE)
    assert rebuilt.keys() == original.keys()
    assert all((rebuilt[k] == original[k]).all() for k in original)
    again = runner.invoke(app, ["eval", str(damaged), "--learner", "lora"], color=False)
    assert again.exit_code == 0, again.output


def test_without_the_tested_checkpoint_it_says_the_pair_cannot_be_rebuilt(plugins, damaged):
    shutil.rmtree(seed_dir(damaged, "lora", 0) / "checkpoints")
    app = build_app(plugins)
    said = runner.invoke(app, ["eval", str(damaged), "--learner", "lora"], color=False)
    text = " ".join(said.output.split())
    assert said.exit_code == 1 and "no checkpoint of its tested epoch is left" in text
    assert "rebuilds" not in text  # no command that cannot succeed
    resumed = runner.invoke(app, ["run", "--resume", str(damaged)], color=False)
    assert resumed.exit_code == 1
    assert "cannot be rebuilt; delete" in " ".join(resumed.output.split())
