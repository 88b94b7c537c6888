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

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"none": None, "bfloat16": torch.bfloat16}
"""The ``autocast`` setting's choices. float16 is left out: it needs loss scaling (a
``GradScaler`` around every backward), which the learners, who own their backward passes,
do not do; bfloat16 has float32's range and needs none."""
WEIGHT_DTYPES: tuple[str, ...] = ("float32", "bfloat16")
"""The ``dtype`` setting's choices (float16 left out, as for autocast)."""
TORCH_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def allow_tf32(device: str, enabled: bool) -> bool:
    """Let float32 matrix products on a CUDA ``device`` use TF32 (setting ``tf32``); returns
    whether it did (never on other devices). The choice is process-wide."""
    if not enabled or not device.startswith("cuda"):
        return False
    torch.set_float32_matmul_precision("high")
    return True


def float32_products_are_exact(device_type: str) -> bool:
    """Whether a float32 matrix product on ``device_type`` keeps float32's 24-bit mantissa
    (not under TF32 on CUDA)."""
    return device_type != "cuda" or torch.get_float32_matmul_precision() == "highest"


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
