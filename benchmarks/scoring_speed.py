"""Option scoring speed: label-token rows at the last position versus full logits.

Usage::

    python benchmarks/scoring_speed.py [--model smollm2-135m] [--batch-size 8] [--repeats 10]

Scores the same batch of demo prompts three ways, checks they agree, and
prints median wall times and the speed-up of metalora's scoring:

* ``full``: ``model(...).logits`` — a ``B x T x V`` projection, then gather;
* ``last-only``: transformers' ``logits_to_keep=1`` — ``B x V`` at the last position
  (timing only: with right padding that position is padding for shorter rows);
* ``metalora``: the hidden state at the last position times the rows of the
  label tokens only (``B x O``), as :func:`metalora.scoring.option_probs` does.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from metalora.interfaces import DataOptions
from metalora.models import load_model
from metalora.plugins import get_plugin_manager
from metalora.prompts import PromptEncoder
from metalora.scoring import option_probs, option_probs_full_logits


def last_only(model, batch):
    """Timing baseline: the projection restricted to the last position by transformers."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   use_cache=False, logits_to_keep=1).logits
    rows = torch.arange(logits.shape[0])
    picked = logits[rows, -1].float().gather(1, batch.option_ids)
    return torch.softmax(picked.masked_fill(~batch.option_mask, float("-inf")), dim=-1)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    loaded = load_model(args.model)
    suite = get_plugin_manager().registry("suite").get("demo").load(DataOptions())
    records = [r for t in suite.test for r in t.records][: args.batch_size]
    batch = PromptEncoder(loaded.tokenizer).encode(records)
    model = loaded.model
    ours = option_probs(model, batch)
    torch.testing.assert_close(ours, option_probs_full_logits(model, batch), rtol=1e-4, atol=1e-5)
    print(f"model {args.model}, batch {tuple(batch.input_ids.shape)}, "
          f"vocab {model.get_output_embeddings().weight.shape[0]}, median of {args.repeats}")
    methods = {
        "full logits (B x T x V)": option_probs_full_logits,
        "logits_to_keep (B x V)": last_only,
        "metalora label rows (B x O)": option_probs,
    }
    results = {name: timed(lambda fn=fn: fn(model, batch), args.repeats)
               for name, fn in methods.items()}
    base = results["full logits (B x T x V)"]
    for name, seconds in results.items():
        print(f"{name:30s} {1000 * seconds:8.1f} ms   speed-up vs full {base / seconds:5.2f}x")


if __name__ == "__main__":
    main()
