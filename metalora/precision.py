"""Mixed precision: the forward passes of training and evaluation under ``torch.autocast``.

Run setting ``autocast`` (``none``, ``bfloat16``, ``float16``). The adapters,
their gradients and the optimiser states stay float32; autocast only lowers
the precision of the matrix products inside the forward pass (on a GPU,
bfloat16 roughly halves their time and the activations' memory). It works
on CPU too (bfloat16), which is how the tests check it. ABMLL's exact
weight sample notices autocast and adds its noise in float32 (a ~1e-4 noise
added to a bfloat16 weight would round away).
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
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield
