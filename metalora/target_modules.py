"""Which linear layers get adapters: target names, in Llama naming, mapped to any architecture.

``target_modules`` (default ``q_proj, v_proj, o_proj``, paper Table 5) name
layers by the last component of their module name. A name that some linear
layer of the model carries is used as it is, wherever it occurs. A Llama
attention name the model does not have is mapped to the first of its
:data:`ATTENTION_ALIASES` that the model's attention blocks (modules whose
path contains ``attn`` or ``attention``) do have, e.g. ``o_proj`` to OPT's
``out_proj`` or Phi's, GPT-NeoX's, Falcon's and BLOOM's ``dense``.

Fused projections: in models that compute queries, keys and values with one
linear layer (GPT-NeoX, Falcon, BLOOM ``query_key_value``; ``qkv_proj``;
MPT ``Wqkv``) ``q_proj`` and ``v_proj`` both map to it, so the key
projection is adapted too. GPT-2's ``Conv1D`` layers are not linear layers
and cannot be adapted.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from metalora.errors import MetaloraError

FUSED_QKV: tuple[str, ...] = ("query_key_value", "qkv_proj", "Wqkv")

ATTENTION_ALIASES: dict[str, tuple[str, ...]] = {
    "q_proj": ("query", "q_lin", "q", *FUSED_QKV),
    "k_proj": ("key", "k_lin", "k", *FUSED_QKV),
    "v_proj": ("value", "v_lin", "v", *FUSED_QKV),
    "o_proj": ("out_proj", "dense", "out_lin", "o"),
}
"""Other architectures' names for Llama's attention projections, in order of preference."""


def _last(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _in_attention(name: str) -> bool:
    parent = name.rpartition(".")[0].lower()
    return "attn" in parent or "attention" in parent


def find_target_linears(model: nn.Module, targets: Iterable[str]) -> dict[str, nn.Linear]:
    """The linear layers of ``model`` that ``targets`` name (module name -> layer).

    Raises a :class:`~metalora.errors.MetaloraError` naming the model's linear
    layers when a target matches nothing.
    """
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    found: dict[str, nn.Linear] = {}
    for target in targets:
        exact = {n: m for n, m in linears.items() if _last(n) == target}
        if not exact:
            for alias in ATTENTION_ALIASES.get(target, ()):
                exact = {n: m for n, m in linears.items()
                         if _last(n) == alias and _in_attention(n)}
                if exact:
                    break
        if not exact:
            available = sorted({_last(n) for n in linears})
            conv1d = any(type(m).__name__ == "Conv1D" for m in model.modules())
            hint = " (its GPT-2-style Conv1D layers cannot be adapted)" if conv1d else ""
            raise MetaloraError(f"no linear layer named {target!r} (or an attention layer it "
                                f"maps to) in this model{hint}; valid choices: "
                                f"{', '.join(available)}")
        found.update(exact)
    return dict(sorted(found.items(), key=lambda item: list(linears).index(item[0])))
