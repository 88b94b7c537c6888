"""ABMLL's outer loop on a toy regression: which optimiser lets a strong KL pull blow theta up.

Usage::

    python benchmarks/pull_toy.py [--epochs 120] [--seeds 0,1,2]

No model and no data: each of 12 tasks asks for a weight update ``M_t = M + N_t`` (a shared
part and a task's own, 32 x 32), seen through noisy targets. The global pair ``(B, A)``
(rank 4, ``s = 2``, B = 0 at the start) is trained as ABMLL's ``literal`` reading trains its
means: per task, a fresh inner optimiser takes 5 steps on the task pair from theta on
``1/2 |s B_phi A_phi - target|^2 + lambda/2 |s B_phi A_phi - s B_theta A_theta|^2``, then
one outer step on theta on the pull term alone. Each row switches one thing: the pull
strength ``lambda``, and whether the inner and the outer optimiser are AdamW (the
learner's), AdamW without momentum (beta1 = 0) or plain SGD.

First, one coordinate alone (:func:`one_coordinate`): where five steps of a fresh AdamW
end, with and without momentum, as the pull's curvature grows against the data's
gradient. Then per row, mean over the seeds: ``|mu|`` at the end beside ``|M|`` (the shared
update the tasks agree on), the squared error ``1/2 |mu - M|^2`` at the end and its
lowest over the epochs, and over the first 10 epochs' inner loops the mean cosine of the
task's displacement ``phi_K - theta`` (B and A together) with the negative gradient of
the task's own loss at theta (``descent``: negative when the inner loop ends uphill), and
of the first-order change of ``s B A`` (``s (dB A + B dA)``) with theta's own
``s B_theta A_theta`` (``radial``: positive carries the update further along itself).
"""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import dataclass

import torch

DIM, RANK, SCALE, TASKS, INNER_STEPS, NOISE = 32, 4, 2.0, 12, 5, 0.05
PROBE_EPOCHS = 10


@dataclass(frozen=True)
class Arm:
    """One row: the pull strength and the optimisers."""

    lam: float
    inner: str
    inner_lr: float
    outer: str
    outer_lr: float

    def label(self) -> str:
        return (f"lambda {self.lam:g}: inner {self.inner} {self.inner_lr:g}, "
                f"outer {self.outer} {self.outer_lr:g}")


ARMS = (
    Arm(0.1, "adamw", 1e-3, "adamw", 1e-3),
    Arm(100.0, "adamw", 1e-3, "adamw", 1e-3),
    Arm(1000.0, "adamw", 1e-3, "adamw", 1e-3),
    Arm(1000.0, "adamw-no-momentum", 1e-3, "adamw", 1e-3),
    Arm(1000.0, "adamw", 1e-3, "sgd", 1e-4),
    Arm(1000.0, "sgd", 1e-4, "adamw", 1e-3),
    Arm(1000.0, "sgd", 1e-4, "sgd", 1e-4),
)


