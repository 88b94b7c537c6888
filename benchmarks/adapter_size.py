"""How far trained adapters moved the pretrained weights, and how much weight noise ABMLL draws.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/adapter_size.py RUN_DIR [RUN_DIR ...]
    OMP_NUM_THREADS=1 python benchmarks/adapter_size.py --like RUN_DIR FILE.safetensors ...

Each RUN_DIR's final adapters (every learner and seed in it), or adapter files (an epoch's
checkpoint, copied aside while the run went on) read with the settings of the run
``--like`` names. For each it prints, over the adapted layers, the median and the largest
``rms(s * B @ A) / std(W0)``: the size of the update the global mean pair adds (``lora``'s
only pair, ABMLL's ``mu_theta``) relative to the spread of the pretrained weight it adapts.
For ABMLL also the mean change of the global log-variance since initialisation
(``s * B @ A`` of ``logv_theta``) and ``rms(sigma_theta) / std(W0)``, the weight noise a
prediction draws. Ratios only: nothing here depends on the machine.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from metalora.errors import MetaloraError
from metalora.models import load_model
from metalora.runs.rundir import ADAPTERS_FILE, load_adapters, read_config
from metalora_plugins.abmll.pairs import relative_log_var

MEAN_PAIRS = ("default", "mu_theta")
"""The global mean pair's name: ``lora`` (and its relatives) or ABMLL."""
LOG_VAR_PAIR = "logv_theta"


def adapter_files(run_dir: Path) -> list[Path]:
    """Every final adapters file of a run: ``<learner>/seed-<n>/adapters.safetensors``."""
    files = sorted(run_dir.glob(f"*/seed-*/{ADAPTERS_FILE}"))
    if not files:
        raise SystemExit(f"{run_dir}: no */seed-*/{ADAPTERS_FILE} (not a finished run)")
    return files


def mean_pair(tensors: dict[str, torch.Tensor]) -> tuple[list[str], str]:
    """The adapted layers of an adapters file, sorted, and the name of its global mean pair."""
    layers = sorted({key.rsplit(".pairs.", 1)[0] for key in tensors})
    pair = next((p for p in MEAN_PAIRS if f"{layers[0]}.pairs.{p}.B" in tensors), None)
    if pair is None:
        raise SystemExit(f"no global mean pair ({', '.join(MEAN_PAIRS)}) among the adapters' "
                         f"pairs of {layers[0]}")
    return layers, pair


def update(tensors: dict[str, torch.Tensor], layer: str, pair: str, scale: float) -> torch.Tensor:
    """The dense ``scale * B @ A`` of one layer's pair."""
    b, a = tensors[f"{layer}.pairs.{pair}.B"], tensors[f"{layer}.pairs.{pair}.A"]
    return scale * b.float() @ a.float()


def sizes(tensors: dict[str, torch.Tensor], settings: dict, base: dict[str, torch.Tensor]
          ) -> dict[str, float]:
    """The ratios of one adapters file (see the module); ``settings`` are a run's resolved
    ones (its ``config.json``), ABMLL's read from its ``learner_settings``."""
    scale = settings["alpha"] / settings["rank"]
    layers, pair = mean_pair(tensors)
    abmll = settings.get("learner_settings", {}).get("abmll")
    mean_ratio, log_var_change, noise_ratio = [], [], []
    for layer in layers:
        spread = base[f"{layer}.weight"].float().std().item()
        mean_ratio.append(update(tensors, layer, pair, scale).pow(2).mean().sqrt().item() / spread)
        if abmll is None or f"{layer}.pairs.{LOG_VAR_PAIR}.B" not in tensors:
            continue
        kappa = abmll["log_var_relative"]
        offset = (abmll["log_var_init"] if kappa is None
                  else relative_log_var(base[f"{layer}.weight"], kappa))
        change = update(tensors, layer, LOG_VAR_PAIR, scale)
        log_var = (offset + change).clamp(abmll["log_var_min"], abmll["log_var_max"])
        log_var_change.append(change.mean().item())
        noise_ratio.append(log_var.exp().mean().sqrt().item() / spread)
    out = {"layers": len(layers), "mean_median": statistics.median(mean_ratio),
           "mean_max": max(mean_ratio)}
    if noise_ratio:
        out |= {"log_var_change": statistics.mean(log_var_change),
                "noise_median": statistics.median(noise_ratio), "noise_max": max(noise_ratio)}
    return out


def line(label: str, s: dict[str, float]) -> str:
    text = (f"{label}: {s['layers']} layers, update/std(W0) median {100 * s['mean_median']:.2f}% "
            f"max {100 * s['mean_max']:.1f}%")
    if "noise_median" in s:
        text += (f"; mean log-variance change {s['log_var_change']:+.3f}, sigma/std(W0) median "
                 f"{100 * s['noise_median']:.3f}% max {100 * s['noise_max']:.3f}%")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", type=Path, nargs="+",
                        help="run directories, or adapter files with --like")
    parser.add_argument("--like", type=Path, default=None,
                        help="the run whose settings (model, rank, alpha, ABMLL's c) the "
                             "adapter files were trained with")
    args = parser.parse_args()
    items: list[tuple[str, Path, dict]] = []
    try:
        for path in args.paths:
            if path.is_dir():
                settings = read_config(path)
                items += [(f"{path.name} {f.parent.parent.name} {f.parent.name}", f, settings)
                          for f in adapter_files(path)]
            elif args.like is None:
                raise SystemExit(f"{path}: an adapters file needs --like RUN_DIR (its settings)")
            else:
                items.append((path.name, path, read_config(args.like)))
        bases: dict[str, dict[str, torch.Tensor]] = {}
        for label, path, settings in items:
            model = settings["model"]
            if model not in bases:
                bases[model] = load_model(model).model.state_dict()
            print(line(label, sizes(load_adapters(path), settings, bases[model])), flush=True)
    except MetaloraError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
