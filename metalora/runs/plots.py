"""Figures of a run: validation curves (paper Figure 2) and reliability diagrams.

matplotlib is optional (``pip install 'metalora[plots]'``): without it
:func:`write_plots` raises :class:`PlotsUnavailable` and the engine prints a
one-line note. Figures are drawn on matplotlib's Agg canvas directly (no
``pyplot``, no global backend change), so plotting is headless and safe
inside other applications.

* ``validation.png`` — validation accuracy and ECE over epochs, one line per
  learner: at each validated epoch, the mean over seeds of the moving average
  of the (up to) three most recent validations (the paper's sliding window
  over the three most recent epochs; with ``eval_every > 1`` the window
  spans three validations). A learner that does not train (``pretrained``)
  is validated once and drawn as a dashed horizontal line.
* ``reliability-<learner>.png`` — top-label reliability diagram of the test
  predictions, pooled over test tasks and seeds: per confidence bin (15
  equal-width bins, as the ECE metric), the accuracy against the mean
  confidence, with the pooled ECE in the title.
"""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from metalora.files import atomic_write_bytes

if TYPE_CHECKING:
    from rich.console import Console

    from metalora.runs.results import RunSummary

ECE_BINS = 15
WINDOW = 3
VALIDATION_FIGURE = "validation.png"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


def matplotlib_available() -> bool:
    """Whether matplotlib can be imported."""
    return importlib.util.find_spec("matplotlib") is not None


# -- data ---------------------------------------------------------------------------------
def moving_average(values: Sequence[float], window: int = WINDOW) -> list[float]:
    """Trailing moving average: each point is the mean of it and up to ``window - 1`` before."""
    out = []
    for i in range(len(values)):
        recent = values[max(0, i - window + 1): i + 1]
        out.append(sum(recent) / len(recent))
    return out


def validation_curve(histories: Sequence[Sequence[Mapping[str, Any]]], metric: str,
                     window: int = WINDOW) -> tuple[list[int], list[float]]:
    """Epochs and the mean over seeds of each seed's moving-averaged ``metric``.

    Only epochs validated in every seed are kept (they are the same epochs
    unless a run was cut short).
    """
    per_seed: list[dict[int, float]] = []
    for history in histories:
        records = [r for r in history if metric in r]
        smoothed = moving_average([float(r[metric]) for r in records], window)
        per_seed.append({int(r["epoch"]): v for r, v in zip(records, smoothed, strict=True)})
    if not per_seed:
        return [], []
    epochs = sorted(set.intersection(*(set(s) for s in per_seed)))
    return epochs, [sum(s[e] for s in per_seed) / len(per_seed) for e in epochs]


