"""C-NCM against a naive per-sample float64 reference (NCM paper Eq. 4, 5, 8)."""

from __future__ import annotations

import pytest
import torch

import featloss.losses.ncm  # noqa: F401  registers "encm" and "cncm"
from featloss.losses import build_loss


def reference(x, y, anchors, scale):
    """mean_i −log softmax(−scale (1 − cos(x_i, a_c)))_{y_i}, one sample and class at a time."""
    batch, dim = x.shape
    total = 0.0
    for i in range(batch):
        scores = []
        for c in range(anchors.shape[0]):
            dot = sum(x[i, k] * anchors[c, k] for k in range(dim))
            norm_x = torch.sqrt(sum(x[i, k] ** 2 for k in range(dim)))
            norm_a = torch.sqrt(sum(anchors[c, k] ** 2 for k in range(dim)))
            scores.append(-scale * (1.0 - dot / (norm_x * norm_a)))  # Eq. 8
        top = max(float(s.detach()) for s in scores)
        total = total + top + torch.log(sum(torch.exp(s - top) for s in scores)) - scores[int(y[i])]
    return total / batch


def _inputs(batch, dim, classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return x, y


@pytest.mark.parametrize("classes, dim, anchors, scale", [
    (4, 6, "onehot", 1.0), (5, 5, "onehot", 10.0), (6, 5, "simplex", 1.0), (3, 8, "simplex", 2.0),
    (10, 2, "repulsion", 1.0),
])
def test_matches_reference_total_and_gradients(classes, dim, anchors, scale) -> None:
    loss = build_loss("cncm", num_classes=classes, feature_dim=dim, anchors=anchors,
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


def test_logits_are_negative_scaled_cosine_distances() -> None:
    loss = build_loss("cncm", num_classes=4, feature_dim=6, scale=3.0)
    x, _ = _inputs(7, 6, 4, seed=1)
    x = x.float()
    cos = torch.nn.functional.cosine_similarity(x.unsqueeze(1), loss.anchors.unsqueeze(0), dim=2)
    torch.testing.assert_close(loss.logits(x), -3.0 * (1.0 - cos))
    assert torch.equal(loss.logits(x).argmax(1), cos.argmax(1))


def test_minimal_on_simplex_anchors_and_scale_free() -> None:
    # Simplex anchors sum to 0, so x̂ = a_y maximises every margin cos_y − cos_c at once.
    loss = build_loss("cncm", num_classes=5, feature_dim=6, anchors="simplex").double()
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    best = loss(loss.anchors[y], y).total
    for factor in (0.01, 0.5, 7.0):  # any positive rescaling of a_y is as good
        torch.testing.assert_close(loss(factor * loss.anchors[y], y).total, best)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        noise = 1e-2 * torch.randn(len(y), 6, generator=gen, dtype=torch.float64)
        assert loss(loss.anchors[y] + noise, y).total > best


def test_onehot_anchor_is_best_in_its_own_span_only() -> None:
    # One-hot anchors do not sum to 0: turning x̂ away from the other anchors (cos_c < 0) still
    # lowers the loss, so a_y is not the minimiser; moving off the anchors' span never helps.
    loss = build_loss("cncm", num_classes=4, feature_dim=7).double()
    y = torch.tensor([0, 1, 2, 3])
    on = loss.anchors[y]
    best = loss(on, y).total
    torch.testing.assert_close(loss(3.0 * on, y).total, best)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        off_span = torch.zeros(4, 7, dtype=torch.float64)
        off_span[:, 4:] = 0.1 * torch.randn(4, 3, generator=gen, dtype=torch.float64)
        assert loss(on + off_span, y).total > best
    away = on - 0.1 * (loss.anchors.sum(0) - on)  # a_y − 0.1 Σ_{c≠y} a_c
    assert loss(away, y).total < best


def test_gradients_are_finite_on_the_anchor() -> None:
    loss = build_loss("cncm", num_classes=4, feature_dim=4)
    y = torch.tensor([0, 1, 2, 3])
    x = loss.anchors[y].clone().requires_grad_(True)
    loss(x, y).total.backward()
    assert torch.isfinite(x.grad).all()


def test_anchor_buffers() -> None:
    loss = build_loss("cncm", num_classes=3, feature_dim=5)
    assert torch.equal(loss.anchors, torch.eye(3, 5)) and list(loss.parameters()) == []
    assert loss.class_vectors() is loss.anchors
    simplex = build_loss("cncm", num_classes=4, feature_dim=3, anchors="simplex")
    gram = simplex.anchors.double() @ simplex.anchors.double().t()
    expected = torch.full((4, 4), -1 / 3, dtype=torch.float64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, expected, atol=1e-6, rtol=0)


def test_onehot_needs_d_at_least_c() -> None:
    with pytest.raises(ValueError, match=r"'cncm': anchors='onehot'.*feature_dim >= num_classes"):
        build_loss("cncm", num_classes=6, feature_dim=5)


@pytest.mark.parametrize("arg, value", [("scale", 0.0), ("scale", -2.0), ("anchors", "pedcc")])
def test_invalid_hyperparameters(arg, value) -> None:
    with pytest.raises(ValueError, match=f"loss 'cncm': {arg}="):
        build_loss("cncm", num_classes=3, feature_dim=4, **{arg: value})
