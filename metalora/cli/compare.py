"""``metalora compare SOURCE SOURCE...``: finished predictions side by side, paired."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from metalora import api
from metalora.cli.render import console
from metalora.plugins import PluginManager

COMPARE_HELP = (
    "Put two or more finished sets of predictions side by side on the same queries: each "
    "SOURCE is [NAME=]RUN_DIR[:LEARNER] (a run, one of its eval/ directories, or an "
    "ensemble's output; NAME labels it in the table and figures). The first is the "
    "reference; for every other, the per-query paired "
    "differences in accuracy, NLL and Brier from it with bootstrap SE (by seed when the "
    "seeds match), and with --output a risk-coverage plot and a combined reliability "
    "diagram (PNG and PDF) and comparison.json.")


def make_compare_command(plugins: PluginManager):
    """The ``compare`` command."""

    def compare(
        sources: list[str] = typer.Argument(..., help="[NAME=]RUN_DIR[:LEARNER], two or "
                                            "more; the first is the reference."),
        output: Path | None = typer.Option(None, "--output", "-o", help="Directory for "
                                           "comparison.json and the figures."),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the figures "
                                   "(with --output; needs matplotlib)."),
    ) -> None:
        result = api.compare(sources, output=output, plots=plots)
        table = Table(title=f"Paired on the same queries; reference {result.sources[0]}")
        table.add_column("source")
        for name in ("accuracy", "nll", "brier"):
            table.add_column(name, justify="right")
            table.add_column(f"Δ {name} ± SE", justify="right")
        for label in result.sources:
            row = [label]
            for name in ("accuracy", "nll", "brier"):
                row.append(f"{result.means[label][name]:.4f}")
                diff = result.differences.get(label, {}).get(name)
                row.append("reference" if diff is None else
                           diff.format(digits=4) + (" *" if not diff.within_noise() else ""))
            table.add_row(*row)
        console.print(table)
        console.print("Δ = source minus reference, mean over paired queries; * more than 2 SE "
                      "from 0.")
        if output is not None:
            console.print(f"Written to {output}")

    return compare
