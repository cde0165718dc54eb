"""Anchor-based nearest class mean losses: E-NCM (Euclidean) and C-NCM (cosine)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from featloss.losses.base import (
    FeatureLoss,
    LossOutput,
    check_choice,
    check_integer,
    check_positive,
    check_range,
    cross_entropy,
    register_loss,
)
from featloss.losses.centroids import onehot_anchors, repulsion_centroids, simplex_anchors

# Distances below sqrt(_TINY) get no gradient: d‖x − a‖/dx = (x − a)/‖x − a‖ is undefined at
# x = a, and clamping the squared distance keeps the gradient finite (0 at the anchor itself).
_TINY = 1e-24


class _AnchorNCMLoss(FeatureLoss):
    """CE(−scale · distance(x, a_c)) toward fixed anchors (``anchors`` buffer, (C, d)).

    Args:
        num_classes: C, the number of classes.
        feature_dim: d, the feature width.
        anchors: "onehot" (a_c = e_c, the paper's standard orthogonal bases; needs d >= C),
            "simplex" (a regular simplex, needs C <= d + 1) or "repulsion" (unit vectors pushed
            apart, any d: the paper's Eq. 9-10 "large angle between any two anchors" below
            d = C - 1, where the feature-dimension sweep needs it).
        scale: multiplies the logits −distance (1 in the paper).
        seed: seed of the simplex rotation / repulsion start (unused by "onehot").
    """

    allowed = {"anchors": "onehot, simplex or repulsion", "scale": "a finite number > 0",
               "seed": "an integer >= 0"}

    def __init__(self, num_classes: int, feature_dim: int, *, anchors: str = "onehot",
                 scale: float = 1.0, seed: int = 0) -> None:
        super().__init__(num_classes, feature_dim)
        self.anchor_kind = check_choice(self, "anchors", anchors,
                                        ("onehot", "simplex", "repulsion"))
        self.scale = check_positive(self, "scale", scale)
        self.seed = check_integer(self, "seed", seed, 0)
        if anchors == "onehot":
            check_range(self, "anchors", anchors, feature_dim >= num_classes,
                        f"'onehot' needs feature_dim >= num_classes = {num_classes} "
                        f"(got {feature_dim}); use anchors='simplex' (needs feature_dim >= "
                        f"{num_classes - 1})")
            self.register_buffer("anchors", onehot_anchors(num_classes, feature_dim))
        elif anchors == "simplex":
            check_range(self, "anchors", anchors, num_classes <= feature_dim + 1,
                        f"'simplex' needs feature_dim >= num_classes - 1 = {num_classes - 1} "
                        f"(got {feature_dim}); use anchors='repulsion'")
            self.register_buffer("anchors", simplex_anchors(num_classes, feature_dim, self.seed))
        else:
            points, _ = repulsion_centroids(num_classes, feature_dim, self.seed)
            self.register_buffer("anchors", points)

    def distances(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        raise NotImplementedError  # (B, C) distances; the subclasses define them

    def logits(self, features: Tensor) -> Tensor:
        return -self.scale * self.distances(features)  # (B, C): the loss's own scores

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        x = features if features.dtype in (torch.float32, torch.float64) else features.float()
        ce = cross_entropy(-self.scale * self.distances(x, labels), labels)
        return LossOutput(ce, {"ce": ce.detach()})

    def class_vectors(self) -> Tensor:
        return self.anchors

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, anchors={self.anchor_kind}, scale={self.scale}, "
                f"seed={self.seed}")


@register_loss(
    "encm",
    paper="Hao et al., anchor-based nearest class mean loss (E-NCM)",
    equations="Eq. 4, 5, 7",
    logits="−scale · ‖x − a_c‖₂",
)
class ENCMLoss(_AnchorNCMLoss):
    """E-NCM: CE(−scale · ‖x − a_c‖₂), the Euclidean distance, not squared (Eq. 4, 5, 7).

    ‖x − a_c‖² comes from the expansion ‖x‖² − 2x·a_c + ‖a_c‖² (never a (B, C, d) tensor), which
    loses precision near the anchor; given labels, the target column is recomputed exactly from
    x − a_y (B, d), where features converge. Arguments as `_AnchorNCMLoss`.
    """

    def distances(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        anchors = self.anchors.to(features.dtype)
        norms = features.pow(2).sum(1, keepdim=True) + anchors.pow(2).sum(1)  # (B, C)
        sq = torch.addmm(norms, features, anchors.t(), alpha=-2.0)  # (B, C), one fused GEMM
        if labels is not None:
            exact = (features - anchors[labels]).pow(2).sum(1, keepdim=True)  # (B, 1)
            sq = sq.scatter(1, labels.unsqueeze(1), exact)
        return sq.clamp_min(_TINY).sqrt()  # (B, C)


@register_loss(
    "cncm",
    paper="Hao et al., anchor-based nearest class mean loss (C-NCM)",
    equations="Eq. 4, 5, 8",
    logits="−scale · (1 − cos(x, a_c))",
)
class CNCMLoss(_AnchorNCMLoss):
    """C-NCM: CE(−scale · (1 − cos(x, a_c))), the cosine distance (Eq. 4, 5, 8).

    Only the direction of x matters, so any positive rescaling of a feature is as good.
    Arguments as `_AnchorNCMLoss`.
    """

    def distances(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        anchors = F.normalize(self.anchors.to(features.dtype), dim=1)
        return 1.0 - F.normalize(features, dim=1) @ anchors.t()  # (B, C)
