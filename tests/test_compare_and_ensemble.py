"""``metalora compare`` (paired differences on the same queries, figures) and the
``ensemble`` plugin (K members' predictions averaged), on the shared finished tiny run."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest
from typer.testing import CliRunner

import metalora.api as ml
from metalora.cli import build_app
from metalora.errors import MetaloraError
from metalora.paired import paired_difference, query_scores
from metalora_plugins.ensemble import average_members, build_ensemble


def test_compare_pairs_by_seed_and_matches_a_direct_paired_difference(finished_tiny_run,
                                                                      tmp_path):
    run_dir = finished_tiny_run.run_dir
    result = ml.compare([f"{run_dir}:lora", f"{run_dir}:abmll"], output=tmp_path)
    label = f"{run_dir}:abmll"
    assert result.stratified[label]
    run = ml.open_run(run_dir)
    a, b = ({(s, *k): v.nll for s in (0, 1)
             for k, v in query_scores(run.predictions(name, s)).items()}
            for name in ("abmll", "lora"))
    direct = paired_difference(a, b, strata={k: k[0] for k in a})
    assert result.differences[label]["nll"].mean == pytest.approx(direct.mean, abs=1e-12)
    assert result.differences[label]["nll"].se == pytest.approx(direct.se, abs=1e-12)
    assert result.differences[label]["nll"].mean == pytest.approx(
        result.means[label]["nll"] - result.means[f"{run_dir}:lora"]["nll"], abs=1e-9)
    for name in ("risk_coverage", "reliability"):
        for suffix in ("png", "pdf"):
            assert (tmp_path / f"{name}.{suffix}").stat().st_size > 1000
    saved = json.loads((tmp_path / "comparison.json").read_text())
    assert saved["reference"] == f"{run_dir}:lora"


def test_compare_against_itself_is_zero_and_bad_sources_are_one_line(finished_tiny_run):
    run_dir = finished_tiny_run.run_dir
    with pytest.raises(MetaloraError, match="given twice"):
        ml.compare([f"{run_dir}:lora", f"{run_dir}:lora"])
    with pytest.raises(MetaloraError, match="name one as PATH:LEARNER"):
        ml.compare([run_dir, f"{run_dir}:lora"])
    with pytest.raises(MetaloraError, match="no predictions of 'nope'; valid choices: abmll"):
        ml.compare([f"{run_dir}:nope", f"{run_dir}:lora"])
    with pytest.raises(MetaloraError, match="at least two"):
        ml.compare([f"{run_dir}:lora"])


def test_named_sources_label_the_comparison_and_long_names_keep_the_figures_readable(
        finished_tiny_run, tmp_path):
    run_dir = finished_tiny_run.run_dir
    long_name = " ".join(["a source named at length, as an eval directory would be"] * 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when its layout gives up
        result = ml.compare([f"lora (seeds 0, 1)={run_dir}:lora",
                             f"{long_name}={run_dir}:abmll"], output=tmp_path)
    assert result.sources == ["lora (seeds 0, 1)", long_name]
    assert json.loads((tmp_path / "comparison.json").read_text())["reference"] == (
        "lora (seeds 0, 1)")
    with pytest.raises(MetaloraError, match="names no source"):
        ml.compare([f"={run_dir}:lora", f"{run_dir}:abmll"])


def test_the_compare_command_prints_the_paired_table(plugins, finished_tiny_run):
    run_dir = finished_tiny_run.run_dir
    out = CliRunner().invoke(build_app(plugins), ["compare", f"{run_dir}:pretrained",
                                                  f"{run_dir}:lora"])
    assert out.exit_code == 0, out.output
    assert "reference" in out.output and "±" in out.output


def test_an_ensemble_of_identical_members_equals_one_member(finished_tiny_run, tmp_path):
    run_dir = finished_tiny_run.run_dir
    copy = tmp_path / "copy"
    shutil.copytree(run_dir / "lora", copy / "lora")
    (copy / "lora" / "seed-1").rename(copy / "lora" / "seed-7")  # a second "run"
    shutil.rmtree(copy / "lora" / "seed-0")
    one = ml.predictions(f"{run_dir}:lora").seeds[1]
    result = build_ensemble([f"{run_dir}", copy], learner="lora")
    assert len(result.members) == 3
    twice = average_members({"a": one, "b": one})
    assert [r["probs"] for r in twice] == [r["probs"] for r in one]


def test_the_ensembles_nll_is_at_most_its_members_mean(finished_tiny_run, tmp_path):
    """Jensen: -log of the mean probability is at most the mean of -log, query by query."""
    run_dir = finished_tiny_run.run_dir
    result = build_ensemble([run_dir], learner="abmll", output=tmp_path)
    members = [result.scores[m]["nll"] for m in result.members]
    assert result.scores["ensemble"]["nll"] <= sum(members) / len(members) + 1e-9
    assert result.records[0]["members"] == 2
    # the output reads as a source for compare, paired with its members' run
    compared = ml.compare([f"{run_dir}:abmll", tmp_path])
    assert not compared.stratified[f"{tmp_path}:abmll-ensemble"]  # seed 0 vs seeds 0, 1
    assert math.isfinite(compared.differences[f"{tmp_path}:abmll-ensemble"]["nll"].se)


def test_an_ensemble_needs_two_members_on_the_same_queries(finished_tiny_run):
    run_dir = finished_tiny_run.run_dir
    records = ml.predictions(f"{run_dir}:lora").seeds[0]
    with pytest.raises(MetaloraError, match="at least 2 members"):
        average_members({"a": records})
    with pytest.raises(MetaloraError, match="not evaluated on the same queries"):
        average_members({"a": records, "b": records[1:]})
    changed = [dict(r, label=(int(r["label"]) + 1) % len(r["probs"])) for r in records]
    with pytest.raises(MetaloraError, match="disagree on query"):
        average_members({"a": records, "b": changed})


@pytest.mark.parametrize("plot", ["plot_risk_coverage", "plot_reliability_combined"])
def test_many_sources_keep_the_axes_readable_and_every_line_apart(plot, tmp_path,
                                                                  monkeypatch):
    pytest.importorskip("matplotlib")
    import torch

    from metalora.runs import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    generator = torch.Generator().manual_seed(0)
    pooled = {f"source {i}, its name as long as a row of the uncertainty table's": (
        torch.softmax(torch.randn(50, 3, generator=generator), -1),
        torch.randint(0, 3, (50,), generator=generator)) for i in range(16)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when its layout gives up
        getattr(plots, plot)(pooled, tmp_path / "figure.png", "sixteen sources")
        fig = drawn[0]
        fig.draw_without_rendering()  # the constrained layout places the axes
    ax = fig.axes[0]
    assert ax.get_position().height * fig.get_figheight() > 2.0  # inches, not a sliver
    styles = {(line.get_color(), line.get_linestyle()) for line in ax.lines
              if not line.get_label().startswith("_")}
    assert len(styles) == 16  # no two sources drawn alike


def test_past_ten_learners_every_figure_draws_each_apart(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from matplotlib.container import Container

    from metalora.runs import plots

    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig) or path)
    names = [f"learner {i}" for i in range(12)]
    plots.plot_training({n: [[(s, 1.0 / (s + i + 1)) for s in range(40)]] for i, n in
                         enumerate(names)}, tmp_path / "training.png")
    plots.plot_validation({n: [[{"epoch": e, "accuracy": 0.5 + i / 100, "ece": 0.1}
                                for e in range(1, 4)]] for i, n in enumerate(names)},
                          tmp_path / "validation.png")
    plots.plot_pruning({n: {r: {"accuracy": (0.5 + i / 100, 0.01), "ece": (0.1, 0.01)}
                            for r in (0.0, 0.1, 0.2)} for i, n in enumerate(names)},
                       tmp_path / "pruning.png", "pruning")
    assert len(drawn) == 3
    for fig in drawn:
        handles, labels = fig.axes[0].get_legend_handles_labels()
        assert labels == names
        lines = [h[0] if isinstance(h, Container) else h for h in handles]
        assert len({(line.get_color(), line.get_linestyle()) for line in lines}) == 12
