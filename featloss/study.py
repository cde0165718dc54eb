"""Study files: one YAML mapping, parsed once into a typed `Study`.

A study names its losses, the sections (``data``, ``model``, ``train``) every trial starts from,
``per_loss`` overrides, and either a ``grid`` (every cell run for every seed) or a ``search``
(equal-budget Optuna search per loss, then the best config per loss re-run for every seed).
`featloss.plan.expand` turns a `Study` into the trial configs before anything starts.

Files compose: ``_base_: other.yaml`` (relative to the file) is deep-merged under the file, and
``--set key=value`` overrides (dotted keys, YAML values) are applied last. Every problem is one
`ConfigError` line naming the file and key path. This module imports neither Ray nor Optuna.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from featloss.config import (
    MAX_SEED,
    DataConfig,
    ModelConfig,
    Section,
    TrainConfig,
    parse_model,
    set_path,
)
from featloss.errors import ConfigError, quote
from featloss.spaces import Around, DistributionSpec
from featloss.yamlio import dump_yaml, read_yaml_file

BASE_KEY = "_base_"
MAX_NAME_CHARS = 200
# Keys a resume may change without changing what the trials compute.
RUNTIME_KEYS = ("description", "resources", "max_concurrent", "max_failures")


class SearchSettings(Section):
    trials_per_loss: int = Field(20, ge=1, le=100_000, description="Optuna trials per loss "
                                 "(every loss gets the same budget)")
    metric: str = Field("val/accuracy", description="metric the search selects on: a "
                        "validation (val/...) or training (train/...) metric, never test/...")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    sampler: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="Optuna sampler; grid evaluates every point of the space once")
    scheduler: Literal["asha", "none"] = Field("none", description="asha stops poor trials "
                                               "early (on the `epoch` metric)")
    common: list[str] = Field([], description="keys of search_spaces/_common.yaml searched "
                              "for every loss as well (e.g. train.lr)")
    space: dict[str, dict[str, DistributionSpec | None]] = Field(
        {}, description="inline per-loss overrides of the search space: loss -> key -> "
        "distribution; null removes a key of the loss's file")
    epochs: int | None = Field(None, ge=1, le=100_000, description="epochs of a search trial "
                               "(default: train.epochs)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="base seed of the samplers")

    @field_validator("metric")
    @classmethod
    def _selection_metric(cls, value: str) -> str:
        if not value.startswith(("val/", "train/")):
            raise ValueError("must be a validation metric (val/...) or a training one "
                             "(train/...), never a test metric")
        return value


class Resources(Section):
    cpu: float = Field(1.0, ge=0, le=4096, description="CPUs per trial (also its torch threads)")
    gpu: float = Field(0.0, ge=0, le=64, description="GPUs per trial; a fraction (0.25) packs "
                       "several trials on one GPU")

    @model_validator(mode="after")
    def _whole_gpus(self) -> Resources:
        if self.gpu > 1 and not float(self.gpu).is_integer():
            raise ValueError("resources.gpu above 1 must be a whole number of GPUs")
        return self


class PerLoss(Section):
    """Overrides deep-merged over the study's sections for one loss."""

    data: DataConfig | None = Field(None, description="data keys for this loss only")
    model: ModelConfig | None = Field(None, description="model keys for this loss only")
    train: TrainConfig | None = Field(None, description="train keys for this loss only")
    loss: dict[str, Any] = Field({}, description="the loss's hyperparameters")


