"""Where a run's global mean pair moves from epoch to epoch, read from its epochs' adapters.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/adapter_drift.py DIR [DIR ...]

Each DIR holds ``epoch-NNNN.safetensors`` files: a run's per-epoch checkpoints, copied
aside while it trained. For the global mean pair (ABMLL's ``mu_theta``, ``lora``'s
``default``) it prints, per epoch, the norms of its factors B and A (all layers together)
and of the dense update ``B @ A`` (without the scale ``s``), and of the epoch's step
(this epoch minus the last) for each of B, A and ``B @ A``:

* ``|step|``: its norm;
* ``radial``: its cosine with the last epoch's value. Positive makes the factor (or the
  update) longer along itself; negative shrinks it;
* ``persist``: its cosine with the last epoch's step: near 0 the epochs' steps wander,
  near 1 they keep one direction.

Ratios and cosines only: nothing here depends on the machine.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import torch
from adapter_size import mean_pair
from safetensors.torch import load_file

PARTS = ("B", "A", "BA")


def parts(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """B, A and the dense ``B @ A`` of the global mean pair, every layer flattened together."""
    layers, pair = mean_pair(tensors)
    b = [tensors[f"{layer}.pairs.{pair}.B"].double() for layer in layers]
    a = [tensors[f"{layer}.pairs.{pair}.A"].double() for layer in layers]
    return {"B": torch.cat([t.flatten() for t in b]), "A": torch.cat([t.flatten() for t in a]),
            "BA": torch.cat([(x @ y).flatten() for x, y in zip(b, a, strict=True)])}


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def drift(directory: Path) -> list[dict[str, float]]:
    """One mapping per epoch file in ``directory`` (see the module): ``epoch``, the norms
    ``B``, ``A``, ``BA``, and from the second file on ``<part> step``, ``<part> radial``,
    and from the third on ``<part> persist``."""
    files = sorted(directory.glob("epoch-*.safetensors"))
    if not files:
        raise SystemExit(f"{directory}: no epoch-*.safetensors files")
    rows: list[dict[str, float]] = []
    last: dict[str, torch.Tensor] | None = None
    last_step: dict[str, torch.Tensor] | None = None
    for path in files:
        match = re.search(r"epoch-(\d+)", path.name)
        current = parts(load_file(str(path)))
        row = {"epoch": float(match.group(1)) if match else math.nan}
        row.update({p: float(current[p].norm()) for p in PARTS})
        if last is not None:
            step = {p: current[p] - last[p] for p in PARTS}
            for p in PARTS:
                row[f"{p} step"] = float(step[p].norm())
                row[f"{p} radial"] = _cos(step[p], last[p])
                if last_step is not None:
                    row[f"{p} persist"] = _cos(step[p], last_step[p])
            last_step = step
        last = current
        rows.append(row)
    return rows


def _cell(row: dict[str, float], key: str) -> str:
    if key not in row:
        return ""
    value = row[key]
    return f"{value:+.2f}" if key.endswith(("radial", "persist")) else f"{value:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", type=Path, nargs="+")
    args = parser.parse_args()
    keys = [*PARTS, *(f"{p} {what}" for p in PARTS for what in ("step", "radial", "persist"))]
    header = ["epoch", *keys]
    for directory in args.dirs:
        print(f"\n{directory}\n")
        print("| " + " | ".join(header) + " |")
        print("| " + " | ".join("---" for _ in header) + " |")
        for row in drift(directory):
            print(f"| {row['epoch']:.0f} | " + " | ".join(_cell(row, k) for k in keys) + " |")


if __name__ == "__main__":
    main()