def _optimizer(kind: str, params: list[torch.Tensor], lr: float) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    if kind == "adamw-no-momentum":
        return torch.optim.AdamW(params, lr=lr, betas=(0.0, 0.999), weight_decay=0.01)
    return torch.optim.SGD(params, lr=lr)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _descent(b: torch.Tensor, a: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
    """The negative gradient of the task's own loss at theta over (B, A), flattened."""
    b, a = b.detach().requires_grad_(), a.detach().requires_grad_()
    (0.5 * (SCALE * b @ a - task).pow(2).sum()).backward()
    assert b.grad is not None and a.grad is not None
    return -torch.cat([b.grad.flatten(), a.grad.flatten()])


def run(arm: Arm, epochs: int, seed: int) -> dict[str, float]:
    """Train one arm at one seed; the numbers of the module's table."""
    torch.manual_seed(seed)
    shared = torch.randn(DIM, DIM) * NOISE
    tasks = [shared + torch.randn(DIM, DIM) * NOISE for _ in range(TASKS)]
    b_theta = torch.zeros(DIM, RANK, requires_grad=True)
    a_theta = (torch.randn(RANK, DIM) / math.sqrt(DIM)).requires_grad_()
    outer = _optimizer(arm.outer, [b_theta, a_theta], arm.outer_lr)
    rng = torch.Generator().manual_seed(seed + 1)
    errors, descent, radial = [], [], []
    for epoch in range(1, epochs + 1):
        for t in torch.randperm(TASKS, generator=rng).tolist():
            theta_mu = SCALE * b_theta.detach() @ a_theta.detach()
            b_phi = b_theta.detach().clone().requires_grad_()
            a_phi = a_theta.detach().clone().requires_grad_()
            inner = _optimizer(arm.inner, [b_phi, a_phi], arm.inner_lr)
            for _ in range(INNER_STEPS):
                target = tasks[t] + torch.randn(DIM, DIM, generator=rng) * NOISE
                mu = SCALE * b_phi @ a_phi
                loss = (0.5 * (mu - target).pow(2).sum()
                        + 0.5 * arm.lam * (mu - theta_mu).pow(2).sum())
                inner.zero_grad()
                loss.backward()
                inner.step()
            if epoch <= PROBE_EPOCHS:
                downhill = _descent(b_theta, a_theta, tasks[t])
                with torch.no_grad():
                    d_b, d_a = b_phi - b_theta, a_phi - a_theta
                    descent.append(_cos(torch.cat([d_b.flatten(), d_a.flatten()]), downhill))
                    radial.append(_cos(SCALE * (d_b @ a_theta + b_theta @ d_a), theta_mu))
            outer.zero_grad()
            gap = SCALE * b_phi.detach() @ a_phi.detach() - SCALE * b_theta @ a_theta
            (0.5 * arm.lam * gap.pow(2).sum()).backward()
            outer.step()
        with torch.no_grad():
            errors.append(float(0.5 * (SCALE * b_theta @ a_theta - shared).pow(2).sum()))
    with torch.no_grad():
        size = float((SCALE * b_theta @ a_theta).norm())
    return {"target": float(shared.norm()), "size": size, "error": errors[-1],
            "best": min(errors), "descent": statistics.mean(descent),
            "radial": statistics.mean(radial)}


def one_coordinate(stiffness: float, beta1: float, lr: float = 1e-3) -> float:
    """Where a fresh AdamW's ``INNER_STEPS`` steps end on ``g x + k x^2 / 2`` from ``x = 0``
    (a data gradient ``g = 1`` and a pull of curvature ``k = stiffness * g / lr``), in units
    of ``lr``: negative is downhill, where the data pointed; positive is past the pull's
    centre, uphill."""
    x = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.AdamW([x], lr=lr, betas=(beta1, 0.999), weight_decay=0.0)
    k = stiffness / lr
    for _ in range(INNER_STEPS):
        optimizer.zero_grad()
        (x + 0.5 * k * x * x).sum().backward()
        optimizer.step()
    return float(x.detach()) / lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    stiffnesses = (0.1, 1.0, 3.0, 10.0, 100.0)
    print("One coordinate, five AdamW steps: where they end, in units of lr\n")
    print("| k lr / g | " + " | ".join(f"{k:g}" for k in stiffnesses) + " |")
    print("| --- | " + " | ".join("---" for _ in stiffnesses) + " |")
    for beta1 in (0.9, 0.0):
        print(f"| beta1 {beta1:g} | "
              + " | ".join(f"{one_coordinate(k, beta1):+.2f}" for k in stiffnesses) + " |")
    print()
    print("| arm | |M| | |mu| at the end | error at the end | lowest error | descent | "
          "radial |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for arm in ARMS:
        rows = [run(arm, args.epochs, seed) for seed in seeds]

        def mean(key: str, rows: list[dict[str, float]] = rows) -> float:
            return statistics.mean(r[key] for r in rows)

        print(f"| {arm.label()} | {mean('target'):.2f} | {mean('size'):.3g} | "
              f"{mean('error'):.3g} | {mean('best'):.3g} | {mean('descent'):+.2f} | "
              f"{mean('radial'):+.2f} |", flush=True)


if __name__ == "__main__":
    main()
