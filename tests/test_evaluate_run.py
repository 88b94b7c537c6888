"""``metalora eval RUN_DIR``: the tested adapters evaluated again give the run's results."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from metalora.cli import build_app
from metalora.errors import MetaloraError
from metalora.runs.engine import Engine
from metalora.runs.evaluate_run import evaluate_run
from tests.conftest import make_config


@pytest.fixture(scope="module")
def finished_run(finished_tiny_run):
    """The session's finished tiny run (pretrained, lora, abmll; seeds 0 and 1)."""
    return finished_tiny_run


def test_eval_reproduces_the_runs_test_metrics_without_touching_the_run(plugins, finished_run):
    run_dir = finished_run.run_dir
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = evaluate_run(run_dir, plugins)
    assert again.summary() == finished_run.summary()
    assert again.run_dir.parent == run_dir / "eval"
    assert json.loads((again.run_dir / "results.json").read_text())
    log = run_dir / "eval" / "progress.log"  # the evaluations' progress: appended to only
    assert log.read_bytes().startswith(before.pop(log, b"")) and b"evaluated" in log.read_bytes()
    assert {p: p.read_bytes() for p in before} == before
    # per query too: the same predictions file as the run's own test
    for name in ("pretrained", "lora", "abmll"):
        for file in ("predictions.jsonl", "predictions.safetensors"):
            assert ((again.run_dir / name / "seed-0" / file).read_bytes()
                    == (run_dir / name / "seed-0" / file).read_bytes()), (name, file)


def test_eval_on_another_subset_and_bad_input(plugins, finished_run):
    only = evaluate_run(finished_run.run_dir, plugins, overrides={"learner": ["lora"]})
    assert list(only.results) == ["lora"]
    with pytest.raises(MetaloraError, match="unknown suite 'nope'; valid choices: .*demo"):
        evaluate_run(finished_run.run_dir, plugins, tasks="nope")
    result = CliRunner().invoke(build_app(plugins), ["eval", str(finished_run.run_dir / "x")])
    assert result.exit_code == 1 and "does not exist" in result.output


def test_eval_on_the_validation_tasks_gives_the_validation_of_the_tested_epoch(plugins,
                                                                              finished_run):
    again = evaluate_run(finished_run.run_dir, plugins, split="validation")
    assert again.run_dir.name.endswith("-validation")
    for name, seeds in finished_run.results.items():
        recorded = seeds[0]
        tested = next(r for r in recorded.history if r["epoch"] == recorded.tested_epoch)
        macro = again.results[name][0].test.macro
        assert macro["accuracy"] == pytest.approx(tested["accuracy"], abs=1e-6)
        assert macro["nll"] == pytest.approx(tested["nll"], abs=1e-5)
    protocol = json.loads((again.run_dir / "metrics.json").read_text())["protocol"]
    assert protocol["split"] == "validation" and protocol["changed_settings"] == {}


def test_eval_with_a_changed_evaluation_setting(plugins, finished_run):
    run_dir = finished_run.run_dir
    base = evaluate_run(run_dir, plugins)
    faster = evaluate_run(run_dir, plugins, settings={"adapt_lr": "5e-2"})
    assert faster.results["lora"][0].test.macro["nll"] != pytest.approx(
        base.results["lora"][0].test.macro["nll"])  # adaptation acts
    assert faster.results["pretrained"][0].test.macro == pytest.approx(
        base.results["pretrained"][0].test.macro)  # zero-shot: nothing to adapt
    protocol = json.loads((faster.run_dir / "metrics.json").read_text())["protocol"]
    assert protocol["changed_settings"] == {"adapt_lr": 0.05}
    for settings, message in (({"rank": "4"}, "cannot change what the run is"),
                              ({"nope": "1"}, "unknown setting 'nope'"),
                              ({"maml_test_adapt": "sgd"}, "not used by this run"),
                              ({"adapt_steps": "-1"}, "must be >= 0")):
        with pytest.raises(MetaloraError, match=message):
            evaluate_run(run_dir, plugins, settings=settings)
    with pytest.raises(MetaloraError, match="unknown split 'train'; valid choices: test"):
        evaluate_run(run_dir, plugins, split="train")


