"""Peak memory and step time of ``abmll`` versus ``lora`` on a ~100M-parameter Llama.

Not a test: run it by hand::

    python benchmarks/abmll_memory.py                    # lora vs abmll, then 10 vs 100 tasks
    python benchmarks/abmll_memory.py --device cuda      # on a GPU

What it does. A randomly initialised Llama (hidden 768, 12 layers, 12 heads,
MLP 2048, vocabulary 32000, tied embeddings: 110M parameters) is trained by
each learner, each in its own Python process, on random token batches of
``--batch`` x ``--seq`` (2 x 128). Both learners use their default settings
(rank 8, q/v/o projections; ABMLL with the exact weight-space sample) and
the core's answer loss (last position only). A *step* is one optimiser
step: for ``lora`` one AdamW step; for ``abmll`` one inner or one outer step
(each is one forward and one backward pass plus the layer-wise KL and, for
outer steps, the prior). Each timing run reports the median time of
``--steps`` steps after ``--warmup`` warm-up steps; ``--repeats`` timing runs
per learner alternate between the learners (so that a busy machine slows
both alike) and the median over runs is compared.

How memory is measured. On CUDA: ``torch.cuda.max_memory_allocated`` over
the training steps, and the increment over what was allocated after loading
the model. On CPU there is no allocator statistic, so the peak resident set
size of the worker process is used: ``VmHWM`` from ``/proc/self/status``,
reset after the model is loaded (``echo 5 > /proc/self/clear_refs``), with
glibc's mmap threshold pinned at 128 KiB (``MALLOC_MMAP_THRESHOLD_``) so that
freed tensor memory goes back to the system and RSS follows live memory.
Memory is measured in separate runs from timing: timing runs keep glibc's
default (pinning adds page faults to every large allocation).
"Total" is the whole process (CPU) or every allocated tensor (CUDA),
model included, as the paper's 25.6 GB vs 23.8 GB; "training" is the
increment over the loaded model.

The second part trains ``abmll`` for one full epoch over 10 and over 100
training tasks (``--task-counts``; ``--compare-inner-steps`` inner steps per
task, 1 by default to keep the 100-task epoch short: the number of inner
steps does not change what is kept between steps) and prints both peaks:
only the four adapter pairs and their optimiser state persist, so the peak
must not grow with the number of tasks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PINNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
"""glibc settings for the memory runs on CPU: large blocks are mmap-ed and unmapped when freed."""


# -- worker (one learner, one process) ------------------------------------------------------
def _proc_status() -> dict[str, int]:
    values = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmHWM", "VmRSS")):
                key, value = line.split(":")
                values[key] = int(value.split()[0]) * 1024
    return values


class MemoryMeter:
    """Peak memory since :meth:`start` (CUDA allocator, or process RSS on CPU)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def start(self) -> None:
        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.baseline = _proc_status()["VmRSS"]

    def peak(self) -> int:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        return _proc_status()["VmHWM"]


def _build_model(args: argparse.Namespace):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=max(512, args.seq),
        tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model = model.to(args.device)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def _random_sampler(args: argparse.Namespace):
    """An :class:`EpisodeSampler` whose batches are random ``batch x seq`` token sequences."""
    import torch

    from metalora.episodes import EpisodeSampler
    from metalora.prompts import Batch

    class RandomBatches(EpisodeSampler):
        def __init__(self) -> None:
            super().__init__(encoder=None, batch_size=args.batch, device=args.device)

        def encode(self, records, sequences=None) -> Batch:
            gen = torch.Generator().manual_seed(len(records) * 7919 + random.getrandbits(31))
            n = args.batch
            return Batch(
                input_ids=torch.randint(3, args.vocab, (n, args.seq), generator=gen),
                attention_mask=torch.ones(n, args.seq, dtype=torch.long),
                last_index=torch.full((n,), args.seq - 1, dtype=torch.long),
                option_ids=torch.tensor([[10, 11, 12, 13]] * n),
                option_mask=torch.ones(n, 4, dtype=torch.bool),
                targets=torch.randint(0, 4, (n,), generator=gen),
                records=tuple(records),
            ).to(args.device)

    return RandomBatches()


