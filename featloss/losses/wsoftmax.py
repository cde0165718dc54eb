"""W-Softmax: negative-focused weights-biased softmax (Li & Wang)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from featloss.losses.base import (
    FeatureLoss,
    LossOutput,
    Recipe,
    check_integer,
    check_positive,
    cross_entropy,
    register_loss,
    target_logit_metrics,
)
from featloss.losses.softmax import init_classifier_weight

# Floor of ‖α ŵ_y + ŵ_j‖². It is 0 only when α = 1 and ŵ_j = −ŵ_y exactly; then the numerator
# x·(ŵ_y + ŵ_j) is 0 too, and the floor keeps that logit finite (≈ 0) instead of 0/0 = NaN.
_MIN_SQ_NORM = 1e-12


@register_loss(
    "wsoftmax",
    paper="Li & Wang, Learning discriminative features via weights-biased softmax loss",
    equations="Eq. 1, 11-13",
    logits="x Ŵᵀ (unit-norm weight rows, raw features)",
    recipe=Recipe(
        settings={"loss.warmup_epochs": 1},
        why="W-Softmax Sec. 5.1: train with softmax first, then refine with W-Softmax; from a "
            "random start it settles at chance (mnist5k small_cnn 3 epochs: val 0.10 without "
            "warm-up, 0.92 with 1 epoch)",
    ),
)
class WSoftmaxLoss(FeatureLoss):
    """CE where each negative class j uses w'_j = (α ŵ_y + ŵ_j)/‖α ŵ_y + ŵ_j‖ (Eq. 1, 11-13).

    Ŵ = ``weight`` with unit rows, z = x Ŵᵀ with x raw. The negative logits w'_j·x are computed
    in closed form, (α z_y + z_j)/√(α² + 1 + 2α ŵ_y·ŵ_j), never building a (B, C, d) tensor.
    α = 0 is softmax on the unit-norm weights, z.

    Warm-up: the first `warmup_epochs` epochs train the conventional softmax CE(x Wᵀ), as the
    paper does before refining with W-Softmax (Sec. 5.1). It matters: when z_y < 0 and
    ‖ŵ_y + ŵ_j‖ < 1, Eq. 12 is satisfied by z_y·‖ŵ_y + ŵ_j‖ > z_y + z_j without z_y > z_j, and
    from a random start training can settle there (loss ≈ 0, accuracy at chance). The current
    epoch is the ``epoch`` buffer, set by `on_epoch_start`.

    Args:
        num_classes: C, number of classes.
        feature_dim: d, feature dimension.
        alpha: α, the weight bias toward the true class (>= 0); larger α, larger margin.
        warmup_epochs: number of initial epochs trained with conventional softmax CE(x Wᵀ)
            (integer >= 0).
    """

    allowed = {"alpha": "a finite number >= 0", "warmup_epochs": "an integer >= 0"}

    def __init__(self, num_classes: int, feature_dim: int, *, alpha: float = 1.0,
                 warmup_epochs: int = 0) -> None:
        super().__init__(num_classes, feature_dim)
        self.alpha = check_positive(self, "alpha", alpha, allow_zero=True)
        self.warmup_epochs = check_integer(self, "warmup_epochs", warmup_epochs, 0)
        self.weight = init_classifier_weight(num_classes, feature_dim)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self._warming = self.warmup_epochs > 0  # Python mirror of the buffer: no sync in forward
        self.register_load_state_dict_post_hook(lambda module, keys: module._sync_warmup())

    def _sync_warmup(self) -> None:
        self._warming = int(self.epoch) < self.warmup_epochs

    def logits(self, features: Tensor) -> Tensor:
        return features @ F.normalize(self.weight, dim=1).t()  # (B, C)

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        if self._warming:  # conventional softmax first (Sec. 5.1)
            ce = cross_entropy(features @ self.weight.t(), labels)
            return LossOutput(ce, {"ce": ce.detach()})
        w_hat = F.normalize(self.weight, dim=1)  # (C, d)
        z = features @ w_hat.t()  # (B, C)
        if self.alpha == 0.0:
            ce = cross_entropy(z, labels)
            return LossOutput(ce, {"ce": ce.detach()})
        alpha = self.alpha
        idx = labels.unsqueeze(1)  # (B, 1)
        # g_ij = ŵ_{y_i}·ŵ_j: gather a C×C Gram when that is cheaper (C <= B), else Ŵ[y] Ŵᵀ.
        if self.num_classes <= labels.shape[0]:
            g = (w_hat @ w_hat.t())[labels]  # (B, C)
        else:
            g = w_hat[labels] @ w_hat.t()  # (B, C)
        z_y = z.gather(1, idx)  # (B, 1)
        sq_norm = (g * (2.0 * alpha) + (alpha * alpha + 1.0)).clamp_min(_MIN_SQ_NORM)  # (B, C)
        z_neg = (z + alpha * z_y) * sq_norm.rsqrt()  # (B, C) w'_j·x, Eq. 1
        # At j = y the closed form equals z_y; set it exactly (Eq. 12's numerator).
        ce = cross_entropy(z_neg.scatter(1, idx, z_y), labels)
        return LossOutput(ce, {"ce": ce.detach()})

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch.fill_(int(epoch))
        self._warming = int(epoch) < self.warmup_epochs

    def plan_warnings(self, steps_per_epoch: int, epochs: int) -> list[str]:
        if self.warmup_epochs < epochs:
            return []
        line = (f"loss 'wsoftmax': warmup_epochs={self.warmup_epochs} >= train.epochs={epochs}: "
                f"every epoch trains plain softmax, never W-Softmax; use fewer warm-up epochs")
        return [line]

    def class_vectors(self) -> Tensor:
        return self.weight

    def eval_metrics(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        return target_logit_metrics(self.logits(features), labels)  # raw target logits

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, alpha={self.alpha}, "
                f"warmup_epochs={self.warmup_epochs}")
