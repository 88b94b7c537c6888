"""Replayable Gaussian noise: draw a sample in the forward pass, draw it again in backward.

A :class:`NoiseKey` marks where one draw starts, so that the same
``N(0, I)`` tensor can be produced again instead of being stored.

* On CPU the noise comes from torch's global CPU generator itself. The key
  is that generator's full state just before the draw (5 KB), and the first
  draw advances the global generator past it. Every draw is therefore a
  fresh stretch of one Mersenne-Twister stream: no two draws can share
  noise, however long the run. (Seeding a fresh generator per draw would
  not give that: torch seeds its CPU generator from 32 bits only, so a long
  run would repeat some draws.)
* On other devices the key is a 63-bit seed taken from the global CPU
  generator, for a fresh generator on that device (CUDA's Philox generator
  uses all 64 bits of its seed).

Either way runs are reproducible under :func:`torch.manual_seed`, and a
forward pass recomputed by activation checkpointing (which restores the RNG
state) draws the same noise again.
"""

from __future__ import annotations

import torch
from torch import Tensor


class NoiseKey:
    """Where one replayable ``N(0, 1)`` draw starts (see the module doc).

    ``NoiseKey.take(device)`` starts a draw at the global generator's current
    position; its first :meth:`normal` moves the global generator past the
    draw, so take a key just before its first draw (two keys taken before
    either draws would share their noise). ``NoiseKey(state=...)`` or
    ``NoiseKey(seed=...)`` replay a fixed draw without touching the global
    generator (tests).
    """

    __slots__ = ("_advance", "seed", "state")

    def __init__(self, *, state: Tensor | None = None, seed: int | None = None,
                 advance: bool = False) -> None:
        if (state is None) == (seed is None):
            raise ValueError("a NoiseKey needs exactly one of state and seed")
        self.state = state
        self.seed = seed
        self._advance = advance

    @classmethod
    def take(cls, device: torch.device) -> NoiseKey:
        """A key for the next draw on ``device``."""
        if device.type == "cpu":
            return cls(state=torch.default_generator.get_state(), advance=True)
        return cls(seed=int(torch.randint(0, 2**63 - 1, (1,)).item()))

    def normal(self, shape: tuple[int, ...], like: Tensor, out: Tensor | None = None) -> Tensor:
        """The draw: ``N(0, 1)`` of ``shape`` on ``like``'s device and dtype (into ``out``)."""
        gen = torch.Generator(device=like.device)
        if self.state is not None:
            gen.set_state(self.state)
        else:
            gen.manual_seed(self.seed)
        if out is not None:
            noise = torch.randn(shape, generator=gen, out=out)
        else:
            noise = torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype)
        if self._advance:  # the first draw: move the global stream past it
            torch.default_generator.set_state(gen.get_state())
            self._advance = False
        return noise

    def __repr__(self) -> str:
        return "NoiseKey(state=...)" if self.state is not None else f"NoiseKey(seed={self.seed})"
