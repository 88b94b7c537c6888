"""torchrun runs: two gloo processes on CPU, started as torchrun would."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console

from metalora.distributed import Distributed, from_environment
from metalora.plugins import PluginManager
from metalora.runs.engine import Engine
from metalora.runs.rundir import METRICS_FILE, seed_dir
from tests.conftest import make_config

WORLD = 2
TRAINED = ("lora", "structured-lora", "reptile", "maml", "abmll")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank: int, port: int, out: str, job: Callable[[int, Path], None]) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank), HF_HUB_OFFLINE="1")
    torch.set_num_threads(1)
    try:
        job(rank, Path(out))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(job: Callable[[int, Path], None], out: Path) -> None:
    """Run ``job(rank, out)`` in two processes of one gloo group (re-raises a rank's error)."""
    mp.start_processes(_rank_main, args=(_free_port(), str(out), job), nprocs=WORLD,
                       start_method="spawn")


def _primitives(rank: int, out: Path) -> None:
    d = from_environment()
    with_grad, without = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    with_grad.grad = torch.full((3,), float(rank + 1))
    loss = d.average_gradients([with_grad, without], loss=float(rank))
    report = {
        "grad": with_grad.grad.tolist(), "zero": without.grad.tolist(), "loss": loss,
        "dealt": d.deal(list(range(5))), "dealt_all": d.deal_all(list(range(5))),
        "gathered": d.gather_dealt(d.deal_all(list(range(5))), 5),
        "finite": d.all_finite(float("nan") if rank == 1 else 1.0),
        "all_finite": d.all_finite(1.0), "broadcast": d.broadcast(f"from rank {rank}"),
    }
    (out / f"rank{rank}.json").write_text(json.dumps(report))


def test_primitives_average_deal_gather_and_agree(tmp_path: Path) -> None:
    run_ranks(_primitives, tmp_path)
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    for rank, report in enumerate(reports):
        assert report["grad"] == [1.5, 1.5, 1.5] and report["zero"] == [0.0, 0.0]
        assert report["loss"] == 0.5
        assert report["dealt"] == [[0, 2], [1, 3]][rank]  # equal counts: 4 of 5
        assert report["dealt_all"] == [[0, 2, 4], [1, 3]][rank]
        assert report["gathered"] == [0, 1, 2, 3, 4]
        assert report["finite"] is False and report["all_finite"] is True  # a NaN anywhere
        assert report["broadcast"] == "from rank 0"


def _config(out: Path):
    return make_config(PluginManager(), learner=list(TRAINED), model="tiny", tasks="demo",
                       device="cpu", epochs=1, max_train_tasks=4, max_eval_tasks=2,
                       query_cap=4, plots=False, tensorboard=False,
                       output_dir=str(out / "runs"), run_name="r", lr=1e-3, inner_lr=1e-3,
                       outer_lr=1e-3, inner_steps=2, log_var_init=-6.0)


def _train(rank: int, out: Path) -> None:
    original = Engine.test

    def test(self, learner, name, seed, episodes, metrics):  # keep the tested adapters
        torch.save(learner.adapters.snapshot(), out / f"{name}-rank{rank}.pt")
        return original(self, learner, name, seed, episodes, metrics)

    Engine.test = test
    summary = Engine(_config(out), PluginManager(), console=Console(quiet=True)).execute()
    (out / f"summary{rank}.json").write_text(json.dumps(summary.summary()))


def test_two_ranks_train_one_model_on_different_tasks(tmp_path: Path) -> None:
    """Every built-in learner that trains: the ranks end with bit-identical adapters."""
    before = set(Path(tempfile.gettempdir()).glob("metalora-rank*"))
    run_ranks(_train, tmp_path)
    run_dir = tmp_path / "runs" / "r"
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r"]  # rank 0 writes
    assert (run_dir / "results.csv").exists()
    assert set(Path(tempfile.gettempdir()).glob("metalora-rank*")) == before  # copies deleted
    summaries = [json.loads((tmp_path / f"summary{r}.json").read_text()) for r in range(WORLD)]
    assert summaries[0] == summaries[1]
    for name in TRAINED:
        ranks = [torch.load(tmp_path / f"{name}-rank{r}.pt") for r in range(WORLD)]
        assert ranks[0].keys() == ranks[1].keys()
        for key in ranks[0]:  # the global adapters stay identical on every rank
            assert torch.equal(ranks[0][key], ranks[1][key]), (name, key)
        assert any(key.endswith(".B") and ranks[0][key].abs().sum() > 0 for key in ranks[0])
    # run.json: every rank's device and peak memory, per learner and seed
    record = json.loads((run_dir / "run.json").read_text())
    for name in TRAINED:
        devices = record["seeds"][f"{name}/seed-0"]["devices"]
        assert [d["rank"] for d in devices] == [0, 1] and {d["device"] for d in devices} == {
            "cpu"}
        assert all(d["peak_rss_mb"] > 0 for d in devices)
    steps = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    abmll_tasks = {s["task"] for s in steps if s.get("learner") == "abmll"
                   and s.get("kind") == "step"}
    assert len(abmll_tasks) == 2  # rank 0 trained on its half of the 4 tasks
    # the gathered test results equal one process's evaluation of the same adapters
    engine = Engine(_config(tmp_path / "single"), PluginManager(), console=Console(quiet=True))
    suite = engine.load_suite()
    learner = engine.build_learner("abmll", 0)
    try:
        learner.adapters.restore(torch.load(tmp_path / "abmll-rank0.pt"))
        single = engine.test(learner, "abmll", 0, [engine.episodes.episode(t) for t in suite.test],
                             engine.metrics())
    finally:
        learner.adapters.remove()
    recorded = json.loads((seed_dir(run_dir, "abmll", 0) / METRICS_FILE).read_text())
    assert list(recorded["tasks"]) == [t.name for t in suite.test]  # gathered in order
    for task in single.tasks:
        expected = {k: v for k, v in recorded["tasks"][task.task].items() if k != "n"}
        assert task.metrics == pytest.approx(expected, abs=1e-9)


def test_a_single_process_is_not_distributed() -> None:
    assert from_environment() == Distributed()
    assert Distributed().deal([1, 2, 3]) == [1, 2, 3]
    assert Distributed().average_gradients([], 2.5) == 2.5


# -- what a torchrun run is on a given device, and resuming with another number of ranks ----


def test_the_backend_follows_the_runs_device_not_the_machine(monkeypatch) -> None:
    from metalora.distributed import backend_for

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert backend_for("cuda") == "nccl" and backend_for("cuda:0") == "nccl"
    assert backend_for("cpu") == "gloo"  # --device cpu on a GPU machine: NCCL cannot


def test_a_fixed_gpu_under_torchrun_is_refused_before_anything_loads(plugins,
                                                                      monkeypatch) -> None:
    from metalora.errors import MetaloraError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MetaloraError, match=r"--device cuda:1 under torchrun would put every "
                                            r"rank on one GPU; give --device cuda"):
        Engine(make_config(plugins, model="tiny", device="cuda:1"), plugins)
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process may pick its GPU
    Engine(make_config(plugins, model="tiny", device="cuda:1"), plugins)


