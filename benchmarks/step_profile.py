"""Where a training step's time goes, LoRA against ABMLL, under ``torch.profiler``.

    python benchmarks/step_profile.py                   # CPU, a small Llama (seconds)
    python benchmarks/step_profile.py --device cuda     # SmolLM2-135M's shape on a GPU
    python benchmarks/step_profile.py --shape host      # SmolLM2's depth, 64 wide: host cost

For each learner, on a random-initialised Llama and random token batches (no data, no
download): the wall time of a step (timed without the profiler), the time the device
spent in its own kernels, the host's time in ATen ops, and per step the kernel launches,
the host-device synchronisations and the memory copies; then the ops taking the most
device time and the most host time. A step whose device time is far below its wall
time is bound by the host (Python, dispatch, kernel launches, waiting on syncs), not by
arithmetic: ``step_flops.py`` counts the arithmetic. The GPU check runs this as its
stage ``p``; on CPU the device columns are empty.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import Shape, _sync, build_model, make_learner, training_logs  # noqa: E402

SMOLLM2 = Shape(576, 1536, 30, 9, 3, 49152, batch=2, seq=256)
"""SmolLM2-135M's configuration, at about a cls-45 batch."""
SMALL = Shape(256, 896, 4, 4, 2, 1000, batch=2, seq=64)
HOST = Shape(64, 128, 30, 4, 1, 256, batch=2, seq=16)
"""SmolLM2's 30 layers (90 adapted modules) at a width where arithmetic is negligible: on CPU
a step's wall time is then the host's cost (Python, dispatch, autograd), the part a GPU
does not speed up."""
SHAPES = {"small": SMALL, "host": HOST, "smollm2": SMOLLM2}
KINDS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("lora", "lora", {}), ("abmll", "abmll", {}), ("abmll mean", "abmll", {"sampling": "mean"}))
LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
COPIES = ("cudaMemcpyAsync", "cudaMemcpy")


def _steps(logs: Iterator, n: int, device: str) -> None:
    """Take ``n`` training steps from ``logs`` (:func:`gpu_check.training_logs`); wait for
    the device."""
    for _ in itertools.islice(logs, n):
        pass
    _sync(device)


def profile_learner(name: str, settings: dict[str, Any], shape: Shape, device: str,
                    dtype: str = "float32", steps: int = 12, warmup: int = 3,
                    top: int = 8) -> dict[str, Any]:
    """Per-step wall, device and host times and call counts of ``steps`` steps of ``name``.

    ``steps`` should span whole tasks (ABMLL: inner steps and an outer step), so that the
    averages mix the kinds of step as training does.
    """
    from torch.profiler import ProfilerActivity, profile

    model = build_model(shape, dtype, device)
    learner = make_learner(name, model, shape, device,
                           {"inner_lr": 1e-3, "outer_lr": 1e-3, "lr": 1e-3, **settings})
    logs = training_logs(learner)  # one stream: warm-up, timed and profiled steps follow on
    try:
        _steps(logs, warmup, device)
        start = time.perf_counter()
        _steps(logs, steps, device)
        wall = (time.perf_counter() - start) / steps
        activities = [ProfilerActivity.CPU]
        if device.startswith("cuda"):
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            _steps(logs, steps, device)
    finally:
        learner.adapters.remove()
    events = prof.key_averages()

    def count(keys: tuple[str, ...]) -> float:
        return sum(e.count for e in events if e.key in keys) / steps

    def device_us(event) -> float:
        return float(getattr(event, "self_device_time_total", 0.0) or 0.0)

    ops = [e for e in events if e.key.startswith("aten::")]
    by_device = sorted((e for e in events if device_us(e) > 0), key=device_us, reverse=True)
    by_host = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)
    return {
        "wall_ms": wall * 1e3,
        "device_ms": sum(device_us(e) for e in events) / steps / 1e3,
        "host_op_ms": sum(e.self_cpu_time_total for e in ops) / steps / 1e3,
        "aten_calls": sum(e.count for e in ops) / steps,
        "launches": count(LAUNCHES), "syncs": count(SYNCS), "copies": count(COPIES),
        "top_device": [(e.key, device_us(e) / steps / 1e3, e.count / steps)
                       for e in by_device[:top]],
        "top_host": [(e.key, e.self_cpu_time_total / steps / 1e3, e.count / steps)
                     for e in by_host[:top]],
    }


def report_lines(results: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown tables of :func:`profile_learner`'s results, ratios to the first learner."""
    first = next(iter(results.values()))
    lines = ["| learner | wall ms/step | / first | device ms | host op ms | ATen calls | "
             "launches | syncs | copies |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['wall_ms']:.1f} | {r['wall_ms'] / first['wall_ms']:.2f} | "
                     f"{r['device_ms']:.1f} | {r['host_op_ms']:.1f} | {r['aten_calls']:.0f} | "
                     f"{r['launches']:.0f} | {r['syncs']:.1f} | {r['copies']:.1f} |")
    for label, r in results.items():
        for column, title in (("top_device", "device"), ("top_host", "host")):
            if not r[column]:
                continue
            lines += ["", f"{label}: the ops with the most {title} time per step", "",
                      "| op | ms | calls |", "| --- | --- | --- |"]
            lines += [f"| `{key[:60]}` | {ms:.2f} | {calls:.1f} |" for key, ms, calls in r[column]]
    return lines


def profile_all(shape: Shape, device: str, dtype: str = "float32", steps: int = 12,
                warmup: int = 3) -> dict[str, dict[str, Any]]:
    """:func:`profile_learner` for each of :data:`KINDS`."""
    return {label: profile_learner(name, settings, shape, device, dtype, steps, warmup)
            for label, name, settings in KINDS}


def stage_p(report, device: str, dry_run: bool) -> None:
    """The GPU check's stage ``p``: :func:`profile_all` on SmolLM2-135M's shape (the dry
    run: the GPU check's tiny shape on CPU), into ``report``."""
    from gpu_check import DRY

    shape, steps, warmup = (DRY, 6, 1) if dry_run else (SMOLLM2, 12, 3)
    report.say(f"## p: where a step's time goes, random-init Llama {shape.hidden} x "
               f"{shape.layers} layers, batch {shape.batch} x {shape.seq}, float32 on {device}")
    report.say("")
    results = profile_all(shape, device, "float32", steps, warmup)
    for line in report_lines(results):
        report.say(line)
    report.data["p"] = results
    report.say("")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="the model's shape (default: small on CPU, smollm2 on a GPU)")
    args = parser.parse_args()
    shape = SHAPES[args.shape or ("small" if args.device == "cpu" else "smollm2")]
    print(f"random-init Llama {shape.hidden} x {shape.layers} layers, batch {shape.batch} x "
          f"{shape.seq}, {args.dtype} on {args.device}\n")
    print("\n".join(report_lines(profile_all(shape, args.device, args.dtype, args.steps))))


if __name__ == "__main__":
    main()
