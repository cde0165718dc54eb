"""Strict configuration: unknown keys and wrong types name the key."""

from __future__ import annotations

import re

import pytest

from featloss.config import Config, parse_overrides
from featloss.errors import ConfigError


def test_defaults_round_trip_through_dicts():
    config = Config()
    assert Config.from_dict(config.to_dict()) == config


def test_loss_section_collects_hyperparameters():
    config = Config.from_dict({"loss": {"name": "pod", "lam": 0.5}})
    assert config.loss.name == "pod" and config.loss.hparams == {"lam": 0.5}
    assert config.flat()["loss"] == "pod" and config.flat()["loss.lam"] == 0.5
    assert Config.from_dict({"loss": "center"}).loss.name == "center"


@pytest.mark.parametrize("raw,message", [
    ({"train": {"lr_rate": 0.1}}, "unknown key 'train.lr_rate'"),
    ({"optimiser": {}}, "unknown key 'optimiser'"),
    ({"train": {"epochs": 2.5}}, "train.epochs must be an integer"),
    ({"train": {"epochs": True}}, "train.epochs must be an integer"),
    ({"train": {"lr": "fast"}}, "train.lr must be a number"),
    ({"data": {"augment": "yes"}}, "data.augment must be true or false"),
    ({"data": {"sampler": "stratified"}},
     "data.sampler='stratified' is not one of 'random', 'balanced'"),
    ({"train": {"lr_milestones": 0.5}}, "train.lr_milestones must be a list"),
    ({"model": "small_cnn"}, "'model' must be a mapping"),
])
def test_bad_keys_and_types_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Config.from_dict(raw, where="study.yaml")


def test_ints_are_accepted_for_floats():
    assert Config.from_dict({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize("overrides,message", [
    ({"model.feature_dim": 0}, "model.feature_dim=0 must lie in [1, 65536]"),
    ({"model.feature_dim": 10**12}, "model.feature_dim=1000000000000 must lie in [1, 65536]"),
    ({"train.weight_decay": float("inf")}, "train.weight_decay=inf must be a finite number"),
    ({"train.lr": float("nan")}, "train.lr=nan must be a finite number"),
    ({"train.device": "cuda:abc"}, "must be auto, cpu, cuda or cuda:N"),
    ({"seed": -1}, "seed=-1 must lie in [0, 4294967295]"),
    ({"data.val_fraction": 1.0}, "data.val_fraction=1.0 must lie in"),
    ({"data.val_fraction": 0}, "data.val_fraction=0 must lie in"),
    ({"model.dropout": 1.0}, "model.dropout=1.0 must lie in"),
    ({"train.lr": -1}, "train.lr=-1 must lie in"),
])
def test_value_ranges(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config().with_overrides(overrides)


def test_set_overrides_parse_yaml_values():
    parsed = parse_overrides(["train.lr=1e-3", "data.augment=true", "loss.alpha=1.5",
                              "train.lr_milestones=[0.3, 0.6]", "data.classes=null"])
    assert parsed == {"train.lr": 1e-3, "data.augment": True, "loss.alpha": 1.5,
                      "train.lr_milestones": [0.3, 0.6], "data.classes": None}
    config = Config().with_overrides(parsed)
    assert config.train.lr == 1e-3 and config.loss.hparams == {"alpha": 1.5}
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_overrides(["train.lr"])