def test_run_json_names_the_gpu_the_run_is_on(plugins, monkeypatch) -> None:
    from metalora.runs import provenance

    asked: list = []
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: asked.append(d) or "G")
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d=None: asked.append(d) or 0)
    session = provenance.session_record(plugins, "cuda:1", "bfloat16")
    record = provenance.device_record("cuda:1")
    assert session["cuda"] == "G" and record["name"] == "G"
    assert asked and all(d == torch.device("cuda:1") for d in asked)  # not GPU 0


def test_a_checkpoint_from_more_gpus_resumes_on_fewer(monkeypatch) -> None:
    import random

    from metalora.runs.checkpoint import capture_rng, restore_rng

    state = capture_rng(random.Random(0))
    state["cuda"] = [torch.tensor([1], dtype=torch.uint8), torch.tensor([2], dtype=torch.uint8)]
    put: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d=None: put.append((s, d)))
    restore_rng(state, random.Random(1), torch.device("cuda:0"))  # two GPUs' states, one GPU
    assert len(put) == 1 and int(put[0][0]) == 1 and put[0][1] == torch.device("cuda:0")
    state["cuda"] = torch.tensor([7], dtype=torch.uint8)  # this version's: one GPU's
    restore_rng(state, random.Random(1), torch.device("cuda:3"))
    assert int(put[1][0]) == 7 and put[1][1] == torch.device("cuda:3")
    restore_rng(state, random.Random(1), torch.device("cpu"))  # a GPU run resumed on CPU
    assert len(put) == 2


def _resume(rank: int, out: Path) -> None:
    from metalora.runs.engine import Engine as RunEngine

    RunEngine.from_run_dir(out / "runs" / "r", PluginManager(),
                           console=Console(quiet=True)).execute()


def test_a_one_process_run_interrupted_resumes_on_two_ranks(tmp_path: Path) -> None:
    from metalora.runs.engine import RunCallback
    from metalora.runs.state import RunInterrupted

    class StopAfterFirstEpoch(RunCallback):
        def on_epoch_end(self, learner, seed, epoch, validation) -> None:
            if epoch == 1:
                raise KeyboardInterrupt

    config = make_config(PluginManager(), learner=["reptile"], model="tiny", tasks="demo",
                         device="cpu", epochs=2, max_train_tasks=4, max_eval_tasks=1,
                         query_cap=4, plots=False, tensorboard=False, lr=1e-3, inner_steps=2,
                         output_dir=str(tmp_path / "runs"), run_name="r")
    with pytest.raises(RunInterrupted):
        Engine(config, PluginManager(), console=Console(quiet=True),
               callbacks=[StopAfterFirstEpoch()]).execute()
    run_ranks(_resume, tmp_path)
    run_dir = tmp_path / "runs" / "r"
    assert json.loads((run_dir / "state.json").read_text())["status"] == "finished"
    steps = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()
             if '"step"' in line and '"kind": "step"' in line]
    per_epoch = [sum(1 for s in steps if s["epoch"] == e) for e in (0, 1)]
    assert per_epoch == [4 * 3, 2 * 3]  # epoch 2 on two ranks: rank 0 logged its 2 tasks
