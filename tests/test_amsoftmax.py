"""AM-Softmax (POD paper Eq. 3) against a naive per-sample reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import featloss.losses.amsoftmax  # noqa: F401  registers "amsoftmax"
from featloss.losses import build_loss

C, D, B = 6, 5, 10


def make(**hp):
    torch.manual_seed(0)
    return build_loss("amsoftmax", num_classes=C, feature_dim=D, **hp).double()


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B,), generator=g)
    return x, y


def ref_loss(x, w, y, s, m):
    """Eq. 3 with per-sample, per-class loops (float64 torch, for autograd)."""
    total = 0.0
    for i in range(x.shape[0]):
        yi = int(y[i])
        cos = [torch.dot(x[i], w[j]) / (x[i].norm() * w[j].norm()) for j in range(C)]
        num = torch.exp(s * (cos[yi] - m))
        den = num + sum(torch.exp(s * cos[j]) for j in range(C) if j != yi)
        total = total - torch.log(num / den)
    return total / x.shape[0]


@pytest.mark.parametrize("s,m", [(30.0, 0.35), (4.0, 0.0), (10.0, 0.8)])
def test_matches_reference_value_and_gradients(s, m):
    loss = make(scale=s, margin=m)
    x, y = data()
    x.requires_grad_(True)
    out = loss(x, y)
    gx, gw = torch.autograd.grad(out.total, (x, loss.weight))
    xr = x.detach().clone().requires_grad_(True)
    wr = loss.weight.detach().clone().requires_grad_(True)
    ref = ref_loss(xr, wr, y, s, m)
    rx, rw = torch.autograd.grad(ref, (xr, wr))
    torch.testing.assert_close(out.total, ref.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.terms["ce"], out.total.detach())
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-8, atol=1e-10)


def test_logits_are_cosines():
    loss = make()
    x, _ = data()
    w = loss.weight.detach()
    cos = torch.tensor([[float(x[i] @ w[j]) / math.sqrt(float(x[i] @ x[i]) * float(w[j] @ w[j]))
                         for j in range(C)] for i in range(B)], dtype=torch.float64)
    torch.testing.assert_close(loss.logits(x), cos)


def test_zero_margin_is_scaled_cosine_softmax():
    loss = make(scale=7.0, margin=0.0)
    x, y = data()
    cos = F.normalize(x, dim=1) @ F.normalize(loss.weight, dim=1).t()
    torch.testing.assert_close(loss(x, y).total, F.cross_entropy(7.0 * cos, y))
    assert loss(x, y).total < make(scale=7.0, margin=0.3)(x, y).total


def test_invariant_to_rescaling_features_and_weight_rows():
    loss = make()
    x, y = data()
    base = loss(x, y).total
    row_scale = torch.rand(B, 1, dtype=torch.float64) * 10 + 0.1
    with torch.no_grad():
        loss.weight.mul_(torch.rand(C, 1, dtype=torch.float64) * 10 + 0.1)
    torch.testing.assert_close(loss(x * row_scale, y).total, base)


def test_float32():
    loss = build_loss("amsoftmax", num_classes=C, feature_dim=D)
    x, y = data()
    x = x.float()
    x[0] = 0.0  # zero feature: cos = 0, finite
    out = loss(x, y)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)


@pytest.mark.parametrize("bad", [
    {"scale": 0.0}, {"scale": -1.0}, {"scale": float("inf")}, {"scale": float("nan")},
    {"margin": -0.1}, {"margin": float("inf")},
])
def test_invalid_hparams(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"amsoftmax.*{name}"):
        build_loss("amsoftmax", num_classes=C, feature_dim=D, **bad)
