"""Floating-point operations of one training step, LoRA against ABMLL's sampling modes.

    python benchmarks/step_flops.py            # a random-init Llama 1024 x 4 layers, 2 x 128

Counted with ``torch.utils.flop_counter`` on CPU (matrix products and attention; what a
step computes, not how fast), each step after one warm-up step, printed as the ratio to
LoRA's. Set beside the GPU check's step times, it tells whether ABMLL's extra time on a
GPU is arithmetic or something else (kernel count, host syncs, memory traffic).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from abmll_memory import _tasks  # noqa: E402
from gpu_check import Shape, build_model, make_learner  # noqa: E402

KINDS = (("lora", {}), ("abmll mean", {"sampling": "mean"}),
         ("abmll weight", {"sampling": "weight"}), ("abmll local", {"sampling": "local"}))


def step_gflops(name: str, settings: dict, shape: Shape, steps: int) -> list[float]:
    """GFLOP of each of ``steps`` training steps of learner ``name`` after a warm-up step."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(shape, "float32", "cpu")
    learner = make_learner(name, model, shape, "cpu",
                           {"inner_lr": 1e-3, "outer_lr": 1e-3, "lr": 1e-3, **settings})
    try:
        logs = learner.train_epoch(_tasks(4), 0)
        next(logs)
        counts = []
        for _ in range(steps):
            with FlopCounterMode(display=False) as counter:
                next(logs)
            counts.append(counter.get_total_flops() / 1e9)
        return counts
    finally:
        learner.adapters.remove()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    shape = Shape(args.hidden, 7 * args.hidden // 2, args.layers, 8, 2, 1000, batch=2,
                  seq=args.seq)
    reference = None
    print("| step | GFLOP | / lora |\n| --- | --- | --- |")
    for label, settings in KINDS:
        counts = step_gflops(label.split()[0], settings, shape, args.steps)
        mean = sum(counts) / len(counts)
        reference = reference or mean
        print(f"| {label} | {mean:.2f} | {mean / reference:.3f} |", flush=True)


if __name__ == "__main__":
    main()
