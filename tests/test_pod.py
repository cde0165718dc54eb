"""POD loss against a naive per-sample float64 reference written from Eq. 13-19."""

from __future__ import annotations

import math

import pytest
import torch

import featloss.losses.pod  # noqa: F401  registers "pod"
from featloss.losses import build_loss


def reference(x, y, centroids, lam):
    """L_cos + lam · L_SC with explicit loops over samples and over i ≠ j."""
    batch, dim = x.shape
    x_hat = []
    for b in range(batch):
        norm = torch.sqrt(sum(x[b, k] ** 2 for k in range(dim)))
        x_hat.append([x[b, k] / norm for k in range(dim)])
    l_cos = 0.0
    for b in range(batch):
        a = centroids[int(y[b])]
        l_cos = l_cos + (1.0 - sum(x_hat[b][k] * a[k] for k in range(dim))) ** 2  # Eq. 13
    l_cos = l_cos / batch
    diff = [[x_hat[b][k] - centroids[int(y[b]), k] for k in range(dim)] for b in range(batch)]
    l_sc = 0.0
    for i in range(dim):
        for j in range(dim):
            if i != j:
                r_ij = sum(diff[b][i] * diff[b][j] for b in range(batch)) / (batch - 1)  # Eq. 14
                l_sc = l_sc + r_ij ** 2  # Eq. 15
    return l_cos + lam * l_sc, l_cos, l_sc


def _inputs(batch, dim, classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return x, y


@pytest.mark.parametrize("batch, dim, classes, lam, kind", [
    (10, 6, 5, 1.0, "simplex"),    # B >= d: the (d, d) form
    (4, 7, 3, 0.5, "simplex"),     # B < d: the (B, B) form
    (2, 5, 4, 2.0, "simplex"),     # the smallest batch with an L_SC
    (9, 3, 6, 1.0, "repulsion"),   # C > d + 1
])
def test_matches_reference_total_and_gradients(batch, dim, classes, lam, kind) -> None:
    loss = build_loss("pod", num_classes=classes, feature_dim=dim, lam=lam, centroids=kind,
                      seed=1).double()
    x, y = _inputs(batch, dim, classes)
    x1 = x.clone().requires_grad_(True)
    out = loss(x1, y)
    out.total.backward()
    x2 = x.clone().requires_grad_(True)
    ref, ref_cos, ref_sc = reference(x2, y, loss.centroids, lam)
    ref.backward()
    torch.testing.assert_close(out.total, ref)
    torch.testing.assert_close(out.terms["cos"], ref_cos.detach())
    torch.testing.assert_close(out.terms["sc"], ref_sc.detach())
    torch.testing.assert_close(x1.grad, x2.grad)
    assert ref_sc.item() > 0


@pytest.mark.parametrize("batch, dim", [(256, 64), (64, 256), (128, 128)])
def test_float32_decorrelation_is_accurate(batch, dim) -> None:
    loss = build_loss("pod", num_classes=10, feature_dim=dim)
    x, y = _inputs(batch, dim, 10, seed=2)
    x = x + 2.0 * loss.centroids.double()[y]  # partly converged features: smaller D
    d_mat = torch.nn.functional.normalize(x, dim=1) - loss.centroids.double()[y]
    r = d_mat.t() @ d_mat / (batch - 1)
    expected = (r.pow(2).sum() - torch.diagonal(r).pow(2).sum()).item()
    got = loss(x.float(), y).terms["sc"]
    assert got.dtype == torch.float32
    assert math.isclose(got.item(), expected, rel_tol=1e-4)


def test_lam_zero_is_the_cosine_term_only() -> None:
    loss = build_loss("pod", num_classes=4, feature_dim=5, lam=0.0).double()
    x, y = _inputs(8, 5, 4, seed=3)
    out = loss(x, y)
    expected = (1 - (torch.nn.functional.normalize(x, dim=1) * loss.centroids[y]).sum(1)) ** 2
    torch.testing.assert_close(out.total, expected.mean())
    assert out.terms["sc"].item() > 0  # still logged


def test_features_on_their_centroids_give_zero() -> None:
    loss = build_loss("pod", num_classes=5, feature_dim=8).double()
    y = torch.tensor([0, 1, 2, 3, 4, 2, 0])
    scale = torch.linspace(0.5, 4.0, len(y), dtype=torch.float64).unsqueeze(1)
    out = loss(scale * loss.centroids[y], y)  # only the direction matters
    assert abs(out.total.item()) < 1e-12  # the float32 centroids are unit to ~1e-8


def test_logits_are_cosines_and_argmax_is_the_nearest_centroid() -> None:
    loss = build_loss("pod", num_classes=6, feature_dim=10, seed=4)
    x, _ = _inputs(20, 10, 6, seed=4)
    x = x.float()
    logits = loss.logits(x)
    cosine = torch.nn.functional.cosine_similarity(x.unsqueeze(1), loss.centroids.unsqueeze(0),
                                                   dim=2)
    torch.testing.assert_close(logits, cosine)
    nearest = torch.cdist(torch.nn.functional.normalize(x, dim=1), loss.centroids).argmin(1)
    assert torch.equal(logits.argmax(1), nearest)


def test_centroid_buffer_and_metrics() -> None:
    loss = build_loss("pod", num_classes=10, feature_dim=9)
    assert loss.lam == 1.0 and list(loss.parameters()) == []
    assert "centroids" in loss.state_dict() and loss.class_vectors() is loss.centroids
    gram = loss.centroids.double() @ loss.centroids.double().t()
    torch.testing.assert_close(gram[0, 1].item(), -1 / 9)
    assert loss.double().centroids.dtype == torch.float64
    rep = build_loss("pod", num_classes=20, feature_dim=3, centroids="repulsion")
    cos = rep.centroids.double() @ rep.centroids.double().t()
    cos.fill_diagonal_(-2.0)
    assert rep.max_centroid_cosine == pytest.approx(cos.max().item(), abs=1e-9)
    assert rep.epoch_metrics() == {"loss/max_centroid_cosine": rep.max_centroid_cosine}
    again = build_loss("pod", num_classes=20, feature_dim=3, centroids="repulsion", seed=0)
    assert torch.equal(again.centroids, rep.centroids)


def test_simplex_below_c_minus_1_names_the_fix() -> None:
    with pytest.raises(ValueError, match=r"loss 'pod': centroids=.*repulsion.*feature_dim >= 9"):
        build_loss("pod", num_classes=10, feature_dim=8)


@pytest.mark.parametrize("arg, value", [
    ("lam", -1.0), ("lam", float("inf")), ("centroids", "pedcc"), ("seed", -1), ("seed", 1.0),
])
def test_invalid_hyperparameters(arg, value) -> None:
    with pytest.raises(ValueError, match=f"loss 'pod': {arg}="):
        build_loss("pod", num_classes=3, feature_dim=4, **{arg: value})
