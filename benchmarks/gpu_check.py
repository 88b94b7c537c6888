"""The GPU check: what only a GPU can tell, measured in one short prepared run.

Usage on a machine with one GPU and no network (see ``benchmarks/README.md``, "The GPU
check", for carrying the model and data there)::

    python benchmarks/gpu_check.py --out OUT_DIR                 # stages a, b, c: ~8 minutes
    python benchmarks/gpu_check.py --stages c --out OUT_DIR      # continue stage c
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu      # the same on CPU, in seconds

Stages:

* ``a`` (scale): a random-initialised model of Llama-3-8B's shape (hidden 4096, 32
  layers, MLP 14336, 32 heads and 8 key-value heads, vocabulary 128256), built on the
  GPU, trained by ``lora`` and by ``abmll`` on random 2 x 512 token batches: median step
  time per kind of step and peak memory (``max_memory_allocated``), in bfloat16 weights
  with and without gradient checkpointing, with TF32, ABMLL's ``local`` and ``mean``
  sampling; then in float32 weights with ``--autocast bfloat16``, plain float32 and
  float32 with TF32. Printed as ratios ABMLL / LoRA.
* ``b`` (determinism): ABMLL (``log_var_init -6``, so that its noise matters) on a
  0.5B-parameter model of the same shape family: the same seed twice, and with gradient
  checkpointing, compared bit for bit (losses and adapters).
* ``c`` (the uncertainty comparison at 10 times its CPU epochs): ``uncertainty.py``'s
  arms (every baseline and ABMLL, at the cls-45 protocol of ``benchmarks/``) at seed 0
  and 30 epochs instead of 3, ``--jobs`` runs at a time as processes on the one GPU,
  the whole stopped by the budget with resumable run directories (``--stages c``
  continues); its report (paired per-query differences), each run's wall time and peak
  GPU memory, and the runs' predictions, metrics and logs as
  ``OUT/uncertainty-runs.tar.gz`` (the report can be made again from them here). Needs
  the model and the data (``--data-dir``); skipped with a note without them.
* ``p`` (a profile, only when asked for): ``step_profile.py``'s LoRA and ABMLL steps on
  SmolLM2-135M's shape under ``torch.profiler``: device time against wall time, kernel
  launches and syncs per step, the costliest ops. Runs before ``c``.

Everything it prints also goes to ``OUT/gpu_check.md`` (and the numbers to
``OUT/gpu_check.json``). ``--dry-run`` runs every stage on CPU with tiny shapes, the
tiny model and the demo suite: the test suite runs it, so the script is known to work
before a GPU is there.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


@dataclass(frozen=True)
class Shape:
    """A Llama configuration and the batches it is trained on."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    batch: int
    seq: int

    def config(self):
        from transformers import LlamaConfig

        config = LlamaConfig(
            vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
            num_hidden_layers=self.layers, num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads, max_position_embeddings=max(512, self.seq),
            tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
        config._attn_implementation = "sdpa"
        return config


LLAMA3_8B = Shape(4096, 14336, 32, 32, 8, 128256, batch=2, seq=512)
HALF_B = Shape(2048, 5632, 8, 16, 4, 32000, batch=2, seq=512)
DRY = Shape(64, 128, 2, 4, 2, 1000, batch=2, seq=32)


@dataclass(frozen=True)
class Config:
    """One stage-a measurement: a learner in one precision and memory setting."""

    label: str
    learner: str
    dtype: str = "bfloat16"
    autocast: str = "none"
    checkpointing: bool = False
    tf32: bool = False
    settings: dict[str, Any] = field(default_factory=dict)


CONFIGS = (
    Config("lora, bf16", "lora"),
    Config("abmll weight, bf16", "abmll"),
    Config("abmll weight, bf16, tf32", "abmll", tf32=True),
    Config("abmll local, bf16", "abmll", settings={"sampling": "local"}),
    Config("abmll mean, bf16", "abmll", settings={"sampling": "mean"}),
    Config("lora, bf16, checkpointing", "lora", checkpointing=True),
    Config("abmll weight, bf16, checkpointing", "abmll", checkpointing=True),
    Config("lora, fp32 + autocast bf16", "lora", dtype="float32", autocast="bfloat16"),
    Config("abmll weight, fp32 + autocast bf16", "abmll", dtype="float32", autocast="bfloat16"),
    Config("lora, fp32", "lora", dtype="float32"),
    Config("abmll weight (fused), fp32", "abmll", dtype="float32"),
    Config("abmll weight, fp32, tf32", "abmll", dtype="float32", tf32=True),
    Config("abmll weight (fused), fp32, checkpointing", "abmll", dtype="float32",
           checkpointing=True),
)
PAIRS = (("lora, bf16", "abmll weight, bf16"),
         ("lora, bf16", "abmll weight, bf16, tf32"),
         ("lora, bf16, checkpointing", "abmll weight, bf16, checkpointing"),
         ("lora, fp32 + autocast bf16", "abmll weight, fp32 + autocast bf16"),
         ("lora, fp32", "abmll weight (fused), fp32"))
"""ABMLL / LoRA ratios to print."""


class Report:
    """Lines for the console and gpu_check.md; numbers for gpu_check.json."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lines: list[str] = []
        self.data: dict[str, Any] = {}
        out.mkdir(parents=True, exist_ok=True)

    def say(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)
        self.save()

    def save(self) -> None:
        (self.out / "gpu_check.md").write_text("\n".join(self.lines) + "\n")
        (self.out / "gpu_check.json").write_text(json.dumps(self.data, indent=1, default=str))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    from abmll_memory import _proc_status

    return _proc_status()["VmHWM"] / 2**20


def _reset_peak(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    elif Path("/proc/self/clear_refs").exists():  # the resident peak (VmHWM) starts again
        Path("/proc/self/clear_refs").write_text("5")


def build_model(shape: Shape, dtype: str, device: str):
    """A random-initialised Llama of ``shape``, frozen, built directly on ``device``."""
    import torch
    from transformers import LlamaForCausalLM

    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(shape.config(), dtype=torch_dtype)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def make_learner(name: str, model, shape: Shape, device: str, settings: dict[str, Any],
                 seed: int = 0):
    """A learner on ``model`` drawing random token batches (no tokenizer, no data)."""
    import torch
    from abmll_memory import _random_sampler

    from metalora import AdapterConfig, LearnerContext, ProtocolSpec
    from metalora.plugins import PluginManager
    from metalora.settings import build_settings

    plugins = PluginManager()
    cls = plugins.registry("learner").get(name)

    def make_prior(prior: str):
        prior_cls = plugins.registry("prior").get(prior)
        return prior_cls(build_settings(prior_cls.Settings, settings))

    args = argparse.Namespace(batch=shape.batch, seq=shape.seq, vocab=shape.vocab, device=device)
    random.seed(seed)
    torch.manual_seed(seed)
    context = LearnerContext(
        model=model, batches=_random_sampler(args), protocol=ProtocolSpec(),
        adapter=AdapterConfig(), settings=build_settings(cls.Settings, settings),
        rng=random.Random(seed), make_prior=make_prior, seed=seed)
    return cls(context)


def training_logs(learner):
    """``learner``'s step logs, epoch after epoch over four random tasks, without end (take
    what is needed with :func:`itertools.islice`)."""
    from abmll_memory import _tasks

    tasks = _tasks(4)
    for epoch in itertools.count():
        yield from learner.train_epoch(tasks, epoch)


def train_steps(learner, steps: int, device: str) -> list[tuple[str, float, float]]:
    """``(kind, seconds, loss)`` of ``steps`` optimisation steps (kind: train, inner-first,
    inner, outer)."""
    out = []
    _sync(device)
    start = time.perf_counter()
    for log in itertools.islice(training_logs(learner), steps):
        _sync(device)
        now = time.perf_counter()
        kind = log.phase if log.phase != "inner" else ("inner-first" if log.step == 0
                                                       else "inner")
        out.append((kind, now - start, float(log.loss)))
        start = now
    return out


# -- stage a ------------------------------------------------------------------------------
def stage_a(report: Report, shape: Shape, device: str, steps: int, warmup: int) -> None:
    import torch

    from metalora.models.checkpointing import enable_gradient_checkpointing
    from metalora.precision import allow_tf32, autocast

    report.say(f"## a: LoRA and ABMLL on a random-init Llama {shape.hidden}x{shape.layers} "
               f"(vocabulary {shape.vocab}), batch {shape.batch} x {shape.seq}")
    report.say("")
    report.say("| configuration | median step s (by kind) | peak MiB | weights MiB | "
               "first losses |")
    report.say("| --- | --- | --- | --- | --- |")
    results: dict[str, dict[str, Any]] = {}
    model, model_dtype, checkpointed = None, None, False
    for config in CONFIGS:
        if model_dtype != config.dtype or (checkpointed and not config.checkpointing):
            del model
            _reset_peak(device)
            model, model_dtype, checkpointed = build_model(shape, config.dtype, device), \
                config.dtype, False
        if config.checkpointing and not checkpointed:
            enable_gradient_checkpointing(model)
            checkpointed = True
        torch.set_float32_matmul_precision("highest")
        allow_tf32(device, config.tf32)
        weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
        _reset_peak(device)
        learner = make_learner(config.learner, model, shape, device,
                               {"inner_lr": 1e-3, "outer_lr": 1e-3, "lr": 1e-3,
                                **config.settings})
        try:
            with autocast(device, config.autocast):
                log = train_steps(learner, warmup + steps, device)
            peak = _peak_mb(device)
        finally:
            learner.adapters.remove()
            del learner
        timed = log[warmup:]
        kinds = sorted({k for k, _, _ in timed})
        medians = {k: statistics.median(t for kk, t, _ in timed if kk == k) for k in kinds}
        overall = statistics.median(t for _, t, _ in timed)
        results[config.label] = {"config": asdict(config), "median_step_s": overall,
                                 "by_kind": medians, "peak_mb": peak, "weights_mb": weights,
                                 "losses": [loss for _, _, loss in log[:4]]}
        by_kind = ", ".join(f"{k} {v:.3f}" for k, v in medians.items())
        report.say(f"| {config.label} | {overall:.3f} ({by_kind}) | {peak:,.0f} | "
                   f"{weights:,.0f} | {', '.join(f'{e[2]:.3f}' for e in log[:3])} |")
    torch.set_float32_matmul_precision("highest")
    del model
    _reset_peak(device)
    report.say("")
    report.say("| ABMLL / LoRA | step time | peak memory |")
    report.say("| --- | --- | --- |")
    ratios = {}
    for lora, abmll in PAIRS:
        a, b = results[abmll], results[lora]
        ratios[abmll] = {"time": a["median_step_s"] / b["median_step_s"],
                         "memory": a["peak_mb"] / b["peak_mb"]}
        report.say(f"| {abmll} / {lora} | {ratios[abmll]['time']:.2f} | "
                   f"{ratios[abmll]['memory']:.3f} |")
    report.data["a"] = {"shape": asdict(shape), "device": device, "results": results,
                        "ratios": ratios}
    report.say("")


# -- stage b ------------------------------------------------------------------------------
def stage_b(report: Report, shape: Shape, device: str, steps: int) -> None:
    import torch

    from metalora.models.checkpointing import enable_gradient_checkpointing

    report.say(f"## b: determinism, ABMLL (log_var_init -6) on a Llama {shape.hidden}x"
               f"{shape.layers}, {steps} steps")
    report.say("")
    settings = {"inner_lr": 1e-3, "outer_lr": 1e-3, "log_var_init": -6.0}
    outcomes: dict[str, Any] = {}
    for dtype in ("bfloat16", "float32"):
        runs = {}
        for name, checkpointing in (("first", False), ("again", False), ("checkpointed", True)):
            model = build_model(shape, dtype, device)
            if checkpointing:
                enable_gradient_checkpointing(model)
            learner = make_learner("abmll", model, shape, device, settings, seed=0)
            try:
                losses = [loss for _, _, loss in train_steps(learner, steps, device)]
                adapters = {k: v.cpu() for k, v in learner.adapters.snapshot().items()}
            finally:
                learner.adapters.remove()
            runs[name] = (losses, adapters)
            del model, learner
            _reset_peak(device)
        row = {}
        for other in ("again", "checkpointed"):
            same_losses = runs["first"][0] == runs[other][0]
            diffs = [float((runs["first"][1][k] - runs[other][1][k]).abs().max())
                     for k in runs["first"][1]]
            row[other] = {"losses_equal": same_losses, "adapters_max_abs_diff": max(diffs)}
            report.say(f"- {dtype}: {other} vs first: losses bitwise equal {same_losses}, "
                       f"largest adapter difference {max(diffs):.3g}")
        outcomes[dtype] = row
    if device.startswith("cuda"):
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        try:
            torch.use_deterministic_algorithms(True)
            model = build_model(shape, "bfloat16", device)
            learner = make_learner("abmll", model, shape, device, settings)
            train_steps(learner, 2, device)
            learner.adapters.remove()
            outcomes["deterministic_algorithms"] = "ran"
        except Exception as exc:  # noqa: BLE001 - what refuses is the finding
            outcomes["deterministic_algorithms"] = f"refused: {str(exc).splitlines()[0]}"
        finally:
            torch.use_deterministic_algorithms(False)
        report.say(f"- torch.use_deterministic_algorithms(True): "
                   f"{outcomes['deterministic_algorithms']}")
    report.data["b"] = outcomes
    report.say("")


# -- stage c ------------------------------------------------------------------------------
KEPT_SUFFIXES = (".json", ".jsonl", ".log", ".md", ".csv")
"""What of stage c's run directories comes back (the predictions, metrics, state and logs;
not the checkpoints or adapters)."""


def stage_c(report: Report, args: argparse.Namespace, deadline: float) -> None:
    """``uncertainty.py``'s comparison at seed 0 and ``args.epochs`` epochs, its arms as
    parallel processes on the one device, stopped by the deadline; its report, each run's
    wall time and peak memory, and its runs' small files as ``uncertainty-runs.tar.gz``."""
    import tarfile

    runs = args.runs_dir or args.out / "uncertainty"
    if args.tasks == "cls45" and (args.data_dir is None or not Path(args.data_dir).is_dir()):
        report.say(f"## c: skipped: no cls-45 data (--data-dir {args.data_dir})")
        return
    driver = [sys.executable, str(REPO / "benchmarks" / "uncertainty.py"), "--seeds", "0",
              "--output-dir", str(runs), "--model", args.model, "--tasks", args.tasks,
              "--epochs", str(args.epochs), "--extra", json.dumps({"device": args.device})]
    if args.data_dir is not None:
        driver += ["--data-dir", str(args.data_dir)]
    if args.dry_run:
        driver += ["--train-tasks", "2", "--query-cap", "4"]
    if args.arms:
        driver += ["--arms", args.arms]
    report.say(f"## c: the uncertainty comparison ({args.tasks}) at {args.epochs} epochs, seed "
               f"0, {args.jobs} runs at a time on {args.device}")
    report.say("")
    # the model's first use converts it, once, before the runs start
    subprocess.run([sys.executable, "-c", "from metalora.models import load_model; "
                    f"load_model({args.model!r})"], check=True)
    seconds = max(30.0, deadline - time.monotonic() - 30.0)
    started = time.monotonic()
    with open(args.out / "c-driver.log", "a") as log:
        proc = subprocess.Popen([*driver, "--jobs", str(args.jobs), "--threads", "1"],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code: int | str = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 15)  # the driver and its runs: each resumes
            proc.wait()
            code = f"stopped after {seconds:.0f} s"
    elapsed = time.monotonic() - started
    done = subprocess.run([*driver, "--report-only"], capture_output=True, text=True)
    text = done.stdout if done.returncode == 0 else f"(no report: {done.stderr[-1500:]})"
    report.say(f"Driver: {code}, {elapsed:.0f} s.")
    report.say("")
    report.say("| run | status | wall s | peak GPU MiB |")
    report.say("| --- | --- | --- | --- |")
    summary: dict[str, Any] = {}
    for record_path in sorted(runs.glob("*/run.json")):
        record = json.loads(record_path.read_text())
        state_path = record_path.parent / "state.json"
        status = json.loads(state_path.read_text()).get("status") if state_path.exists() else ""
        seed = next(iter(record.get("seeds", {}).values()), {})
        summary[record_path.parent.name] = {"status": status, **seed}
        report.say(f"| {record_path.parent.name} | {status} | {seed.get('wall_s', '')} | "
                   f"{seed.get('peak_cuda_mb', '')} |")
    report.say("")
    report.say(text)
    report.data["c"] = {"driver": code, "seconds": elapsed, "runs": summary, "report": text}
    with tarfile.open(args.out / "uncertainty-runs.tar.gz", "w:gz") as tar:
        for path in sorted(runs.rglob("*")):
            if path.is_file() and path.suffix in KEPT_SUFFIXES:
                tar.add(path, arcname=str(path.relative_to(runs.parent)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where the report goes")
    parser.add_argument("--stages", default="a,b,c", help="of a, b, p, c (p: a profile)")
    parser.add_argument("--dry-run", action="store_true",
                        help="every stage on CPU with tiny shapes (seconds)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="wall-clock budget of the whole check (stage c takes what is left)")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per stage-a config")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="cls45")
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data"
                        / "crossfit")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=12,
                        help="stage c: runs at a time (each a process on the one device)")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="stage c's run directories (default OUT/uncertainty)")
    parser.add_argument("--arms", default=None,
                        help="stage c: uncertainty.py's arms to run (default: all; the dry "
                             "run: lora,abmll)")
    args = parser.parse_args(argv)
    stages = set(args.stages.split(","))
    unknown = stages - set("abpc")
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(sorted(unknown))}; valid: a, b, p, c")
    deadline = time.monotonic() + args.budget_s
    if args.dry_run:
        args.device, args.model, args.tasks, args.data_dir = "cpu", "tiny", "demo", None
        args.epochs, args.jobs, args.steps, args.warmup = 1, 4, 3, 1
        args.arms = args.arms or "lora,abmll"
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no GPU here: run with --dry-run to try the script on CPU")
    report = Report(args.out)
    import transformers

    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor()
    report.say(f"# GPU check, {time.strftime('%Y-%m-%d %H:%M')} on {name or args.device}")
    report.say(f"torch {torch.__version__}, transformers {transformers.__version__}, "
               f"python {platform.python_version()}{', dry run' if args.dry_run else ''}")
    report.say("")
    report.data["environment"] = {"device": name, "torch": torch.__version__,
                                  "transformers": transformers.__version__,
                                  "dry_run": args.dry_run}
    started = time.monotonic()
    if "a" in stages:
        stage_a(report, DRY if args.dry_run else LLAMA3_8B, args.device, args.steps,
                args.warmup)
    if "b" in stages:
        stage_b(report, DRY if args.dry_run else HALF_B, args.device, 6)
    if "p" in stages:
        from step_profile import stage_p

        stage_p(report, args.device, args.dry_run)
    if "c" in stages:
        stage_c(report, args, deadline)
    report.say(f"Wall time of the check: {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    main()
