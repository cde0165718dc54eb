"""AM-Softmax: additive-margin softmax on cosine logits (as defined in the POD paper, Eq. 3)."""

from __future__ import annotations

from torch import Tensor

from featloss.losses.base import (
    FeatureLoss,
    LossOutput,
    Recipe,
    check_positive,
    cross_entropy,
    register_loss,
)
from featloss.losses.softmax import init_classifier_weight

_EPS = 1e-12  # norm floor, as F.normalize


@register_loss(
    "amsoftmax",
    paper="AM-Softmax (additive margin softmax), as stated in Zhu & Zu (POD paper)",
    equations="POD paper Eq. 3",
    logits="cos θ (x̂ Ŵᵀ)",
    recipe=Recipe(
        settings={"train.lr": 1e-3},
        why="measured, mnist5k small_cnn 3 epochs SGD, s = 30, m = 0.35: the gradient on the "
            "raw feature is tangential and scales as 1/‖x‖, so a large lr inflates ‖x‖ and "
            "freezes the directions: val accuracy 0.10 at lr 0.1, 0.62 at 1e-2, 0.94 at 3e-3, "
            "0.955 at 1e-3",
    ),
)
class AMSoftmaxLoss(FeatureLoss):
    """CE(s·(cos θ_j − m·[j = y])) with x and the rows of ``weight`` L2-normalised (Eq. 3).

    Args:
        num_classes: C, number of classes.
        feature_dim: d, feature dimension.
        scale: s, the fixed norm the cosines are scaled by (> 0).
        margin: m, the additive cosine margin subtracted from the target logit (>= 0).
    """

    allowed = {"scale": "a finite number > 0", "margin": "a finite number >= 0"}

    def __init__(self, num_classes: int, feature_dim: int, *, scale: float = 30.0,
                 margin: float = 0.35) -> None:
        super().__init__(num_classes, feature_dim)
        self.scale = check_positive(self, "scale", scale)
        self.margin = check_positive(self, "margin", margin, allow_zero=True)
        self.weight = init_classifier_weight(num_classes, feature_dim)

    def _scaled_cos(self, features: Tensor, scale: float) -> Tensor:
        # Scale the (B, C) product by 1/‖x‖ and 1/‖w_j‖ instead of normalising x and the
        # (C, d) weight first: fewer passes forward and backward. The clamp (as F.normalize)
        # makes a zero feature or weight row give cos = 0, not NaN.
        inv_x = scale / features.norm(dim=1, keepdim=True).clamp_min(_EPS)  # (B, 1)
        inv_w = 1.0 / self.weight.norm(dim=1).clamp_min(_EPS)  # (C,)
        return (features @ self.weight.t()) * inv_x * inv_w  # (B, C)

    def logits(self, features: Tensor) -> Tensor:
        return self._scaled_cos(features, 1.0)  # (B, C) cos θ

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        z = self._scaled_cos(features, self.scale)  # (B, C) s·cos θ
        # s·m comes off the target column only: scatter_add of a constant (no one-hot, and an
        # identity backward).
        shift = z.new_full((labels.shape[0], 1), -self.scale * self.margin)  # (B, 1)
        ce = cross_entropy(z.scatter_add(1, labels.unsqueeze(1), shift), labels)
        return LossOutput(ce, {"ce": ce.detach()})

    def class_vectors(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, margin={self.margin}"
