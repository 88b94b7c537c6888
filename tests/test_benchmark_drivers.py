"""The benchmark drivers build jobs the Python API accepts (every setting name and value is
checked by :func:`metalora.api.run_spec`, as the job would be)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

import metalora.api as ml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _train_settings(job: dict) -> dict:
    assert job["kind"] == "train", job
    return job["settings"]


def test_every_job_of_the_protocol_is_a_valid_run_spec(plugins, tmp_path) -> None:
    import protocol

    args = protocol.parse_args(["--data-dir", str(tmp_path), "--output-dir",
                                str(tmp_path / "out")])
    driver = protocol.Protocol(args)
    jobs = driver.selection_jobs()
    assert {j.learner for j in jobs} == {"pretrained", "lora", "structured-lora", "reptile",
                                        "abmll"}
    for job in jobs:
        spec = ml.run_spec(plugins=plugins, **_train_settings(driver.command(job)))
        assert spec.training.learner == (job.learner,) and spec.data.tasks == "cls45"
    evaluation = driver.command(protocol.Job("x", "abmll", 0, kind="samples"))
    assert evaluation == {"kind": "evaluate", "run_dir": str(tmp_path / "out" / "x"),
                          "options": {"split": "validation",
                                      "settings": {"eval_samples": protocol.SAMPLES}}}


def test_the_c_cells_of_the_ablation_hold_lambda() -> None:
    import math

    import protocol

    for c in protocol.C_CELLS:
        beta = float(protocol.lambda_held_beta(c))
        assert beta * math.exp(-float(c)) == pytest.approx(1e-8 * math.exp(20), rel=1e-3)


def test_every_arm_of_the_mechanism_experiment_is_a_valid_run_spec(plugins, tmp_path) -> None:
    import mechanism

    args = mechanism.parse_args(["--data-dir", str(tmp_path), "--output-dir",
                                 str(tmp_path / "out")])
    jobs = dict(mechanism.Experiment(args).ready())
    assert len(jobs) == len(mechanism.ARMS) * len(mechanism.SEEDS)  # nothing run yet
    for name, job in jobs.items():
        spec = ml.run_spec(plugins=plugins, **_train_settings(job))
        assert spec.training.epochs == 3 and spec.training.eval_every == 0
        assert spec.protocol.query_cap == 100, name
    d = ml.run_spec(plugins=plugins, **_train_settings(jobs["D-seed0"]))
    assert d.settings["abmll"].variance_optimizer == "adamw"
    assert d.settings["normal-gamma"].prior_jacobian is True


def test_every_arm_and_evaluation_of_the_uncertainty_comparison_is_valid(plugins,
                                                                         tmp_path) -> None:
    import uncertainty

    from metalora.runs.evaluate_run import EVALUATION_SETTINGS

    args = uncertainty.parse_args(["--data-dir", str(tmp_path), "--output-dir",
                                   str(tmp_path / "out")])
    jobs = dict(uncertainty.Comparison(args).ready())
    seeded = sum(arm.seeded for arm in uncertainty.ARMS)
    assert seeded == len(uncertainty.ARMS) - 2  # the frozen model's arms run once
    assert len(jobs) == seeded * 3 + 2  # three seeds, nothing run yet
    assert "pretrained-seed0" in jobs and "pretrained-seed1" not in jobs
    for name, job in jobs.items():
        spec = ml.run_spec(plugins=plugins, **_train_settings(job))
        assert spec.training.epochs == 3 and spec.training.eval_every == 0, name
        in_context = name.startswith("icl-")  # the first 20 queries only: prompts ~10x longer
        assert spec.protocol.query_cap == (20 if in_context else 100), name
        assert spec.protocol.in_context == (10 if in_context else 0), name
    arms = {arm.name: arm for arm in uncertainty.ARMS}
    for row in uncertainty.ROWS:
        learner = plugins.registry("learner").get(arms[row.arm].learner)
        for key, _ in row.evaluation:  # what `metalora eval --set` accepts for that learner
            assert key in EVALUATION_SETTINGS or key in learner.evaluation_settings, (row, key)
    assert sum(r.name == uncertainty.REFERENCE for r in uncertainty.ROWS) == 1
    built_on_lora = {"laplace-lora", "mc-dropout", "blob"}  # each also paired with lora
    assert all(row.base == "lora" for row in uncertainty.ROWS
               if arms[row.arm].learner in built_on_lora)
    # lora's own evaluations that add to it (temperature, demonstrations) are paired with it,
    # or with the lora row they change (all demonstrations against those 512 tokens hold)
    by_name = {row.name: row for row in uncertainty.ROWS}
    assert all(row.base is not None and by_name[row.base].arm == "lora"
               for row in uncertainty.ROWS if row.arm == "lora" and row.evaluation)
    for row in uncertainty.ROWS:  # the whole-prompt rows: one setting more than their base
        if ("max_length", uncertainty.WHOLE_PROMPT) in row.evaluation:
            base = by_name[row.base]
            assert dict(row.evaluation) == {**dict(base.evaluation or arms[base.arm].options),
                                            "max_length": uncertainty.WHOLE_PROMPT}, row
    every_query = [row for row in uncertainty.ROWS if row.name.endswith(", every query")]
    assert len(every_query) == 4  # the frozen model's and lora's, 512 and 4096 tokens, uncapped
    for row in every_query:  # the 20-query rows' demonstrations, on the run's 100 queries
        whole = {"max_length": uncertainty.WHOLE_PROMPT} if "4096 tokens" in row.name else {}
        assert dict(row.evaluation) == {"in_context": 10, **whole}, row
        assert "query_cap" not in dict(arms[row.arm].options), row
    assert arms["lora"].options == arms["laplace"].options  # trained alike
    blob = ml.run_spec(plugins=plugins, **_train_settings(jobs["blob-kl0.02-seed0"]))
    assert blob.settings["blob"].lr == 3e-4
    some = uncertainty.parse_args(["--data-dir", str(tmp_path), "--output-dir",
                                   str(tmp_path / "out"), "--arms", "laplace,blob-kl0"])
    assert sorted(dict(uncertainty.Comparison(some).ready())) == [
        f"{arm}-seed{seed}" for arm in ("blob-kl0", "laplace") for seed in (0, 1, 2)]
    with pytest.raises(SystemExit):
        uncertainty.parse_args(["--arms", "lora,map"])  # no arm map


def test_the_uncertainty_references_count_every_seeds_queries() -> None:
    import uncertainty

    def records(task: str, labels: list[int]) -> list[dict]:
        return [{"task": task, "index": i, "probs": [0.5, 0.5], "label": y}
                for i, y in enumerate(labels)]

    by_seed = {0: records("a", [0, 0, 1]), 1: records("a", [1, 1, 1, 0]) + records("b", [0])}
    # first option: 2 + 1 + 1 of 8 queries; majority: 2 + 3 + 1 of 8
    assert uncertainty._references(by_seed) == [
        "References on the same queries: always the first option 50.0%, always the task's "
        "majority answer among its queries 75.0% (an oracle: it reads the query labels)."]


def test_an_in_context_row_is_paired_with_its_base_on_its_own_queries(tmp_path,
                                                                      monkeypatch) -> None:
    import uncertainty

    def records(probs: list[list[float]]) -> list[dict]:
        return [{"task": "a", "index": i, "probs": p, "label": 0} for i, p in enumerate(probs)]

    base = records([[0.5, 0.5], [0.8, 0.2], [0.1, 0.9], [0.1, 0.9]])
    added = records([[1.0, 0.0], [0.8, 0.2]])  # the first 2 queries only
    icl = next(r for r in uncertainty.ROWS if r.arm == "icl")
    by_name = {icl.name: {0: added}, icl.base: {0: base}}
    monkeypatch.setattr(uncertainty.Comparison, "records",
                        lambda self, row: by_name.get(row.name, {}))
    args = uncertainty.parse_args(["--output-dir", str(tmp_path)])
    (line,) = uncertainty.Comparison(args)._with_base()
    # base on those 2 queries: accuracy 100% (a tie takes the first option); per-query
    # differences NLL (0 - ln 2, 0) and Brier (0 - 0.5, 0); bootstrap SE ~ sd / sqrt(2)
    assert line.startswith(f"{icl.name} minus {icl.base}, on the 2 queries both have "
                           f"({icl.base} 100.0% there): accuracy +0.0 ± 0.0, nll -0.3466 ± 0.")
    assert "brier -0.2500 ± 0.17" in line


def test_an_adapted_row_with_demonstrations_is_set_beside_the_frozen_models_answers(
        tmp_path, monkeypatch) -> None:
    import uncertainty

    def records(answers: list[int]) -> list[dict]:
        return [{"task": "a", "index": i, "probs": [0.9, 0.1] if y == 0 else [0.2, 0.8],
                 "label": 0} for i, y in enumerate(answers)]

    rows = {r.name: r for r in uncertainty.ROWS}
    added = rows["lora + in-context (10), every query"]
    frozen = rows["in-context (10 examples), every query"]  # the same demonstrations
    by_name = {
        added.name: {0: records([1, 1, 1, 0]), 1: records([1, 0, 0, 0])},
        "lora": {0: records([0, 0, 0, 0]), 1: records([0, 0, 0, 0])},
        frozen.name: {0: records([1, 1, 0, 0])},  # the frozen model: one seed stands for all
        "in-context (10 examples)": {0: records([0, 0, 0, 0])},  # 300 queries: not this pair
    }
    monkeypatch.setattr(uncertainty.Comparison, "records",
                        lambda self, row: by_name.get(row.name, {}))
    lines = uncertainty.Comparison(uncertainty.parse_args(
        ["--output-dir", str(tmp_path), "--seeds", "0,1"]))._agreement()
    # seed 0: 3 of 4 as the frozen model, 1 of 4 as lora; seed 1: 3 of 4 and 3 of 4
    assert lines == [
        f"{added.name} gives {frozen.name}'s answer on 75.0% (per seed 75.0, 75.0) of the 8 "
        "queries all three have, and lora's on 50.0% (per seed 25.0, 75.0); lora gives "
        f"{frozen.name}'s on 50.0% (per seed 50.0, 50.0)."]


def test_the_frozen_models_rows_read_one_seed_lest_copies_count_as_queries(
        tmp_path, monkeypatch) -> None:
    import json

    import uncertainty

    arms = {arm.name: arm for arm in uncertainty.ARMS}
    for arm in arms.values():
        for seed in (0, 1):
            path = tmp_path / arm.name / arm.learner / f"seed-{seed}" / "predictions.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"task": "a", "index": 0, "probs": [1.0, 0.0],
                                        "label": 0}) + "\n")
    monkeypatch.setattr(uncertainty.Comparison, "predictions_dir",
                        lambda self, row, seed: tmp_path / row.arm)
    comparison = uncertainty.Comparison(uncertainty.parse_args(
        ["--output-dir", str(tmp_path), "--seeds", "0,1"]))
    seeds = {row.name: sorted(comparison.records(row)) for row in uncertainty.ROWS}
    assert seeds["pretrained (zero-shot)"] == [0]
    assert seeds[next(r.name for r in uncertainty.ROWS if r.arm == "icl")] == [0]
    assert seeds["lora"] == [0, 1] and seeds["abmll (defaults)"] == [0, 1]


def test_strength_candidates_are_trained_as_the_comparison_trains_the_chosen_arm(
        plugins, tmp_path) -> None:
    import uncertainty
    from strength_validation import Validation, parse_args

    out = ["--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "out")]
    comparison = dict(uncertainty.Comparison(uncertainty.parse_args([*out, "--seeds", "0"]))
                      .ready())
    for method, strength in uncertainty.STRENGTHS.items():
        jobs = dict(Validation(parse_args([method, *out])).ready())
        assert len(jobs) == len(strength.values)  # nothing trained yet
        for name, job in jobs.items():
            spec = ml.run_spec(plugins=plugins, **_train_settings(job))
            assert spec.settings[method].lr == 3e-4, name
        chosen = [arm.name for arm in uncertainty.ARMS if arm.learner == method]
        assert len(chosen) == 2, method  # the published strength and the chosen one
        for name in chosen:  # the same job, into the same run directory
            assert jobs[f"{name}-seed0"] == comparison[f"{name}-seed0"]


def _write_validation(run_dir: Path, method: str, draws: str, count: int,
                      probs: list[list[float]]) -> None:
    import json

    run_dir.mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps({"status": "finished"}))
    where = run_dir / "eval" / "x-validation"
    (where / method / "seed-0").mkdir(parents=True)
    (where / "metrics.json").write_text(json.dumps({"protocol": {
        "split": "validation", "changed_settings": {draws: count}}}))
    (where / method / "seed-0" / "predictions.jsonl").write_text("".join(
        json.dumps({"task": "t", "index": i, "probs": p, "label": 0}) + "\n"
        for i, p in enumerate(probs)))


@pytest.mark.parametrize(("better", "chosen"), [(0.0, "0.1"), (0.3, "0")])
def test_the_strength_rule_keeps_the_published_value_unless_another_is_clearly_better(
        tmp_path, better, chosen) -> None:
    import uncertainty
    from strength_validation import Validation, parse_args

    strength = uncertainty.STRENGTHS["mc-dropout"]
    validation = Validation(parse_args(["mc-dropout", "--output-dir", str(tmp_path),
                                        "--report-only"]))
    published = [[0.5 + 0.01 * (i % 7), 0.5 - 0.01 * (i % 7)] for i in range(40)]
    for value in strength.values:
        # rate 0 is `better` more probable on every answer; 0.01 better on average, within
        # the noise (every other query worse)
        shifts = [better if value == "0" else
                  (0.05 if i % 2 else -0.04) * (value == "0.01") for i in range(40)]
        probs = [[p + s * (1 - p), (1 - p) * (1 - s)]
                 for (p, _), s in zip(published, shifts, strict=True)]
        _write_validation(validation.run_dir(value), "mc-dropout", strength.draws,
                          strength.count, probs)
    assert validation.ready() == []
    report = validation.report()
    assert f"The rule chooses dropout {chosen} (" in report, report


def test_the_seed_spread_of_a_difference_is_the_se_of_its_per_seed_means() -> None:
    from protocol_runs import seed_cell

    from metalora.paired import score

    right, wrong = score([0.8, 0.2], 0), score([0.2, 0.8], 0)
    a = {(0, "t", 0): right, (0, "t", 1): right, (1, "t", 0): wrong, (1, "t", 1): wrong,
         (2, "t", 0): right}  # seed 2 has no partner in b
    b = {(0, "t", 0): wrong, (0, "t", 1): right, (1, "t", 0): wrong, (1, "t", 1): right}
    # per-seed accuracy differences: seed 0 +0.5, seed 1 -0.5; mean 0, SE = sd / sqrt(2) = 0.5
    assert seed_cell(a, b, "accuracy") == "+0.0 ± 50.0"
    nll = math.log(0.8) - math.log(0.2)  # per-seed NLL differences: -nll / 2, +nll / 2
    assert seed_cell(a, b, "nll") == f"{0.0:+.4f} ± {nll / 2:.4f}"
    assert seed_cell({k: v for k, v in a.items() if k[0] == 0}, b, "accuracy") == ""


def test_bytes_written_counts_results_and_in_place_updates_but_not_views() -> None:
    """step_flops' memory-traffic count against hand sums: a product's result, an
    elementwise result and an in-place update are counted, a view and a transpose not."""
    import torch
    from step_flops import BytesWritten

    a, b = torch.ones(8, 4), torch.ones(4, 3)
    with BytesWritten() as written:
        c = a @ b          # 8 x 3 float32 product: 96 bytes, not elementwise
        d = c * 2          # 96 bytes, elementwise
        d.add_(1)          # 96 bytes, in place
        d.view(24).t()     # views: nothing
        d.t()
    assert written.total == 3 * 96
    assert written.elementwise == 2 * 96


def test_adapter_size_divides_the_updates_rms_by_the_pretrained_spread() -> None:
    import torch
    from adapter_size import sizes

    base = {"l.weight": torch.tensor([[1.0, -1.0], [1.0, -1.0]])}  # std over 4 values = 2/sqrt(3)
    spread = 2 / math.sqrt(3)
    b, a = torch.tensor([[1.0], [0.0]]), torch.tensor([[3.0, 4.0]])  # B @ A = [[3, 4], [0, 0]]
    rms = math.sqrt((6 ** 2 + 8 ** 2) / 4)  # of s * B @ A, s = alpha 16 / rank 8 = 2
    lora = sizes({"l.pairs.default.A": a, "l.pairs.default.B": b},
                 {"alpha": 16, "rank": 8}, base)
    assert lora["mean_median"] == pytest.approx(rms / spread)
    assert "noise_median" not in lora
    # ABMLL: the log-variance is c + s * B @ A; here its change is 2 * B @ A / 100
    abmll_settings = {"alpha": 16, "rank": 8, "learner_settings": {"abmll": {
        "log_var_init": -20.0, "log_var_min": -30.0, "log_var_max": 5.0,
        "log_var_relative": None}}}
    tensors = {"l.pairs.mu_theta.A": a, "l.pairs.mu_theta.B": b,
               "l.pairs.logv_theta.A": a / 100, "l.pairs.logv_theta.B": b}
    abmll = sizes(tensors, abmll_settings, base)
    changes = torch.tensor([0.06, 0.08, 0.0, 0.0])
    assert abmll["mean_median"] == pytest.approx(rms / spread)
    assert abmll["log_var_change"] == pytest.approx(float(changes.mean()))
    sigma_rms = math.sqrt(float((-20.0 + changes).exp().mean()))
    assert abmll["noise_median"] == pytest.approx(sigma_rms / spread)
    # a relative c: log(kappa^2 Var(W0)), so with no change sigma / std(W0) = kappa
    relative = {"alpha": 16, "rank": 8, "learner_settings": {"abmll": dict(
        abmll_settings["learner_settings"]["abmll"], log_var_relative=0.013)}}
    still = dict(tensors, **{"l.pairs.logv_theta.B": torch.zeros(2, 1)})
    assert sizes(still, relative, base)["noise_median"] == pytest.approx(0.013)


def test_adapter_drift_reads_growth_along_itself_and_a_reversal(tmp_path) -> None:
    import torch
    from adapter_drift import drift
    from safetensors.torch import save_file

    a = torch.tensor([[3.0, 4.0]])
    # B: a step at right angles, then growth along itself, then back a little
    for epoch, b in ((1, [1.0, 0.0]), (2, [1.0, 1.0]), (3, [2.0, 2.0]), (4, [1.5, 1.5])):
        save_file({"l.pairs.mu_theta.B": torch.tensor(b).reshape(2, 1), "l.pairs.mu_theta.A": a},
                  str(tmp_path / f"epoch-{epoch:04d}.safetensors"))
    rows = drift(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[0]["BA"] == pytest.approx(5.0) and rows[2]["B"] == pytest.approx(8 ** 0.5)
    assert "B step" not in rows[0] and "B persist" not in rows[1]
    assert rows[1]["B step"] == pytest.approx(1.0) and rows[1]["B radial"] == pytest.approx(0.0)
    assert rows[2]["B radial"] == pytest.approx(1.0)
    assert rows[2]["B persist"] == pytest.approx(0.5 ** 0.5)
    assert rows[2]["BA radial"] == pytest.approx(1.0)
    assert rows[3]["B radial"] == pytest.approx(-1.0)
    assert rows[3]["B persist"] == pytest.approx(-1.0)
    assert rows[3]["A step"] == 0.0 and rows[3]["A radial"] == 0.0  # A never moved


def test_pull_growth_curvature_is_the_diagonal_of_the_kls_hessian(build_learner) -> None:
    import torch
    from pull_growth import kl_curvature
    from torch.distributions import Normal, kl_divergence

    learner, _, _ = build_learner("abmll", beta=1e-3, log_var_init=-2.0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in learner.adapters.parameters(["mu_theta", "logv_theta"]):
            p.normal_(0.0, 0.3)
    learner.reset_task()
    layer = next(iter(learner.adapters.layers.values()))
    s = layer.scaling
    mean, log_var = layer.pairs["mu_theta"], layer.pairs["logv_theta"]
    a, b = mean.A.detach(), mean.B.detach()
    sigma = torch.exp(0.5 * (-2.0 + s * log_var.B.detach() @ log_var.A.detach()))

    def weighted_kl(b_phi: torch.Tensor, a_phi: torch.Tensor) -> torch.Tensor:
        q, p = Normal(s * b_phi @ a_phi, sigma), Normal(s * b @ a, sigma)
        return learner.beta * kl_divergence(q, p).sum()

    hess_b = torch.autograd.functional.hessian(lambda x: weighted_kl(x, a), b.clone())
    hess_a = torch.autograd.functional.hessian(lambda x: weighted_kl(b, x), a.clone())
    for factor, hess, n in (("B", hess_b, b.numel()), ("A", hess_a, a.numel())):
        expected = hess.reshape(n, n).diagonal()
        assert torch.allclose(kl_curvature(learner, factor)[:n], expected, rtol=1e-4), factor


def test_the_pull_toys_outer_step_sees_the_pull_alone() -> None:
    from pull_toy import Arm, run

    # no pull: theta's gradient is zero, so B stays at zero and the update with it
    assert run(Arm(0.0, "adamw", 1e-3, "adamw", 1e-3), epochs=2, seed=0)["size"] == 0.0
    pulled = run(Arm(1.0, "adamw", 1e-3, "adamw", 1e-3), epochs=2, seed=0)
    assert pulled["size"] > 0.0 and pulled["target"] == pytest.approx(
        run(Arm(0.0, "sgd", 1e-3, "sgd", 1e-3), epochs=1, seed=0)["target"])


def test_one_coordinate_follows_adams_update_rule_by_hand() -> None:
    from pull_toy import one_coordinate

    def by_hand(stiffness: float, beta1: float, lr: float = 1e-3) -> float:
        x = m = v = 0.0
        k = stiffness / lr
        for t in range(1, 6):
            g = 1.0 + k * x
            m, v = beta1 * m + (1 - beta1) * g, 0.999 * v + 0.001 * g * g
            x -= lr * (m / (1 - beta1 ** t)) / (math.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
        return x / lr

    assert one_coordinate(0.0, 0.9) == pytest.approx(-5.0, abs=1e-4)  # no pull: lr downhill
    for stiffness, beta1 in ((10.0, 0.9), (10.0, 0.0), (0.3, 0.9)):
        assert one_coordinate(stiffness, beta1) == pytest.approx(by_hand(stiffness, beta1),
                                                                 abs=1e-3)
    assert one_coordinate(10.0, 0.9) > 0 > one_coordinate(10.0, 0.0)  # momentum ends uphill
