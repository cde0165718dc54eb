"""Center loss against a naive per-sample float64 reference (σ²R paper Eq. 1)."""

from __future__ import annotations

import math

import pytest
import torch

import featloss.losses.center  # noqa: F401  registers "center"
from featloss.losses import build_loss


def reference(x, y, weight, centers, lam):
    """CE(x Wᵀ) + lam · mean_i ½‖x_i − c_{y_i}‖², one sample at a time."""
    total_ce = 0.0
    total_center = 0.0
    batch, classes = x.shape[0], weight.shape[0]
    for i in range(batch):
        scores = [sum(x[i, k] * weight[c, k] for k in range(x.shape[1])) for c in range(classes)]
        top = max(float(s.detach()) for s in scores)
        log_norm = top + torch.log(sum(torch.exp(s - top) for s in scores))
        total_ce = total_ce + (log_norm - scores[int(y[i])])
        total_center = total_center + 0.5 * sum(
            (x[i, k] - centers[int(y[i]), k]) ** 2 for k in range(x.shape[1]))
    return total_ce / batch + lam * total_center / batch


def _inputs(batch=12, classes=4, dim=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return x, y


@pytest.mark.parametrize("lam", [0.0, 0.01, 0.7])
def test_matches_reference_total_and_gradients(lam: float) -> None:
    torch.manual_seed(0)
    loss = build_loss("center", num_classes=4, feature_dim=5, lam=lam).double()
    x, y = _inputs()
    x1 = x.clone().requires_grad_(True)
    out = loss(x1, y)
    out.total.backward()

    x2 = x.clone().requires_grad_(True)
    w2 = loss.weight.detach().clone().requires_grad_(True)
    c2 = loss.centers.detach().clone().requires_grad_(True)
    ref = reference(x2, y, w2, c2, lam)
    ref.backward()

    torch.testing.assert_close(out.total, ref)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(loss.weight.grad, w2.grad)
    torch.testing.assert_close(loss.centers.grad, c2.grad)
    assert set(out.terms) == {"ce", "center"}
    torch.testing.assert_close(out.total, out.terms["ce"] + lam * out.terms["center"])


def test_lam_zero_is_softmax_and_centers_get_no_gradient() -> None:
    loss = build_loss("center", num_classes=4, feature_dim=5, lam=0.0).double()
    x, y = _inputs(seed=1)
    out = loss(x, y)
    expected = torch.nn.functional.cross_entropy(x @ loss.weight.t(), y)
    torch.testing.assert_close(out.total, expected)
    out.total.backward()
    assert loss.centers.grad is None or not loss.centers.grad.abs().any()


def test_features_on_their_centres_leave_only_ce() -> None:
    loss = build_loss("center", num_classes=3, feature_dim=4, lam=5.0).double()
    y = torch.tensor([0, 1, 2, 1])
    x = loss.centers.detach()[y].clone()
    out = loss(x, y)
    assert out.terms["center"].item() == 0.0
    torch.testing.assert_close(out.total, out.terms["ce"])


def test_float32_close_to_float64() -> None:
    torch.manual_seed(2)
    loss = build_loss("center", num_classes=4, feature_dim=5, lam=0.3)
    x, y = _inputs(seed=2)
    low = loss(x.float(), y).total
    high = loss.double()(x, y).total
    assert low.dtype == torch.float32
    assert math.isclose(low.item(), high.item(), rel_tol=1e-5)


def test_init_and_names() -> None:
    torch.manual_seed(0)
    loss = build_loss("center", num_classes=6, feature_dim=3)
    assert loss.lam == 0.01
    assert loss.weight.shape == loss.centers.shape == (6, 3)
    torch.manual_seed(0)
    again = build_loss("center", num_classes=6, feature_dim=3)
    assert torch.equal(loss.centers, again.centers)  # seeded by the global RNG
    assert loss.class_vectors() is loss.weight
    x, _ = _inputs(batch=3, classes=6, dim=3)
    torch.testing.assert_close(loss.logits(x.float()), x.float() @ loss.weight.t())


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf"), "1", True])
def test_invalid_lam(lam) -> None:
    with pytest.raises(ValueError, match="loss 'center': lam="):
        build_loss("center", num_classes=3, feature_dim=2, lam=lam)
