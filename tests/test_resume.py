"""Interrupted runs resume to exactly the results of an uninterrupted run.

A reference run (``pretrained`` and ``lora`` with a large learning rate, 3
epochs, seeds 0 and 1, tiny model, demo suite) is compared with runs that a
callback interrupts (``KeyboardInterrupt``, as Ctrl-C would) at an epoch
boundary, in the middle of an epoch, and before the first checkpoint, and
that are then resumed with :meth:`Engine.from_run_dir`: the tested adapters,
the final-epoch adapters, optimiser and RNG states, the metrics and even
``log.jsonl`` must be identical.
"""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from metalora.cli import build_app
from metalora.config import all_setting_infos, resolve_config
from metalora.interfaces import StepLog
from metalora.plugins import PluginManager
from metalora.runs.engine import Engine, RunCallback
from metalora.runs.results import RunSummary
from metalora.runs.rundir import load_adapters, seed_dir
from metalora.runs.state import RunInterrupted

SETTINGS = {
    "learner": "pretrained,lora", "tasks": "demo", "model": "tiny", "epochs": 3, "seeds": "0,1",
    "lr": 1e-2, "steps_per_task": 2, "max_train_tasks": 3, "max_eval_tasks": 1,
    "query_cap": 8, "support_batches": 1, "adapt_steps": 1, "eval_batch_size": 8,
    "tensorboard": False, "plots": False, "run_name": "run",
}
PAIRS = [("pretrained", 0), ("pretrained", 1), ("lora", 0), ("lora", 1)]


class Interrupt(RunCallback):
    """Raises ``KeyboardInterrupt`` at a chosen point of one learner/seed."""

    def __init__(self, learner: str, seed: int, *, after_epoch: int | None = None,
                 at_step: tuple[int, int] | None = None) -> None:
        self.target = (learner, seed)
        self.after_epoch = after_epoch
        self.at_step = at_step
        """(0-based epoch, step within the epoch)."""

    def on_step(self, learner: str, seed: int, step: StepLog) -> None:
        if (learner, seed) == self.target and (step.epoch, step.step) == self.at_step:
            raise KeyboardInterrupt

    def on_epoch_end(self, learner: str, seed: int, epoch: int, validation: Any) -> None:
        if (learner, seed) == self.target and epoch == self.after_epoch:
            raise KeyboardInterrupt


def engine(plugins: PluginManager, output: Path, callbacks=()) -> Engine:
    config = resolve_config(all_setting_infos(plugins), {},
                            {**SETTINGS, "output_dir": str(output)})
    return Engine(config, plugins, console=Console(file=io.StringIO()), callbacks=callbacks)


@pytest.fixture(scope="module")
def reference(plugins, tmp_path_factory) -> RunSummary:
    """The uninterrupted run."""
    return engine(plugins, tmp_path_factory.mktemp("reference")).execute()


