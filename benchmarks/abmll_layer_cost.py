"""Where ABMLL's extra step time goes: one adapted layer, forward and backward, versus LoRA.

Not a test: run it by hand::

    python benchmarks/abmll_layer_cost.py                  # 768 x 768 layer, 256 tokens, 1 thread
    python benchmarks/abmll_layer_cost.py --dim 4096 --tokens 512 --device cuda

It times, for one ``dim x dim`` linear layer and ``tokens`` input rows
(batch 2 x sequence 128 by default, as ``abmll_memory.py``): the layer with
one LoRA pair (``W0 x + s B A x``, forward and backward), the same layer with
ABMLL's exact weight sample (:class:`SampledLinear`) without and with the KL
term fused into its backward pass, and the pieces the weight sample cannot
avoid: drawing the ``dim x dim`` noise (done twice per step: in the forward
pass and again in backward instead of storing it), the dense ``g^T x``
product behind the variance gradient, and one elementwise exponential.
Medians of ``--repeats`` timings after a warm-up; milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from metalora_plugins.abmll.dense import Workspace
from metalora_plugins.abmll.noise import NoiseKey
from metalora_plugins.abmll.objective import KLRequest
from metalora_plugins.abmll.pairs import LogVarSpec
from metalora_plugins.abmll.sampling import SampledLinear


def median_ms(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median wall time of ``fn`` in milliseconds, after two warm-up calls."""
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gen = torch.Generator().manual_seed(0)
    n, r, T = args.dim, args.rank, args.tokens

    def leaf(*shape: int, scale: float = 0.01) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device).requires_grad_()

    x = leaf(1, T, n, scale=1.0)
    W0 = (torch.randn(n, n, generator=gen) * 0.02).to(device)
    q = [leaf(r, n), leaf(n, r), leaf(r, n), leaf(n, r)]
    p = [t.detach().clone() for t in q]
    grad_out = torch.randn(1, T, n, generator=gen).to(device)
    spec, scaling = LogVarSpec(), 2.0
    workspace = Workspace()

    def lora() -> None:
        A, B = q[0], q[1]
        (F.linear(x, W0) + scaling * F.linear(F.linear(x, A), B)).backward(grad_out)

    def abmll(with_kl: bool) -> None:
        request = KLRequest(weight=1e-8, detach_theta=True) if with_kl else None
        factors = p if with_kl else [None] * 4
        out = SampledLinear.apply(x, W0, None, *q, *factors, scaling, spec,
                                  NoiseKey.take(device), workspace,
                                  (request, 0) if request is not None else None)
        out.backward(grad_out)

    buffer = torch.empty(n, n, device=device)
    xs, gs = x.detach().reshape(T, n), grad_out.reshape(T, n)
    rows = [
        ("layer with one LoRA pair", lora),
        ("ABMLL weight sample, no KL", lambda: abmll(False)),
        ("ABMLL weight sample, KL fused", lambda: abmll(True)),
        ("  one noise draw (x2 per step)", lambda: NoiseKey.take(device).normal((n, n), buffer,
                                                                               out=buffer)),
        ("  dense g^T x (variance gradient)", lambda: torch.mm(gs.t(), xs, out=buffer)),
        ("  one elementwise exp", lambda: torch.exp(W0, out=buffer)),
    ]
    results = {name: median_ms(fn, args.repeats, sync) for name, fn in rows}
    print(f"one {n} x {n} layer, {T} tokens, rank {r}, device {device}"
          + (f", {args.threads} thread(s)" if device.type == "cpu" else ""))
    print(f"{'':36}{'ms':>9}")
    for name, ms in results.items():
        print(f"{name:36}{ms:9.2f}")
    base = results["layer with one LoRA pair"]
    print(f"\nABMLL/LoRA for this layer: {results['ABMLL weight sample, no KL'] / base:.2f} "
          f"without the KL, {results['ABMLL weight sample, KL fused'] / base:.2f} with it")


if __name__ == "__main__":
    main()
