"""The trainer: per-epoch reports, exact resume, divergence, optimizer groups, schedules."""

from __future__ import annotations

import math

import pytest
import torch

from featloss.config import Config
from featloss.errors import ConfigError
from featloss.train import (
    batches_per_epoch,
    fit,
    load_state,
    loss_warnings,
    lr_factor,
    planned_train_size,
    save_state,
    validate_config,
)

TIMING = {"epoch_seconds", "images_per_second"}


def digits_config(**overrides) -> Config:
    base = {"data": {"dataset": "digits"}, "model": {"backbone": "small_cnn", "feature_dim": 16},
            "train": {"epochs": 2, "batch_size": 64, "lr": 0.05}}
    return Config.from_dict(base).with_overrides(overrides)


def test_each_epoch_reports_the_design_metrics_and_the_last_adds_test():
    reports = []
    result = fit(digits_config(), lambda metrics, state: reports.append(metrics))
    assert result.status == "completed" and result.epochs_completed == 2
    assert [r["epoch"] for r in reports] == [1, 2]
    for r in reports:
        for key in ("train/loss", "train/ce", "train/accuracy", "val/accuracy", "val/loss",
                    "epoch_seconds", "images_per_second", "lr", "feat/intra_class_std",
                    "feat/mean_angle_deg", "feat/min_interclass_angle_deg",
                    "loss/frac_target_logit_negative"):
            assert key in r and math.isfinite(r[key]), key
    assert "test/accuracy" not in reports[0] and 0 <= reports[1]["test/accuracy"] <= 1
    assert reports[-1]["status"] == "completed" and reports[0]["status"] == "running"


def test_search_trials_never_see_the_test_set():
    reports = []
    fit(digits_config(**{"train.eval_test": False}), lambda m, s: reports.append(m))
    assert not any(k.startswith("test/") for r in reports for k in r)


def test_resume_from_epoch_1_gives_the_uninterrupted_epoch_3_metrics(tmp_path):
    # dropout and augmentation make every RNG stream matter
    config = digits_config(**{"train.epochs": 3, "model.dropout": 0.2, "data.augment": True})
    full = []
    fit(config, lambda m, s: full.append(m))


    def stop_after_epoch_1(metrics, state):
        if metrics["epoch"] == 1:
            save_state(state(), str(tmp_path / "epoch1.pt"))
            raise KeyboardInterrupt  # the process dies here

    with pytest.raises(KeyboardInterrupt):
        fit(config, stop_after_epoch_1)
    resumed = []
    fit(config, lambda m, s: resumed.append(m), resume=load_state(str(tmp_path / "epoch1.pt")))
    assert [r["epoch"] for r in resumed] == [2, 3]
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING}  # noqa: E731
    assert strip(resumed[-1]) == strip(full[-1])
    assert strip(resumed[0]) == strip(full[1])


def test_resuming_a_finished_run_recomputes_nothing():
    states = []
    fit(digits_config(**{"train.epochs": 1}), lambda m, s: states.append((m, s())))
    final_metrics, final_state = states[-1]
    again = []
    result = fit(digits_config(**{"train.epochs": 1}), lambda m, s: again.append(m),
                 resume=final_state)
    assert result.status == "completed" and again == [final_metrics]


def test_a_diverging_trial_ends_with_a_status_instead_of_an_exception():
    reports = []
    result = fit(digits_config(**{"train.lr": 1e5, "train.divergence_check_every": 1}),
                 lambda m, s: reports.append(m))
    assert result.status == "diverged"
    assert reports[-1]["status"] == "diverged" and math.isnan(reports[-1]["train/loss"])


def test_loss_tensors_get_their_own_learning_rate_group():
    from featloss.train import _Run

    run = _Run(digits_config(**{"train.loss_lr": 0.5, "train.loss_weight_decay": 0.0}))
    model_group, loss_group = run.optimizer.param_groups
    assert model_group["lr"] == 0.05 and loss_group["lr"] == 0.5
    assert loss_group["weight_decay"] == 0.0
    assert loss_group["params"][0] is run.loss.weight


