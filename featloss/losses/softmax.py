"""Softmax loss: the baseline every paper compares against."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from featloss.losses.base import (
    FeatureLoss,
    LossOutput,
    cross_entropy,
    register_loss,
    target_logit_metrics,
)


def init_classifier_weight(num_classes: int, feature_dim: int) -> nn.Parameter:
    """A (C, d) classifier weight initialised like ``nn.Linear`` (uniform ±1/sqrt(d))."""
    bound = 1.0 / math.sqrt(feature_dim)
    return nn.Parameter(torch.empty(num_classes, feature_dim).uniform_(-bound, bound))


@register_loss(
    "softmax",
    paper="cross-entropy on a bias-free linear classifier (baseline in all five papers)",
    equations="POD paper Eq. 1-2; L-Softmax Eq. 1-2",
    logits="x Wᵀ",
)
class SoftmaxLoss(FeatureLoss):
    """CE(x Wᵀ): softmax cross-entropy on a learnable bias-free classifier ``weight`` (C, d)."""

    def __init__(self, num_classes: int, feature_dim: int) -> None:
        super().__init__(num_classes, feature_dim)
        self.weight = init_classifier_weight(num_classes, feature_dim)

    def logits(self, features: Tensor) -> Tensor:
        return features @ self.weight.t()  # (B, C)

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        ce = cross_entropy(self.logits(features), labels)
        return LossOutput(ce, {"ce": ce.detach()})

    def class_vectors(self) -> Tensor:
        return self.weight

    def eval_metrics(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        return target_logit_metrics(self.logits(features), labels)  # raw target logits
