"""Study files: one YAML mapping, parsed once into a typed `Study`.

A study names its losses, the sections (``data``, ``model``, ``train``) every trial starts from,
``per_loss`` overrides, and either a ``grid`` (every cell run for every seed) or a ``search``
(equal-budget Optuna search per loss, then the best config per loss re-run for every seed).
`featloss.plan.expand` turns a `Study` into the trial configs before anything starts.

Files compose: ``_base_: other.yaml`` (relative to the file) is deep-merged under the file, and
``--set key=value`` overrides (dotted keys, YAML values) are applied last; a key that itself
contains dots (``grid.model.feature_dim``, ``search.space.pod.loss.lam``) is matched as written
(`featloss.config.set_path`). Every problem is one `ConfigError` line naming the file and key
path. This module imports neither Ray nor Optuna.

Caps keep every value inside what the tools downstream accept: the description fits MLflow's
tag limits (`MAX_DESCRIPTION_CHARS`), resources ask Ray for something, and `featloss.plan`
refuses a study of more than `featloss.plan.MAX_TRIALS` trials before expanding it.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

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
MAX_NAME_CHARS = 200  # MLflow: experiment names <= 500, run names <= 250 (+ " (smoke)")
# MLflow 3.17 keeps a run tag's value to 8000 characters and refuses an experiment tag over
# 20000; the description is both the experiment's and (with the plan after it) the parent
# run's mlflow.note.content, so it stays well below the run-tag limit.
MAX_DESCRIPTION_CHARS = 5000
MAX_METRIC_NAME_CHARS = 250  # MLflow: metric and param keys
# Keys a resume may change without changing what the trials compute.
RUNTIME_KEYS = ("description", "resources", "max_concurrent", "max_failures")
# --set: under these prefixes a key not in the file yet takes the rest of the path as one key
# (grid keys and search-space keys are dotted config keys); "*" matches any key.
DOTTED_KEY_PARENTS = (("grid",), ("search", "space", "*"))
RAY_RESOURCE_STEP = 0.0001  # Ray's resolution of resource quantities


class SearchSettings(Section):
    trials_per_loss: int = Field(20, ge=1, le=100_000, description="Optuna trials per loss "
                                 "(every loss gets the same budget)")
    metric: str = Field("val/accuracy", max_length=MAX_METRIC_NAME_CHARS,
                        description="metric the search selects on: a validation (val/...) or "
                        "training (train/...) metric, never test/...",
                        json_schema_extra={"pattern": "^(val|train)/"})
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
    model_config = ConfigDict(json_schema_extra={
        # the rules of _whole_gpus, for editors: some CPU or GPU; above 1 GPU whole GPUs
        "not": {"required": ["cpu"], "properties": {"cpu": {"const": 0}, "gpu": {"const": 0}}},
        "if": {"required": ["gpu"], "properties": {"gpu": {"exclusiveMinimum": 1}}},
        "then": {"properties": {"gpu": {"multipleOf": 1}}}})

    cpu: float = Field(1.0, ge=0, le=4096, description="CPUs per trial (also its torch threads); "
                       "0 only with some GPU")
    gpu: float = Field(0.0, ge=0, le=64, description="GPUs per trial; a fraction (0.25) packs "
                       "several trials on one GPU")

    @model_validator(mode="after")
    def _whole_gpus(self) -> Resources:
        if self.gpu > 1 and not float(self.gpu).is_integer():
            raise ValueError("resources.gpu above 1 must be a whole number of GPUs")
        if self.cpu == 0 and self.gpu == 0:
            raise ValueError("resources: cpu 0 and gpu 0 ask Ray for nothing, so no trial could "
                             "be placed; give each trial some CPU or GPU (e.g. resources.cpu: 1)")
        for key in ("cpu", "gpu"):
            value = getattr(self, key)
            if 0 < value < RAY_RESOURCE_STEP:
                raise ValueError(f"resources.{key}={value:g} is below Ray's resolution of "
                                 f"{RAY_RESOURCE_STEP:g}; use 0 or at least {RAY_RESOURCE_STEP:g}")
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
                      "its MLflow experiment and results folder (one line)",
                      json_schema_extra={"pattern": "^(?=.*\\S)[^\\x00-\\x1f\\x7f]*$"})
    description: str = Field("", description=f"what the study reproduces (at most "
                             f"{MAX_DESCRIPTION_CHARS} characters: it becomes the MLflow "
                             f"experiment's and parent run's description)",
                             json_schema_extra={"maxLength": MAX_DESCRIPTION_CHARS})
    data: DataConfig = Field(default_factory=DataConfig, description="the dataset every trial "
                             "uses and its options")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the backbone")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training loop")
    losses: list[str] = Field(min_length=1, description="loss keys (`featloss losses`)",
                              json_schema_extra={"uniqueItems": True})
    per_loss: dict[str, PerLoss] | None = Field(
        {}, description="per-loss overrides (loss -> sections); entries of known losses not in "
        "'losses' are ignored (so a study narrowed to fewer losses keeps working); null: none")
    grid: dict[str, list[Any] | Around] = Field(
        {}, description="config key -> values; every combination is run (a cell); "
        "model.feature_dim may be {around_k_minus_1: [factors]}; each value once",
        json_schema_extra=lambda schema: _grid_lists_schema(schema))
    search: SearchSettings | None = Field(None, description="an equal-budget Optuna search per "
                                          "loss, then a final phase per seed")
    seeds: list[int] = Field([0], min_length=1, description="repeats of every cell (grid) or "
                             "of each loss's best config (search)",
                             json_schema_extra={"uniqueItems": True, "items": {
                                 "type": "integer", "minimum": 0, "maximum": MAX_SEED}})
    resources: Resources = Field(default_factory=Resources, description="what one trial asks "
                                 "Ray for")
    max_concurrent: int | None = Field(None, ge=1, description="trials running at once")
    max_failures: int = Field(3, ge=0, le=100, description="retries of a trial whose worker or "
                              "node was lost (featloss errors are never retried)")

    _source: str = PrivateAttr("<inline>")
    _raw: dict = PrivateAttr(default_factory=dict)
    _ignored: list[str] = PrivateAttr(default_factory=list)

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

    @property
    def ignored(self) -> list[str]:
        """``per_loss.<loss>`` and ``search.space.<loss>`` entries left out because their loss
        is not in ``losses`` (a study narrowed to fewer losses)."""
        return list(self._ignored)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must be one line of text (no newline or control characters)")
        return value

    @field_validator("description")
    @classmethod
    def _description(cls, value: str) -> str:
        if len(value) > MAX_DESCRIPTION_CHARS:
            raise ValueError(f"description has {len(value)} characters, more than "
                             f"{MAX_DESCRIPTION_CHARS} (it becomes the MLflow experiment's and "
                             f"parent run's description, which MLflow caps); shorten it or put "
                             f"the long text in a file beside the study")
        return value

    @field_validator("per_loss")
    @classmethod
    def _per_loss(cls, value: dict[str, PerLoss] | None) -> dict[str, PerLoss]:
        return {} if value is None else value

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
        from featloss.losses import list_losses

        known = list_losses()
        ignored = []
        for section, entries in (("per_loss", self.per_loss),
                                 ("search.space", self.search.space if self.search else {})):
            for loss in list(entries):
                if loss not in known:
                    raise ValueError(f"{section}.{loss}: unknown loss {quote(loss)} (known: "
                                     f"{', '.join(known)})")
                if loss not in self.losses:  # a study narrowed to fewer losses
                    ignored.append(f"{section}.{loss}")
                    del entries[loss]
        self._ignored = ignored
        if self.search and self.grid:
            raise ValueError("use either 'grid' or 'search', not both")
        for key, values in self.grid.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"grid.{key}: expected a non-empty list of values")
            if isinstance(values, Around) and key != "model.feature_dim":
                raise ValueError(f"grid.{key}: around_k_minus_1 applies to model.feature_dim "
                                 f"only")
            for value in values if isinstance(values, list) else []:
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"grid.{key}: {value} is not a finite number")
            items = values if isinstance(values, list) else values.around_k_minus_1
            seen: set = set()
            for value in items:
                norm = comparable_value(value)
                if norm in seen:
                    what = "factor" if isinstance(values, Around) else "value"
                    shown = f"{value:g}" if isinstance(value, float) else quote(value, 60)
                    raise ValueError(f"grid.{key} lists the {what} {shown} twice; each {what} "
                                     f"is one cell, so give it once")
                seen.add(norm)
        return self


def comparable_value(value: Any) -> Any:
    """A hashable form of a YAML value under which equal values (8 and 8.0) compare equal, as
    JSON Schema's uniqueItems compares them (true and 1 stay different)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, list):
        return ("list", tuple(comparable_value(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), comparable_value(v)) for k, v in value.items())))
    return ("other", repr(value))


