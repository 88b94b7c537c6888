"""Magnitude pruning (paper Table 2): the pruner, merged-mean pruning of a
learner's model, the sweep over a real run directory, and ``metalora prune``."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from metalora.cli import build_app
from metalora.errors import MetaloraError
from metalora.pruning import (
    MergedWeights,
    apply_pruning,
    parse_ratios,
    prune_learner,
    prune_targets,
    ratio_label,
)
from metalora.runs.engine import Engine
from metalora_plugins.magnitude import MagnitudePruner, pruned_rows
from tests.conftest import make_config

runner = CliRunner()
RATIOS = (0.01, 0.1, 0.2, 0.3)
RUN_SETTINGS = {"tasks": "demo", "model": "tiny", "max_train_tasks": 2, "query_cap": 6,
                "tensorboard": False, "plots": False}


def quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture(scope="module")
def app(plugins):
    return build_app(plugins)


@pytest.fixture(scope="module")
def run_dir(plugins, tmp_path_factory) -> Path:
    """A real run directory written by the engine: pretrained and lora, seeds 0 and 1."""
    out = tmp_path_factory.mktemp("runs")
    config = make_config(plugins, learner=["pretrained", "lora"], seeds=[0, 1], epochs=1,
                         output_dir=str(out), run_name="r", **RUN_SETTINGS)
    return Engine(config, plugins, console=quiet()).execute().run_dir


def lora_learner(plugins, seed: int = 0, **values):
    """A lora learner on the tiny model whose mean pair is random (a non-trivial mean)."""
    engine = Engine(make_config(plugins, learner=["lora"], **{**RUN_SETTINGS, **values}),
                    plugins, console=quiet())
    learner = engine.build_learner("lora", seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in learner.adapters.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return learner


def effective_weights(learner) -> dict[str, torch.Tensor]:
    """W0 + s * B @ A of the mean pair per adapted layer."""
    dense = learner.adapters.dense_update(learner.mean_pair)
    return {name: layer.base.weight.detach() + dense[name]
            for name, layer in learner.adapters.layers.items()}


def all_tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def snapshot_files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and "prune" not in p.parts}


def error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error:")]
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert len(lines) == 1, result.output
    return lines[0]


# -- the pruner ---------------------------------------------------------------------------
def test_magnitude_pruner_picks_the_smallest_rows_by_l2_norm():
    generator = torch.Generator().manual_seed(0)
    weights = {"a": torch.randn(64, 16, generator=generator),
               "b": torch.randn(32, 8, generator=generator),
               "ties": torch.ones(10, 4)}
    pruner = MagnitudePruner()
    for ratio in (0.0, *RATIOS, 0.55, 0.99):
        chosen = pruner.select(weights, ratio)
        assert set(chosen) == set(weights)
        for name, weight in weights.items():
            rows = chosen[name]
            k = round(ratio * weight.shape[0])
            assert rows.dtype == torch.int64
            assert rows.numel() == k == pruned_rows(ratio, len(weight))
            assert torch.equal(rows, rows.sort().values)
            norms = weight.norm(dim=1)
            kept = torch.ones(len(weight), dtype=torch.bool)
            kept[rows] = False
            if 0 < k < len(weight):
                assert norms[rows].max() <= norms[kept].min()
        assert torch.equal(chosen["ties"], torch.arange(round(ratio * 10)))  # ties: lower index
    assert all(r.numel() == 0 for r in pruner.select(weights, 0.0).values())


def test_magnitude_is_registered_as_a_pruner(plugins):
    assert plugins.registry("pruner").get("magnitude") is MagnitudePruner


@pytest.mark.parametrize("text", ["1", "1.5", "-0.1", "nan", "0.2,abc", ""])
def test_ratios_outside_zero_one_are_refused(text):
    with pytest.raises(MetaloraError):
        parse_ratios(text)


def test_ratios_are_sorted_and_labelled():
    assert parse_ratios("0.3, 0.01,0.1,0.01") == [0.01, 0.1, 0.3]
    assert [ratio_label(r) for r in (0.0, 0.01, 0.1, 0.3, 0.005)] == [
        "0% Pruned", "1% Pruned", "10% Pruned", "30% Pruned", "0.5% Pruned"]


# -- pruning a learner's model (merged mean) ------------------------------------------------
@pytest.mark.parametrize("ratio", RATIOS)
def test_exactly_the_smallest_merged_rows_are_zeroed_and_restored(plugins, ratio):
    learner = lora_learner(plugins)
    before = effective_weights(learner)
    tensors = all_tensors(learner.context.model)
    applied = prune_learner(learner, MagnitudePruner(), ratio)
    after = effective_weights(learner)
    for name, merged in before.items():
        d_out = merged.shape[0]
        k = round(ratio * d_out)
        zero = (after[name] == 0).all(dim=1)
        assert int(zero.sum()) == k == applied.counts[name]
        smallest = torch.argsort(merged.norm(dim=1), stable=True)[:k]
        assert set(zero.nonzero().flatten().tolist()) == set(smallest.tolist())
        assert torch.equal(after[name][~zero], merged[~zero])  # other rows bit for bit
        layer = learner.adapters.layers[name]
        assert (layer.base.weight[zero] == 0).all() and (layer.pairs["default"].B[zero] == 0).all()
    applied.restore()
    restored = all_tensors(learner.context.model)
    assert all(torch.equal(restored[k], v) for k, v in tensors.items())


def test_pruned_neurons_output_exact_zeros(plugins):
    learner = lora_learner(plugins)
    applied = prune_learner(learner, MagnitudePruner(), 0.3)
    outputs = {}
    hooks = [layer.register_forward_hook(
        lambda _m, _i, out, name=name: outputs.__setitem__(name, out.detach()))
        for name, layer in learner.adapters.layers.items()]
    with torch.no_grad():
        learner.context.model(input_ids=torch.randint(4, 2048, (2, 9)))
    for hook in hooks:
        hook.remove()
    for name, rows in applied.rows.items():
        assert rows.numel() > 0
        assert (outputs[name][..., rows] == 0).all()
        alive = outputs[name].abs().sum(dim=(0, 1)) > 0
        assert int(alive.sum()) == outputs[name].shape[-1] - len(rows)


def test_ratio_zero_changes_nothing(plugins):
    learner = lora_learner(plugins)
    model = learner.context.model
    ids = torch.randint(4, 2048, (2, 9))
    tensors = all_tensors(model)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    for scope in ("adapted", "all"):
        applied = prune_learner(learner, MagnitudePruner(), 0.0, scope=scope)
        assert sum(applied.counts.values()) == 0
        assert all(torch.equal(v, tensors[k]) for k, v in all_tensors(model).items())
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, logits)
        applied.restore()


def test_scope_all_prunes_every_linear_layer_of_the_blocks(plugins):
    learner = lora_learner(plugins)
    model = learner.context.model
    targets = prune_targets(model, learner.adapters, learner.mean_pair, "all")
    linear = {n for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear) and not n.endswith(".base")}
    adapted = set(learner.adapters.layers)
    assert set(targets) == (linear - {"lm_head"}) | adapted
    assert {n.rsplit(".", 1)[-1] for n in targets} == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all(targets[n].mean is not None for n in adapted)
    assert all(targets[n].mean is None for n in set(targets) - adapted)
    lm_head = model.lm_head.weight.detach().clone()
    before = {n: t.merged() for n, t in targets.items()}
    applied = apply_pruning(targets, MagnitudePruner().select(MergedWeights(targets), 0.2))
    for name, target in targets.items():
        k = round(0.2 * before[name].shape[0])
        assert int((target.merged() == 0).all(dim=1).sum()) == k == applied.counts[name]
    assert torch.equal(model.lm_head.weight, lm_head)
    applied.restore()
    assert all(torch.equal(t.merged(), before[n]) for n, t in targets.items())


def test_abmll_prunes_its_mean_pair_and_keeps_its_variance(plugins):
    if "abmll" not in plugins.registry("learner"):
        pytest.skip("abmll plugin not registered")
    engine = Engine(make_config(plugins, learner=["abmll"], **RUN_SETTINGS), plugins,
                    console=quiet())
    learner = engine.build_learner("abmll", 0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in learner.adapters.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    mean = learner.mean_pair
    variance = {k: v for k, v in learner.adapters.snapshot().items() if f".{mean}." not in k}
    before = {n: layer.base.weight.detach() + d
              for (n, layer), d in zip(learner.adapters.layers.items(),
                                       learner.adapters.dense_update(mean).values(), strict=True)}
    applied = prune_learner(learner, MagnitudePruner(), 0.2)
    dense = learner.adapters.dense_update(mean)
    for name, layer in learner.adapters.layers.items():
        zero = ((layer.base.weight + dense[name]) == 0).all(dim=1)
        assert int(zero.sum()) == round(0.2 * before[name].shape[0])
    now = learner.adapters.snapshot()
    assert all(torch.equal(now[k], v) for k, v in variance.items())
    applied.restore()
    learner.adapters.remove()


# -- the sweep on a run directory -----------------------------------------------------------
def test_prune_sweep_prints_table_2_and_never_touches_the_run(app, run_dir):
    files = snapshot_files(run_dir)
    result = runner.invoke(app, ["prune", str(run_dir), "--ratio", "0.2,0.01"], color=False,
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for text in ("0% Pruned", "1% Pruned", "20% Pruned", "pretrained", "lora", "Acc", "ECE",
                 "±"):
        assert text in result.output
    assert snapshot_files(run_dir) == files  # bytes and mtimes of every saved file
    (out,) = (run_dir / "prune").iterdir()
    assert out.name.endswith("-magnitude-adapted")
    rows = list(csv.reader((out / "results.csv").read_text().splitlines()))
    assert rows[0] == ["metric", "method", "0% Pruned", "1% Pruned", "20% Pruned"]
    assert [r[:2] for r in rows[1:5]] == [["Acc", "pretrained"], ["Acc", "lora"],
                                          ["ECE", "pretrained"], ["ECE", "lora"]]
    assert rows[6][:2] == ["accuracy_mean", "lora"]
    data = json.loads((out / "results.json").read_text())
    assert data["ratios"] == [0.0, 0.01, 0.2] and data["scope"] == "adapted"
    assert data["source"] == "run" and data["pruner"] == "magnitude"
    assert data["baseline_matches_run"] is True  # 0% reproduces the run's own test results
    if importlib.util.find_spec("matplotlib") is not None:  # the pruning curve, for a paper
        assert (out / "pruning.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / "pruning.pdf").read_bytes()[:5] == b"%PDF-"
    recorded = json.loads((run_dir / "metrics.json").read_text())["learners"]
    for row in data["rows"]:
        assert row["n_seeds"] == 2 and row["seeds"] == [0, 1]
        unpruned = row["ratios"]["0"]["summary"]
        summary = recorded[row["method"]]["summary"]
        for metric in ("accuracy", "ece"):
            assert unpruned[metric]["mean"] == pytest.approx(summary[metric]["mean"], abs=1e-9)
        pruned = row["ratios"]["0.2"]["seeds"]["0"]["pruned_rows"]
        assert pruned == {n: round(0.2 * (64 if not n.endswith("v_proj") else 32))
                          for n in pruned} and len(pruned) == 6


def test_prune_filters_learner_and_seeds_and_scope_all(app, run_dir):
    result = runner.invoke(app, ["prune", str(run_dir), "--ratio", "0.1", "--learner", "lora",
                                 "--seeds", "1", "--scope", "all", "--no-baseline"],
                           color=False, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = max((run_dir / "prune").glob("*-magnitude-all"))
    data = json.loads((out / "results.json").read_text())
    assert data["ratios"] == [0.1] and [r["method"] for r in data["rows"]] == ["lora"]
    (row,) = data["rows"]
    assert row["seeds"] == [1] and "10% Pruned" in row["Acc"]
    pruned = row["ratios"]["0.1"]["seeds"]["1"]["pruned_rows"]
    assert len(pruned) == 14 and pruned["model.layers.0.mlp.down_proj"] == 6


def test_prune_without_a_run_directory_builds_fresh_learners(app, tmp_path):
    result = runner.invoke(app, ["prune", "--learner", "pretrained", "--tasks", "demo", "--model",
                                 "tiny", "--ratio", "0.2", "--output-dir", str(tmp_path),
                                 "--query-cap", "4", "--max-eval-tasks", "1"],
                           color=False, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "20% Pruned" in result.output and "untrained" in result.output
    (created,) = tmp_path.iterdir()
    assert json.loads((created / "config.json").read_text())["learner"] == ["pretrained"]
    (out,) = (created / "prune").iterdir()
    data = json.loads((out / "results.json").read_text())
    assert data["source"] == "fresh" and data["ratios"] == [0.0, 0.2]
    assert [r["method"] for r in data["rows"]] == ["pretrained"]


def test_bad_prune_input_is_one_clear_line(app, run_dir, tmp_path):
    incomplete = tmp_path / "incomplete"
    shutil.copytree(run_dir, incomplete, ignore=shutil.ignore_patterns("prune", "checkpoints"))
    (incomplete / "lora" / "seed-1" / "metrics.json").unlink()
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    cases = [
        (["prune", str(run_dir), "--ratio", "1"], "pruning ratio 1 is outside [0, 1)"),
        (["prune", str(run_dir), "--ratio", "-0.1"], "pruning ratio -0.1 is outside [0, 1)"),
        (["prune", str(run_dir), "--ratio", "x"], "pruning ratio 'x' is not a number"),
        (["prune", str(tmp_path / "nope"), "--ratio", "0.1"], "does not exist"),
        (["prune", str(not_a_run), "--ratio", "0.1"], "is not a complete run directory"),
        (["prune", str(incomplete), "--ratio", "0.1"],
         "is incomplete: lora seed 1 has not finished"),
        (["prune", str(run_dir), "--learner", "abmll2"], "learner 'abmll2' is not in run"),
        (["prune", str(run_dir), "--seeds", "7"], "seed 7 is not in run"),
        (["prune", str(run_dir), "--epochs", "3"], "--epochs cannot be changed for a saved run"),
        (["prune", str(run_dir), "--scope", "everything"], "unknown pruning scope 'everything'"),
        (["prune", str(run_dir), "--pruner", "random"], "unknown pruner 'random'"),
    ]
    for args, message in cases:
        line = error_line(runner.invoke(app, args, color=False))
        assert message in line, (args, line)
    assert not (incomplete / "prune").exists()
