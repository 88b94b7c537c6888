"""``metalora export RUN_DIR``: a run's tested adapters as a peft LoRA adapter."""

from __future__ import annotations

from pathlib import Path

import typer

from metalora import api
from metalora.cli.render import console
from metalora.errors import unknown_choice
from metalora.plugins import PluginManager
from metalora.runs.export import FORMATS

EXPORT_HELP = (
    "Export a run's global mean adapters (one learner and seed, the tested adapters) as a "
    "PEFT LoRA adapter: adapter_config.json and adapter_model.safetensors, loadable with "
    "PeftModel.from_pretrained(base_model, OUT). For ABMLL the mean pair mu_theta is exported "
    "and the variance pair goes to the sidecar metalora_pairs.safetensors, described in "
    "metalora_export.json.")


def make_export_command(plugins: PluginManager):
    """The ``export`` command."""
    def export(
        run_dir: Path = typer.Argument(..., metavar="RUN_DIR",
                                       help="A run directory written by `metalora run`."),
        format: str = typer.Option("peft", "--format", "-f",
                                   help="Export format (choices: peft)."),
        out: Path | None = typer.Option(
            None, "--out", "-o", help="Output directory (default: "
                                      "RUN_DIR/export/<learner>-seed-<seed>-peft)."),
        learner: str | None = typer.Option(
            None, "--learner", help="Which learner of the run (needed when it holds several)."),
        seed: int | None = typer.Option(
            None, "--seed", help="Which seed's adapters (default: the run's first seed)."),
        overwrite: bool = typer.Option(
            False, "--overwrite", help="Write into an output directory that is not empty."),
    ) -> None:
        if format not in FORMATS:
            raise unknown_choice("export format", format, FORMATS)
        result = api.export(run_dir, out, learner=learner, seed=seed, overwrite=overwrite,
                            plugins=plugins)
        epoch = "" if result.tested_epoch is None else f", epoch {result.tested_epoch}"
        console.print(
            f"Exported {result.learner} seed {result.seed}{epoch} (pair {result.mean_pair!r}, "
            f"{len(result.modules)} modules, r={result.rank}, alpha={result.alpha:g}, target "
            f"{','.join(result.target_modules)}) to {result.out}: {', '.join(result.files)}",
            soft_wrap=True, highlight=False)
        console.print(f"Load with: PeftModel.from_pretrained(base_model, "
                          f"{str(result.out)!r})", soft_wrap=True, highlight=False)

    return export