def test_eval_samples_changes_abmll_predictions_without_retraining(plugins, tmp_path):
    config = make_config(plugins, model="tiny", learner=["abmll"], epochs=1, query_cap=8,
                         max_train_tasks=2, log_var_init=-3.0, plots=False, tensorboard=False,
                         output_dir=str(tmp_path), run_name="b")
    run = Engine(config, plugins).execute()
    one = evaluate_run(run.run_dir, plugins, split="validation")
    many = evaluate_run(run.run_dir, plugins, split="validation", settings={"eval_samples": "4"})
    probs_one = [t.probs for t in one.results["abmll"][0].test.tasks]
    probs_many = [t.probs for t in many.results["abmll"][0].test.tasks]
    assert any((a - b).abs().max() > 1e-4 for a, b in zip(probs_one, probs_many, strict=True))
    changed = json.loads((many.run_dir / "metrics.json").read_text())["protocol"]
    assert changed["changed_settings"] == {"eval_samples": 4}


def test_the_sampled_uncertainty_baselines_evaluate_again_to_the_same_predictions(plugins,
                                                                                   tmp_path):
    """Their weight draws, masks and logit draws come from the protocol's per-task seed, so
    a finished run evaluated again predicts bitwise the same; a changed prior precision
    changes laplace-lora's predictions, not its adapters."""
    learners = ["mc-dropout", "blob", "laplace-lora"]
    config = make_config(plugins, model="tiny", learner=learners, epochs=1, query_cap=6,
                         max_train_tasks=2, max_eval_tasks=2, lr=1e-3, laplace_samples=200,
                         plots=False, tensorboard=False, output_dir=str(tmp_path), run_name="u")
    run = Engine(config, plugins).execute()
    again = evaluate_run(run.run_dir, plugins)
    for name in learners:
        assert ((again.run_dir / name / "seed-0" / "predictions.jsonl").read_bytes()
                == (run.run_dir / name / "seed-0" / "predictions.jsonl").read_bytes()), name
    wider = evaluate_run(run.run_dir, plugins, overrides={"learner": ["laplace-lora"]},
                         settings={"prior_precision": "0.01"})
    before = [t.probs for t in run.results["laplace-lora"][0].test.tasks]
    after = [t.probs for t in wider.results["laplace-lora"][0].test.tasks]
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(before, after, strict=True))


def test_the_eval_command_takes_split_and_set(plugins, finished_run):
    result = CliRunner().invoke(build_app(plugins), [
        "eval", str(finished_run.run_dir), "--split", "validation", "--set", "adapt-lr=1e-3",
        "--no-per-task"], color=False)
    assert result.exit_code == 0, result.output
    bad = CliRunner().invoke(build_app(plugins), ["eval", str(finished_run.run_dir), "--set",
                                                  "adapt_lr"], color=False)
    assert bad.exit_code == 1 and "--set takes NAME=VALUE, got 'adapt_lr'" in bad.output


def test_two_evaluations_in_the_same_second_get_folders_of_their_own(plugins, finished_run,
                                                                     monkeypatch):
    from metalora.runs import evaluate_run as reevaluation

    monkeypatch.setattr(reevaluation, "time_stamp", lambda: "20261203-000000")
    first = evaluate_run(finished_run.run_dir, plugins, overrides={"learner": ["lora"]})
    second = evaluate_run(finished_run.run_dir, plugins, overrides={"learner": ["lora"]})
    assert first.run_dir != second.run_dir
    assert second.run_dir.name == first.run_dir.name + "-2"
    for summary in (first, second):
        assert (summary.run_dir / "metrics.json").exists()
