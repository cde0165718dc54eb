"""softmax: CE(x Wᵀ) against a per-sample float64 reference."""

from __future__ import annotations

import math

import torch

from featloss.losses import build_loss


def reference(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    total = 0.0
    for i in range(x.shape[0]):
        scores = [sum(float(x[i, k]) * float(w[j, k]) for k in range(x.shape[1]))
                  for j in range(w.shape[0])]
        top = max(scores)
        log_z = top + math.log(sum(math.exp(s - top) for s in scores))
        total += log_z - scores[int(y[i])]
    return torch.tensor(total / x.shape[0], dtype=torch.float64)


def test_matches_the_reference_and_logits_are_x_w():
    torch.manual_seed(0)
    loss = build_loss("softmax", num_classes=5, feature_dim=7).double()
    x = torch.randn(9, 7, dtype=torch.float64)
    y = torch.randint(0, 5, (9,))
    out = loss(x, y)
    torch.testing.assert_close(out.total, reference(x, loss.weight.detach(), y))
    torch.testing.assert_close(loss.logits(x), x @ loss.weight.t())
    assert set(out.terms) == {"ce"}


def test_gradients_match_autograd_on_the_formula():
    torch.manual_seed(1)
    loss = build_loss("softmax", num_classes=4, feature_dim=3).double()
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (6,))
    loss(x, y).total.backward()
    x2 = x.detach().clone().requires_grad_(True)
    w2 = loss.weight.detach().clone().requires_grad_(True)
    probs = torch.softmax(x2 @ w2.t(), dim=1)
    (-torch.log(probs[torch.arange(6), y]).mean()).backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(loss.weight.grad, w2.grad)
