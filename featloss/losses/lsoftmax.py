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
    check_range,
    cross_entropy,
    register_loss,
    target_logit_metrics,
)
from featloss.losses.softmax import init_classifier_weight

_EPS = 1e-12  # guards cos θ against a zero feature or weight row
LAMBDA_REACHED = 0.01  # lambda_decay_epochs: λ "reaches" lambda_min when within this of it


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
    are x·w_j. The margin term carries 1/(1 + λ) of the target logit, so it acts once λ < 1.

    λ schedule: λ(it) = max(lambda_base·(1 + γ·it)^(−lambda_power), lambda_min), `it` = the
    number of `on_step` calls so far (the ``iteration`` buffer, checkpointed).

    - In steps (``lambda_decay_epochs`` null, the default): γ = lambda_gamma. The defaults are the
      official Caffe MNIST schedule, which keeps λ ≈ 908 after 111 steps and ≈ 421 after 1,000
      (below 1 from step 8,728 on): a short run trains plain softmax. `plan_warnings` says so.
    - In training progress (``lambda_decay_epochs`` = E > 0): the same form, with γ chosen at
      `on_train_start` so that λ reaches lambda_min after E epochs. The power form approaches
      lambda_min without ever reaching it when lambda_min = 0, so "reaches" is defined as
      "comes within LAMBDA_REACHED = 0.01 of lambda_min" (the margin then carries 1/1.01 ≈ 99 %
      of the target logit at lambda_min = 0): with it_E = E·steps_per_epoch and
      λ_E = lambda_min + 0.01,

          γ = ((lambda_base / λ_E)^(1/lambda_power) − 1) / it_E,

      so λ(it_E) = λ_E exactly, and λ keeps decaying toward lambda_min afterwards (reaching it,
      through the max, when lambda_min > 0). γ = 0 when lambda_base <= λ_E (λ is already there).
      γ depends only on the hyperparameters and the ``steps_per_epoch`` buffer (checkpointed),
      so a resumed run, or a loss loaded from a checkpoint, has the same λ at every step.

    Args:
        num_classes: C, number of classes.
        feature_dim: d, feature dimension.
        margin: m, integer >= 1 (m = 1 is plain softmax).
        lambda_base: λ at step 0 (>= 0); 0 makes λ = lambda_min constant.
        lambda_gamma: decay rate γ of the step schedule (>= 0); unused with lambda_decay_epochs.
        lambda_power: decay power p of the schedule (>= 0; > 0 with lambda_decay_epochs).
        lambda_min: floor of λ (>= 0).
        lambda_decay_epochs: null (the step schedule) or E > 0: λ reaches lambda_min (within
            0.01) after E epochs of training, whatever the steps per epoch.
    """

    allowed = {
        "margin": "an integer >= 1",
        "lambda_base": "a finite number >= 0",
        "lambda_gamma": "a finite number >= 0",
        "lambda_power": "a finite number >= 0",
        "lambda_min": "a finite number >= 0",
        "lambda_decay_epochs": "null (the step schedule) or a finite number > 0",
    }

    def __init__(self, num_classes: int, feature_dim: int, *, margin: int = 2,
                 lambda_base: float = 1000.0, lambda_gamma: float = 2.5e-5,
                 lambda_power: float = 35.0, lambda_min: float = 0.0,
                 lambda_decay_epochs: float | None = None) -> None:
        super().__init__(num_classes, feature_dim)
        self.margin = check_integer(self, "margin", margin, 1)
        self.lambda_base = check_positive(self, "lambda_base", lambda_base, allow_zero=True)
        self.lambda_gamma = check_positive(self, "lambda_gamma", lambda_gamma, allow_zero=True)
        self.lambda_power = check_positive(self, "lambda_power", lambda_power, allow_zero=True)
        self.lambda_min = check_positive(self, "lambda_min", lambda_min, allow_zero=True)
        self.lambda_decay_epochs = None
        if lambda_decay_epochs is not None:
            self.lambda_decay_epochs = check_positive(self, "lambda_decay_epochs",
                                                      lambda_decay_epochs)
            check_range(self, "lambda_power", lambda_power, self.lambda_power > 0,
                        "a finite number > 0 with lambda_decay_epochs (power 0 never decays)")
            # Only the progress schedule has this state: step-schedule checkpoints keep their keys.
            self.register_buffer("steps_per_epoch", torch.zeros((), dtype=torch.long))
            self.register_load_state_dict_post_hook(lambda module, keys: module._sync_gamma())
        self._gamma = self.lambda_gamma if lambda_decay_epochs is None else None
        self.weight = init_classifier_weight(num_classes, feature_dim)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        m = self.margin
        # Eq. 7 terms (−1)ⁿ C(m, 2n) cos^{m−2n} θ (1 − cos² θ)ⁿ, as (coefficient, power, n)
        self._terms = [((-1) ** n * math.comb(m, 2 * n), m - 2 * n, n) for n in range(m // 2 + 1)]
        # θ ≥ jπ/m  ⇔  cos θ ≤ cos(jπ/m); k counts the thresholds crossed (k ∈ [0, m−1])
        self._thresholds = [math.cos(j * math.pi / m) for j in range(1, m)]

    def gamma_for(self, steps_per_epoch: int) -> float:
        """γ of the schedule for a run of `steps_per_epoch` optimizer steps per epoch."""
        if self.lambda_decay_epochs is None:
            return self.lambda_gamma
        reached = self.lambda_min + LAMBDA_REACHED  # λ_E
        if self.lambda_base <= reached:
            return 0.0
        end = self.lambda_decay_epochs * steps_per_epoch  # it_E
        return ((self.lambda_base / reached) ** (1.0 / self.lambda_power) - 1.0) / end

    def lambda_at(self, it: int, gamma: float) -> float:
        """λ after `it` optimizer steps with decay rate `gamma` (the schedule, as a Python float)."""
        if self.lambda_base == 0.0:
            return self.lambda_min
        lam = self.lambda_base * (1.0 + gamma * it) ** (-self.lambda_power)
        return max(lam, self.lambda_min)

    def _sync_gamma(self) -> None:
        steps = int(self.steps_per_epoch)
        self._gamma = self.gamma_for(steps) if steps > 0 else None

    def on_train_start(self, steps_per_epoch: int, epochs: int) -> None:
        if self.lambda_decay_epochs is not None:
            self.steps_per_epoch.fill_(int(steps_per_epoch))
            self._sync_gamma()

    def _lambda(self) -> Tensor | float:
        if self.lambda_base == 0.0:
            return self.lambda_min
        gamma = self._gamma
        if gamma is None:
            raise RuntimeError("loss 'lsoftmax': lambda_decay_epochs needs the run's steps per "
                               "epoch: call on_train_start(steps_per_epoch, epochs) first")
        base, power = self.lambda_base, self.lambda_power
        if self.iteration.device.type == "cpu":
            # Reading a CPU buffer costs nothing: a Python float keeps the graph small.
            return self.lambda_at(int(self.iteration), gamma)
        # On an accelerator stay a tensor: reading `iteration` would sync every forward.
        lam = base * (1.0 + gamma * self.iteration.double()) ** (-power)  # as the CPU path
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

    def plan_warnings(self, steps_per_epoch: int, epochs: int) -> list[str]:
        last = steps_per_epoch * epochs - 1  # λ of the last optimizer step's forward
        lam = self.lambda_at(max(last, 0), self.gamma_for(steps_per_epoch))
        if lam <= 1.0:
            return []
        line = (f"loss 'lsoftmax': lambda is still {lam:.4g} at the last of the {last + 1} "
                f"planned steps (> 1: the margin carries {100 / (1 + lam):.2g}% of the target "
                f"logit, so this trains nearly plain softmax); set loss.lambda_decay_epochs "
                f"(lambda reaches lambda_min by then) or train longer")
        return [line]

    def class_vectors(self) -> Tensor:
        return self.weight

    def eval_metrics(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        return target_logit_metrics(self.logits(features), labels)  # raw target logits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}"
