"""Several processes, one run: task-parallel training under ``torchrun``.

``torchrun --nproc-per-node N $(which metalora) run ...`` starts N processes
(ranks) with ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` set; each joins one
:mod:`torch.distributed` process group (NCCL when the run's device is a GPU,
gloo otherwise, ``--device cpu`` on a GPU machine included). Each rank takes
the GPU ``cuda:LOCAL_RANK`` (``--device cuda`` or ``auto``); a fixed
``--device cuda:N`` is refused under torchrun (it would put every rank on
one GPU: choose GPUs with ``CUDA_VISIBLE_DEVICES``). Then, per seed:

* every rank builds the learner from the same seed, so the global adapters
  start identical; after that each rank's random streams are its own;
* each epoch the training tasks are shuffled (the same way on every rank)
  and dealt out: rank r takes tasks r, r + N, ...; every rank gets the same
  number (the remainder of the shuffle sits the epoch out);
* a learner that supports this (``Learner.supports_distributed``) averages
  the gradients of its global parameters over the ranks before each global
  step (:meth:`Distributed.average_gradients`), so they stay identical;
* after every step the ranks agree on whether any loss was NaN or infinite,
  and stop together;
* validation and test episodes are dealt out the same way and the results
  gathered on every rank: evaluation is per task and seeded by the task, so
  the numbers equal a single process's;
* rank 0 writes the run directory; the other ranks write into a private
  temporary copy that is deleted at the end; ``run.json`` records every rank's
  device and peak memory.

What an epoch is under torchrun. An epoch is still one pass over the
training tasks, but the N ranks share it: each takes ``T // N`` of the ``T``
tasks, and every global (outer) step averages N tasks' gradients. So an
epoch takes N times fewer global steps, each an average over N tasks: with
the same ``--epochs`` and learning rates a torchrun run is *not* the
one-process run (for a per-task learner like reptile or abmll, it is the
one-process run with a meta-batch of N tasks; for lora, with an N-times
larger batch). To keep the number of global steps of a one-process run,
multiply ``--epochs`` by N (the same number of updates, each averaging N
tasks, so less noisy); to keep the total compute, keep ``--epochs`` and,
as for any larger batch, consider a larger learning rate. Inner loops
(ABMLL's, reptile's, the test-time adaptation) are per task and unchanged.
Evaluation equals a single process's exactly.

Resuming: a checkpoint holds rank 0's random states (the CPU's, and the
CUDA generator of rank 0's GPU only); the other ranks reseed from the seed,
their rank and the epoch. So an interrupted run can be resumed with any
number of ranks, or in one process; the result is then the run with that
number of ranks from the resumed epoch on.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from metalora.errors import MetaloraError

T = TypeVar("T")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a multi-process run (``world_size == 1``: a plain run)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run directory and prints."""
        return self.rank == 0

    def deal(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world_size``-th from ``rank``, equal counts."""
        if not self.active:
            return list(items)
        per_rank = len(items) // self.world_size
        return list(items[self.rank::self.world_size][:per_rank])

    def deal_epoch(self, tasks: Sequence[T], seed: int, epoch: int) -> list[T]:
        """This rank's training tasks for ``epoch``: all of them in a single process; under
        torchrun a share of one seeded shuffle (the same on every rank)."""
        if not self.active or not tasks:
            return list(tasks)
        order = list(tasks)
        random.Random(f"{seed}:{epoch}").shuffle(order)
        dealt = self.deal(order)
        if not dealt:
            raise MetaloraError(f"{len(tasks)} training task(s) for {self.world_size} ranks: "
                                "each rank needs one")
        return dealt

    def deal_all(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``, every item dealt (counts may differ by one)."""
        return list(items[self.rank::self.world_size]) if self.active else list(items)

    def gather_dealt(self, mine: Sequence[T], total: int) -> list[T]:
        """Every rank's :meth:`deal_all` share, put back in the original order."""
        if not self.active:
            return list(mine)
        shares: list[Any] = [None] * self.world_size
        dist.all_gather_object(shares, list(mine))
        merged: list[Any] = [None] * total
        for rank, share in enumerate(shares):
            for i, item in enumerate(share):
                merged[rank + i * self.world_size] = item
        return merged

    def average_gradients(self, params: Iterable[Tensor], loss: float) -> float:
        """Average the ``.grad`` of ``params`` over the ranks; return the mean ``loss``.

        One all-reduce carries the gradients and the loss, so a NaN on any
        rank reaches every rank (and every rank skips the step alike).
        Parameters without a gradient count as zero.
        """
        if not self.active:
            return loss
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        return self._average(grads, loss)

    @torch.no_grad()
    def average_(self, tensors: Iterable[Tensor]) -> None:
        """Replace each tensor (in place) by its mean over the ranks."""
        if self.active:
            self._average(list(tensors), 0.0)

    def _average(self, tensors: list[Tensor], scalar: float) -> float:
        """Average ``tensors`` in place and ``scalar`` over the ranks, in one all-reduce."""
        if not tensors:
            return self.mean(scalar)
        device, dtype = tensors[0].device, tensors[0].dtype
        buffer = torch.cat([*(t.detach().reshape(-1).to(dtype) for t in tensors),
                            torch.tensor([scalar], device=device, dtype=dtype)])
        dist.all_reduce(buffer)
        buffer /= self.world_size
        offset = 0
        for t in tensors:
            t.copy_(buffer[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        return float(buffer[-1])

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (NaN if any rank's is NaN)."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(tensor)
        return float(tensor) / self.world_size

    def all_finite(self, value: float) -> bool:
        """Whether ``value`` is finite on every rank (they stop together)."""
        return math.isfinite(self.mean(0.0 if math.isfinite(value) else math.inf))

    def gather_all(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank (``[value]`` in one process)."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def _device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


def world_size_from_environment() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1").strip() or 1)


def backend_for(device: str) -> str:
    """The process-group backend for a run on ``device``: NCCL for GPUs, else gloo (also
    for ``--device cpu`` on a machine that has GPUs: NCCL cannot reduce CPU tensors)."""
    return "nccl" if device.startswith("cuda") else "gloo"


def from_environment(device: str = "cpu") -> Distributed:
    """The process group ``torchrun`` describes in the environment (joined once), or none.

    ``device`` is the run's resolved device (``cuda`` or ``cpu``), which picks
    the backend; on GPUs each rank is bound to ``cuda:LOCAL_RANK``.
    """
    world_size = world_size_from_environment()
    if world_size <= 1:
        return Distributed()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend_for(device)
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return Distributed(rank=rank, world_size=world_size, local_rank=local_rank)


def refuse_multi_process(command: str) -> None:
    """One error line when ``command`` (anything but ``metalora run``) is started by torchrun."""
    world_size = os.environ.get("WORLD_SIZE", "1").strip() or "1"
    if world_size != "1":
        raise MetaloraError(f"{command} runs in one process (WORLD_SIZE={world_size}); start it "
                            "without torchrun (only `metalora run` trains across ranks)")