def _tasks(n: int):
    from metalora.records import Task, TaskRecord

    return [Task(f"task-{i}", [TaskRecord(f"task-{i}", f"q{j}", "a", ("a", "b", "c", "d"))
                               for j in range(8)]) for i in range(n)]


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Train one learner; return its peak memory and step times."""
    import torch

    from metalora import AdapterConfig, LearnerContext, ProtocolSpec
    from metalora.plugins import PluginManager
    from metalora.settings import build_settings

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    plugins = PluginManager()
    model = _build_model(args)
    n_params = sum(p.numel() for p in model.parameters())
    meter = MemoryMeter(args.device)
    meter.start()
    cls = plugins.registry("learner").get(args.learner)
    overrides = json.loads(args.settings)
    settings = build_settings(cls.Settings, overrides)

    def make_prior(name: str):
        prior_cls = plugins.registry("prior").get(name)
        return prior_cls(build_settings(prior_cls.Settings, overrides))

    context = LearnerContext(
        model=model, batches=_random_sampler(args), protocol=ProtocolSpec(),
        adapter=AdapterConfig(), settings=settings, rng=random.Random(0),
        make_prior=make_prior)
    learner = cls(context)
    tasks = _tasks(args.tasks)
    times: list[float] = []
    cpu_times: list[float] = []
    wanted = args.warmup + args.steps if args.steps > 0 else None
    steps = 0
    epoch = 0
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    start, cpu_start = time.perf_counter(), time.process_time()
    done = False
    while not done:
        for log in learner.train_epoch(tasks, epoch):
            sync()
            now, cpu_now = time.perf_counter(), time.process_time()
            times.append(now - start)
            cpu_times.append(cpu_now - cpu_start)
            start, cpu_start = now, cpu_now
            steps += 1
            if log.loss != log.loss:
                raise RuntimeError(f"NaN loss at step {steps}")
            if wanted is not None and steps >= wanted:
                done = True
                break
        epoch += 1
        if wanted is None:
            done = True
    skip = args.warmup if wanted is not None else 0
    return {
        "learner": args.learner, "tasks": args.tasks, "params": n_params, "steps": steps,
        "baseline_bytes": meter.baseline, "peak_bytes": meter.peak(),
        "median_step_s": statistics.median(times[skip:]),
        "median_step_cpu_s": statistics.median(cpu_times[skip:]), "device": args.device,
        "threads": torch.get_num_threads(),
    }


# -- driver -----------------------------------------------------------------------------------
def _run_worker(args: argparse.Namespace, learner: str, tasks: int, steps: int,
                settings: dict[str, Any], memory_run: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--learner", learner,
           "--tasks", str(tasks), "--steps", str(steps), "--settings", json.dumps(settings)]
    for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "batch",
                 "seq", "warmup", "device", "threads"):
        cmd += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    env = dict(os.environ)
    if memory_run and not args.device.startswith("cuda"):
        env.update(PINNED_MALLOC)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--learner", default="abmll", help=argparse.SUPPRESS)
    parser.add_argument("--settings", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--learners", default="lora,abmll")
    parser.add_argument("--abmll-settings", default="{}",
                        help='JSON settings for abmll, e.g. \'{"sampling": "local"}\'')
    parser.add_argument("--tasks", type=int, default=10, help="training tasks (timing part)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3,
                        help="timing runs per learner, alternating between learners")
    parser.add_argument("--task-counts", default="10,100",
                        help="task counts for the memory-vs-tasks part ('' to skip)")
    parser.add_argument("--compare-inner-steps", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--kv-heads", type=int, default=12)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads <= 0:
        args.threads = os.cpu_count() or 1
    if args.worker:
        print(json.dumps(worker(args)))
        return

    names = args.learners.split(",")
    extra = json.loads(args.abmll_settings)

    def settings_of(name: str) -> dict[str, Any]:
        return extra if name == "abmll" else {}

    memory = {name: _run_worker(args, name, args.tasks, args.steps, settings_of(name),
                                memory_run=True)
              for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu_times: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.repeats):  # alternate, so that a busy machine hurts both alike
        for name in names:
            run = _run_worker(args, name, args.tasks, args.steps, settings_of(name),
                              memory_run=False)
            times[name].append(run["median_step_s"])
            cpu_times[name].append(run["median_step_cpu_s"])
    first = memory[names[0]]
    if extra:
        print(f"abmll settings: {extra}")
    print(f"model: Llama {first['params'] / 1e6:.0f}M parameters (hidden {args.hidden}, "
          f"{args.layers} layers, vocab {args.vocab}), batch {args.batch} x seq {args.seq}, "
          f"device {args.device}, {first['threads']} thread(s)")
    what = ("CUDA max_memory_allocated" if args.device.startswith("cuda")
            else "process peak RSS (VmHWM), glibc mmap threshold pinned at 128 KiB")
    print(f"memory: {what}; 'training' = peak minus the memory after loading the model")
    print(f"time: median of {args.steps} steps after {args.warmup} warm-up steps, per run; "
          f"median (min-max) over {args.repeats} alternating run(s); wall clock and process "
          "CPU time\n")
    header = (f"{'learner':<10}{'total peak MiB':>16}{'training MiB':>14}"
              f"{'step s (wall)':>15}{'range':>15}{'step s (CPU)':>14}")
    print(header)
    print("-" * len(header))
    step = {name: statistics.median(times[name]) for name in names}
    cpu_step = {name: statistics.median(cpu_times[name]) for name in names}
    for name in names:
        r = memory[name]
        spread = f"{min(times[name]):.3f}-{max(times[name]):.3f}"
        print(f"{name:<10}{_mib(r['peak_bytes']):>16}"
              f"{_mib(r['peak_bytes'] - r['baseline_bytes']):>14}{step[name]:>15.3f}"
              f"{spread:>15}{cpu_step[name]:>14.3f}")
    if "lora" in memory and "abmll" in memory:
        lora, abmll = memory["lora"], memory["abmll"]
        total = abmll["peak_bytes"] / lora["peak_bytes"]
        training = ((abmll["peak_bytes"] - abmll["baseline_bytes"])
                    / (lora["peak_bytes"] - lora["baseline_bytes"]))
        speed = step["abmll"] / step["lora"]
        cpu_speed = cpu_step["abmll"] / cpu_step["lora"]
        print(f"\nabmll/lora: total peak memory {total:.3f} (target <= 1.05; paper 1.076), "
              f"training memory {training:.3f}, median step time {speed:.3f} wall / "
              f"{cpu_speed:.3f} CPU (target <= 1.3)")

    counts = [int(c) for c in args.task_counts.split(",") if c.strip()]
    if counts:
        print(f"\nabmll, one epoch over N training tasks ({args.compare_inner_steps} inner "
              "step(s) + 1 outer step per task):")
        print(f"{'tasks':>6}{'steps':>8}{'total peak MiB':>16}{'training MiB':>14}")
        for n in counts:
            r = _run_worker(args, "abmll", n, 0,
                            {**extra, "inner_steps": args.compare_inner_steps}, memory_run=True)
            print(f"{n:>6}{r['steps']:>8}{_mib(r['peak_bytes']):>16}"
                  f"{_mib(r['peak_bytes'] - r['baseline_bytes']):>14}")


if __name__ == "__main__":
    main()
