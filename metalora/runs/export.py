"""Export a run's global mean adapters as a PEFT LoRA adapter: ``metalora export``.

``metalora export RUN_DIR --format peft --out DIR`` reads one learner/seed's
tested adapters (``<learner>/seed-<s>/adapters.safetensors``) and writes::

    DIR/
      adapter_config.json          peft LoraConfig: r, lora_alpha, target_modules,
                                   lora_dropout 0, base_model_name_or_path = the run's model
                                   (for smollm2-135m: its cached dequantised checkpoint)
      adapter_model.safetensors    the mean pair, named as peft saves it:
                                   base_model.model.<module>.lora_A.weight  (r x d_in)
                                   base_model.model.<module>.lora_B.weight  (d_out x r)
      metalora_pairs.safetensors   (only for learners with more than one pair, e.g. ABMLL)
                                   the learner's other pairs, named as in the run:
                                   <module>.pairs.<pair>.A / .B
      metalora_export.json         where it came from (run, learner, seed, epoch), the
                                   scaling, and how to read the sidecar pairs

so that ``PeftModel.from_pretrained(base_model, DIR)`` computes
``W0 + (alpha / r) * B @ A`` in every adapted layer: exactly metalora's model
with the mean adapters (for ``lora`` the learner's only pair; for ABMLL the
posterior mean ``mu_theta``, i.e. metalora's model without weight noise).

The mean pair is the learner's :attr:`~metalora.interfaces.Learner.mean_pair`.
The sidecar holds the pairs named by the learner's
:attr:`~metalora.interfaces.Learner.export_sidecar_pairs` or, when that is
``None``, every pair but the mean pair. The run is reopened as ``eval`` and
``prune`` reopen it (:func:`~metalora.runs.setup.open_run`). For
ABMLL that includes the variance pair ``logv_theta``: the elementwise
log-variance of the global posterior is
``clamp(s * B @ A + log_var_init, log_var_min, log_var_max)`` with ``s = alpha / r``
and the ``log_var_*`` values recorded under ``learner_settings`` in
``metalora_export.json``. peft ignores the sidecar files (``adapter_config.json``
holds only keys peft knows).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from safetensors.torch import save as save_safetensors

from metalora.config import settings_dict
from metalora.errors import MetaloraError, unknown_choice
from metalora.models import loadable_name
from metalora.plugins import PluginManager
from metalora.runs.rundir import (
    ADAPTERS_FILE,
    METRICS_FILE,
    atomic_write_bytes,
    load_adapters,
    read_json,
    seed_dir,
    write_json,
)
from metalora.runs.setup import RunSetup, select_from_run

FORMATS: tuple[str, ...] = ("peft",)
PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
SIDECAR_FILE = "metalora_pairs.safetensors"
EXPORT_INFO_FILE = "metalora_export.json"
EXPORT_DIR = "export"
"""Default output: ``RUN_DIR/export/<learner>-seed-<s>-peft``."""
FORMAT_VERSION = 1


@dataclass
class ExportResult:
    """What :func:`export_peft` wrote."""

    out: Path
    learner: str
    seed: int
    mean_pair: str
    modules: list[str]
    target_modules: list[str]
    rank: int
    alpha: float
    tested_epoch: Any = None
    files: list[str] = field(default_factory=list)
    sidecar_pairs: list[str] = field(default_factory=list)


def split_adapter_key(key: str) -> tuple[str, str, str]:
    """``<module>.pairs.<pair>.<A|B>`` -> ``(module, pair, side)``."""
    module, sep, rest = key.rpartition(".pairs.")
    pair, _, side = rest.rpartition(".")
    if not sep or not pair or side not in ("A", "B"):
        raise MetaloraError(f"unexpected adapter tensor name {key!r} "
                            "(expected <module>.pairs.<pair>.<A|B>)")
    return module, pair, side


def peft_state_dict(tensors: dict[str, torch.Tensor], pair: str) -> dict[str, torch.Tensor]:
    """One pair of metalora adapter tensors, renamed as peft saves a LoRA adapter."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        module, name, side = split_adapter_key(key)
        if name == pair:
            lora = "lora_A" if side == "A" else "lora_B"
            out[f"base_model.model.{module}.{lora}.weight"] = value.detach().float().contiguous()
    return out