def test_learning_rate_schedules():
    cosine = digits_config(**{"train.epochs": 10, "train.schedule": "cosine"})
    assert lr_factor(cosine, 0) == 1.0 and lr_factor(cosine, 5) == pytest.approx(0.5)
    step = digits_config(**{"train.epochs": 10, "train.schedule": "step",
                            "train.lr_milestones": [0.3, 0.6], "train.lr_gamma": 0.1})
    assert [lr_factor(step, e) for e in (0, 2, 3, 5, 6, 9)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    constant = digits_config(**{"train.schedule": "constant"})
    assert lr_factor(constant, 1) == 1.0


def test_adam_and_the_seed_make_runs_repeatable():
    config = digits_config(**{"train.optimizer": "adam", "train.lr": 1e-3, "train.epochs": 1})
    a, b = fit(config).metrics, fit(config).metrics
    assert {k: v for k, v in a.items() if k not in TIMING} == {
        k: v for k, v in b.items() if k not in TIMING}


@pytest.mark.parametrize("overrides,message", [
    ({"data.dataset": "nope"}, "unknown dataset 'nope'"),
    ({"model.backbone": "nope"}, "unknown backbone 'nope'"),
    ({"loss.name": "nope"}, "unknown loss 'nope'"),
    ({"loss.bogus": 1}, "loss 'softmax': unknown hyperparameter 'bogus'"),
])
def test_validate_config_rejects_unknown_names(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(digits_config(**overrides))


@pytest.mark.parametrize("sampler, batch_size", [("random", 64), ("random", 5000),
                                                 ("balanced", 100), ("balanced", 64)])
def test_batches_per_epoch_is_the_number_of_planned_batches(sampler, batch_size):
    from featloss.data import epoch_order

    labels = torch.arange(10).repeat_interleave(37)[:-5]  # 365 samples, uneven classes
    order = epoch_order(labels, batch_size, sampler, 10, torch.Generator().manual_seed(0))
    assert batches_per_epoch(len(labels), batch_size, sampler, 10) == order.shape[0]


def test_loss_warnings_flag_the_caffe_lambda_on_a_short_run():
    short = Config.from_dict({"data": {"dataset": "mnist5k", "max_train_samples": 2400},
                              "loss": {"name": "lsoftmax"}, "train": {"epochs": 3}})
    assert planned_train_size(short.data) == 2400
    (line,) = loss_warnings(short)  # 37 steps x 3 epochs, as the mnist5k sweep
    assert "lambda is still 908.4 at the last of the 111 planned steps" in line
    assert loss_warnings(short.with_overrides({"loss.lambda_decay_epochs": 2})) == []
    assert loss_warnings(short.with_overrides({"loss.name": "softmax"})) == []
    staged = short.with_overrides({"data.dataset": "cifar10"})
    assert planned_train_size(staged.data) is None and loss_warnings(staged) == []


def test_progress_lambda_is_exact_in_training_and_after_a_resume(tmp_path):
    config = digits_config(**{"loss.name": "lsoftmax", "loss.lambda_decay_epochs": 2,
                              "loss.lambda_base": 100.0, "loss.lambda_power": 1.0,
                              "train.epochs": 3})
    full = []
    fit(config, lambda m, s: full.append(m))
    steps = batches_per_epoch(full[0]["data/train_size"], 64, "random", 10)
    gamma = (100 / 0.01 - 1) / (2 * steps)  # hand form of lambda_decay_epochs, power 1
    for r in full:  # λ after `epoch` epochs of `steps` optimizer steps
        assert r["loss/lambda"] == pytest.approx(100 / (1 + gamma * steps * r["epoch"]),
                                                 rel=1e-12)
    assert full[1]["loss/lambda"] == pytest.approx(0.01, rel=1e-12)

    def stop_after_epoch_1(metrics, state):
        if metrics["epoch"] == 1:
            save_state(state(), str(tmp_path / "epoch1.pt"))
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(config, stop_after_epoch_1)
    state = load_state(str(tmp_path / "epoch1.pt"))
    assert int(state["loss"]["steps_per_epoch"]) == steps
    resumed = []
    fit(config, lambda m, s: resumed.append(m), resume=state)

    def strip(r):
        return {k: v for k, v in r.items() if k not in TIMING}

    assert [strip(r) for r in resumed] == [strip(r) for r in full[1:]]


@pytest.mark.slow
def test_small_cnn_learns_mnist5k_in_three_epochs():
    """The issue's acceptance run: small_cnn + softmax, 3 epochs, val accuracy >= 0.95."""
    config = Config.from_dict({"data": {"dataset": "mnist5k"},
                               "model": {"backbone": "small_cnn"}, "train": {"epochs": 3}})
    result = fit(config)
    assert result.metrics["val/accuracy"] >= 0.95


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bf16_on_gpu_keeps_the_loss_in_fp32():
    result = fit(digits_config(**{"train.precision": "bf16", "train.device": "cuda"}))
    assert result.status == "completed"
