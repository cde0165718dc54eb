"""The loss contract (featloss/losses/base.py), checked for every registered loss.

A new loss gets all of these for free by being registered.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from featloss.losses import FeatureLoss, LossOutput, build_loss, list_losses, loss_info

C, D, PER_CLASS = 4, 16, 10  # every class has n_neighbors + 1 samples (sigma2r)
REPO = Path(__file__).resolve().parents[1]
FIXED_TENSORS = {"weight": (C, D), "centers": (C, D), "w_k": (C,), "centroids": (C, D),
                 "anchors": (C, D)}


def batch(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(C).repeat_interleave(PER_CLASS)
    features = torch.randn(C * PER_CLASS, D, generator=gen, dtype=dtype) * 2
    features += 3 * torch.nn.functional.one_hot(labels, D).to(dtype)  # some class structure
    return features, labels


def make(key, seed=0, **hparams) -> FeatureLoss:
    torch.manual_seed(seed)
    return build_loss(key, num_classes=C, feature_dim=D, **hparams)


def test_every_design_loss_is_registered():
    assert set(list_losses()) == {"softmax", "center", "lsoftmax", "amsoftmax", "wsoftmax", "pod",
                                  "sigma2r", "encm", "cncm"}


@pytest.mark.parametrize("key", list_losses())
def test_one_name_in_five_places(key):
    module = {"encm": "ncm", "cncm": "ncm"}.get(key, key)
    assert (REPO / "featloss" / "losses" / f"{module}.py").is_file()
    assert loss_info(key).cls.__module__ == f"featloss.losses.{module}"
    assert (REPO / "search_spaces" / f"{key}.yaml").is_file()
    assert (REPO / "tests" / f"test_{key}.py").is_file()


@pytest.mark.parametrize("key", list_losses())
def test_total_is_a_finite_scalar_with_finite_gradients(key):
    loss = make(key)
    features, labels = batch()
    features.requires_grad_(True)
    out = loss(features, labels)
    assert isinstance(out, LossOutput)
    assert out.total.shape == () and torch.isfinite(out.total)
    for name, term in out.terms.items():
        assert term.shape == () and torch.isfinite(term) and not term.requires_grad, name
    out.total.backward()
    assert features.grad is not None and torch.isfinite(features.grad).all()
    assert features.grad.abs().sum() > 0
    for name, param in loss.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name


@pytest.mark.parametrize("key", list_losses())
def test_logits_are_batch_by_classes(key):
    features, labels = batch()
    logits = make(key).logits(features)
    assert logits.shape == (C * PER_CLASS, C) and torch.isfinite(logits).all()


@pytest.mark.parametrize("key", list_losses())
def test_fixed_tensor_names_and_no_bias(key):
    loss = make(key)
    named = dict(loss.named_parameters()) | dict(loss.named_buffers())
    for name, shape in FIXED_TENSORS.items():
        if name in named:
            assert tuple(named[name].shape) == shape, name
    assert not any("bias" in n for n in named)
    params = {n for n, _ in loss.named_parameters()}
    if key in ("softmax", "center", "lsoftmax", "amsoftmax", "wsoftmax", "sigma2r"):
        assert "weight" in params
    if key in ("center", "sigma2r"):
        assert "centers" in params
    if key == "sigma2r":
        assert "w_k" in params
    if key == "pod":
        assert "centroids" in dict(loss.named_buffers()) and not params
    if key in ("encm", "cncm"):
        assert "anchors" in dict(loss.named_buffers()) and not params


@pytest.mark.parametrize("key", list_losses())
def test_invariant_to_batch_order(key):
    loss = make(key)
    features, labels = batch(torch.float64)
    loss = loss.double()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    a = loss(features, labels).total
    b = loss(features[perm], labels[perm]).total
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("key", list_losses())
def test_deterministic_under_a_seed(key):
    features, labels = batch()
    a = make(key, seed=3)(features, labels).total
    b = make(key, seed=3)(features, labels).total
    assert torch.equal(a, b)


@pytest.mark.parametrize("key", list_losses())
def test_float32_and_float64_agree(key):
    loss64 = make(key).double()
    loss32 = copy.deepcopy(loss64).float()
    features, labels = batch(torch.float64)
    total64 = loss64(features, labels).total
    total32 = loss32(features.float(), labels).total
    assert total32.dtype == torch.float32 and total64.dtype == torch.float64
    torch.testing.assert_close(total32.double(), total64, rtol=2e-4, atol=1e-5)


@pytest.mark.parametrize("key", list_losses())
def test_state_dict_round_trip(key):
    trained = make(key, seed=1)
    trained.on_train_start(7, 3)
    for _ in range(5):  # move the training state (e.g. the L-Softmax λ schedule)
        trained.on_step()
    trained.on_epoch_start(2)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.1)
    fresh = make(key, seed=2)
    fresh.load_state_dict(trained.state_dict())
    features, labels = batch()
    assert torch.equal(fresh(features, labels).total, trained(features, labels).total)
    assert fresh.epoch_metrics() == trained.epoch_metrics()


@pytest.mark.parametrize("key", list_losses())
def test_parameters_and_buffers_follow_to(key):
    loss = make(key).to(torch.float64)
    for name, tensor in list(loss.named_parameters()) + list(loss.named_buffers()):
        if tensor.is_floating_point():
            assert tensor.dtype == torch.float64, name
    # every tensor the loss holds is a parameter or buffer, so devices follow .to()
    registered = {id(t) for t in loss.parameters()} | {id(t) for t in loss.buffers()}
    for attr, value in vars(loss).items():
        if isinstance(value, torch.Tensor):
            assert id(value) in registered, f"{key}.{attr} is a plain tensor attribute"
    if torch.cuda.is_available():
        moved = loss.to("cuda")
        assert all(t.is_cuda for t in list(moved.parameters()) + list(moved.buffers()))


@pytest.mark.parametrize("key", list_losses())
def test_unknown_hyperparameter_names_loss_and_argument(key):
    with pytest.raises(ValueError, match=f"loss '{key}': unknown hyperparameter 'bogus'"):
        make(key, bogus=1)


@pytest.mark.parametrize("key", list_losses())
def test_catalogue_entry_is_complete(key):
    info = loss_info(key)
    assert info.paper and info.equations and info.logits_meaning
    for h in info.hparams:
        assert h.allowed, f"{key}.{h.name} has no documented allowed range"


RAW_TARGET_LOGITS = {"softmax", "center", "lsoftmax", "wsoftmax", "sigma2r"}


@pytest.mark.parametrize("key", list_losses())
def test_eval_metrics_report_negative_target_logits_for_raw_logit_losses(key):
    loss = make(key).double()
    features, labels = batch(torch.float64)
    metrics = loss.eval_metrics(features, labels)
    assert all(k.startswith("loss/") and isinstance(v, float) for k, v in metrics.items())
    if key not in RAW_TARGET_LOGITS:  # cosine or −distance logits (see target_logit_metrics)
        assert "loss/frac_target_logit_negative" not in metrics
        return
    # Hand-made: weight rows along the first C axes (positive scale), so z_y has the sign of
    # x[y]; 3 of every 10 samples per class get a negative target coordinate.
    with torch.no_grad():
        loss.weight.copy_(2.5 * torch.eye(C, D, dtype=torch.float64))
    x = torch.zeros(C * PER_CLASS, D, dtype=torch.float64)
    sign = torch.tensor([-1.0] * 3 + [1.0] * (PER_CLASS - 3), dtype=torch.float64).repeat(C)
    x[torch.arange(len(labels)), labels] = sign * torch.linspace(0.1, 4.0, len(labels),
                                                                 dtype=torch.float64)
    assert loss.eval_metrics(x, labels) == {"loss/frac_target_logit_negative": 0.3}
    assert loss.eval_metrics(-x, labels) == {"loss/frac_target_logit_negative": 0.7}


@pytest.mark.parametrize("key", list_losses())
def test_train_start_hook_and_plan_warnings_are_pure_for_the_defaults(key):
    loss = make(key)
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    warnings = loss.plan_warnings(10_000, 3)  # a long plan: nothing defeats any default
    assert warnings == []
    loss.on_train_start(10_000, 3)
    features, labels = batch()
    assert torch.isfinite(loss(features, labels).total)
    for name, value in loss.state_dict().items():
        if name in before:
            assert torch.equal(value, before[name]), name
