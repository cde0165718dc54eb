"""PEDCC centroids and NCM anchors: exact simplex Gram, determinism, repulsion quality."""

from __future__ import annotations

import math

import pytest
import torch

from featloss.losses.centroids import (
    onehot_anchors,
    repulsion_centroids,
    simplex_anchors,
    simplex_centroids,
)


def _gram(points: torch.Tensor) -> torch.Tensor:
    p = points.double()
    return p @ p.t()


@pytest.mark.parametrize("c, d", [(2, 1), (2, 7), (3, 2), (5, 4), (10, 9), (10, 64), (100, 99),
                                  (100, 512)])
def test_simplex_gram_is_exact(c: int, d: int) -> None:
    points = simplex_centroids(c, d, seed=3)
    assert points.shape == (c, d) and points.dtype == torch.float32
    expected = torch.full((c, c), -1.0 / (c - 1), dtype=torch.float64)
    expected.fill_diagonal_(1.0)
    torch.testing.assert_close(_gram(points), expected, atol=1e-6, rtol=0)


def test_simplex_two_classes_are_antipodal() -> None:
    a, b = simplex_centroids(2, 5, seed=0)
    torch.testing.assert_close(a, -b, atol=1e-7, rtol=0)


def test_simplex_is_deterministic_per_seed_and_seeds_differ() -> None:
    torch.manual_seed(123)
    first = simplex_centroids(10, 32, seed=7)
    torch.manual_seed(999)  # the global RNG must not matter
    assert torch.equal(first, simplex_centroids(10, 32, seed=7))
    assert not torch.allclose(first, simplex_centroids(10, 32, seed=8), atol=1e-3)


def test_simplex_rotation_spans_the_embedding() -> None:
    # A random rotation, not a zero-padded simplex: the centroids use coordinates beyond C-1.
    points = simplex_centroids(4, 50, seed=0)
    assert points[:, 3:].abs().max() > 1e-2


@pytest.mark.parametrize("c, d", [(11, 9), (3, 1), (101, 64)])
def test_simplex_needs_c_at_most_d_plus_1(c: int, d: int) -> None:
    with pytest.raises(ValueError, match=f"feature_dim >= num_classes - 1 = {c - 1}"):
        simplex_centroids(c, d, seed=0)


@pytest.mark.parametrize("c, d", [(10, 2), (20, 3), (10, 9), (50, 49), (30, 200), (100, 16)])
def test_repulsion_unit_norms_and_reported_max_cosine(c: int, d: int) -> None:
    points, max_cos = repulsion_centroids(c, d, seed=1)
    assert points.shape == (c, d) and points.dtype == torch.float32
    torch.testing.assert_close(points.double().norm(dim=1), torch.ones(c, dtype=torch.float64),
                               atol=1e-6, rtol=0)
    gram = _gram(points)
    gram.fill_diagonal_(-math.inf)
    assert max_cos == pytest.approx(gram.max().item(), abs=1e-12)


@pytest.mark.parametrize("c, d", [(10, 9), (10, 64), (50, 49), (30, 200)])
def test_repulsion_reaches_the_simplex_when_d_allows(c: int, d: int) -> None:
    _, max_cos = repulsion_centroids(c, d, seed=0)
    assert max_cos < -1.0 / (c - 1) + 2e-3


def test_repulsion_on_a_circle_is_near_equal_spacing() -> None:
    _, max_cos = repulsion_centroids(10, 2, seed=0)
    assert math.cos(2 * math.pi / 10) - 1e-6 <= max_cos < math.cos(2 * math.pi / 10) + 2e-3


def test_repulsion_beats_random_below_c_minus_1() -> None:
    points, max_cos = repulsion_centroids(100, 16, seed=0)
    random = torch.nn.functional.normalize(torch.randn(100, 16, dtype=torch.float64), dim=1)
    gram = random @ random.t()
    gram.fill_diagonal_(-math.inf)
    assert max_cos < 0.3 < gram.max().item()  # random: ~0.7; the Tammes bound is ~0.2


def test_repulsion_is_deterministic_per_seed() -> None:
    torch.manual_seed(0)
    a, ma = repulsion_centroids(12, 5, seed=4)
    torch.manual_seed(1)
    b, mb = repulsion_centroids(12, 5, seed=4)
    assert torch.equal(a, b) and ma == mb
    c, _ = repulsion_centroids(12, 5, seed=5)
    assert not torch.allclose(a, c, atol=1e-3)


def test_onehot_anchors() -> None:
    anchors = onehot_anchors(3, 5)
    expected = torch.zeros(3, 5)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = 1.0
    assert torch.equal(anchors, expected)
    with pytest.raises(ValueError, match="feature_dim >= num_classes = 6"):
        onehot_anchors(6, 5)


def test_simplex_anchors_equal_simplex_centroids() -> None:
    assert torch.equal(simplex_anchors(7, 12, seed=2), simplex_centroids(7, 12, seed=2))
