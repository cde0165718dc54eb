"""σ²R loss against a naive per-sample float64 reference written from Eq. 8-11."""

from __future__ import annotations

import math

import pytest
import torch

import featloss.losses.sigma2r  # noqa: F401  registers "sigma2r"
from featloss.losses import build_loss
from featloss.losses.sigma2r import Sigma2RLoss


def _dist(a, b):
    return math.sqrt(sum((float(a[k]) - float(b[k])) ** 2 for k in range(len(a))))


def _std(points):
    """sqrt(Σ_p ‖p − mean‖² / (|S| − 1)) over a list of 1-D tensors."""
    dim = len(points[0])
    mean = [sum(float(p[k]) for p in points) / len(points) for k in range(dim)]
    spread = sum((float(p[k]) - mean[k]) ** 2 for p in points for k in range(dim))
    return math.sqrt(spread / (len(points) - 1))


def reference(x, y, weight, centers, w_k, *, z, n, lam, eps):
    """CE(x Wᵀ) + lam · mean_i β_i ‖x_i − c_{y_i}‖², σ's from detached values, one sample a time.

    Neighbours per class: min(n, n_c − 1) (= n when every class has n + 1 samples); samples of
    single-sample classes are left out of the mean.
    """
    batch, classes = x.shape[0], weight.shape[0]
    xd, cd = x.detach(), centers.detach()
    ce = 0.0
    for i in range(batch):
        scores = [(x[i] * weight[c]).sum() for c in range(classes)]
        top = max(float(s.detach()) for s in scores)
        ce = ce + top + torch.log(sum(torch.exp(s - top) for s in scores)) - scores[int(y[i])]
    term, count = 0.0, 0
    for i in range(batch):
        c = int(y[i])
        others = [j for j in range(batch) if j != i and int(y[j]) == c]
        k = min(n, len(others))
        if k == 0:
            continue
        near = sorted(others, key=lambda j: _dist(xd[i], xd[j]))[:k]
        sigma_x = _std([xd[i]] + [xd[j] for j in near])
        members = [j for j in range(batch) if int(y[j]) == c]
        near_c = sorted(members, key=lambda j: _dist(cd[c], xd[j]))[:k]
        sigma_c = _std([cd[c]] + [xd[j] for j in near_c])
        k_rate = eps + z / (1.0 + torch.exp(-w_k[c]))  # Eq. 9
        beta = z / (1.0 + torch.exp(-k_rate * (sigma_x - sigma_c)))  # Eq. 8
        term = term + beta * ((x[i] - centers[c]) ** 2).sum()  # Eq. 10
        count += 1
    l_s2r = term / count if count else 0.0
    return ce / batch + lam * l_s2r


