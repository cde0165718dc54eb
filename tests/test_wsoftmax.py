"""W-Softmax (Li & Wang, Eq. 1, 11-13) against a naive per-sample reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import featloss.losses.wsoftmax  # noqa: F401  registers "wsoftmax"
from featloss.losses import build_loss

D = 5


def make(c=6, **hp):
    torch.manual_seed(0)
    return build_loss("wsoftmax", num_classes=c, feature_dim=D, **hp).double()


def data(c=6, b=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, D, generator=g, dtype=torch.float64) * 2
    y = torch.randint(0, c, (b,), generator=g)
    return x, y


def ref_loss(x, w, y, alpha):
    """Eq. 13: build every w'_j explicitly per sample (Eq. 1) and take Eq. 12's softmax."""
    c = w.shape[0]
    w_hat = [w[j] / w[j].norm() for j in range(c)]
    total = 0.0
    for i in range(x.shape[0]):
        yi = int(y[i])
        logits = []
        for j in range(c):
            if j == yi:
                wj = w_hat[yi]
            else:
                v = alpha * w_hat[yi] + w_hat[j]
                wj = v / v.norm()
            logits.append(torch.dot(wj, x[i]))
        den = sum(torch.exp(v) for v in logits)
        total = total - torch.log(torch.exp(logits[yi]) / den)
    return total / x.shape[0]


@pytest.mark.parametrize("c,b", [(6, 10), (12, 5)])  # C <= B (Gram path) and C > B
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0, 3.0])
def test_matches_reference_value_and_gradients(c, b, alpha):
    loss = make(c, alpha=alpha)
    x, y = data(c, b)
    x.requires_grad_(True)
    out = loss(x, y)
    gx, gw = torch.autograd.grad(out.total, (x, loss.weight))
    xr = x.detach().clone().requires_grad_(True)
    wr = loss.weight.detach().clone().requires_grad_(True)
    ref = ref_loss(xr, wr, y, alpha)
    rx, rw = torch.autograd.grad(ref, (xr, wr))
    torch.testing.assert_close(out.total, ref.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.terms["ce"], out.total.detach())
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-8, atol=1e-10)


def test_alpha_zero_is_softmax_on_normalised_weights():
    loss = make(alpha=0.0)
    x, y = data()
    z = x @ F.normalize(loss.weight, dim=1).t()
    torch.testing.assert_close(loss(x, y).total, F.cross_entropy(z, y))
    torch.testing.assert_close(loss.logits(x), z)
    # On well-classified features (x ≈ 3 ŵ_y) the biased negatives make the task harder.
    good = 3 * F.normalize(loss.weight.detach(), dim=1)[y] + 0.1 * x
    assert loss(good, y).total + 1e-3 < make(alpha=1.0)(good, y).total


def test_huge_alpha_tends_to_log_c():
    # Every negative direction → ŵ_y, every logit → z_y, so CE → log C.
    loss = make(alpha=1e6)
    x, y = data()
    torch.testing.assert_close(loss(x, y).total.item(), math.log(6), rtol=0, atol=1e-4)


def test_warmup_is_conventional_softmax_then_alpha_and_state_dict():
    loss = make(alpha=2.0, warmup_epochs=2)
    biased = make(alpha=2.0)
    x, y = data()
    conventional = F.cross_entropy(x @ loss.weight.detach().t(), y)  # raw W (paper Sec. 5.1)
    for epoch in (0, 1):
        loss.on_epoch_start(epoch)
        torch.testing.assert_close(loss(x, y).total, conventional)
    soft = make(alpha=0.0)
    assert (soft(x, y).total - conventional).abs() > 1e-3  # not softmax on unit weights
    loss.on_epoch_start(2)
    torch.testing.assert_close(loss(x, y).total, biased(x, y).total)
    assert (biased(x, y).total - soft(x, y).total).abs() > 1e-3
    state = loss.state_dict()
    assert int(state["epoch"]) == 2
    fresh = make(alpha=2.0, warmup_epochs=2)
    torch.testing.assert_close(fresh(x, y).total, conventional)  # a fresh loss warms up
    fresh.load_state_dict(state)
    assert int(fresh.epoch) == 2
    torch.testing.assert_close(fresh(x, y).total, biased(x, y).total)


def test_antipodal_weights_stay_finite_float32():
    loss = build_loss("wsoftmax", num_classes=3, feature_dim=D, alpha=1.0)
    with torch.no_grad():
        loss.weight[1] = -loss.weight[0] * 2.0  # ŵ_1 = −ŵ_0: ‖ŵ_0 + ŵ_1‖ = 0
    x, _ = data(3, 4)
    x = x.float().requires_grad_(True)
    y = torch.zeros(4, dtype=torch.long)
    out = loss(x, y)
    out.total.backward()
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss.weight.grad).all()


@pytest.mark.parametrize("bad", [
    {"alpha": -0.1}, {"alpha": float("inf")}, {"alpha": float("nan")},
    {"warmup_epochs": 1.5}, {"warmup_epochs": -1}, {"warmup_epochs": True},
])
def test_invalid_hparams(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"wsoftmax.*{name}"):
        build_loss("wsoftmax", num_classes=4, feature_dim=D, **bad)


def test_degenerate_regime_and_the_negative_target_logit_metric():
    """Eq. 11-13 with z_y < 0: a misclassified sample can have a loss near 0.

    ŵ_0 = (1, 0), ŵ_1 at 150°: ‖ŵ_0 + ŵ_1‖ = 0.518 < 1. For x = (−t, −2.732t), z_0 = −t and
    z_1 = 0.866t − 1.366t = −0.5t > z_0 (class 1 predicted), yet the biased negative logit
    (z_0 + z_1)/0.518 = −2.9t lies far below z_0: the loss → 0 as t grows.
    """
    loss = build_loss("wsoftmax", num_classes=2, feature_dim=2, alpha=1.0).double()
    angle = math.radians(150)
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[2.0, 0.0], [3 * math.cos(angle), 3 * math.sin(angle)]]))
    t = 5.0
    x = torch.tensor([[-t, -(1 + math.sqrt(3)) * t]], dtype=torch.float64)
    y = torch.tensor([0])
    z = loss.logits(x)
    torch.testing.assert_close(z, torch.tensor([[-t, -0.5 * t]], dtype=torch.float64))
    assert int(z.argmax(1)) == 1  # misclassified
    assert loss(x, y).total.item() < 1e-3  # and yet almost no loss
    assert loss.eval_metrics(x, y) == {"loss/frac_target_logit_negative": 1.0}


def test_negative_target_logit_fraction_on_hand_made_features():
    loss = build_loss("wsoftmax", num_classes=3, feature_dim=3).double()
    with torch.no_grad():
        loss.weight.copy_(torch.diag(torch.tensor([2.0, 0.5, 3.0])))  # ŵ = I: z = x
    x = torch.tensor([[1.0, 5.0, 5.0],     # y=0: z_0 = 1 > 0
                      [9.0, -0.1, 0.0],    # y=1: z_1 = −0.1 < 0
                      [0.0, 0.0, -2.0],    # y=2: z_2 = −2 < 0
                      [0.0, 0.0, 0.0]],    # y=0: z_0 = 0, not negative
                     dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])
    assert loss.eval_metrics(x, y) == {"loss/frac_target_logit_negative": 0.5}


def test_warmup_as_long_as_the_run_is_a_plan_warning():
    (line,) = make(warmup_epochs=3).plan_warnings(50, 3)
    assert "warmup_epochs=3 >= train.epochs=3" in line
    assert make(warmup_epochs=1).plan_warnings(50, 3) == []
    assert make().plan_warnings(50, 1) == []
