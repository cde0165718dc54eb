"""Center loss: softmax cross-entropy plus a pull of every feature toward its class centre."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from featloss.losses.base import (
    FeatureLoss,
    LossOutput,
    Recipe,
    check_positive,
    cross_entropy,
    register_loss,
    target_logit_metrics,
)
from featloss.losses.softmax import init_classifier_weight


@register_loss(
    "center",
    paper="Wen et al., center loss (as restated in La Grassa et al., σ²R loss)",
    equations="σ²R paper Eq. 1",
    logits="x Wᵀ",
    recipe=Recipe(
        settings={"train.loss_lr": 0.1},
        why="σ²R paper Sec. 5 (Fig. 3, Table 3): the centres learn at lr 0.1, whatever the "
            "network's lr",
    ),
)
class CenterLoss(FeatureLoss):
    """CE(x Wᵀ) + lam · mean_i ½‖x_i − c_{y_i}‖² (σ²R paper Eq. 1, averaged over the batch).

    Args:
        num_classes: C, the number of classes.
        feature_dim: d, the feature width.
        lam: weight of the centre term (λ in Eq. 1); 0 gives plain softmax.

    Tensors: ``weight`` (C, d) bias-free classifier, ``centers`` (C, d) learnable class centres
    drawn N(0, 1) from the global RNG (the trainer seeds it), as the σ²R paper initialises them.
    The centres learn by gradient (the trainer gives them their own ``train.loss_lr``).
    """

    allowed = {"lam": "a finite number >= 0"}

    def __init__(self, num_classes: int, feature_dim: int, *, lam: float = 0.01) -> None:
        super().__init__(num_classes, feature_dim)
        self.lam = check_positive(self, "lam", lam, allow_zero=True)
        self.weight = init_classifier_weight(num_classes, feature_dim)
        self.centers = nn.Parameter(torch.randn(num_classes, feature_dim))

    def logits(self, features: Tensor) -> Tensor:
        return features @ self.weight.t()  # (B, C)

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        ce = cross_entropy(self.logits(features), labels)
        diff = features - self.centers[labels]  # (B, d): gathered, never (B, C, d)
        center = 0.5 * diff.pow(2).sum(dim=1).mean()
        if center.dtype not in (torch.float32, torch.float64):
            center = center.float()  # the total is kept in fp32 or wider
        total = ce + self.lam * center
        return LossOutput(total, {"ce": ce.detach(), "center": center.detach()})

    def class_vectors(self) -> Tensor:
        return self.weight

    def eval_metrics(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        return target_logit_metrics(self.logits(features), labels)  # raw target logits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, lam={self.lam}"
