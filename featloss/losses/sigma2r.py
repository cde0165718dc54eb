"""σ²R loss: a centre pull reweighted per sample by a learnable sigmoid of neighbourhood spreads."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

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


def _set_std(anchor_sq: Tensor, pair_sq: Tensor, valid: Tensor) -> Tensor:
    """std of S = {anchor} ∪ {valid neighbours}, from squared distances alone.

    Σ_{p∈S}‖p − mean(S)‖² = (1/|S|) Σ_{p<q∈S} ‖p − q‖², so the spread needs only the
    anchor-neighbour distances anchor_sq (R, n) and the neighbour-neighbour distances pair_sq
    (R, n, n), which the neighbour search has already computed: no (R, n, d) tensor is built.
    valid (R, n) bool marks the neighbours in use. NaN when |S| = 1.
    """
    v = valid.to(anchor_sq.dtype)  # (R, n)
    pairs = (pair_sq * v.unsqueeze(2) * v.unsqueeze(1)).sum(dim=(1, 2)) / 2  # (R,) p<q pairs
    size = 1.0 + v.sum(dim=1)  # (R,)
    spread = ((anchor_sq * v).sum(dim=1) + pairs) / size  # (R,) Σ‖p − mean‖²
    return (spread.clamp_min(0.0) / (size - 1.0)).sqrt()  # (R,)


@register_loss(
    "sigma2r",
    paper="La Grassa, Gallo & Landro, σ²R loss (weighted loss by sigmoidal multiplicative factors)",
    equations="Eq. 8-11",
    logits="x Wᵀ",
    recipe=Recipe(
        settings={"data.sampler": "balanced", "train.batch_size": 100, "train.lr": 0.02,
                  "train.loss_lr": 0.1},
        why="σ²R paper Sec. 5: balanced batches with >= n + 1 = 8 samples of every class (100 = "
            "10 per class for 10 classes; CIFAR-100 needs >= 800), centres and w_k at lr 0.1; "
            "network lr measured (mnist5k small_cnn 3 epochs SGD): 0.1 diverges, 0.05 gives "
            "val 0.85, 0.02 gives 0.97 (the paper trains with Adam)",
    ),
)
class Sigma2RLoss(FeatureLoss):
    """CE(x Wᵀ) + lam · L_σ²R (Eq. 11), L_σ²R = mean_i β_i ‖x_i − c_{y_i}‖² (Eq. 10).

    β_i = Z · sigmoid(K_{y_i} (σ_x,i − σ_c,y_i)) (Eq. 8), K_c = eps + Z · sigmoid(w_k[c]) (Eq. 9).
    σ_x,i is the std of {x_i} ∪ its n nearest same-class batch samples (itself excluded);
    σ_c,y the std of {c_y} ∪ the n class-y batch samples nearest to c_y (Euclidean distance).
    The σ values carry no gradient; gradients reach x, ``centers`` and ``w_k`` (through K).

    Training mode needs n + 1 samples of every class present in a batch (use the balanced
    sampler) and raises ValueError otherwise. Eval mode (the trainer scores the whole validation
    set, whose classes may be small) uses k_c = min(n, n_c − 1) neighbours for both sets of class
    c, so the two spreads stay comparable, and leaves classes with a single sample out of
    L_σ²R (the mean runs over the remaining samples; 0 when none remain).

    Args:
        num_classes: C, the number of classes.
        feature_dim: d, the feature width.
        z: Z, the range of β and of K (Eq. 8-9).
        n_neighbors: n, the neighbourhood size of both spreads.
        lam: λ, the weight of L_σ²R (Eq. 11).
        eps: ε, the lower bound of the growth rates K (Eq. 9).

    Tensors: ``weight`` (C, d) classifier; ``centers`` (C, d) and ``w_k`` (C,) start N(0, 1)
    (global RNG, seeded by the trainer), as in the paper.
    """

    allowed = {"z": "a finite number > 0", "n_neighbors": "an integer >= 1",
               "lam": "a finite number >= 0", "eps": "a finite number > 0"}

    def __init__(self, num_classes: int, feature_dim: int, *, z: float = 40.0,
                 n_neighbors: int = 7, lam: float = 0.01, eps: float = 1e-3) -> None:
        super().__init__(num_classes, feature_dim)
        self.z = check_positive(self, "z", z)
        self.n_neighbors = check_integer(self, "n_neighbors", n_neighbors, 1)
        self.lam = check_positive(self, "lam", lam, allow_zero=True)
        self.eps = check_positive(self, "eps", eps)
        self.weight = init_classifier_weight(num_classes, feature_dim)
        self.centers = nn.Parameter(torch.randn(num_classes, feature_dim))
        self.w_k = nn.Parameter(torch.randn(num_classes))

    @classmethod
    def min_samples_per_class(cls, **hparams: Any) -> int:
        return check_integer(cls.key, "n_neighbors", hparams.get("n_neighbors", 7), 1) + 1

    def logits(self, features: Tensor) -> Tensor:
        return features @ self.weight.t()  # (B, C)

    def _spread_gap(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """σ_x,i − σ_c,y_i (B,) without gradient, and the (B,) mask of samples that have one."""
        n, batch = self.n_neighbors, x.shape[0]
        classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        if self.training and bool((counts < n + 1).any()):
            c = int(torch.argmin(counts))
            raise ValueError(
                f"loss 'sigma2r': class {int(classes[c])} has {int(counts[c])} samples in this "
                f"batch but needs at least n_neighbors + 1 = {n + 1}; use data.sampler=balanced "
                f"with a larger train.batch_size")
        k_class = (counts - 1).clamp(max=n)  # (P,) neighbours used per present class
        top = min(n, batch - 1)
        if top == 0:  # a single sample: nothing has a neighbour
            return x.new_zeros(batch), torch.zeros_like(labels, dtype=torch.bool)
        rank_ok = torch.arange(top, device=x.device)  # (top,)
        # Distances via ‖a‖² + ‖b‖² − 2a·b cancel badly in float32 when norms dwarf spreads;
        # they are translation-invariant, so measure them from the batch mean.
        origin = x.mean(dim=0)  # (d,)
        x = x - origin
        sq_norm = x.pow(2).sum(dim=1)  # (B,)
        sq_dist = (sq_norm.unsqueeze(1) + sq_norm.unsqueeze(0)
                   - 2.0 * x @ x.t()).clamp_min_(0.0)  # (B, B) ‖x_i − x_j‖²
        # σ_x: the n nearest other samples of the same class; others pushed to +inf.
        same = labels.unsqueeze(1) == labels.unsqueeze(0)  # (B, B)
        same.fill_diagonal_(False)
        near, idx = sq_dist.masked_fill(~same, float("inf")).topk(top, dim=1, largest=False)
        k_sample = k_class[inverse]  # (B,)
        valid_x = rank_ok < k_sample.unsqueeze(1)  # (B, top)
        near = near.masked_fill(~valid_x, 0.0)  # (B, top), no inf from classes short of n
        sigma_x = _set_std(near, sq_dist[idx.unsqueeze(2), idx.unsqueeze(1)], valid_x)  # (B,)
        # σ_c: the n class samples nearest to each present class's centre.
        centres = self.centers.detach()[classes] - origin  # (P, d), same origin
        sq_dist_c = (centres.pow(2).sum(dim=1, keepdim=True) + sq_norm.unsqueeze(0)
                     - 2.0 * centres @ x.t()).clamp_min_(0.0)  # (P, B)
        near_c, idx_c = sq_dist_c.masked_fill(classes.unsqueeze(1) != labels, float("inf")).topk(
            top, dim=1, largest=False)  # (P, top)
        valid_c = rank_ok < k_class.unsqueeze(1)  # (P, top)
        near_c = near_c.masked_fill(~valid_c, 0.0)
        sigma_c = _set_std(near_c, sq_dist[idx_c.unsqueeze(2), idx_c.unsqueeze(1)], valid_c)  # (P,)
        keep = k_sample > 0
        # Dropped samples get gap 0, not NaN, so no NaN reaches the gradient through β.
        return torch.where(keep, sigma_x - sigma_c[inverse], 0.0), keep

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:
        ce = cross_entropy(self.logits(features), labels)
        x = features if features.dtype in (torch.float32, torch.float64) else features.float()
        gap, keep = self._spread_gap(x.detach(), labels)  # (B,), (B,)
        k_rate = self.eps + self.z * torch.sigmoid(self.w_k[labels])  # (B,) Eq. 9
        beta = self.z * torch.sigmoid(k_rate * gap)  # (B,) Eq. 8
        sq = (x - self.centers[labels]).pow(2).sum(dim=1)  # (B,)
        # Eval mode may drop samples: the mean runs over the kept ones (0 when none are left).
        sigma2r = (beta * sq * keep).sum() / keep.sum().clamp_min(1)
        total = ce + self.lam * sigma2r
        return LossOutput(total, {"ce": ce.detach(), "sigma2r": sigma2r.detach()})

    def class_vectors(self) -> Tensor:
        return self.weight

    def eval_metrics(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        return target_logit_metrics(self.logits(features), labels)  # raw target logits

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, z={self.z}, n_neighbors={self.n_neighbors}, "
                f"lam={self.lam}, eps={self.eps}")
