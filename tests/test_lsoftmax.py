"""L-Softmax (Liu et al., Eq. 4, 6, 7, Sec. 5.1) against a naive per-sample reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import featloss.losses.lsoftmax  # noqa: F401  registers "lsoftmax"
from featloss.losses import build_loss

C, D, B = 5, 4, 12


def make(**hp):
    torch.manual_seed(0)
    return build_loss("lsoftmax", num_classes=C, feature_dim=D, **hp).double()


def data(seed=1, b=B):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, D, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (b,), generator=g)
    return x, y


def ref_lambda(base, gamma, power, lmin, it):
    return max(base * (1.0 + gamma * it) ** (-power), lmin)


def ref_loss_values(x, w, y, m, lam):
    """Plain Python math: θ by math.acos, k = floor(mθ/π), ψ with math.cos(mθ) directly."""
    total = 0.0
    for i in range(x.shape[0]):
        xi = [float(v) for v in x[i]]
        f = [sum(a * b for a, b in zip(xi, [float(v) for v in w[j]])) for j in range(C)]
        yi = int(y[i])
        nx = math.sqrt(sum(v * v for v in xi))
        nw = math.sqrt(sum(float(v) ** 2 for v in w[yi]))
        theta = math.acos(max(-1.0, min(1.0, f[yi] / (nx * nw))))
        k = min(int(math.floor(m * theta / math.pi)), m - 1)
        psi = (-1) ** k * math.cos(m * theta) - 2 * k
        f[yi] = (lam * nw * nx * math.cos(theta) + nw * nx * psi) / (1 + lam)
        mx = max(f)
        total += -(f[yi] - mx - math.log(sum(math.exp(v - mx) for v in f)))
    return total / x.shape[0]


def ref_loss_torch(x, w, y, m, lam):
    """Per-sample float64 torch version (acos-based, for autograd gradients)."""
    losses = []
    for i in range(x.shape[0]):
        yi = int(y[i])
        f = torch.stack([w[j] @ x[i] for j in range(C)])
        nx, nw = x[i].norm(), w[yi].norm()
        theta = torch.acos(f[yi] / (nx * nw))
        k = min(int(math.floor(m * float(theta.detach()) / math.pi)), m - 1)
        psi = (-1) ** k * torch.cos(m * theta) - 2 * k
        fy = (lam * nw * nx * torch.cos(theta) + nw * nx * psi) / (1 + lam)
        f = torch.cat([f[:yi], fy.reshape(1), f[yi + 1:]])
        losses.append(-torch.log_softmax(f, 0)[yi])
    return torch.stack(losses).mean()


def away_from_boundaries(x, w, y, m, gap=0.05):
    cos = F.cosine_similarity(x, w[y], dim=1)
    theta = torch.acos(cos) * m / math.pi  # boundaries at integers
    return bool(((theta - theta.round()).abs() > gap).all())


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("lambda_min", [0.0, 0.7])
def test_matches_reference_value_and_gradients(m, lambda_min):
    loss = make(margin=m, lambda_base=0.0, lambda_min=lambda_min)
    for seed in range(1, 30):
        x, y = data(seed)
        if away_from_boundaries(x, loss.weight.detach(), y, m):
            break
    else:
        pytest.fail("no sample batch away from the kπ/m boundaries")
    x.requires_grad_(True)
    out = loss(x, y)
    w = loss.weight.detach()
    expected = ref_loss_values(x.detach(), w, y, m, lambda_min)
    torch.testing.assert_close(out.total.item(), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.terms["ce"], out.total.detach())
    gx, gw = torch.autograd.grad(out.total, (x, loss.weight))
    xr = x.detach().clone().requires_grad_(True)
    wr = w.clone().requires_grad_(True)
    rx, rw = torch.autograd.grad(ref_loss_torch(xr, wr, y, m, lambda_min), (xr, wr))
    torch.testing.assert_close(gx, rx, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(gw, rw, rtol=1e-8, atol=1e-10)


def test_margin_changes_loss():
    x, y = data()
    a = make(margin=1, lambda_base=0.0)(x, y).total
    b = make(margin=3, lambda_base=0.0)(x, y).total
    assert b > a + 1e-3  # the margin makes the target harder


@pytest.mark.parametrize("lambda_min", [0.0, 3.0])
def test_m1_equals_softmax(lambda_min):
    loss = make(margin=1, lambda_base=0.0, lambda_min=lambda_min)
    x, y = data()
    soft = F.cross_entropy(x @ loss.weight.t(), y)
    torch.testing.assert_close(loss(x, y).total, soft, rtol=1e-12, atol=1e-12)
    assert torch.equal(loss.logits(x), x @ loss.weight.t())


def test_large_lambda_tends_to_softmax():
    x, y = data()
    loss = make(margin=4, lambda_base=1e9)
    soft = F.cross_entropy(x @ loss.weight.t(), y)
    torch.testing.assert_close(loss(x, y).total, soft, rtol=1e-6, atol=1e-6)
    loss0 = make(margin=4, lambda_base=0.0)
    assert (loss0(x, y).total - soft).abs() > 1e-2


@pytest.mark.parametrize("m", [2, 3, 4])
def test_gradcheck_target_logit(m):
    """Analytic gradients of the margin logit (through the λ = 0 CE) match finite differences."""
    loss = make(margin=m, lambda_base=0.0)
    for seed in range(1, 50):
        x, y = data(seed, b=3)
        if away_from_boundaries(x, loss.weight.detach(), y, m, gap=0.1):
            break
    else:
        pytest.fail("no batch away from the boundaries")

    def fn(xv, wv):  # the loss as a function of (features, weight)
        return torch.func.functional_call(loss, {"weight": wv}, (xv, y)).total

    xv = x.clone().requires_grad_(True)
    wv = loss.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(fn, (xv, wv), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_psi_continuous_and_decreasing(m):
    """ψ(θ) through the module: target logit / (‖x‖‖w‖) with λ = 0, swept over θ ∈ [0, π]."""
    loss = build_loss("lsoftmax", num_classes=2, feature_dim=2, margin=m, lambda_base=0.0)
    loss = loss.double()
    with torch.no_grad():
        loss.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    theta = torch.linspace(0, math.pi, 1001, dtype=torch.float64)
    for k in range(1, m):  # include the exact boundaries
        theta = torch.cat([theta, torch.tensor([k * math.pi / m], dtype=torch.float64)])
    theta = theta.sort().values
    x = torch.stack([torch.cos(theta), torch.sin(theta)], 1)
    y = torch.zeros(len(theta), dtype=torch.long)
    # With w_1 = 0 the other logit is 0: CE_i = softplus(−ψ_i), so ψ_i = −log(exp(CE_i) − 1).
    psi = []
    with torch.no_grad():
        for i in range(len(theta)):
            ce = loss(x[i:i + 1], y[i:i + 1]).total
            psi.append(-torch.log(torch.expm1(ce)))
    psi = torch.stack(psi)
    expected = [(-1) ** min(int(m * t / math.pi), m - 1) * math.cos(m * t)
                - 2 * min(int(m * t / math.pi), m - 1) for t in theta.tolist()]
    torch.testing.assert_close(psi, torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-8, atol=1e-8)
    diffs = psi[1:] - psi[:-1]
    assert bool((diffs <= 1e-12).all())  # monotone decreasing
    assert float(diffs.abs().max()) < 0.05  # no jumps at kπ/m
    torch.testing.assert_close(float(psi[-1]), -(2 * m - 1.0), rtol=0, atol=1e-8)


def test_lambda_schedule_and_state_dict():
    hp = dict(lambda_base=1000.0, lambda_gamma=0.1, lambda_power=2.0, lambda_min=5.0)
    loss = make(**hp)
    assert loss.epoch_metrics()["loss/lambda"] == pytest.approx(1000.0)
    x, y = data()
    before = loss(x, y).total
    loss(x, y)
    assert int(loss.iteration) == 0  # forward is pure
    for n in range(1, 301):
        loss.on_step()
        if n in (1, 10, 100):
            lam = ref_lambda(1000.0, 0.1, 2.0, 5.0, n)
            assert loss.epoch_metrics()["loss/lambda"] == pytest.approx(lam, rel=1e-12)
    assert loss.epoch_metrics()["loss/lambda"] == pytest.approx(5.0)  # floor reached
    after = loss(x, y).total
    assert after > before + 1e-6  # smaller λ, larger margin effect
    state = loss.state_dict()
    assert int(state["iteration"]) == 300
    fresh = make(**hp)
    fresh.load_state_dict(state)
    assert int(fresh.iteration) == 300
    torch.testing.assert_close(fresh(x, y).total, after)


def test_lambda_constant_when_base_zero():
    loss = make(lambda_base=0.0, lambda_min=2.5)
    for _ in range(5):
        loss.on_step()
    assert loss.epoch_metrics() == {"loss/lambda": 2.5}


def test_lambda_in_forward_matches_schedule():
    hp = dict(lambda_base=10.0, lambda_gamma=0.5, lambda_power=1.0, lambda_min=0.0)
    loss = make(margin=2, **hp)
    for _ in range(3):
        loss.on_step()
    lam = ref_lambda(10.0, 0.5, 1.0, 0.0, 3)  # = 4
    for seed in range(1, 30):
        x, y = data(seed)
        if away_from_boundaries(x, loss.weight.detach(), y, 2):
            break
    expected = ref_loss_values(x, loss.weight.detach(), y, 2, lam)
    torch.testing.assert_close(loss(x, y).total.item(), expected, rtol=1e-10, atol=1e-10)


def test_float32_and_zero_feature():
    loss = build_loss("lsoftmax", num_classes=C, feature_dim=D, margin=3)
    x, y = data()
    x = x.float()
    x[0] = 0.0
    x.requires_grad_(True)
    out = loss(x, y)
    assert out.total.dtype == torch.float32 and torch.isfinite(out.total)
    out.total.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss.weight.grad).all()


@pytest.mark.parametrize("bad", [
    {"margin": 0}, {"margin": 2.5}, {"margin": 2.0}, {"margin": True}, {"margin": -1},
    {"lambda_base": -1.0}, {"lambda_gamma": -1e-5}, {"lambda_power": -1.0},
    {"lambda_min": -0.1}, {"lambda_base": float("nan")}, {"lambda_min": float("inf")},
])
def test_invalid_hparams(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"lsoftmax.*{name}"):
        build_loss("lsoftmax", num_classes=C, feature_dim=D, **bad)


# -- the λ schedules: in steps (Caffe) and in training progress (lambda_decay_epochs) -------------

def lambda_after(loss, steps):
    for _ in range(steps):
        loss.on_step()
    return loss.epoch_metrics()["loss/lambda"]


@pytest.mark.parametrize("steps, expected", [
    (0, 1000.0),
    (110, 908.3569159457107),   # 1000 · (1 + 2.5e-5 · 110)^−35: the last of 111 steps
    (111, 907.564638980916),
    (1000, 421.3710663836758),
    (8728, 0.9996527595754028),  # the first step with λ < 1
])
def test_caffe_step_schedule_at_chosen_steps(steps, expected):
    loss = make()  # the defaults: base 1000, γ 2.5e-5, power 35, min 0
    loss.on_train_start(37, 3)  # the plan does not change the step schedule
    assert lambda_after(loss, steps) == pytest.approx(expected, rel=1e-12)


def test_progress_schedule_hand_computed():
    # base 100, power 2, min 0.24: λ_E = 0.24 + 0.01 = 0.25 after E = 2 epochs of 10 steps, so
    # (1 + γ·20)² = 100 / 0.25 = 400: γ = 19/20 = 0.95, and λ(it) = 100 / (1 + 0.95·it)².
    loss = make(lambda_base=100.0, lambda_power=2.0, lambda_min=0.24, lambda_decay_epochs=2)
    loss.on_train_start(10, 5)
    assert loss.gamma_for(10) == pytest.approx(0.95, rel=1e-15)
    assert lambda_after(loss, 0) == 100.0
    assert lambda_after(loss, 10) == pytest.approx(100 / 10.5**2, rel=1e-13)  # 0.907029...
    assert lambda_after(loss, 10) == pytest.approx(0.25, rel=1e-13)  # it_E = 20: λ_E
    assert lambda_after(loss, 1) == 0.24  # 100 / 20.95² = 0.228 < lambda_min: the floor
    assert int(loss.iteration) == 21


def test_progress_schedule_with_lambda_min_zero_reaches_0_01():
    # power 1: (1 + γ·it_E) = 100 / 0.01, γ = 9999 / it_E; it_E = 2 epochs x 10 steps = 20.
    loss = make(lambda_base=100.0, lambda_power=1.0, lambda_min=0.0, lambda_decay_epochs=2)
    loss.on_train_start(10, 3)
    assert lambda_after(loss, 10) == pytest.approx(100 / 5000.5, rel=1e-13)  # 0.019998
    assert lambda_after(loss, 10) == pytest.approx(0.01, rel=1e-13)  # "reaches" 0: within 0.01
    assert 0.0 < lambda_after(loss, 10) < 0.01  # and keeps decaying toward 0


def test_progress_schedule_follows_epochs_not_steps():
    # The Caffe defaults in progress form: λ_E = 0.01 after 1.5 epochs, whatever the batches.
    lambdas = []
    for steps_per_epoch in (40, 112, 1000):  # 0.75 epochs is a whole number of steps
        loss = make(lambda_decay_epochs=1.5)
        loss.on_train_start(steps_per_epoch, 3)
        half = lambda_after(loss, steps_per_epoch * 3 // 4)  # 0.75 epochs: half of E
        lambdas.append((half, lambda_after(loss, steps_per_epoch * 3 // 4)))  # then at E
    for half, end in lambdas:
        # (1 + γ·it_E/2) = (1 + (1000/0.01)^(1/35)) / 2 at half of E: hand value
        ratio = (1 + (1000 / 0.01) ** (1 / 35)) / 2
        assert end == pytest.approx(0.01, rel=1e-9)
        assert half == pytest.approx(1000 * ratio ** -35, rel=1e-9)  # ≈ 1.97


def test_progress_schedule_needs_the_plan_and_is_checkpointed():
    loss = make(lambda_decay_epochs=2)
    with pytest.raises(RuntimeError, match="on_train_start"):
        loss.epoch_metrics()
    loss.on_train_start(25, 4)
    lam = lambda_after(loss, 30)
    state = loss.state_dict()
    assert int(state["steps_per_epoch"]) == 25 and int(state["iteration"]) == 30
    fresh = make(lambda_decay_epochs=2)
    fresh.load_state_dict(state)  # no on_train_start: the buffers carry the schedule
    assert fresh.epoch_metrics()["loss/lambda"] == lam
    x, y = data()
    assert torch.equal(fresh(x, y).total, loss(x, y).total)
    assert "steps_per_epoch" not in make().state_dict()  # step-schedule checkpoints unchanged


def test_plan_warnings_when_lambda_stays_above_one():
    (line,) = make().plan_warnings(37, 3)  # mnist5k sweep: 37 steps x 3 epochs = 111 steps
    assert "lambda is still 908.4 at the last of the 111 planned steps" in line
    assert "loss.lambda_decay_epochs" in line and "\n" not in line
    assert make().plan_warnings(3000, 3) == []  # 9,000 steps: λ(8,999) < 1
    assert make(lambda_decay_epochs=2).plan_warnings(37, 3) == []
    assert make(lambda_decay_epochs=2).plan_warnings(37, 2) == []  # λ_E = 0.01 at the end
    assert len(make(lambda_decay_epochs=30).plan_warnings(37, 3)) == 1  # decays too slowly
    assert make(lambda_base=0.0, lambda_min=0.5).plan_warnings(1, 1) == []
    assert len(make(lambda_base=0.0, lambda_min=2.0).plan_warnings(1, 1)) == 1


@pytest.mark.parametrize("bad, name", [
    ({"lambda_decay_epochs": 0}, "lambda_decay_epochs"),
    ({"lambda_decay_epochs": -1.0}, "lambda_decay_epochs"),
    ({"lambda_decay_epochs": "2"}, "lambda_decay_epochs"),
    ({"lambda_decay_epochs": float("inf")}, "lambda_decay_epochs"),
    ({"lambda_decay_epochs": 2, "lambda_power": 0.0}, "lambda_power"),
])
def test_invalid_progress_schedule(bad, name):
    with pytest.raises(ValueError, match=f"lsoftmax.*{name}"):
        build_loss("lsoftmax", num_classes=C, feature_dim=D, **bad)