def peft_config_dict(rank: int, alpha: float, target_modules: list[str],
                     base_model: str | None) -> dict[str, Any]:
    """The ``adapter_config.json`` written when peft is not installed (keys peft reads)."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": alpha,
        "target_modules": target_modules,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": base_model,
    }


def _write_peft_config(out: Path, rank: int, alpha: float, target_modules: list[str],
                       base_model: str | None) -> None:
    """``adapter_config.json`` through peft's own ``LoraConfig`` when peft is installed."""
    try:
        from peft import LoraConfig
    except ImportError:
        data = peft_config_dict(rank, alpha, target_modules, base_model)
        atomic_write_bytes(out / PEFT_CONFIG_FILE, (json.dumps(data, indent=2) + "\n").encode())
        return
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                        lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        base_model_name_or_path=base_model, inference_mode=True)
    config.save_pretrained(str(out))


def default_out(run_dir: Path, learner: str, seed: int) -> Path:
    """Where an export goes without ``--out``."""
    return run_dir / EXPORT_DIR / f"{learner}-seed-{seed}-peft"


def export_peft(run_dir: Path | str, plugins: PluginManager, out: Path | str | None = None, *,
                learner: str | None = None, seed: int | None = None,
                overwrite: bool = False) -> ExportResult:
    """Write one learner/seed's global mean adapters of a finished run as a PEFT adapter."""
    run_dir = Path(run_dir)
    setup = RunSetup.from_run_dir(run_dir, plugins, console=Console(quiet=True))
    learners = list(setup.run.learner)
    if learner is None:
        if len(learners) != 1:
            raise MetaloraError(
                f"run {str(run_dir)!r} holds several learners; pick one with --learner "
                f"(valid choices: {', '.join(learners)})")
        learner = learners[0]
    seed = setup.run.seeds[0] if seed is None else seed
    select_from_run(setup, run_dir, {"learner": [learner], "seeds": [seed]})
    run = setup.run
    config: dict[str, Any] = {"model": run.model, "rank": run.rank, "alpha": run.alpha,
              "target_modules": list(run.target_modules),
              "learner_settings": {learner: settings_dict(setup.learner_settings(learner))}}
    where = seed_dir(run_dir, learner, seed)
    cls = plugins.registry("learner").get(learner)
    mean_pair = cls.mean_pair
    tensors = load_adapters(where / ADAPTERS_FILE)
    pairs = sorted({split_adapter_key(k)[1] for k in tensors})
    if mean_pair not in pairs:
        raise unknown_choice(f"mean pair of learner {learner!r} in the saved adapters",
                             mean_pair, pairs)
    weights = peft_state_dict(tensors, mean_pair)
    modules = sorted({split_adapter_key(k)[0] for k in tensors})
    rank, alpha = run.rank, run.alpha
    for module in modules:
        a = weights.get(f"base_model.model.{module}.lora_A.weight")
        b = weights.get(f"base_model.model.{module}.lora_B.weight")
        if a is None or b is None or a.shape[0] != rank or b.shape[1] != rank:
            raise MetaloraError(f"adapter file {str(where / ADAPTERS_FILE)!r} does not hold a "
                                f"rank-{rank} pair {mean_pair!r} for module {module!r}")
    targets = list(config.get("target_modules") or [])
    found = {m.rsplit(".", 1)[-1] for m in modules}
    target_modules = [t for t in targets if t in found] + sorted(found - set(targets))
    sidecar = cls.export_sidecar_pairs
    sidecar_pairs = [p for p in (sidecar if sidecar is not None else pairs) if p != mean_pair]
    missing = [p for p in sidecar_pairs if p not in pairs]
    if missing:
        raise unknown_choice(f"adapter pair of learner {learner!r}", missing[0], pairs)

    out = Path(out) if out is not None else default_out(run_dir, learner, seed)
    _prepare_out(out, run_dir, overwrite)
    metrics = read_json(where / METRICS_FILE, "seed metrics")
    result = ExportResult(out=out, learner=learner, seed=seed, mean_pair=mean_pair,
                          modules=modules, target_modules=target_modules, rank=rank,
                          alpha=alpha, tested_epoch=metrics.get("tested_epoch"),
                          sidecar_pairs=sidecar_pairs)
    base_model = config.get("model")
    result.files = write_peft_adapter(
        out, tensors, mean_pair, sidecar_pairs, rank=rank, alpha=alpha,
        target_modules=target_modules, base_model=base_model, info={
            "run_dir": str(run_dir.resolve()), "learner": learner, "seed": seed,
            "tested_epoch": result.tested_epoch,
            "learner_settings": (config.get("learner_settings") or {}).get(learner, {})})
    return result


