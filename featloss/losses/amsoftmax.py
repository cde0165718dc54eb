"""AM-Softmax: additive-margin softmax on cosine logits (as defined in the POD paper, Eq. 3)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from featloss.losses.base import (
    FeatureLoss,
    LossOutput,
    check_positive,
    cross_entropy,
    register_loss,
)
from featloss.losses.softmax import init_classifier_weight


@register_loss(
    "amsoftmax",
    paper="AM-Softmax (additive margin softmax), as stated in Zhu & Zu (POD paper)",
    equations="POD paper Eq. 3",
    logits="cos θ (x̂ Ŵᵀ)",
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

    def logits(self, features: Tensor) -> Tensor:
        # F.normalize clamps the norm at 1e-12, so a zero feature gives cos = 0, not NaN.
        return F.normalize(features, dim=1) @ F.normalize(self.weight, dim=1).t()  # (B, C)

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        cos = self.logits(features)  # (B, C)
        idx = labels.unsqueeze(1)  # (B, 1)
        # The margin touches the target column only: gather, shift, scatter back (no one-hot).
        target = cos.gather(1, idx) - self.margin  # (B, 1)
        ce = cross_entropy(self.scale * cos.scatter(1, idx, target), labels)
        return LossOutput(ce, {"ce": ce.detach()})

    def class_vectors(self) -> Tensor:
        return self.weight

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}, margin={self.margin}"
