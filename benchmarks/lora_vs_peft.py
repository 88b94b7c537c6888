"""One LoRA training step: metalora's ``lora`` against peft's LoRA and against the floor.

Usage::

    python benchmarks/lora_vs_peft.py [--models smollm2-135m,llama-100m] [--repeats 3]
                                      [--steps 8] [--warmup 2] [--batch 2] [--seq 128]
                                      [--threads 2] [--device cpu]

For each model (SmolLM2-135M-Instruct, and a ~100M random-init Llama: hidden
768, 12 layers, vocabulary 32000) it times one optimiser step three ways,
each in its own process, the processes alternating (``--repeats`` rounds),
median over steps and then over rounds:

* ``metalora``: the model with metalora's adapters (rank 8, alpha 16, on
  q_proj, v_proj and o_proj), the core's answer loss, AdamW on the adapters;
* ``peft``: ``peft.get_peft_model`` with the same rank, alpha, targets and
  initialisation, the same loss and optimiser;
* ``floor``: the frozen model with no adapter, forward and backward to the
  input embeddings (what any adapter method must at least compute).

The batch is random tokens, ``--batch`` x ``--seq``. It ends with a line
``lora/peft step-time ratio: X`` (and the floor ratio) per model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WAYS = ("metalora", "peft", "floor")
TARGETS = ["q_proj", "v_proj", "o_proj"]


def _model(name: str, seq: int):
    import torch

    from metalora.models import load_model

    if name != "llama-100m":
        return load_model(name).model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                         max_position_embeddings=max(512, seq), tie_word_embeddings=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time ``args.way`` on ``args.model``; return the step times."""
    import torch

    from metalora.adapters import AdapterConfig, attach_adapters
    from metalora.prompts import Batch
    from metalora.scoring import answer_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = _model(args.model, args.seq).to(args.device)
    vocab = model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    n = args.batch
    batch = Batch(
        input_ids=torch.randint(3, vocab, (n, args.seq), generator=gen),
        attention_mask=torch.ones(n, args.seq, dtype=torch.long),
        last_index=torch.full((n,), args.seq - 1, dtype=torch.long),
        option_ids=torch.tensor([[10, 11, 12, 13]] * n),
        option_mask=torch.ones(n, 4, dtype=torch.bool),
        targets=torch.randint(0, 4, (n,), generator=gen), records=()).to(args.device)
    if args.way == "metalora":
        handle = attach_adapters(model, AdapterConfig(rank=8, alpha=16.0,
                                                      target_modules=tuple(TARGETS)), ["main"])
        params = handle.parameters()
    elif args.way == "peft":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                                 target_modules=TARGETS, bias="none"))
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        embeddings = model.get_input_embeddings()
        embeddings.register_forward_hook(lambda _m, _i, out: out.requires_grad_(True))
        params = []
    optimiser = torch.optim.AdamW(params, lr=1e-4) if params else None
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    times = []
    for _ in range(args.warmup + args.steps):
        start = time.perf_counter()
        loss = answer_loss(model, batch)
        loss.backward()
        if optimiser is not None:
            optimiser.step()
            optimiser.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - start)
    return {"way": args.way, "model": args.model, "trainable": sum(p.numel() for p in params),
            "median_step_s": statistics.median(times[args.warmup:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--way", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--models", default="smollm2-135m,llama-100m")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    print(f"batch {args.batch} x seq {args.seq}, {args.threads} thread(s), {args.device}; "
          f"median of {args.steps} steps after {args.warmup}, median over {args.repeats} "
          "alternating rounds, each way in its own process")
    for model in args.models.split(","):
        times: dict[str, list[float]] = {way: [] for way in WAYS}
        trainable: dict[str, int] = {}
        for _ in range(args.repeats):
            for way in WAYS:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--way", way,
                       "--model", model]
                for name in ("steps", "warmup", "batch", "seq", "threads", "device"):
                    cmd += [f"--{name}", str(getattr(args, name))]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                times[way].append(result["median_step_s"])
                trainable[way] = result["trainable"]
        step = {way: statistics.median(values) for way, values in times.items()}
        print(f"\n{model}:")
        for way in WAYS:
            spread = f"{min(times[way]):.3f}-{max(times[way]):.3f}"
            print(f"  {way:<9} {step[way]:.3f} s/step (range {spread}), "
                  f"{trainable[way]:,} trainable parameters")
        print(f"  lora/peft step-time ratio: {step['metalora'] / step['peft']:.3f}  "
              f"(lora/floor {step['metalora'] / step['floor']:.3f}, "
              f"peft/floor {step['peft'] / step['floor']:.3f})")


if __name__ == "__main__":
    main()
