"""L-Softmax: large-margin softmax with the annealed target logit (Liu et al. 2016)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from featloss.losses.base import (
    FeatureLoss,
    LossOutput,
    check_integer,
    check_positive,
    cross_entropy,
    register_loss,
)
from featloss.losses.softmax import init_classifier_weight

_EPS = 1e-12  # guards cos θ against a zero feature or weight row


@register_loss(
    "lsoftmax",
    paper="Liu et al., Large-Margin Softmax Loss for Convolutional Neural Networks (L-Softmax)",
    equations="Eq. 4, 6, 7; λ strategy of Sec. 5.1",
    logits="x Wᵀ",
)
class LSoftmaxLoss(FeatureLoss):
    """CE with target logit f_y = (λ‖w_y‖‖x‖cos θ_y + ‖w_y‖‖x‖ψ(θ_y))/(1 + λ) (Eq. 4, 6, Sec. 5.1).

    ψ(θ) = (−1)ᵏ cos(mθ) − 2k for θ ∈ [kπ/m, (k+1)π/m] (Eq. 6); cos(mθ) is the multiple-angle
    polynomial in cos θ (Eq. 7); k is piecewise constant, so it carries no gradient. Other logits
    are x·w_j. λ = max(lambda_base·(1 + lambda_gamma·it)^(−lambda_power), lambda_min), `it` = the
    number of `on_step` calls so far, kept in the ``iteration`` buffer (checkpointed).

    Args:
        num_classes: C, number of classes.
        feature_dim: d, feature dimension.
        margin: m, integer >= 1 (m = 1 is plain softmax).
        lambda_base: λ at step 0 (>= 0); 0 makes λ = lambda_min constant.
        lambda_gamma: decay rate γ of the schedule (>= 0).
        lambda_power: decay power p of the schedule (>= 0).
        lambda_min: floor of λ (>= 0).
    """

    allowed = {
        "margin": "an integer >= 1",
        "lambda_base": "a finite number >= 0",
        "lambda_gamma": "a finite number >= 0",
        "lambda_power": "a finite number >= 0",
        "lambda_min": "a finite number >= 0",
    }

    def __init__(self, num_classes: int, feature_dim: int, *, margin: int = 2,
                 lambda_base: float = 1000.0, lambda_gamma: float = 2.5e-5,
                 lambda_power: float = 35.0, lambda_min: float = 0.0) -> None:
        super().__init__(num_classes, feature_dim)
        self.margin = check_integer(self, "margin", margin, 1)
        self.lambda_base = check_positive(self, "lambda_base", lambda_base, allow_zero=True)
        self.lambda_gamma = check_positive(self, "lambda_gamma", lambda_gamma, allow_zero=True)
        self.lambda_power = check_positive(self, "lambda_power", lambda_power, allow_zero=True)
        self.lambda_min = check_positive(self, "lambda_min", lambda_min, allow_zero=True)
        self.weight = init_classifier_weight(num_classes, feature_dim)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        m = self.margin
        # Eq. 7 terms (−1)ⁿ C(m, 2n) cos^{m−2n} θ (1 − cos² θ)ⁿ, as (coefficient, power, n)
        self._terms = [((-1) ** n * math.comb(m, 2 * n), m - 2 * n, n) for n in range(m // 2 + 1)]
        # θ ≥ jπ/m  ⇔  cos θ ≤ cos(jπ/m); k counts the thresholds crossed (k ∈ [0, m−1])
        self._thresholds = [math.cos(j * math.pi / m) for j in range(1, m)]

    def _lambda(self) -> Tensor | float:
        if self.lambda_base == 0.0:
            return self.lambda_min
        base, gamma, power = self.lambda_base, self.lambda_gamma, self.lambda_power
        if self.iteration.device.type == "cpu":
            # Reading a CPU buffer costs nothing: a Python float keeps the graph small.
            lam = base * (1.0 + gamma * int(self.iteration)) ** (-power)
            return max(lam, self.lambda_min)
        # On an accelerator stay a tensor: reading `iteration` would sync every forward.
        lam = base * (1.0 + gamma * self.iteration.float()) ** (-power)
        return lam.clamp_min(self.lambda_min)

    def _cos_m(self, cos: Tensor) -> Tensor:
        """cos(mθ) from cos θ by the multiple-angle polynomial (Eq. 7): smooth, no acos."""
        sin2 = 1.0 - cos * cos
        out = None
        for coef, p, n in self._terms:  # skip x⁰, x¹ and ×1: fewer ops in the graph
            term = (cos if p == 1 else cos.pow(p)) if p else None
            if n:
                s = sin2 if n == 1 else sin2.pow(n)
                term = s if term is None else term * s
            term = term if coef == 1 else coef * term
            out = term if out is None else out + term
        return out

    def logits(self, features: Tensor) -> Tensor:
        return features @ self.weight.t()  # (B, C)

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        logits = self.logits(features)  # (B, C)
        idx = labels.unsqueeze(1)  # (B, 1)
        # Only the target column gets the margin: work on (B,) vectors, then add back.
        wx = logits.gather(1, idx).squeeze(1)  # (B,) ‖w_y‖‖x‖cos θ_y
        norms = features.norm(dim=1) * self.weight.norm(dim=1)[labels]  # (B,) ‖x‖‖w_y‖
        cos = (wx / norms.clamp_min(_EPS)).clamp(-1.0, 1.0)  # (B,)
        psi = self._cos_m(cos)  # (B,) cos(mθ_y), Eq. 7
        if self._thresholds:
            with torch.no_grad():  # k is piecewise constant: it carries no gradient
                k = torch.zeros_like(cos)  # (B,)
                for t in self._thresholds:
                    k += cos <= t
                sign = 1.0 - 2.0 * k.remainder(2)  # (B,) (−1)ᵏ
            psi = sign * psi - 2.0 * k  # (B,) ψ(θ_y), Eq. 6
        # Add f_y − x·w_y = (‖x‖‖w_y‖ψ − x·w_y)/(1 + λ) to the target column: scatter_add has
        # an identity backward (no masked copy of the (B, C) gradient, unlike scatter).
        delta = (norms * psi - wx) / (1.0 + self._lambda())  # (B,)
        ce = cross_entropy(logits.scatter_add(1, idx, delta.unsqueeze(1)), labels)
        return LossOutput(ce, {"ce": ce.detach()})

    def on_step(self) -> None:
        self.iteration += 1

    def epoch_metrics(self) -> dict[str, float]:
        return {"loss/lambda": float(self._lambda())}

    def class_vectors(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}"
