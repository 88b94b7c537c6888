"""``normal-gamma``: ABML's prior over the global parameters.

``p(theta) = N(mu_theta; 0, I) * Gamma(1 / sigma_theta^2; a0, b0)`` with the
Gamma in the shape/rate parameterisation, element by element over each
adapted weight. Defaults ``a0 = 1``, ``b0 = 0.01`` (Ravi & Beatson's ABML).

The Gamma is a density of the precision ``tau``, but ABMLL optimises the
log-variance ``v = log sigma^2 = -log tau``. Read literally (the default),
``-log p`` has no minimum in ``v`` for ``a0 = 1``: it always pushes sigma up.
With ``prior_jacobian`` the change-of-variables term ``log |d tau / d v| =
-v`` is added, so that ``-log p`` is a proper density of ``v`` whose mode is
at ``tau = a0 / b0``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from metalora import Prior, hookimpl, setting

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class NormalGammaSettings:
    """Settings of the ``normal-gamma`` prior."""

    a0: float = setting(1.0, "normal-gamma prior: Gamma shape a0 of the global precision "
                             "1/sigma_theta^2 (ABML: 1).", gt=0)
    b0: float = setting(0.01, "normal-gamma prior: Gamma rate b0 of the global precision "
                              "1/sigma_theta^2 (ABML: 0.01).", gt=0)
    prior_jacobian: bool = setting(
        False, "normal-gamma prior: add the change-of-variables term, so that -log p is a "
               "density of the optimised log-variance (mode at precision a0/b0); off is the "
               "literal Gamma density of the precision.")


class NormalGammaPrior(Prior):
    """Standard normal on the global mean, Gamma(a0, rate b0) on the global precision.

    For one layer with dense mean ``mu`` and log-variance ``log_var``
    (precision ``tau = exp(-log_var)``)::

        -log p = sum[0.5 mu^2 + 0.5 log 2pi]
                 - sum[a0 log b0 - lgamma(a0) + (a0 - 1) log tau - b0 tau]
                 (+ sum[log_var] with prior_jacobian: log tau = -log_var)
    """

    name = "normal-gamma"
    description = "N(0, I) on the global mean, Gamma(a0, b0) on the global precision (ABML)."
    Settings = NormalGammaSettings

    def __init__(self, settings: NormalGammaSettings | None = None) -> None:
        super().__init__(settings)
        a0, b0 = float(self.settings.a0), float(self.settings.b0)
        if a0 <= 0 or b0 <= 0:
            raise ValueError(f"normal-gamma needs a0 > 0 and b0 > 0, got a0={a0}, b0={b0}")
        self.a0, self.b0 = a0, b0
        self.jacobian = bool(self.settings.prior_jacobian)
        self._log_norm = a0 * math.log(b0) - math.lgamma(a0)
        """``a0 log b0 - lgamma(a0)``, the Gamma log-normaliser."""

    def negative_log_density(self, mu: Tensor, log_var: Tensor) -> Tensor:
        """-log p(theta) of one layer (a differentiable scalar)."""
        n = mu.numel()
        normal = 0.5 * mu.square().sum() + 0.5 * LOG_2PI * n
        # log tau = -log_var; tau = exp(-log_var)
        gamma = (self._log_norm * log_var.numel()
                 - (self.a0 - 1.0) * log_var.sum()
                 - self.b0 * torch.exp(-log_var).sum())
        if self.jacobian:
            gamma = gamma - log_var.sum()  # + log |d tau / d log_var| = log tau = -log_var
        return normal - gamma


@hookimpl
def register_priors(register):
    register(NormalGammaPrior)


__all__ = ["NormalGammaPrior", "NormalGammaSettings"]