def _grid_lists_schema(schema: dict) -> None:
    """The grid's rules for editors: every list non-empty, each value (or factor) once."""
    for branch in schema.get("additionalProperties", {}).get("anyOf", []):
        if branch.get("type") == "array":
            branch.update(minItems=1, uniqueItems=True)
        elif "$ref" in branch:  # {around_k_minus_1: [factors]}
            branch["properties"] = {"around_k_minus_1": {"uniqueItems": True}}


# -- loading ---------------------------------------------------------------------------------------

def load_study(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Study:
    """Read, compose (``_base_``, ``--set``) and parse a study file. Raises ConfigError."""
    raw = resolve_file(str(path), overrides)
    return parse_study(raw, source=str(path))


def resolve_file(path: str, overrides: dict[str, Any] | None = None) -> dict:
    """The study file's mapping with its ``_base_`` chain merged in and `overrides` applied."""
    raw = _read_mapping(path, seen=())
    for key, value in (overrides or {}).items():
        if key.split(".")[0] == BASE_KEY:
            raise ConfigError(f"--set {key}: {BASE_KEY} cannot be set with --set; put it in "
                              f"the file ({BASE_KEY}: other.yaml)")
        set_path(raw, key, value, f"--set {key}", DOTTED_KEY_PARENTS)
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
