"""E-NCM against a naive per-sample float64 reference (NCM paper Eq. 4, 5, 7)."""

from __future__ import annotations


import pytest
import torch

import featloss.losses.ncm  # noqa: F401  registers "encm" and "cncm"
from featloss.losses import build_loss


def reference(x, y, anchors, scale):
    """mean_i −log softmax(−scale ‖x_i − a_c‖₂)_{y_i}, one sample and one class at a time."""
    batch, dim = x.shape
    total = 0.0
    for i in range(batch):
        scores = []
        for c in range(anchors.shape[0]):
            dist = torch.sqrt(sum((x[i, k] - anchors[c, k]) ** 2 for k in range(dim)))  # Eq. 7
            scores.append(-scale * dist)
        top = max(float(s.detach()) for s in scores)
        total = total + top + torch.log(sum(torch.exp(s - top) for s in scores)) - scores[int(y[i])]
    return total / batch


def _inputs(batch, dim, classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64) * 0.7
    y = torch.randint(0, classes, (batch,), generator=gen)
    return x, y


@pytest.mark.parametrize("classes, dim, anchors, scale", [
    (4, 6, "onehot", 1.0), (5, 5, "onehot", 3.0), (6, 5, "simplex", 1.0), (3, 8, "simplex", 0.5),
    (10, 2, "repulsion", 1.0),
])
def test_matches_reference_total_and_gradients(classes, dim, anchors, scale) -> None:
    loss = build_loss("encm", num_classes=classes, feature_dim=dim, anchors=anchors,
                      scale=scale).double()
    x, y = _inputs(9, dim, classes)
    x1 = x.clone().requires_grad_(True)
    out = loss(x1, y)
    out.total.backward()
    x2 = x.clone().requires_grad_(True)
    ref = reference(x2, y, loss.anchors, scale)
    ref.backward()
    torch.testing.assert_close(out.total, ref)
    torch.testing.assert_close(x1.grad, x2.grad)
    assert set(out.terms) == {"ce"}


def test_logits_are_negative_scaled_distances() -> None:
    loss = build_loss("encm", num_classes=4, feature_dim=6, scale=2.5)
    x, _ = _inputs(7, 6, 4, seed=1)
    x = x.float()
    logits = loss.logits(x)
    torch.testing.assert_close(logits, -2.5 * torch.cdist(x, loss.anchors), atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(1), torch.cdist(x, loss.anchors).argmin(1))


def test_gradients_are_finite_on_the_anchor() -> None:
    loss = build_loss("encm", num_classes=4, feature_dim=4)
    y = torch.tensor([0, 1, 2, 3, 1])
    x = loss.anchors[y].clone()
    x[4] = loss.anchors[3]  # also a feature sitting on another class's anchor
    x.requires_grad_(True)
    loss(x, y).total.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("anchors", ["onehot", "simplex"])
def test_minimal_with_features_on_their_anchors(anchors) -> None:
    loss = build_loss("encm", num_classes=5, feature_dim=6, anchors=anchors).double()
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    best = loss(loss.anchors[y], y).total
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        noise = 1e-2 * torch.randn(len(y), 6, generator=gen, dtype=torch.float64)
        assert loss(loss.anchors[y] + noise, y).total > best


def test_float32_is_accurate_near_the_anchor() -> None:
    # Converged features: ‖x − a_y‖ ~ 1e-4 is below the precision of the ‖x‖² − 2x·a + ‖a‖²
    # expansion in float32, so the target column must be exact for the loss and its gradient.
    loss = build_loss("encm", num_classes=10, feature_dim=64)
    x, y = _inputs(32, 64, 10, seed=2)
    x = (loss.anchors.double()[y] + 1e-5 * x).float().double()  # exactly representable
    low = x.float().requires_grad_(True)
    loss(low, y).total.backward()
    high = x.clone().requires_grad_(True)
    out = loss.double()(high, y)
    out.total.backward()
    torch.testing.assert_close(out.total, reference(x, y, loss.anchors, 1.0))
    torch.testing.assert_close(low.grad.double(), high.grad, atol=1e-5, rtol=1e-3)


def test_anchor_buffers() -> None:
    loss = build_loss("encm", num_classes=3, feature_dim=5)
    assert torch.equal(loss.anchors, torch.eye(3, 5)) and list(loss.parameters()) == []
    assert "anchors" in loss.state_dict() and loss.class_vectors() is loss.anchors
    simplex = build_loss("encm", num_classes=6, feature_dim=5, anchors="simplex", seed=3)
    gram = simplex.anchors.double() @ simplex.anchors.double().t()
    expected = torch.full((6, 6), -0.2, dtype=torch.float64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, atol=1e-6, rtol=0)
    other = build_loss("encm", num_classes=6, feature_dim=5, anchors="simplex", seed=4)
    assert not torch.allclose(other.anchors, simplex.anchors, atol=1e-3)


def test_onehot_needs_d_at_least_c() -> None:
    with pytest.raises(ValueError, match=r"'encm': anchors='onehot'.*feature_dim >= num_classes"):
        build_loss("encm", num_classes=6, feature_dim=5)
    with pytest.raises(ValueError, match="loss 'encm': anchors='simplex'"):
        build_loss("encm", num_classes=7, feature_dim=5, anchors="simplex")


@pytest.mark.parametrize("arg, value", [
    ("scale", 0.0), ("scale", -1.0), ("scale", float("nan")), ("anchors", "random"), ("seed", -2),
])
def test_invalid_hyperparameters(arg, value) -> None:
    with pytest.raises(ValueError, match=f"loss 'encm': {arg}="):
        build_loss("encm", num_classes=3, feature_dim=4, **{arg: value})


def test_repulsion_anchors_work_below_k_minus_1() -> None:
    loss = build_loss("encm", num_classes=10, feature_dim=2, anchors="repulsion")
    norms = loss.anchors.double().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(10, dtype=torch.float64), atol=1e-6, rtol=0)
    cos = loss.anchors.double() @ loss.anchors.double().t()
    cos.fill_diagonal_(-1.0)
    assert float(cos.max()) < 0.81  # ten points on a circle: optimum cos(36°) = 0.809
