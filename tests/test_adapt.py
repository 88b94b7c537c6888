"""``metalora adapt`` and :func:`adapt_run`: a trained run applied to a user's few-shot task."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from metalora import MetaloraError
from metalora.cli.app import build_app
from metalora.evaluation import EvalResult
from metalora.runs.adaptation import adapt_run
from metalora.runs.engine import Engine
from metalora.runs.rundir import PREDICTIONS_FILE, seed_dir
from metalora.runs.setup import open_run
from tests.conftest import make_config

runner = CliRunner()
QUERY_CAP = 6


@pytest.fixture(scope="module")
def finished_run(plugins, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = make_config(plugins, model="tiny", learner=["lora", "abmll"], epochs=1, lr=1e-2,
                         query_cap=QUERY_CAP, max_eval_tasks=1, log_var_init=-2.0,
                         plots=False, tensorboard=False, output_dir=str(out), run_name="r")
    return Engine(config, plugins).execute().run_dir


def first_test_split(plugins, run_dir: Path) -> tuple[str, list[dict], list[dict]]:
    """The first test task's support and query records, split as the protocol splits them."""
    setup = open_run(run_dir, plugins)
    task = setup.load_suite().test[0]
    order = list(task.records)
    random.Random(f"0:{task.name}").shuffle(order)
    n = setup.run.support_batches * setup.run.batch_size
    return (task.name, [r.to_dict() for r in order[:n]],
            [r.to_dict() for r in order[n: n + QUERY_CAP]])


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_adapting_on_a_test_tasks_support_reproduces_the_runs_test_predictions(
        plugins, finished_run, tmp_path):
    task, support, query = first_test_split(plugins, finished_run)
    result = adapt_run(finished_run, write_jsonl(tmp_path / "s.jsonl", support),
                       write_jsonl(tmp_path / "q.jsonl", query), learner="lora",
                       plugins=plugins)
    metrics = json.loads((finished_run / "metrics.json").read_text())
    saved = EvalResult.load(metrics["learners"]["lora"]["seeds"]["0"],
                            seed_dir(finished_run, "lora", 0) / PREDICTIONS_FILE).tasks[0]
    assert saved.task == task
    probs = torch.tensor([p.probs + [0.0] * (saved.probs.shape[1] - len(p.probs))
                          for p in result.predictions])
    torch.testing.assert_close(probs, saved.probs, atol=2e-5, rtol=0)
    assert [p.label for p in result.predictions] == [q["output"] for q in query]
    assert result.metrics["accuracy"] == pytest.approx(saved_metric(metrics, "accuracy"))
    assert result.labelled == len(query) and result.samples == 1
    assert all(p.spread is None for p in result.predictions)


def saved_metric(metrics: dict, name: str) -> float:
    return metrics["learners"]["lora"]["seeds"]["0"]["tasks"][
        next(iter(metrics["learners"]["lora"]["seeds"]["0"]["tasks"]))][name]


def test_abmll_with_several_samples_reports_their_spread_and_is_reproducible(
        plugins, finished_run, tmp_path):
    _, support, query = first_test_split(plugins, finished_run)
    for row in query[::2]:
        del row["output"]
    s, q = write_jsonl(tmp_path / "s.jsonl", support), write_jsonl(tmp_path / "q.jsonl", query)
    first = adapt_run(finished_run, s, q, learner="abmll", settings={"eval_samples": "4"},
                      plugins=plugins)
    assert first.samples == 4
    assert all(p.spread is not None and len(p.spread) == len(p.options)
               for p in first.predictions)
    assert max(max(p.spread) for p in first.predictions) > 1e-4  # at c = -2 noise matters
    for p in first.predictions:
        assert sum(p.probs) == pytest.approx(1, abs=1e-4)
        assert p.chosen == p.options[max(range(len(p.probs)), key=p.probs.__getitem__)]
    # unlabelled queries have no label; the metrics are over the labelled ones only
    assert [p.label is None for p in first.predictions] == [i % 2 == 0
                                                            for i in range(len(query))]
    assert first.labelled == len(query) // 2
    correct = [p.chosen == p.label for p in first.predictions if p.label is not None]
    assert first.metrics["accuracy"] == pytest.approx(sum(correct) / len(correct))
    again = adapt_run(finished_run, s, q, learner="abmll", settings={"eval_samples": "4"},
                      plugins=plugins)
    assert [p.probs for p in again.predictions] == [p.probs for p in first.predictions]
    one = adapt_run(finished_run, s, q, learner="abmll", plugins=plugins)
    assert one.samples == 1 and all(p.spread is None for p in one.predictions)


def test_the_command_prints_a_table_and_writes_json_lines(plugins, finished_run, tmp_path):
    _, support, query = first_test_split(plugins, finished_run)
    s, q = write_jsonl(tmp_path / "s.jsonl", support), write_jsonl(tmp_path / "q.jsonl", query)
    out = tmp_path / "pred.jsonl"
    app = build_app(plugins)
    result = runner.invoke(app, ["adapt", str(finished_run), "--support", str(s), "--query",
                                 str(q), "--learner", "lora", "--out", str(out)], color=False)
    assert result.exit_code == 0, result.output
    assert "lora seed 0, adapted on 10 support records" in result.output
    assert "labelled query records: accuracy" in result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(len(query)))
    assert {"input", "options", "probs", "chosen", "label", "correct"} <= set(lines[0])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"input": "x", "options": ["a", "b"]}])
    for args, message in [
        (["--support", str(bad), "--query", str(q)], "bad.jsonl, line 1: record has no 'output'"),
        (["--support", str(s), "--query", str(q), "--learner", "reptile"],
         "learner 'reptile' is not in run"),
        (["--support", str(s), "--query", str(q), "--seed", "3"], "seed 3 is not in run"),
        (["--support", str(tmp_path / "none.jsonl"), "--query", str(q)], "does not exist"),
        (["--support", str(s), "--query", str(write_jsonl(tmp_path / "six.jsonl", [
            {"input": "x", "options": list("abcdef")}]))],
         "six.jsonl, line 1: record has 6 options; at most 4 are supported"),
        (["--support", str(s), "--query", str(q), "--out", str(bad / "p.jsonl")],
         "is a file, not a directory"),
    ]:
        failed = runner.invoke(app, ["adapt", str(finished_run), *args], color=False)
        assert failed.exit_code == 1 and message in failed.output, failed.output
    with pytest.raises(MetaloraError, match="'options' must be a non-empty list"):
        adapt_run(finished_run, s, write_jsonl(tmp_path / "o.jsonl", [{"input": "x"}]),
                  plugins=plugins)


def test_a_finished_learner_of_a_partly_finished_run_can_be_adapted(plugins, finished_run,
                                                                   tmp_path):
    import shutil

    run = tmp_path / "partly"
    shutil.copytree(finished_run, run)
    (seed_dir(run, "abmll", 0) / "metrics.json").unlink()  # abmll did not finish
    _, support, query = first_test_split(plugins, finished_run)
    s, q = write_jsonl(tmp_path / "s.jsonl", support), write_jsonl(tmp_path / "q.jsonl", query)
    assert len(adapt_run(run, s, q, learner="lora", plugins=plugins).predictions) == len(query)
    with pytest.raises(MetaloraError, match="abmll"):
        adapt_run(run, s, q, learner="abmll", plugins=plugins)