def reliability_bins(probs: Tensor, targets: Tensor, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Top-label reliability statistics per equal-width confidence bin.

    Binning follows torchmetrics' ``MulticlassCalibrationError`` (bins closed
    on the right edge), so ``ece`` equals that metric on the same predictions.
    """
    probs = probs.float()
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    count = torch.zeros(n_bins).scatter_add_(0, index, torch.ones_like(confidence))
    conf_sum = torch.zeros(n_bins).scatter_add_(0, index, confidence)
    acc_sum = torch.zeros(n_bins).scatter_add_(0, index, correct)
    nonzero = count.clamp_min(1)
    accuracy, mean_conf = acc_sum / nonzero, conf_sum / nonzero
    total = max(int(count.sum()), 1)
    ece = float(((accuracy - mean_conf).abs() * count).sum() / total)
    return {"edges": edges.tolist(), "count": count.long().tolist(),
            "accuracy": accuracy.tolist(), "confidence": mean_conf.tolist(), "ece": ece,
            "n": int(count.sum())}


# -- figures ------------------------------------------------------------------------------
def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotsUnavailable("matplotlib is not installed") from exc
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_validation(histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]], path: Path,
                    metrics: Sequence[tuple[str, str]] = (("accuracy", "Accuracy"),
                                                          ("ece", "ECE")),
                    title: str = "") -> Path | None:
    """Validation curves of every learner (see the module docstring); ``None`` if no data."""
    if not any(any(h for h in seeds) for seeds in histories.values()):
        return None
    fig, axes = _figure(5.0 * len(metrics), 3.8, ncols=len(metrics))
    from matplotlib.ticker import MaxNLocator
    curves = {name: {m: validation_curve(seeds, m) for m, _ in metrics}
              for name, seeds in histories.items()}
    last = max((max(c[m][0], default=0) for c in curves.values() for m, _ in metrics),
               default=0)
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        for index, (name, curve) in enumerate(curves.items()):
            epochs, values = curve[metric]
            if not epochs:
                continue
            color = f"C{index % 10}"
            if len(epochs) == 1 and epochs[0] == 0:
                ax.axhline(values[0], color=color, linestyle="--", label=name)
            else:
                ax.plot(epochs, values, color=color, marker="o" if len(epochs) < 30 else None,
                        markersize=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {label}")
        ax.set_xlim(0, max(last, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title or f"Validation over epochs (moving average of the last {WINDOW})")
    return _save(fig, path)


def plot_reliability(probs: Tensor, targets: Tensor, path: Path, title: str) -> Path:
    """A reliability diagram of pooled test predictions."""
    stats = reliability_bins(probs, targets)
    fig, axes = _figure(4.2, 4.2)
    ax = axes[0]
    edges = stats["edges"]
    width = edges[1] - edges[0]
    lefts = edges[:-1]
    filled = [c > 0 for c in stats["count"]]
    ax.bar([x for x, f in zip(lefts, filled, strict=True) if f],
           [a for a, f in zip(stats["accuracy"], filled, strict=True) if f],
           width=width, align="edge", edgecolor="black", linewidth=0.5, label="accuracy")
    ax.bar([x for x, f in zip(lefts, filled, strict=True) if f],
           [c - a for c, a, f in zip(stats["confidence"], stats["accuracy"], filled,
                                      strict=True) if f],
           bottom=[a for a, f in zip(stats["accuracy"], filled, strict=True) if f],
           width=width, align="edge", color="red", alpha=0.3, label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top option)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"{title}\nECE (pooled) = {stats['ece']:.3f}, n = {stats['n']}",
                 fontsize="medium")
    return _save(fig, path)


def write_plots(histories: Mapping[str, Sequence[Sequence[Mapping[str, Any]]]],
                predictions: Mapping[str, Sequence[tuple[Tensor, Tensor]]], out_dir: Path,
                suite: str = "") -> list[Path]:
    """Write ``validation.png`` and one reliability diagram per learner into ``out_dir``.

    ``histories``: learner -> one validation history per seed.
    ``predictions``: learner -> ``(probs, targets)`` per seed and test task.
    Raises :class:`PlotsUnavailable` without matplotlib.
    """
    if not matplotlib_available():
        raise PlotsUnavailable("matplotlib is not installed")
    written: list[Path] = []
    curves = plot_validation(histories, out_dir / VALIDATION_FIGURE,
                             title=f"Validation on '{suite}' (moving average of the last "
                                   f"{WINDOW}, mean over seeds)" if suite else "")
    if curves is not None:
        written.append(curves)
    for learner, parts in predictions.items():
        if not parts:
            continue
        width = max(p.shape[-1] for p, _ in parts)
        probs = torch.cat([torch.nn.functional.pad(p.float(), (0, width - p.shape[-1]))
                           for p, _ in parts])
        targets = torch.cat([t for _, t in parts])
        written.append(plot_reliability(probs, targets, out_dir / f"reliability-{learner}.png",
                                        title=f"{learner} on '{suite}' (test)"))
    return written


def plot_run(summary: RunSummary, console: Console) -> list[Path]:
    """The figures of a run, into ``RUN_DIR/plots``; a note on ``console`` instead when
    matplotlib is missing or a figure fails (a figure never costs a run its results)."""
    from metalora.runs.rundir import PLOTS_DIR

    histories = {n: [r.history for r in seeds] for n, seeds in summary.results.items()}
    predictions = {n: [(t.probs, t.targets) for r in seeds for t in r.test.tasks]
                   for n, seeds in summary.results.items()}
    try:
        return write_plots(histories, predictions, summary.run_dir / PLOTS_DIR,
                           suite=summary.suite)
    except PlotsUnavailable:
        console.print("[dim]matplotlib is not installed: plots skipped "
                      "(pip install 'metalora\\[plots]')[/dim]")
    except Exception as exc:  # a figure must never cost a finished run its results
        console.print(f"[yellow]Warning:[/yellow] plots skipped: {type(exc).__name__}: {exc}")
    return []
