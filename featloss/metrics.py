"""Accuracy and feature-geometry metrics: pure functions of tensors.

Computed in float64 on whatever device the features are on.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def accuracy(logits: Tensor, labels: Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(C, d) per-class means and (C,) counts; classes without samples have zero means."""
    x = features.double()
    sums = torch.zeros(num_classes, x.shape[1], dtype=x.dtype, device=x.device)
    sums.index_add_(0, labels, x)
    counts = torch.bincount(labels, minlength=num_classes).to(x.dtype)
    return sums / counts.clamp_min(1).unsqueeze(1), counts


def intra_class_std(features: Tensor, labels: Tensor, num_classes: int) -> float:
    """sigma2R paper Eq. 12, I_c = sqrt(sum_i ||x_i - mu_c||^2 / (n_c - 1)), mean over classes."""
    means, counts = class_means(features, labels, num_classes)
    sq = ((features.double() - means[labels]) ** 2).sum(dim=1)  # (N,)
    per_class = torch.zeros(num_classes, dtype=sq.dtype, device=sq.device).index_add_(0, labels, sq)
    valid = counts >= 2
    if not bool(valid.any()):
        return math.nan
    return float(torch.sqrt(per_class[valid] / (counts[valid] - 1)).mean())


def _angles_deg(a: Tensor, b: Tensor) -> Tensor:
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def mean_angle_deg(features: Tensor, labels: Tensor, num_classes: int,
                   class_vectors: Tensor | None) -> float:
    """W-Softmax paper Eq. 14: mean angle between features and their class's own vector.

    The class vector is the loss's weight row, centroid or anchor; the class mean where the loss
    has none. Averaged per class, then over the classes present.
    """
    means, counts = class_means(features, labels, num_classes)
    vectors = means if class_vectors is None else class_vectors.detach().double()
    angles = _angles_deg(features.double(), vectors[labels])  # (N,)
    per_class = torch.zeros(num_classes, dtype=angles.dtype, device=angles.device)
    per_class.index_add_(0, labels, angles)
    present = counts > 0
    return float((per_class[present] / counts[present]).mean())


def min_interclass_angle_deg(features: Tensor, labels: Tensor, num_classes: int) -> float:
    """Smallest angle between two class means (degrees)."""
    means, counts = class_means(features, labels, num_classes)
    means = means[counts > 0]
    if means.shape[0] < 2:
        return math.nan
    unit = torch.nn.functional.normalize(means, dim=1)
    cos = (unit @ unit.t()).clamp(-1.0, 1.0)
    cos.fill_diagonal_(-1.0)
    return float(torch.rad2deg(torch.arccos(cos.max())))


def feature_metrics(features: Tensor, labels: Tensor, num_classes: int,
                    class_vectors: Tensor | None) -> dict[str, float]:
    return {
        "feat/intra_class_std": intra_class_std(features, labels, num_classes),
        "feat/mean_angle_deg": mean_angle_deg(features, labels, num_classes, class_vectors),
        "feat/min_interclass_angle_deg": min_interclass_angle_deg(features, labels, num_classes),
    }