class Study(Section):
    """A study file, parsed. `source` is the file it came from; `raw` the resolved mapping."""

    base: str | None = Field(None, alias=BASE_KEY, description="a study file this one starts "
                             "from (deep-merged under it; a path relative to this file)")
    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS, description="the study's name: "
                      "its MLflow experiment and results folder")
    description: str = Field("", description="what the study reproduces")
    data: DataConfig = Field(default_factory=DataConfig, description="the dataset every trial "
                             "uses and its options")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the backbone")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training loop")
    losses: list[str] = Field(min_length=1, description="loss keys (`featloss losses`)")
    per_loss: dict[str, PerLoss] = Field({}, description="per-loss overrides (loss -> sections)")
    grid: dict[str, list[Any] | Around] = Field(
        {}, description="config key -> values; every combination is run (a cell); "
        "model.feature_dim may be {around_k_minus_1: [factors]}")
    search: SearchSettings | None = Field(None, description="an equal-budget Optuna search per "
                                          "loss, then a final phase per seed")
    seeds: list[int] = Field([0], min_length=1, description="repeats of every cell (grid) or "
                             "of each loss's best config (search)")
    resources: Resources = Field(default_factory=Resources, description="what one trial asks "
                                 "Ray for")
    max_concurrent: int | None = Field(None, ge=1, description="trials running at once")
    max_failures: int = Field(3, ge=0, le=100, description="retries of a trial whose worker or "
                              "node was lost (featloss errors are never retried)")

    _source: str = PrivateAttr("<inline>")
    _raw: dict = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        return self._source

    @property
    def raw(self) -> dict:
        """The mapping the study was parsed from (after ``_base_`` and ``--set``)."""
        return self._raw

    @property
    def mode(self) -> str:
        return "search" if self.search else "grid"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must be one line of text (no newline or control characters)")
        return value

    @field_validator("losses")
    @classmethod
    def _losses(cls, value: list[str]) -> list[str]:
        from featloss.losses import list_losses

        known = list_losses()
        for i, loss in enumerate(value):
            if loss not in known:
                raise ValueError(f"losses[{i}]: unknown loss {quote(loss)} (known: "
                                 f"{', '.join(known)})")
        if len(set(value)) != len(value):
            raise ValueError("lists a loss twice")
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, value: list[int]) -> list[int]:
        bad = [s for s in value if not 0 <= s <= MAX_SEED]
        if bad:
            raise ValueError(f"seeds must lie in [0, {MAX_SEED}], got {quote(bad[0])}")
        if len(set(value)) != len(value):
            raise ValueError("lists a seed twice")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Study:
        for loss in self.per_loss:
            if loss not in self.losses:
                raise ValueError(f"per_loss.{loss}: '{loss}' is not in 'losses'")
        if self.search and self.grid:
            raise ValueError("use either 'grid' or 'search', not both")
        if self.search:
            for loss in self.search.space:
                if loss not in self.losses:
                    raise ValueError(f"search.space.{loss}: '{loss}' is not in 'losses' "
                                     f"(search.space maps a loss key to its space overrides, "
                                     f"e.g. search.space.pod.loss.lam)")
        for key, values in self.grid.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"grid.{key}: expected a non-empty list of values")
            if isinstance(values, Around) and key != "model.feature_dim":
                raise ValueError(f"grid.{key}: around_k_minus_1 applies to model.feature_dim "
                                 f"only")
            for value in values if isinstance(values, list) else []:
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"grid.{key}: {value} is not a finite number")
        return self


# -- loading ---------------------------------------------------------------------------------------

def load_study(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Study:
    """Read, compose (``_base_``, ``--set``) and parse a study file. Raises ConfigError."""
    raw = resolve_file(str(path), overrides)
    return parse_study(raw, source=str(path))


def resolve_file(path: str, overrides: dict[str, Any] | None = None) -> dict:
    """The study file's mapping with its ``_base_`` chain merged in and `overrides` applied."""
    raw = _read_mapping(path, seen=())
    for key, value in (overrides or {}).items():
        set_path(raw, key, value, f"--set {key}")
    return raw


def _read_mapping(path: str, seen: tuple[str, ...]) -> dict:
    raw = read_yaml_file(path, "study file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a study is a YAML mapping with name, data, model, train, "
                          f"losses, ...")
    base = raw.pop(BASE_KEY, None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: {BASE_KEY} must be a path to another study file")
    base_path = str((Path(path).resolve().parent / base).resolve())
    if base_path in seen or base_path == str(Path(path).resolve()):
        raise ConfigError(f"{path}: {BASE_KEY} {base} includes itself")
    return deep_merge(_read_mapping(base_path, seen + (str(Path(path).resolve()),)), raw)


def parse_study(raw: Any, source: str = "<inline>") -> Study:
    """Parse a study mapping (already composed). Raises ConfigError naming `source` and key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a study is a YAML mapping with name, data, model, train, "
                          f"losses, ...")
    study = parse_model(Study, raw, source)
    study._source = source
    study._raw = copy.deepcopy(raw)
    return study


def study_yaml(study: Study) -> str:
    return dump_yaml(study.raw)


def changed_keys(recorded: dict, current: dict, ignore: tuple[str, ...] = RUNTIME_KEYS
                 ) -> list[str]:
    """Dotted keys whose values differ between two study mappings, e.g. ``train.lr (0.05 →
    0.02)``; keys under `ignore` are left out."""
    before, after = _flatten(recorded), _flatten(current)
    out = []
    for key in sorted(set(before) | set(after)):
        if key.split(".")[0] in ignore:
            continue
        if before.get(key, "<unset>") != after.get(key, "<unset>"):
            out.append(f"{key} ({quote(before.get(key, '<unset>'), 40)} → "
                       f"{quote(after.get(key, '<unset>'), 40)})")
    return out


def _flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(raw, dict) and raw:
        out: dict[str, Any] = {}
        for key, value in raw.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: raw}


def deep_merge(base: dict, override: dict) -> dict:
    """`override` deep-merged over a copy of `base` (later mappings win, key by key)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
