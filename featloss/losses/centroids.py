"""Fixed class targets: PEDCC centroids (POD loss) and NCM anchors.

- `simplex_centroids`: the regular simplex (PEDCC; W-Softmax paper Eq. 3 builds one in C-1
  dimensions): C unit vectors whose pairwise cosines are all exactly -1/(C-1), the best any C
  points on a sphere can do. Needs C <= d + 1.
- `repulsion_centroids`: C points on the unit sphere pushed apart iteratively; works for any d,
  including d < C-1 (the feature-dimension sweep below k-1), and reports the achieved maximum
  pairwise cosine.
- `onehot_anchors` / `simplex_anchors`: the anchors of E-NCM / C-NCM (NCM paper Sec. 3).

Everything is built in float64 on the CPU from a seeded ``torch.Generator`` and returned as
float32, so the targets are deterministic per (C, d, seed) and independent of the global RNG.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

REPULSION_ITERATIONS = 500


def _check_sizes(num_classes: int, feature_dim: int) -> None:
    if num_classes < 2 or feature_dim < 1:
        raise ValueError(f"centroids need num_classes >= 2 and feature_dim >= 1; "
                         f"got num_classes={num_classes}, feature_dim={feature_dim}")


def _simplex_in_c_minus_1(num_classes: int) -> Tensor:
    """(C, C-1) float64 regular simplex: the rows of the Helmert basis of {v : sum(v) = 0}."""
    c = num_classes
    basis = torch.zeros(c, c - 1, dtype=torch.float64)  # orthonormal columns, each orthogonal to 1
    for k in range(1, c):
        basis[:k, k - 1] = 1.0 / math.sqrt(k * (k + 1))
        basis[k, k - 1] = -k / math.sqrt(k * (k + 1))
    # basis basisᵀ = I - 11ᵀ/C, so row norms are sqrt((C-1)/C) and pairwise dots are -1/C:
    # rescaled to unit length every cosine is exactly -1/(C-1).
    return basis * math.sqrt(c / (c - 1))


def _random_isometry(feature_dim: int, rank: int, seed: int) -> Tensor:
    """(d, r) float64 matrix with orthonormal columns, uniformly (Haar) distributed."""
    gen = torch.Generator().manual_seed(int(seed))
    gauss = torch.randn(feature_dim, rank, generator=gen, dtype=torch.float64)
    q, r = torch.linalg.qr(gauss)
    # QR alone is not uniform (its R has a sign convention); fixing diag(R) > 0 makes it so.
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1.0
    return q * signs


def simplex_centroids(num_classes: int, feature_dim: int, seed: int = 0) -> Tensor:
    """(C, d) float32 regular simplex, randomly rotated into d dimensions (needs C <= d + 1)."""
    _check_sizes(num_classes, feature_dim)
    if num_classes > feature_dim + 1:
        raise ValueError(f"a regular simplex of {num_classes} classes needs "
                         f"feature_dim >= num_classes - 1 = {num_classes - 1}; got {feature_dim}")
    simplex = _simplex_in_c_minus_1(num_classes)  # (C, C-1)
    rotation = _random_isometry(feature_dim, num_classes - 1, seed)  # (d, C-1)
    # An isometry keeps every inner product, so the Gram matrix stays exactly the simplex's.
    return (simplex @ rotation.t()).float()  # (C, d)


def repulsion_centroids(num_classes: int, feature_dim: int, seed: int = 0,
                        iterations: int = REPULSION_ITERATIONS) -> tuple[Tensor, float]:
    """(C, d) float32 unit vectors pushed apart on the sphere, and their max pairwise cosine.

    Memoised per (C, d, seed, iterations): a study validates every cell and every trial builds
    its loss, and at C = 1000 one construction takes seconds. Each call returns its own copy.
    """
    points, max_cosine = _repulsion(num_classes, feature_dim, int(seed), iterations)
    return points.clone(), max_cosine


@functools.lru_cache(maxsize=32)
def _repulsion(num_classes: int, feature_dim: int, seed: int,
               iterations: int) -> tuple[Tensor, float]:
    """The construction behind `repulsion_centroids`.

    Start: C seeded Gaussian directions. Each of `iterations` steps moves every point along the
    tangent part of a Riesz-type repulsion, F_i = sum_j w_ij (x_i - x_j)/r_ij with
    w_i = softmax_j(-(s/2) log r_ij^2) (a smooth nearest-neighbour weighting; as s grows the
    minimiser tends to the best packing, i.e. the smallest max cosine), by f * r_nn,i * F_i,
    then renormalises. ||F_i|| <= 1 and r_nn,i is point i's nearest-neighbour distance, so the
    rule is scale-free (it works for 10 points on a circle and 1000 in 64 dimensions alike) and
    unlike a cosine potential its force does not vanish as two points meet. Schedules: s grows
    geometrically 2 -> 256, f decays 1.0 -> 0.002 on a cosine. For C <= d + 1 the regular simplex
    minimises the energy for every s, so it converges to cosines near -1/(C-1).
    """
    _check_sizes(num_classes, feature_dim)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0; got {iterations}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_classes, feature_dim, generator=gen, dtype=torch.float64).float()
    x = x / x.norm(dim=1, keepdim=True)  # (C, d)
    eye = torch.eye(num_classes, dtype=torch.bool)
    for it in range(iterations):
        frac = it / max(iterations - 1, 1)
        s = 2.0 * 128.0 ** frac
        f = 0.002 + 0.5 * (1.0 - 0.002) * (1.0 + math.cos(math.pi * frac))
        sq = (2.0 - 2.0 * (x @ x.t())).clamp_min_(1e-12).masked_fill_(eye, math.inf)  # (C, C)
        w = torch.softmax(-0.5 * s * sq.log(), dim=1)  # (C, C), log-space so no overflow
        r = sq.sqrt()
        wr = w / r  # (C, C); 0 on the diagonal
        force = wr.sum(1, keepdim=True) * x - wr @ x  # (C, d)
        force = force - (force * x).sum(1, keepdim=True) * x  # tangent part
        x = x + f * r.min(1, keepdim=True).values * force
        x = x / x.norm(dim=1, keepdim=True)
    gram = (x.double() @ x.double().t()).masked_fill_(eye, -math.inf)  # (C, C)
    return x, float(gram.max())


def onehot_anchors(num_classes: int, feature_dim: int) -> Tensor:
    """(C, d) float32 anchors a_c = e_c (the NCM paper's standard orthogonal bases; d >= C)."""
    _check_sizes(num_classes, feature_dim)
    if feature_dim < num_classes:
        raise ValueError(f"one-hot anchors need feature_dim >= num_classes = {num_classes}; "
                         f"got {feature_dim}")
    return torch.eye(num_classes, feature_dim, dtype=torch.float32)  # (C, d)


def simplex_anchors(num_classes: int, feature_dim: int, seed: int = 0) -> Tensor:
    """(C, d) float32 anchors on a regular simplex (= `simplex_centroids`)."""
    return simplex_centroids(num_classes, feature_dim, seed)
