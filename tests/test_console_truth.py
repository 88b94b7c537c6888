"""What the console says is true: per epoch the NLL that compares across learners (and
ABMLL's KL and prior apart), no setting accepted that cannot act, no note said twice."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from metalora.cli import build_app
from metalora.errors import MetaloraError
from metalora.runs.evaluate_run import evaluate_run

runner = CliRunner()


def test_each_epoch_line_gives_the_mean_nll_and_abmlls_terms_apart(finished_tiny_run):
    lines = (finished_tiny_run.run_dir / "progress.log").read_text().splitlines()
    steps = [json.loads(x) for x in (finished_tiny_run.run_dir / "log.jsonl").read_text()
             .splitlines() if '"kind": "step"' in x]
    for learner in ("lora", "abmll"):
        epoch_line = next(x for x in lines if f"{learner} seed 0: epoch 1/2 done" in x)
        mine = [s for s in steps if s["learner"] == learner and s["seed"] == 0
                and s["epoch"] == 0]
        nll = sum(s["nll"] for s in mine) / len(mine)
        assert f"mean NLL {nll:.4f}" in epoch_line, epoch_line
        assert ("KL" in epoch_line and "-log p(theta)" in epoch_line) == (learner == "abmll")
    assert "mean loss" not in "\n".join(lines)


@pytest.mark.parametrize("name", ["lr", "epochs", "inner_lr", "gamma"])
def test_eval_refuses_a_setting_that_acts_in_training_only(plugins, finished_tiny_run, name):
    with pytest.raises(MetaloraError, match=rf"--set {name}=\.\.\.: it acts in training, not "
                                            r"in an evaluation .* settings that can: .*adapt_lr"):
        evaluate_run(finished_tiny_run.run_dir, plugins, settings={name: "2"})


def test_adapt_refuses_it_too_and_says_when_nothing_adapted(plugins, finished_tiny_run,
                                                            tmp_path):
    support = tmp_path / "s.jsonl"
    support.write_text("".join(json.dumps({"input": f"q{i}?", "options": ["yes", "no"],
                                           "output": "yes"}) + "\n" for i in range(5)))
    app = build_app(plugins)
    run_dir = str(finished_tiny_run.run_dir)
    bad = runner.invoke(app, ["adapt", run_dir, "--support", str(support), "--query",
                              str(support), "--set", "lr=1"], color=False)
    assert bad.exit_code == 1 and "acts in training" in bad.output
    same = runner.invoke(app, ["adapt", run_dir, "--support", str(support), "--query",
                               str(support), "--learner", "pretrained"], color=False)
    assert same.exit_code == 0
    text = " ".join(same.output.split())
    assert "not adapted: its adapters did not change on the 5 support records" in text
    moved = runner.invoke(app, ["adapt", run_dir, "--support", str(support), "--query",
                                str(support), "--learner", "lora"], color=False)
    assert "adapted on 5 support records" in " ".join(moved.output.split())


def test_a_run_prints_each_note_once(plugins, tmp_path):
    root = tmp_path / "suite"
    for role, task in (("train", "a"), ("test", "b")):
        lines = [{"input": f"{task}{i}", "output": "yes", "options": ["yes", "no"]}
                 for i in range(14)]
        lines.append({"input": "wide", "output": "1", "options": list("123456")})
        (root / role).mkdir(parents=True)
        (root / role / f"{task}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = runner.invoke(build_app(plugins), [
        "run", "--learner", "lora", "--model", "tiny", "--tasks", str(root), "--epochs", "1",
        "--no-plots", "--no-tensorboard", "--output-dir", str(tmp_path / "runs")], color=False)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if "option filter" in line]
    assert len(notes) == 1, notes


def test_a_given_run_name_that_exists_is_refused_not_renamed(plugins, finished_tiny_run):
    run_dir = finished_tiny_run.run_dir
    result = runner.invoke(build_app(plugins), [
        "run", "--learner", "lora", "--model", "tiny", "--output-dir", str(run_dir.parent),
        "--run-name", run_dir.name, "--epochs", "0"], color=False)
    assert result.exit_code == 1
    assert "exists (finished); give another --run-name" in result.output
    assert not (run_dir.parent / f"{run_dir.name}-2").exists()


def test_lora_steps_per_task_zero_is_one_full_pass(plugins, tmp_path):
    import metalora.api as ml

    summary = ml.train(plugins=plugins, learner=["lora"], model="tiny", tasks="demo",
                       steps_per_task=0, max_train_tasks=1, max_eval_tasks=1, query_cap=4,
                       epochs=1, plots=False, tensorboard=False, output_dir=str(tmp_path))
    steps = [x for x in (summary.run_dir / "log.jsonl").read_text().splitlines()
             if '"kind": "step"' in x]
    assert len(steps) == 30  # 60 examples, batches of 2
