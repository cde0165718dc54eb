"""POD loss against naive per-sample float64 references: the paper's Eq. 13-19 (``sc_norm:
none``) and the authors' code as STACK_NOTES quotes it (``sc_norm: official``)."""

from __future__ import annotations

import math

import pytest
import torch

import featloss.losses.pod  # noqa: F401  registers "pod"
from featloss.losses import build_loss


def _normalised_rows(x):
    batch, dim = x.shape
    rows = []
    for b in range(batch):
        norm = torch.sqrt(sum(x[b, k] ** 2 for k in range(dim)))
        rows.append([x[b, k] / norm for k in range(dim)])
    return rows


def _cosine_term(x_hat, y, centroids):
    l_cos = 0.0
    for b in range(len(x_hat)):
        a = centroids[int(y[b])]
        l_cos = l_cos + (1.0 - sum(x_hat[b][k] * a[k] for k in range(len(a)))) ** 2  # Eq. 13
    return l_cos / len(x_hat)


def reference(x, y, centroids, lam):
    """The paper read literally: L_cos + lam · Σ_{i≠j} R_ij², loops over samples and i ≠ j."""
    batch, dim = x.shape
    x_hat = _normalised_rows(x)
    l_cos = _cosine_term(x_hat, y, centroids)
    diff = [[x_hat[b][k] - centroids[int(y[b]), k] for k in range(dim)] for b in range(batch)]
    l_sc = 0.0
    for i in range(dim):
        for j in range(dim):
            if i != j:
                r_ij = sum(diff[b][i] * diff[b][j] for b in range(batch)) / (batch - 1)  # Eq. 14
                l_sc = l_sc + r_ij ** 2  # Eq. 15
    return l_cos + lam * l_sc, l_cos, l_sc


def reference_official(x, y, centroids, lam):
    """The authors' train.py (TianYuZu/POD-Loss) as STACK_NOTES quotes it, entry by entry:
    cov = DᵀD/(B−1); loss = (Σ cov² − Σ diag(cov)²) / (cov.shape[0] − 1)."""
    batch, dim = x.shape
    x_hat = _normalised_rows(x)
    l_cos = _cosine_term(x_hat, y, centroids)
    d_mat = [[x_hat[b][k] - centroids[int(y[b]), k] for k in range(dim)] for b in range(batch)]
    cov = [[sum(d_mat[b][i] * d_mat[b][j] for b in range(batch)) / (batch - 1)
            for j in range(dim)] for i in range(dim)]
    all_sq = sum(cov[i][j] ** 2 for i in range(dim) for j in range(dim))
    diag_sq = sum(cov[i][i] ** 2 for i in range(dim))
    l_sc = (all_sq - diag_sq) / (dim - 1)  # cov.shape[0] − 1
    return l_cos + lam * l_sc, l_cos, l_sc


REFERENCES = {"none": reference, "official": reference_official}


def _inputs(batch, dim, classes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=gen)
    return x, y


@pytest.mark.parametrize("sc_norm", ["official", "none"])
@pytest.mark.parametrize("batch, dim, classes, lam, kind", [
    (10, 6, 5, 1.0, "simplex"),    # B >= d: the (d, d) form
    (4, 7, 3, 0.5, "simplex"),     # B < d: the (B, B) form
    (2, 5, 4, 2.0, "simplex"),     # the smallest batch with an L_SC
    (9, 3, 6, 1.0, "repulsion"),   # C > d + 1
])
def test_matches_reference_total_and_gradients(batch, dim, classes, lam, kind, sc_norm) -> None:
    loss = build_loss("pod", num_classes=classes, feature_dim=dim, lam=lam, centroids=kind,
                      sc_norm=sc_norm, seed=1).double()
    x, y = _inputs(batch, dim, classes)
    x1 = x.clone().requires_grad_(True)
    out = loss(x1, y)
    out.total.backward()
    x2 = x.clone().requires_grad_(True)
    ref, ref_cos, ref_sc = REFERENCES[sc_norm](x2, y, loss.centroids, lam)
    ref.backward()
    torch.testing.assert_close(out.total, ref)
    torch.testing.assert_close(out.terms["cos"], ref_cos.detach())
    torch.testing.assert_close(out.terms["sc"], ref_sc.detach())
    torch.testing.assert_close(x1.grad, x2.grad)
    assert ref_sc.item() > 0


def test_default_is_the_official_normalisation() -> None:
    official = build_loss("pod", num_classes=5, feature_dim=6).double()
    literal = build_loss("pod", num_classes=5, feature_dim=6, sc_norm="none").double()
    assert official.sc_norm == "official" and official.lam == 1.0
    x, y = _inputs(10, 6, 5, seed=5)
    sc_official, sc_literal = official(x, y).terms["sc"], literal(x, y).terms["sc"]
    torch.testing.assert_close(sc_official, sc_literal / 5, rtol=1e-13, atol=0)  # d − 1 = 5


@pytest.mark.parametrize("batch, dim", [(2, 4), (5, 9), (3, 16)])
def test_closed_form_antipodal_features_on_a_diagonal_centroid(batch, dim) -> None:
    """Every sample of class 0 at x = −s·a with a = (1, ..., 1)/√d: D = −2a per row, so
    R = 4B/(B−1)·a aᵀ, Σ_{i≠j} R_ij² = (4B/(B−1))²·(1 − Σ a_i⁴) = (4B/(B−1))²·(d − 1)/d,
    and L_cos = (1 − (−1))² = 4. Official divides by d − 1: (4B/(B−1))² / d."""
    a = torch.full((dim,), dim ** -0.5, dtype=torch.float64)
    y = torch.zeros(batch, dtype=torch.long)
    x = -torch.linspace(0.5, 3.0, batch, dtype=torch.float64).unsqueeze(1) * a  # (B, d)
    factor = (4.0 * batch / (batch - 1)) ** 2
    for sc_norm, expected_sc in (("none", factor * (dim - 1) / dim), ("official", factor / dim)):
        loss = build_loss("pod", num_classes=2, feature_dim=dim, lam=0.5, sc_norm=sc_norm,
                          centroids="repulsion").double()
        loss.centroids[0] = a
        out = loss(x, y)
        assert out.terms["cos"].item() == pytest.approx(4.0, rel=1e-12)
        assert out.terms["sc"].item() == pytest.approx(expected_sc, rel=1e-12)
        assert out.total.item() == pytest.approx(4.0 + 0.5 * expected_sc, rel=1e-12)


def test_one_feature_dimension_has_no_decorrelation_term() -> None:
    loss = build_loss("pod", num_classes=2, feature_dim=1).double()  # d − 1 = 0: no 0/0
    x, y = _inputs(6, 1, 2, seed=6)
    out = loss(x, y)
    assert out.terms["sc"].item() == 0.0 and torch.isfinite(out.total)


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
    assert math.isclose(got.item(), expected / (dim - 1), rel_tol=1e-4)  # official: / (d − 1)


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
    ("sc_norm", "mean"), ("sc_norm", None),
])
def test_invalid_hyperparameters(arg, value) -> None:
    with pytest.raises(ValueError, match=f"loss 'pod': {arg}="):
        build_loss("pod", num_classes=3, feature_dim=4, **{arg: value})