def _inputs(counts, dim=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.cat([torch.full((k,), c) for c, k in enumerate(counts)])
    y = y[torch.randperm(len(y), generator=gen)]
    x = torch.randn(len(y), dim, generator=gen, dtype=torch.float64) * 1.5
    return x, y


def _compare(loss, x, y, hp):
    x1 = x.clone().requires_grad_(True)
    out = loss(x1, y)
    out.total.backward()
    x2 = x.clone().requires_grad_(True)
    w2, c2, k2 = (loss.weight.detach().clone().requires_grad_(True),
                  loss.centers.detach().clone().requires_grad_(True),
                  loss.w_k.detach().clone().requires_grad_(True))
    ref = reference(x2, y, w2, c2, k2, **hp)
    ref.backward()
    torch.testing.assert_close(out.total, ref)
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(loss.weight.grad, w2.grad)
    torch.testing.assert_close(loss.centers.grad, c2.grad)
    torch.testing.assert_close(loss.w_k.grad, k2.grad)
    return out


@pytest.mark.parametrize("hp", [
    dict(z=40.0, n=7, lam=0.01, eps=1e-3),
    dict(z=2.0, n=3, lam=0.5, eps=0.1),
    dict(z=1.5, n=1, lam=1.0, eps=1e-3),
])
def test_training_mode_matches_reference(hp) -> None:
    torch.manual_seed(0)
    loss = build_loss("sigma2r", num_classes=3, feature_dim=4, z=hp["z"], n_neighbors=hp["n"],
                      lam=hp["lam"], eps=hp["eps"]).double()
    with torch.no_grad():
        loss.centers.mul_(0.5)
        loss.w_k.mul_(0.3)
    x, y = _inputs([hp["n"] + 1, hp["n"] + 3, hp["n"] + 2])
    out = _compare(loss, x, y, hp)
    assert set(out.terms) == {"ce", "sigma2r"}
    assert out.terms["sigma2r"].item() > 0
    torch.testing.assert_close(out.total, out.terms["ce"] + hp["lam"] * out.terms["sigma2r"])
    assert loss.w_k.grad.abs().sum() > 0  # K is learned


def test_eval_mode_uses_fewer_neighbours_and_skips_single_samples() -> None:
    hp = dict(z=3.0, n=4, lam=0.7, eps=1e-3)
    torch.manual_seed(1)
    loss = build_loss("sigma2r", num_classes=4, feature_dim=4, z=3.0, n_neighbors=4,
                      lam=0.7).double().eval()
    x, y = _inputs([1, 2, 3, 7], seed=1)  # class 0: one sample, left out
    _compare(loss, x, y, hp)


def test_eval_mode_with_only_single_samples_is_ce() -> None:
    loss = build_loss("sigma2r", num_classes=3, feature_dim=2).double().eval()
    x, y = _inputs([1, 1, 1], dim=2)
    out = loss(x, y)
    assert out.terms["sigma2r"].item() == 0.0
    torch.testing.assert_close(out.total, torch.nn.functional.cross_entropy(x @ loss.weight.t(), y))


def test_lam_zero_is_softmax_ce() -> None:
    loss = build_loss("sigma2r", num_classes=3, feature_dim=4, n_neighbors=2, lam=0.0).double()
    x, y = _inputs([3, 4, 5], seed=2)
    out = loss(x, y)
    torch.testing.assert_close(out.total, torch.nn.functional.cross_entropy(x @ loss.weight.t(), y))


def test_sigma_carries_no_gradient() -> None:
    # With W = 0 the CE gradient w.r.t. x vanishes, so x.grad must be exactly the gradient of
    # lam/B · Σ_i β_i ‖x_i − c_{y_i}‖² with β_i held constant: 2 lam/B β_i (x_i − c_{y_i}).
    loss = build_loss("sigma2r", num_classes=2, feature_dim=3, z=2.0, n_neighbors=2, lam=0.9,
                      eps=0.05).double()
    with torch.no_grad():
        loss.weight.zero_()
    x, y = _inputs([4, 5], dim=3, seed=3)
    x1 = x.clone().requires_grad_(True)
    loss(x1, y).total.backward()
    betas = []
    for i in range(len(y)):  # β_i written out from Eq. 8-9, as in `reference`
        c = int(y[i])
        others = [j for j in range(len(y)) if j != i and int(y[j]) == c]
        near = sorted(others, key=lambda j: _dist(x[i], x[j]))[:2]
        members = [j for j in range(len(y)) if int(y[j]) == c]
        near_c = sorted(members, key=lambda j: _dist(loss.centers[c].detach(), x[j]))[:2]
        gap = _std([x[i]] + [x[j] for j in near]) - _std(
            [loss.centers[c].detach()] + [x[j] for j in near_c])
        k_rate = 0.05 + 2.0 / (1.0 + math.exp(-float(loss.w_k[c].detach())))
        betas.append(2.0 / (1.0 + math.exp(-k_rate * gap)))
    beta = torch.tensor(betas, dtype=torch.float64).unsqueeze(1)
    expected = 2.0 * 0.9 / len(y) * beta * (x - loss.centers.detach()[y])
    torch.testing.assert_close(x1.grad, expected)


def test_float32_close_to_float64() -> None:
    torch.manual_seed(4)
    loss = build_loss("sigma2r", num_classes=3, feature_dim=4, n_neighbors=3, z=5.0, lam=0.2)
    x, y = _inputs([5, 4, 6], seed=4)
    low = loss(x.float(), y).total
    high = loss.double()(x, y).total
    assert low.dtype == torch.float32
    assert math.isclose(low.item(), high.item(), rel_tol=1e-4)


def test_training_batch_with_a_small_class_raises() -> None:
    loss = build_loss("sigma2r", num_classes=3, feature_dim=4, n_neighbors=3)
    x, y = _inputs([4, 2, 5])
    with pytest.raises(ValueError, match=r"class 1 has 2 samples .* at least n_neighbors \+ 1 = 4"
                                         r".*data.sampler=balanced.*larger train.batch_size"):
        loss(x.float(), y)
    loss.eval()
    assert torch.isfinite(loss(x.float(), y).total)


def test_min_samples_per_class() -> None:
    assert Sigma2RLoss.min_samples_per_class() == 8
    assert Sigma2RLoss.min_samples_per_class(n_neighbors=3, z=5.0) == 4
    with pytest.raises(ValueError, match="n_neighbors"):
        Sigma2RLoss.min_samples_per_class(n_neighbors=2.0)


def test_init_and_names() -> None:
    torch.manual_seed(0)
    loss = build_loss("sigma2r", num_classes=5, feature_dim=3)
    assert (loss.z, loss.n_neighbors, loss.lam, loss.eps) == (40.0, 7, 0.01, 1e-3)
    assert loss.weight.shape == loss.centers.shape == (5, 3) and loss.w_k.shape == (5,)
    torch.manual_seed(0)
    assert torch.equal(build_loss("sigma2r", num_classes=5, feature_dim=3).w_k, loss.w_k)
    assert loss.class_vectors() is loss.weight
    x = torch.randn(6, 3)
    torch.testing.assert_close(loss.logits(x), x @ loss.weight.t())


@pytest.mark.parametrize("arg, value", [
    ("n_neighbors", 0), ("n_neighbors", 2.0), ("n_neighbors", 2.5), ("z", 0.0), ("z", -1.0),
    ("lam", -0.01), ("eps", 0.0), ("eps", float("nan")),
])
def test_invalid_hyperparameters(arg, value) -> None:
    with pytest.raises(ValueError, match=f"loss 'sigma2r': {arg}="):
        build_loss("sigma2r", num_classes=3, feature_dim=2, **{arg: value})
