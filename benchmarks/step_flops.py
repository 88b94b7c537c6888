"""Arithmetic and memory traffic of one training step, LoRA against ABMLL's sampling modes.

    python benchmarks/step_flops.py            # a random-init Llama 1024 x 4 layers, 2 x 128

Counted on CPU, each step after one warm-up step, printed beside the ratio to LoRA's:

* GFLOP, with ``torch.utils.flop_counter`` (matrix products and attention: what a step
  computes, not how fast);
* GB written, the bytes of every tensor an op writes (a fresh result or an in-place
  update; views write nothing), in all and by the ops other than the matrix products
  and attention: elementwise work, which runs at memory speed on a GPU.

Set beside the GPU check's step times, it tells whether ABMLL's extra time on a GPU is
arithmetic, memory traffic, or something else (kernel count, host syncs: see
``step_profile.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_check import Shape, build_model, make_learner, training_logs  # noqa: E402

KINDS = (("lora", {}), ("abmll mean", {"sampling": "mean"}),
         ("abmll weight", {"sampling": "weight"}), ("abmll local", {"sampling": "local"}))
PRODUCTS = frozenset({"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "mv", "dot"})
"""Ops counted as matrix products (attention kernels are recognised by name)."""


class BytesWritten(TorchDispatchMode):
    """Bytes of the tensors each ATen op writes: ``total``, and ``elementwise`` for the ops
    that are neither matrix products nor attention. View ops write nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.elementwise = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not func.is_view:
            written = sum(t.numel() * t.element_size() for t in tree_leaves(out)
                          if isinstance(t, torch.Tensor))
            self.total += written
            name = func.overloadpacket.__name__
            if name not in PRODUCTS and "attention" not in name:
                self.elementwise += written
        return out


def step_counts(name: str, settings: dict, shape: Shape, steps: int) -> list[dict[str, Any]]:
    """GFLOP and GB written (all, elementwise) of each of ``steps`` training steps of
    learner ``name`` after a warm-up step."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(shape, "float32", "cpu")
    learner = make_learner(name, model, shape, "cpu",
                           {"inner_lr": 1e-3, "outer_lr": 1e-3, "lr": 1e-3, **settings})
    try:
        logs = training_logs(learner)
        next(logs)
        counts = []
        for _ in range(steps):
            with FlopCounterMode(display=False) as flops, BytesWritten() as written:
                next(logs)
            counts.append({"gflop": flops.get_total_flops() / 1e9,
                           "gb": written.total / 1e9, "gb_elementwise": written.elementwise / 1e9})
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
    reference: dict[str, float] = {}
    print("| step | GFLOP | / lora | GB written | / lora | GB written elementwise | / lora |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for label, settings in KINDS:
        counts = step_counts(label.split()[0], settings, shape, args.steps)
        mean = {k: sum(c[k] for c in counts) / len(counts) for k in counts[0]}
        reference = reference or mean
        print(" | ".join([f"| {label}"] + [f"{mean[k]:.2f} | {mean[k] / reference[k]:.3f}"
                                          for k in ("gflop", "gb", "gb_elementwise")]) + " |",
              flush=True)


if __name__ == "__main__":
    main()