def write_peft_adapter(out: Path, tensors: dict[str, torch.Tensor], mean_pair: str,
                       sidecar_pairs: list[str], *, rank: int, alpha: float,
                       target_modules: list[str], base_model: str | None,
                       info: dict[str, Any]) -> list[str]:
    """Write pair ``mean_pair`` of ``tensors`` as a PEFT LoRA adapter into ``out`` (config
    and weights), ``sidecar_pairs`` beside it as metalora saves them, and what it is
    (``metalora_export.json``, with ``info`` added); returns the files written."""
    weights = peft_state_dict(tensors, mean_pair)
    modules = sorted({split_adapter_key(k)[0] for k in tensors})
    _write_peft_config(out, rank, alpha, target_modules,
                       loadable_name(base_model) if base_model else None)
    atomic_write_bytes(out / PEFT_WEIGHTS_FILE,
                       save_safetensors(weights, metadata={"format": "pt"}))
    files = [PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE]
    if sidecar_pairs:
        extra = {k: v.detach().float().contiguous() for k, v in tensors.items()
                 if split_adapter_key(k)[1] in sidecar_pairs}
        atomic_write_bytes(out / SIDECAR_FILE, save_safetensors(
            extra, metadata={"format": "pt", "pairs": json.dumps(sidecar_pairs)}))
        files.append(SIDECAR_FILE)
    files.append(EXPORT_INFO_FILE)
    write_json(out / EXPORT_INFO_FILE, {
        "format_version": FORMAT_VERSION,
        "format": "peft",
        **info,
        "model": base_model,
        "mean_pair": mean_pair,
        "rank": rank,
        "alpha": alpha,
        "scaling": alpha / rank,
        "modules": modules,
        "target_modules": target_modules,
        "files": {
            PEFT_CONFIG_FILE: "peft LoraConfig",
            PEFT_WEIGHTS_FILE: f"pair {mean_pair!r} as peft LoRA weights: the mean weight is "
                               "W0 + scaling * lora_B @ lora_A",
            **({SIDECAR_FILE: f"pairs {', '.join(sidecar_pairs)} as saved by metalora "
                              "(<module>.pairs.<pair>.A / .B); dense update = scaling * B @ A"}
               if sidecar_pairs else {}),
        },
        "sidecar_pairs": sidecar_pairs,
    })
    for name in files:
        _readable(out / name)
    return files


def _readable(path: Path) -> None:
    """Atomic writes create files readable by their owner only; give them the usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _prepare_out(out: Path, run_dir: Path, overwrite: bool) -> None:
    """Refuse to write into a non-empty directory (unless ``overwrite``) or over a run's files."""
    if out.exists() and not out.is_dir():
        raise MetaloraError(f"output {str(out)!r} exists and is not a directory")
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or (resolved in run.parents):
        raise MetaloraError(f"output directory {str(out)!r} would overwrite the run; choose "
                            "another --out")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MetaloraError(f"output directory {str(out)!r} is not empty; choose another --out "
                            "or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)


# -- the command ---------------------------------------------------------------------------
