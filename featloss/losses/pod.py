"""POD loss: softmax-free; pulls normalised features onto fixed, maximally spread centroids."""

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
    register_loss,
)
from featloss.losses.centroids import repulsion_centroids, simplex_centroids


def decorrelation_term(d_mat: Tensor) -> Tensor:
    """S = Σ_{i≠j} R_ij² with R = DᵀD/(B−1), for D (B, d) (POD paper Eq. 14-15, unnormalised).

    ‖DᵀD‖_F² = ‖DDᵀ‖_F², so the Gram is formed on the smaller side. With B >= d the (d, d)
    form masks its diagonal directly; with B < d the (B, B) form subtracts the diagonal
    Σ_i (Σ_b D_bi²)². That subtraction cancels little: with B < d the off-diagonal mass
    (~d²/B) exceeds the diagonal mass (~d).
    """
    batch, dim = d_mat.shape
    if batch >= dim:
        gram = d_mat.t() @ d_mat  # (d, d)
        off = gram.pow(2).sum() - torch.diagonal(gram).pow(2).sum()
    else:
        gram = d_mat @ d_mat.t()  # (B, B)
        off = gram.pow(2).sum() - d_mat.pow(2).sum(dim=0).pow(2).sum()
    return off.clamp_min(0.0) / float(batch - 1) ** 2


@register_loss(
    "pod",
    paper="Zhu & Zu, POD loss (softmax-free loss on predefined optimal-distribution centroids)",
    equations="Eq. 13-19",
    logits="x̂ Aᵀ (cosine to each centroid)",
)
class PODLoss(FeatureLoss):
    """L_cos + lam · L_SC (Eq. 16) toward fixed PEDCC centroids A (``centroids`` buffer, (C, d)).

    L_cos = mean_i (1 − x̂_i·a_{y_i})² (Eq. 13). With D = X̂ − A_Y (B, d) and R = DᵀD/(B−1)
    (d, d) (Eq. 15: no centring, no rescaling to correlation coefficients), the decorrelation
    term is the off-diagonal mass S = Σ_{i≠j} R_ij², normalised by `sc_norm`:

    - ``official`` (default): L_SC = S / (d − 1), as the authors' code computes it
      (TianYuZu/POD-Loss ``train.py``, every version: ``cov = DᵀD/(B−1)``,
      ``(Σ cov² − Σ diag(cov)²) / (cov.shape[0] − 1)``), with lam = 1. S grows with the ~d²
      off-diagonal pairs, so without the division lam = 1 swamps L_cos at small d.
    - ``none``: L_SC = S, Eq. 14-15 read literally. It collapses at lam = 1 for small d: on
      mnist5k (small_cnn, 3 epochs, lr 0.05, 2,400 training images) test accuracy 0.19 / 0.20 /
      0.84 at d = 9 / 16 / 64, against 0.95 / 0.94 / 0.97 with ``official``.

    Prediction is the nearest centroid by cosine, x̂ Aᵀ (Eq. 17-19). No learnable parameters.
    B = 1 has no R (it needs B − 1 > 0) and d = 1 no off-diagonal pair: L_SC = 0 there.

    Args:
        num_classes: C, the number of classes.
        feature_dim: d, the feature width.
        lam: weight of the decorrelation term L_SC (Eq. 16).
        sc_norm: "official" (S / (d − 1), the authors' code) or "none" (S, Eq. 14 literally).
        centroids: "simplex" (exact regular simplex, needs C <= d + 1) or "repulsion" (any d,
            approximate; its max pairwise cosine is `max_centroid_cosine`, logged per epoch).
        seed: seed of the centroids' random rotation / start (independent of the global RNG).
    """

    allowed = {"lam": "a finite number >= 0", "sc_norm": "official or none",
               "centroids": "simplex or repulsion", "seed": "an integer >= 0"}

    def __init__(self, num_classes: int, feature_dim: int, *, lam: float = 1.0,
                 sc_norm: str = "official", centroids: str = "simplex", seed: int = 0) -> None:
        super().__init__(num_classes, feature_dim)
        self.lam = check_positive(self, "lam", lam, allow_zero=True)
        self.sc_norm = check_choice(self, "sc_norm", sc_norm, ("official", "none"))
        # official: divide by d − 1 (d = 1 has no off-diagonal pair, S = 0: keep it 0, not 0/0)
        self._sc_scale = 1.0 / max(feature_dim - 1, 1) if sc_norm == "official" else 1.0
        self.centroid_kind = check_choice(self, "centroids", centroids, ("simplex", "repulsion"))
        self.seed = check_integer(self, "seed", seed, 0)
        if self.centroid_kind == "simplex":
            check_range(self, "centroids", centroids, num_classes <= feature_dim + 1,
                        f"'simplex' needs feature_dim >= num_classes - 1 = {num_classes - 1} "
                        f"(got feature_dim={feature_dim}); use centroids='repulsion' or "
                        f"feature_dim >= {num_classes - 1}")
            targets = simplex_centroids(num_classes, feature_dim, self.seed)
            self.max_centroid_cosine = -1.0 / (num_classes - 1)
        else:
            targets, self.max_centroid_cosine = repulsion_centroids(
                num_classes, feature_dim, self.seed)
        self.register_buffer("centroids", targets)  # (C, d) unit rows

    def logits(self, features: Tensor) -> Tensor:
        return F.normalize(features, dim=1) @ self.centroids.t()  # (B, C)

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        x = features if features.dtype in (torch.float32, torch.float64) else features.float()
        x_hat = F.normalize(x, dim=1)  # (B, d)
        targets = self.centroids.to(x.dtype)[labels]  # (B, d)
        cos = (1.0 - (x_hat * targets).sum(dim=1)).pow(2).mean()  # Eq. 13
        if x.shape[0] > 1:
            sc = decorrelation_term(x_hat - targets) * self._sc_scale  # Eq. 14-15 (/ (d − 1))
        else:
            sc = cos * 0.0
        total = cos + self.lam * sc
        return LossOutput(total, {"cos": cos.detach(), "sc": sc.detach()})

    def class_vectors(self) -> Tensor:
        return self.centroids

    def epoch_metrics(self) -> dict[str, float]:
        return {"loss/max_centroid_cosine": float(self.max_centroid_cosine)}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, lam={self.lam}, sc_norm={self.sc_norm}, "
                f"centroids={self.centroid_kind}, seed={self.seed}")
