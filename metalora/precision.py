"""Mixed precision: the forward passes of training and evaluation under ``torch.autocast``.

Run setting ``autocast`` (``none``, ``bfloat16``, ``float16``). The adapters,
their gradients and the optimiser states stay float32; autocast only lowers
the precision of the matrix products inside the forward pass (on a GPU,
bfloat16 roughly halves their time and the activations' memory). It works
on CPU too (bfloat16), which is how the tests check it. ABMLL's exact
weight sample notices autocast and adds its noise in float32 (a ~1e-4 noise
added to a bfloat16 weight would round away).

The autocast weight cache is off (``cache_enabled=False``). With it on,
PyTorch keeps the low-precision copy of every float32 leaf tensor that
requires grad -- the adapters -- until the outermost autocast context exits;
one context spans a learner's whole training (and one its whole test), so
every forward pass would see the adapters as they were at the first one and
no optimiser step would ever reach it. The price is one cast of each adapter
per forward pass: the adapters are small.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "none": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The ``autocast`` setting's choices."""


@contextlib.contextmanager
def autocast(device: torch.device | str, name: str) -> Iterator[None]:
    """``torch.autocast`` on ``device`` in the dtype named ``name`` (nothing for ``none``)."""
    dtype = AUTOCAST_DTYPES[name]
    if dtype is None:
        yield
        return
    device_type = torch.device(device).type
    # no weight cache: the adapters change in place between forward passes (module doc)
    with torch.autocast(device_type=device_type, dtype=dtype, cache_enabled=False):
        yield
