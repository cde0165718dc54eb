"""Strict, typed configuration of one training run.

A run is `Config(data, model, loss, train, seed)`. Parsing is strict: an unknown key or a value of
the wrong type raises `ConfigError` naming the key path (``train.lr``). Value ranges that need no
registry lookups are checked in `Config.check()`; registry-dependent checks (dataset, backbone,
loss hyperparameters) live in `featloss.train.validate_config`.

The `loss` section is ``{name: <registry key>, <hparam>: value, ...}``: every key other than
``name`` is a keyword argument of the loss constructor.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Union

from featloss.errors import ConfigError
from featloss.yamlio import load_yaml, read_yaml_file


def _choices(*values: str) -> dict:
    return {"choices": values}


@dataclass
class DataConfig:
    dataset: str = "mnist5k"
    root: str | None = None  # real datasets; default $FEATLOSS_DATA or ~/.cache/featloss/data
    classes: int | None = None  # keep the first k classes (W-Softmax Table 5)
    val_fraction: float = 0.1  # validation split carved from train, stratified, seeded
    split_seed: int = 0  # fixed across trial seeds so every trial sees the same val split
    augment: bool = False  # pad-4 random crop + horizontal flip, on the device
    sampler: str = field(default="random", metadata=_choices("random", "balanced"))
    image_size: int | None = None  # imagefolder only: resize to this size
    max_train_samples: int | None = None  # cap (stratified) for smoke runs and CPU studies
    max_eval_samples: int | None = None  # cap on val and test sets


@dataclass
class ModelConfig:
    backbone: str = "small_cnn"
    feature_dim: int = 64
    dropout: float = 0.0


@dataclass
class LossConfig:
    name: str = "softmax"
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = field(default="sgd", metadata=_choices("sgd", "adam"))
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = field(default="cosine", metadata=_choices("cosine", "step", "constant"))
    lr_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: epoch fractions
    lr_gamma: float = 0.1  # step: factor at each milestone
    loss_lr: float | None = None  # lr of the loss's own tensors (weight, centers, w_k); None = lr
    loss_weight_decay: float | None = None  # None = weight_decay
    precision: str = field(default="fp32", metadata=_choices("fp32", "bf16"))
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    eval_batch_size: int = 1024
    eval_test: bool = True  # search trials turn this off: selection never sees the test set
    divergence_check_every: int = 20  # steps between (syncing) non-finite loss checks


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0

    # -- conversion ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict | None, where: str = "config") -> Config:
        raw = dict(raw or {})
        if "loss" in raw:
            raw["loss"] = _loss_section(raw["loss"], where)
        return _build(cls, raw, prefix="", where=where)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["loss"] = {"name": self.loss.name, **self.loss.hparams}
        return out

    def flat(self) -> dict[str, Any]:
        """Flattened ``section.key`` view (``loss`` for the loss name, ``loss.<hparam>``)."""
        flat: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            if not isinstance(values, dict):
                flat[section] = values
                continue
            for key, value in values.items():
                flat["loss" if (section, key) == ("loss", "name") else f"{section}.{key}"] = value
        return flat

    def with_overrides(self, overrides: dict[str, Any], where: str = "--set") -> Config:
        raw = self.to_dict()
        for path, value in overrides.items():
            set_path(raw, path, value, where)
        return Config.from_dict(raw, where=where)

    # -- value checks that need no registry -----------------------------------------------------
    def check(self) -> Config:
        d, m, t = self.data, self.model, self.train
        _require(0.0 < d.val_fraction < 1.0, "data.val_fraction", d.val_fraction,
                 "must lie in (0, 1), e.g. 0.1")
        _require(d.classes is None or d.classes >= 2, "data.classes", d.classes, "must be >= 2")
        _require(d.image_size is None or d.image_size >= 4, "data.image_size", d.image_size,
                 "must be >= 4")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(d, key)
            _require(value is None or value >= 1, f"data.{key}", value, "must be >= 1")
        _require(m.feature_dim >= 1, "model.feature_dim", m.feature_dim, "must be >= 1")
        _require(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "must lie in [0, 1)")
        _require(t.epochs >= 1, "train.epochs", t.epochs, "must be >= 1")
        _require(t.batch_size >= 2, "train.batch_size", t.batch_size, "must be >= 2")
        _require(t.eval_batch_size >= 1, "train.eval_batch_size", t.eval_batch_size, "must be >= 1")
        _require(t.lr > 0, "train.lr", t.lr, "must be > 0")
        _require(t.loss_lr is None or t.loss_lr >= 0, "train.loss_lr", t.loss_lr, "must be >= 0")
        _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "must be >= 0")
        _require(0 <= t.momentum < 1, "train.momentum", t.momentum, "must lie in [0, 1)")
        _require(0 < t.lr_gamma <= 1, "train.lr_gamma", t.lr_gamma, "must lie in (0, 1]")
        _require(all(0 < f < 1 for f in t.lr_milestones), "train.lr_milestones", t.lr_milestones,
                 "must be fractions of the epochs in (0, 1)")
        _require(t.divergence_check_every >= 1, "train.divergence_check_every",
                 t.divergence_check_every, "must be >= 1")
        _require(t.device == "auto" or t.device == "cpu" or t.device.startswith("cuda"),
                 "train.device", t.device, "must be auto, cpu, cuda or cuda:N")
        return self


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} {rule}")


def _loss_section(value: Any, where: str) -> dict:
    if isinstance(value, str):
        return {"name": value, "hparams": {}}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'loss' must be a loss name or a mapping with 'name', "
                          f"got {type(value).__name__}")
    value = dict(value)
    if "hparams" in value:  # already in dataclass form
        return value
    name = value.pop("name", LossConfig.name)
    return {"name": name, "hparams": value}


def _build(cls: type, raw: Any, prefix: str, where: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'config'}' must be a mapping, "
                          f"got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key '{prefix}{unknown[0]}' "
                          f"(known keys: {', '.join(prefix + k for k in known)})")
    kwargs = {}
    for name, value in raw.items():
        hint, key = hints[name], prefix + name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key + ".", where)
        else:
            kwargs[name] = _coerce(value, hint, key, where)
            choices = known[name].metadata.get("choices")
            if choices and kwargs[name] not in choices:
                raise ConfigError(f"{where}: {key}={value!r} is not one of {', '.join(choices)}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, where: str) -> Any:
    """Check `value` against a simple type hint; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise _type_error(value, "a list", key, where)
        (item,) = typing.get_args(hint)
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _type_error(value, "a mapping", key, where)
        return copy.deepcopy(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise _type_error(value, "true or false", key, where)
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(value, "an integer", key, where)
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _type_error(value, "a number", key, where)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise _type_error(value, "a string", key, where)
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a bug, not user input


def _type_error(value: Any, expected: str, key: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: {key} must be {expected}, got {value!r}")


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as YAML (1e-3, true, [1, 2], null)."""
    try:
        return load_yaml(text)
    except Exception:  # not YAML: keep the text as a string
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.lr=0.01")
        out[key.strip()] = parse_value(value)
    return out


def set_path(raw: dict, path: str, value: Any, where: str) -> None:
    """Set ``a.b.c`` in a nested dict; ``loss`` alone sets the loss name."""
    if path == "loss":
        path = "loss.name"
    parts = path.split(".")
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: cannot set '{path}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_config_file(path: str) -> dict:
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return data
