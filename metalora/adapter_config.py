"""Where LoRA adapters go and their size: the one place the LoRA defaults are written.

The defaults are the paper's (Table 5): rank 8, alpha 16, the attention
projections ``q_proj``, ``v_proj`` and ``o_proj``. The run settings ``rank``,
``alpha`` and ``target_modules`` default to them, and :class:`AdapterConfig`
is what a learner attaches its adapters with
(:attr:`metalora.interfaces.LearnerContext.adapter_config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_RANK = 8
"""LoRA rank r."""
DEFAULT_ALPHA = 16.0
"""LoRA alpha (scaling s = alpha / r)."""
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "v_proj", "o_proj")
"""The linear layers adapted, by (Llama) name."""


@dataclass(frozen=True)
class AdapterConfig:
    """Where adapters go and their size (paper Table 5)."""

    rank: int = DEFAULT_RANK
    alpha: float = DEFAULT_ALPHA
    target_modules: tuple[str, ...] = field(default=DEFAULT_TARGETS)

    @property
    def scaling(self) -> float:
        """LoRA's ``s = alpha / r``."""
        return self.alpha / self.rank
