"""``metalora eval RUN_DIR``: the tested adapters evaluated again give the run's results."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from metalora.cli import build_app
from metalora.errors import MetaloraError
from metalora.runs.engine import Engine
from metalora.runs.reevaluation import evaluate_run
from tests.conftest import make_config


@pytest.fixture(scope="module")
def finished_run(plugins, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = make_config(plugins, model="tiny", learner=["pretrained", "lora"], epochs=2,
                         lr=1e-2, query_cap=12, plots=False, tensorboard=False,
                         output_dir=str(out), run_name="r")
    return Engine(config, plugins).execute()


def test_eval_reproduces_the_runs_test_metrics_without_touching_the_run(plugins, finished_run):
    run_dir = finished_run.run_dir
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = evaluate_run(run_dir, plugins)
    assert again.summary() == finished_run.summary()
    assert again.run_dir.parent == run_dir / "eval"
    assert json.loads((again.run_dir / "results.json").read_text())
    assert {p: p.read_bytes() for p in before} == before


def test_eval_on_another_subset_and_bad_input(plugins, finished_run):
    only = evaluate_run(finished_run.run_dir, plugins, overrides={"learner": ["lora"]})
    assert list(only.results) == ["lora"]
    with pytest.raises(MetaloraError, match="unknown suite 'nope'; valid choices: .*demo"):
        evaluate_run(finished_run.run_dir, plugins, tasks="nope")
    result = CliRunner().invoke(build_app(plugins), ["eval", str(finished_run.run_dir / "x")])
    assert result.exit_code == 1 and "does not exist" in result.output
