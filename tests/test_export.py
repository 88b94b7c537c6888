"""``metalora export --format peft``: the global mean adapters as a PEFT LoRA adapter that
``PeftModel.from_pretrained`` loads with the same logits as metalora's own model."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from rich.console import Console
from safetensors import safe_open
from typer.testing import CliRunner

from metalora.cli import build_app
from metalora.models import load_model
from metalora.runs.engine import Engine
from metalora.runs.export import (
    EXPORT_INFO_FILE,
    PEFT_CONFIG_FILE,
    PEFT_WEIGHTS_FILE,
    SIDECAR_FILE,
    export_peft,
)
from metalora.runs.rundir import (
    ADAPTERS_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    load_adapters,
    save_adapters,
    seed_dir,
)
from metalora.runs.rundir import write_json as write_json_file
from tests.conftest import make_config

runner = CliRunner()
IDS = torch.randint(4, 2048, (2, 11), generator=torch.Generator().manual_seed(0))


def quiet() -> Console:
    return Console(file=io.StringIO())


def fake_run(plugins, root: Path, learners: list[str], seeds=(0, 1), **values):
    """A finished-looking run directory whose adapters are random (a strong round-trip test).

    Returns the run directory and, per learner, the learner of the first seed (adapters
    attached to its own tiny model).
    """
    config = make_config(plugins, learner=learners, seeds=list(seeds), model="tiny",
                         tasks="demo", output_dir=str(root), run_name="fake", **values)
    engine = Engine(config, plugins, console=quiet())
    run_dir = engine.make_run_dir()
    write_json_file(run_dir / CONFIG_FILE, engine.resolved_config())
    built = {}
    for name in learners:
        for seed in seeds:
            engine.setup.unload_model()  # every learner gets its own model
            learner = engine.build_learner(name, seed)
            generator = torch.Generator().manual_seed(100 + seed)
            with torch.no_grad():
                for param in learner.adapters.parameters():
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
            save_adapters(seed_dir(run_dir, name, seed) / ADAPTERS_FILE,
                          learner.adapters.snapshot())
            write_json_file(seed_dir(run_dir, name, seed) / METRICS_FILE,
                            {"macro": {}, "tested_epoch": 3})
            if seed == seeds[0]:
                built[name] = learner
    return run_dir, built


def peft_logits(out: Path) -> torch.Tensor:
    model = PeftModel.from_pretrained(load_model("tiny").model, str(out))
    with torch.no_grad():
        return model(input_ids=IDS).logits


def own_logits(learner) -> torch.Tensor:
    with torch.no_grad():
        return learner.context.model(input_ids=IDS).logits


def base_logits() -> torch.Tensor:
    with torch.no_grad():
        return load_model("tiny").model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def app(plugins):
    return build_app(plugins)


def test_lora_round_trip_through_peft_gives_equal_logits(plugins, tmp_path):
    run_dir, built = fake_run(plugins, tmp_path, ["lora"])
    out = tmp_path / "peft"
    result = export_peft(run_dir, plugins, out)
    assert (result.learner, result.seed, result.mean_pair) == ("lora", 0, "default")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE, EXPORT_INFO_FILE])
    ours = own_logits(built["lora"])
    assert (ours - base_logits()).abs().max() > 1e-2  # the adapters matter
    torch.testing.assert_close(peft_logits(out), ours, atol=1e-5, rtol=0)
    config = json.loads((out / PEFT_CONFIG_FILE).read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16 and config["lora_dropout"] == 0
    assert sorted(config["target_modules"]) == ["o_proj", "q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == "tiny" and config["peft_type"] == "LORA"
    info = json.loads((out / EXPORT_INFO_FILE).read_text())
    assert info["tested_epoch"] == 3 and info["scaling"] == 2.0 and info["sidecar_pairs"] == []


def test_smollm2_exports_point_at_its_dequantised_checkpoint(plugins, tmp_path, monkeypatch):
    """The alias is not a hub id: the config names the checkpoint the adapters were trained on."""
    monkeypatch.setenv("METALORA_CACHE_DIR", str(tmp_path / "cache"))
    run_dir, _ = fake_run(plugins, tmp_path, ["lora"], seeds=(0,))
    recorded = json.loads((run_dir / CONFIG_FILE).read_text())
    write_json_file(run_dir / CONFIG_FILE, {**recorded, "model": "smollm2-135m"})
    export_peft(run_dir, plugins, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / PEFT_CONFIG_FILE).read_text())
    expected = tmp_path / "cache" / "models" / "smollm2-135m-instruct"
    assert config["base_model_name_or_path"] == str(expected)


def test_tensor_names_match_what_peft_saves(plugins, tmp_path):
    run_dir, _ = fake_run(plugins, tmp_path, ["lora"], seeds=(0,))
    export_peft(run_dir, plugins, tmp_path / "ours")
    theirs = tmp_path / "theirs"
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                        lora_dropout=0.0, task_type="CAUSAL_LM")
    get_peft_model(load_model("tiny").model, config).save_pretrained(str(theirs))
    shapes = {}
    for where in ("ours", "theirs"):
        with safe_open(str(tmp_path / where / PEFT_WEIGHTS_FILE), framework="pt") as handle:
            shapes[where] = {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}  # noqa: SIM118
            assert handle.metadata() == {"format": "pt"}
    assert shapes["ours"] == shapes["theirs"]


def test_round_trip_without_peft_installed_at_export_time(plugins, tmp_path, monkeypatch):
    run_dir, built = fake_run(plugins, tmp_path, ["lora"], seeds=(0,))
    monkeypatch.setitem(sys.modules, "peft", None)  # `from peft import ...` raises ImportError
    export_peft(run_dir, plugins, tmp_path / "plain")
    monkeypatch.undo()
    assert "peft_version" not in json.loads((tmp_path / "plain" / PEFT_CONFIG_FILE).read_text())
    torch.testing.assert_close(peft_logits(tmp_path / "plain"), own_logits(built["lora"]),
                               atol=1e-5, rtol=0)


def test_abmll_exports_its_mean_and_a_variance_sidecar(plugins, tmp_path):
    if "abmll" not in plugins.registry("learner"):
        pytest.skip("abmll plugin not registered")
    run_dir, built = fake_run(plugins, tmp_path, ["abmll"], seeds=(0,), sampling="mean")
    learner = built["abmll"]
    learner.reset_task()  # the task pairs start from the global pairs, as at test time
    ours = own_logits(learner)  # metalora's model with the posterior mean (no noise)
    assert (ours - base_logits()).abs().max() > 1e-2
    out = tmp_path / "abmll-peft"
    result = export_peft(run_dir, plugins, out)
    assert result.mean_pair == "mu_theta" and "logv_theta" in result.sidecar_pairs
    torch.testing.assert_close(peft_logits(out), ours, atol=1e-5, rtol=0)
    with safe_open(str(out / SIDECAR_FILE), framework="pt") as handle:
        keys = set(handle.keys())
    assert "model.layers.0.self_attn.q_proj.pairs.logv_theta.B" in keys
    assert not any(".pairs.mu_theta." in k for k in keys)
    info = json.loads((out / EXPORT_INFO_FILE).read_text())
    assert info["mean_pair"] == "mu_theta" and SIDECAR_FILE in info["files"]
    assert "log_var_init" in info["learner_settings"]


def test_export_of_a_real_run_from_the_command_line(app, plugins, tmp_path):
    config = make_config(plugins, learner=["lora"], tasks="demo", model="tiny", epochs=1,
                         eval_every=0, max_train_tasks=1, max_eval_tasks=1, query_cap=2,
                         tensorboard=False, plots=False, output_dir=str(tmp_path),
                         run_name="real")
    run_dir = Engine(config, plugins, console=quiet()).execute().run_dir
    out = tmp_path / "exported"
    result = runner.invoke(app, ["export", str(run_dir), "--format", "peft", "--out", str(out)],
                           color=False, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "Exported lora seed 0" in result.output and "PeftModel.from_pretrained" in result.output
    engine = Engine.from_run_dir(run_dir, plugins, console=quiet())
    learner = engine.build_learner("lora", 0)
    learner.adapters.restore(load_adapters(seed_dir(run_dir, "lora", 0) / ADAPTERS_FILE))
    torch.testing.assert_close(peft_logits(out), own_logits(learner), atol=1e-5, rtol=0)


def test_bad_export_input_is_one_clear_line(app, plugins, tmp_path):
    run_dir, _ = fake_run(plugins, tmp_path, ["pretrained", "lora"])
    (seed_dir(run_dir, "lora", 1) / ADAPTERS_FILE).unlink()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    cases = [
        (["export", str(run_dir), "--out", str(tmp_path / "o")],
         "holds several learners; pick one with --learner (valid choices: pretrained, lora)"),
        (["export", str(run_dir), "--learner", "lora", "--format", "onnx"],
         "unknown export format 'onnx'; valid choices: peft"),
        (["export", str(tmp_path / "nope"), "--learner", "lora"], "does not exist"),
        (["export", str(run_dir), "--learner", "lora", "--seed", "1"],
         "lora/seed-1/adapters.safetensors of run"),
        (["export", str(run_dir), "--learner", "lora", "--seed", "5"], "seed 5 is not in run"),
        (["export", str(run_dir), "--learner", "maml", "--out", str(tmp_path / "o")],
         "learner 'maml' is not in run"),
        (["export", str(run_dir), "--learner", "lora", "--out", str(busy)], "is not empty"),
        (["export", str(run_dir), "--learner", "lora", "--out", str(run_dir)],
         "would overwrite the run"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args, color=False)
        lines = [ln for ln in result.output.strip().splitlines() if ln.startswith("Error:")]
        assert result.exit_code == 1 and len(lines) == 1, result.output
        assert message in lines[0], (args, lines[0])
    assert sorted(p.name for p in busy.iterdir()) == ["keep.txt"]
    ok = runner.invoke(app, ["export", str(run_dir), "--learner", "lora", "--out", str(busy),
                             "--overwrite"], color=False)
    assert ok.exit_code == 0, ok.output
    assert (busy / PEFT_WEIGHTS_FILE).exists() and (busy / "keep.txt").exists()