def checkpoint_files(run_dir: Path, learner: str, seed: int) -> tuple[dict, dict]:
    """Latest checkpoint: adapter tensors and the state file."""
    directory = seed_dir(run_dir, learner, seed) / "checkpoints"
    index = json.loads((directory / "checkpoints.json").read_text())
    latest = index["latest"]
    return (load_adapters(directory / latest["adapters"]),
            torch.load(directory / latest["state"], weights_only=True))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def assert_same_state(a: Any, b: Any) -> None:
    """Nested equality with exact tensor comparison."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_state(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_state(x, y)
    else:
        assert a == b


def without_time(log: Path) -> list[dict]:
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert all("time" in line for line in lines)
    return [{k: v for k, v in line.items() if k != "time"} for line in lines]


def assert_same_run(resumed: RunSummary, reference: RunSummary) -> None:
    assert resumed.summary() == reference.summary()
    for learner, seed in PAIRS:
        ours, theirs = seed_dir(resumed.run_dir, learner, seed), seed_dir(reference.run_dir,
                                                                          learner, seed)
        assert_same_tensors(load_adapters(ours / "adapters.safetensors"),
                            load_adapters(theirs / "adapters.safetensors"))
        assert json.loads((ours / "metrics.json").read_text()) == json.loads(
            (theirs / "metrics.json").read_text())
        (adapters, state), (ref_adapters, ref_state) = (
            checkpoint_files(resumed.run_dir, learner, seed),
            checkpoint_files(reference.run_dir, learner, seed))
        assert_same_tensors(adapters, ref_adapters)
        assert_same_state(state, ref_state)  # optimiser, RNG states, history, log offset
    # every line the same but its wall-clock time
    assert without_time(resumed.run_dir / "log.jsonl") == without_time(
        reference.run_dir / "log.jsonl")
    for name in ("metrics.json", "results.json", "results.csv"):
        assert (resumed.run_dir / name).read_text() == (reference.run_dir / name).read_text()


@pytest.mark.parametrize("interrupt", [
    Interrupt("lora", 0, after_epoch=1),
    Interrupt("lora", 1, at_step=(1, 3)),
    Interrupt("lora", 0, at_step=(0, 2)),
], ids=["after-epoch-1", "mid-epoch-2-second-seed", "before-first-checkpoint"])
def test_interrupted_and_resumed_run_equals_uninterrupted(plugins, tmp_path, reference,
                                                          interrupt) -> None:
    with pytest.raises(RunInterrupted) as caught:
        engine(plugins, tmp_path, callbacks=[interrupt]).execute()
    run_dir = caught.value.run_dir
    assert caught.value.resume_command == f"metalora run --resume {run_dir}"
    assert json.loads((run_dir / "state.json").read_text())["status"] == "interrupted"
    learner, seed = interrupt.target
    assert not (seed_dir(run_dir, learner, seed) / "metrics.json").exists()
    finished = {pair: (seed_dir(run_dir, *pair) / "metrics.json").stat().st_mtime_ns
                for pair in PAIRS if (seed_dir(run_dir, *pair) / "metrics.json").exists()}
    assert ("pretrained", 1) in finished and ("lora", 1) not in finished

    out = io.StringIO()
    resumed = Engine.from_run_dir(run_dir, plugins, console=Console(file=out, width=200)).execute()
    assert_same_run(resumed, reference)
    for pair, mtime in finished.items():  # finished pairs were kept, not recomputed
        assert (seed_dir(run_dir, *pair) / "metrics.json").stat().st_mtime_ns == mtime
    assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"
    record = json.loads((run_dir / "run.json").read_text())
    assert len(record["sessions"]) == 2  # the interrupted session and the resumed one
    interrupted = record["seeds"][f"{learner}/seed-{seed}"]
    assert interrupted["sessions"] == 2 and interrupted["finished"] is not None
    assert all(record["seeds"][f"{a}/seed-{b}"]["sessions"] == 1 for a, b in finished)
    if interrupt.after_epoch == 1:
        assert "lora seed 0: resuming after epoch 1" in out.getvalue()


def test_resuming_a_finished_run_changes_nothing(plugins, tmp_path) -> None:
    config = resolve_config(all_setting_infos(plugins), {},
                            {**SETTINGS, "learner": "pretrained", "seeds": "0",
                             "output_dir": str(tmp_path)})
    first = Engine(config, plugins, console=Console(file=io.StringIO())).execute()
    again = Engine.from_run_dir(first.run_dir, plugins,
                                console=Console(file=io.StringIO())).execute()
    assert again.summary() == first.summary()
    assert again.results["pretrained"][0].test.tasks[0].probs.equal(
        first.results["pretrained"][0].test.tasks[0].probs)


# -- the command line ------------------------------------------------------------------------
def test_resume_errors_are_one_line(plugins, tmp_path) -> None:
    app = build_app(plugins)
    runner = CliRunner()
    missing = runner.invoke(app, ["run", "--resume", str(tmp_path / "nope")])
    assert missing.exit_code == 1
    assert missing.output.strip().splitlines() == [
        f"Error: run directory '{tmp_path / 'nope'}' does not exist"]
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["run", "--resume", str(tmp_path / "empty")])
    assert empty.exit_code == 1
    assert "not a complete run directory: no config.json" in empty.output
    assert len(empty.output.strip().splitlines()) == 1
    mixed = runner.invoke(app, ["run", "--resume", str(tmp_path / "empty"), "--epochs", "5"])
    assert mixed.exit_code == 1
    assert "remove --epochs" in mixed.output


def test_ctrl_c_prints_the_resume_command(plugins, tmp_path, monkeypatch) -> None:
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Engine, "run_seed", interrupted)
    args = ["run", "--output-dir", str(tmp_path)]
    for key, value in SETTINGS.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            args.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            args += [f"--{flag}", str(value)]
    result = CliRunner().invoke(build_app(plugins), args, env={"COLUMNS": "300"})
    assert result.exit_code == 130
    assert f"Resume with: metalora run --resume {tmp_path / 'run'}" in result.output
    assert (tmp_path / "run" / "config.json").exists()


def test_sigterm_is_handled_like_ctrl_c(plugins, tmp_path) -> None:
    class Terminate(RunCallback):
        def on_step(self, learner: str, seed: int, step: StepLog) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    config = resolve_config(all_setting_infos(plugins), {},
                            {**SETTINGS, "learner": "lora", "seeds": "0", "epochs": 1,
                             "output_dir": str(tmp_path)})
    with pytest.raises(RunInterrupted):
        Engine(config, plugins, console=Console(file=io.StringIO()),
               callbacks=[Terminate()]).execute()
    assert json.loads((tmp_path / "run" / "state.json").read_text())["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) is before


class _Payload:
    """Unpickling this runs ``os.system`` (what a crafted checkpoint could do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_is_refused_without_running_it(plugins, tmp_path) -> None:
    """--resume never unpickles arbitrary objects: one error line naming the file."""
    import pickle

    with pytest.raises(RunInterrupted) as caught:
        engine(plugins, tmp_path, callbacks=[Interrupt("lora", 0, after_epoch=1)]).execute()
    run_dir = caught.value.run_dir
    checkpoints = seed_dir(run_dir, "lora", 0) / "checkpoints"
    (state,) = checkpoints.glob("epoch-*.pt")
    marker = tmp_path / "pwned"
    state.write_bytes(pickle.dumps({"rng": _Payload(marker)}))
    result = CliRunner().invoke(build_app(plugins), ["run", "--resume", str(run_dir)])
    assert not marker.exists(), "the checkpoint's code ran"
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines()
             if line.startswith(("Error", "Traceback"))]
    assert len(lines) == 1 and str(state) in lines[0], result.output
    assert "not loaded" in lines[0]
