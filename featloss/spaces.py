"""Search spaces in Optuna's distribution vocabulary, parsed and enumerated without Optuna.

A space maps a dotted config key (``loss.lam``, ``train.lr``) to a `Distribution`:
``{type: float, low, high, log, step}``, ``{type: int, low, high, log, step}`` or
``{type: categorical, choices}``. A categorical's choices (or an int's range) may be written
``{around_k_minus_1: [factors]}`` for feature dimensions. `grid_points` enumerates a space for
``search.sampler: grid``: every combination exactly once.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from featloss.config import Section, parse_model
from featloss.errors import ConfigError
from featloss.yamlio import read_yaml_file

AROUND = "around_k_minus_1"
MAX_GRID_POINTS = 10_000


class Around(Section):
    """Feature dimensions as multiples of k−1 (k = the class count): max(1, round(f·(k−1)))."""

    around_k_minus_1: list[float] = Field(min_length=1, description="factors f > 0")

    @model_validator(mode="after")
    def _positive(self) -> Around:
        if any(not math.isfinite(f) or f <= 0 for f in self.around_k_minus_1):
            raise ValueError(f"{AROUND} factors must be finite numbers > 0")
        return self


class DistributionSpec(Section):
    """One searched key, in Optuna's vocabulary."""

    type: Literal["float", "int", "categorical"] = Field(description="distribution kind")
    low: float | None = Field(None, description="float/int: lower bound")
    high: float | None = Field(None, description="float/int: upper bound")
    log: bool = Field(False, description="float/int: sample on a log scale (needs low > 0)")
    step: float | None = Field(None, gt=0, description="float/int: grid step (needed for a "
                               "float space under search.sampler: grid)")
    choices: list[Any] | Around | None = Field(None, description="categorical: the values")

    @model_validator(mode="after")
    def _consistent(self) -> DistributionSpec:
        if self.type == "categorical":
            if self.choices is None or (isinstance(self.choices, list) and not self.choices):
                raise ValueError("a categorical needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical takes 'choices', not low/high")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} distribution takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} distribution needs 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"low={self.low:g} must be < high={self.high:g}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log distribution needs low > 0, got low={self.low:g}")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined (Optuna rejects it)")
        if self.type == "int" and not all(float(v).is_integer() for v in
                                          (self.low, self.high, self.step or 1)):
            raise ValueError("an int distribution needs integer low, high and step")
        return self


@dataclass(frozen=True)
class Distribution:
    """A resolved distribution (``around_k_minus_1`` choices already turned into integers)."""

    type: str  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    def to_dict(self) -> dict:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out = {"type": self.type, "low": self.low, "high": self.high, "log": self.log}
        if self.step is not None:
            out["step"] = self.step
        return out

    def describe(self) -> str:
        if self.type == "categorical":
            return f"in {list(self.choices)}"
        step = f", step {self.step:g}" if self.step is not None else ""
        return f"{self.type}[{self.low:g}, {self.high:g}{', log' if self.log else ''}{step}]"

    def corners(self) -> list:
        """Values every one of which must make a valid config (checked before a search)."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def contains(self, value: Any) -> bool:
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.type == "int" and not float(value).is_integer():
            return False
        return self.low <= value <= self.high

    def points(self, where: str) -> list:
        """Every value a grid over this distribution evaluates. Raises ConfigError when the
        distribution is continuous (a float without `step`)."""
        if self.type == "categorical":
            return list(self.choices)
        if self.type == "float" and self.step is None:
            raise ConfigError(f"{where}: search.sampler=grid needs a finite set of values; "
                              f"this float has no 'step' (add step: or use categorical choices)")
        step = self.step or 1
        count = int(math.floor((self.high - self.low) / step + 1e-9)) + 1
        if count > MAX_GRID_POINTS:
            raise ConfigError(f"{where}: {count} grid values is more than {MAX_GRID_POINTS}")
        if self.type == "int":
            return [int(self.low) + i * int(step) for i in range(count)]
        # Optuna's own float grid: low + i*step, rounded so 0.1 + 2*0.1 prints as 0.3
        digits = max(0, -math.floor(math.log10(step)) + 6)
        return [round(self.low + i * step, digits) for i in range(count)]


def resolve_around(value: Around, k_minus_1: int | None, where: str) -> list[int]:
    """``{around_k_minus_1: [factors]}`` -> sorted unique ``max(1, round(f * (k-1)))``."""
    if k_minus_1 is None:
        raise ConfigError(f"{where}: {AROUND} needs a known class count; set data.classes")
    return sorted({max(1, int(round(f * k_minus_1))) for f in value.around_k_minus_1})


def resolve(spec: DistributionSpec, k_minus_1: int | None, where: str) -> Distribution:
    if spec.type == "categorical":
        choices = spec.choices
        if isinstance(choices, Around):
            choices = resolve_around(choices, k_minus_1, where + ".choices")
        return Distribution("categorical", choices=tuple(choices))
    if spec.type == "int":
        return Distribution("int", int(spec.low), int(spec.high), spec.log,
                            int(spec.step) if spec.step is not None else None)
    return Distribution("float", float(spec.low), float(spec.high), spec.log, spec.step)


def parse_distribution(raw: Any, where: str, k_minus_1: int | None) -> Distribution:
    """A distribution mapping as written in a file. Raises ConfigError naming `where`."""
    return resolve(parse_model(DistributionSpec, raw, where), k_minus_1, where)


def grid_points(space: dict[str, Distribution], start: dict[str, Any],
                where: str) -> list[dict[str, Any]]:
    """Every combination of the space's values exactly once; `start` (when given) first.

    Raises ConfigError for a continuous dimension or more than MAX_GRID_POINTS combinations.
    """
    keys = list(space)
    axes = [space[k].points(f"{where}.{k}") for k in keys]
    if math.prod(len(a) for a in axes) > MAX_GRID_POINTS:
        raise ConfigError(f"{where}: the grid has more than {MAX_GRID_POINTS} points")
    points = [dict(zip(keys, combo)) for combo in itertools.product(*axes)]
    if start and start in points:
        points.remove(start)
        points.insert(0, start)
    return points


# -- search-space files ----------------------------------------------------------------------------

def spaces_directory(study_source: str, override: str | None = None) -> Path:
    """`search_spaces/`: explicit, $FEATLOSS_SEARCH_SPACES, next to the study's folder, or the
    repository's. Raises ConfigError when none exists."""
    candidates = [override, os.environ.get("FEATLOSS_SEARCH_SPACES")]
    if study_source and not study_source.startswith("<"):
        candidates.append(str(Path(study_source).resolve().parent.parent / "search_spaces"))
    candidates.append(str(Path(__file__).resolve().parent.parent / "search_spaces"))
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise ConfigError("no search_spaces/ folder found; set FEATLOSS_SEARCH_SPACES to it")


def load_space_file(path: Path, k_minus_1: int | None) -> dict[str, Distribution]:
    """A ``search_spaces/<loss>.yaml`` file. Raises ConfigError when missing or invalid."""
    if not path.is_file():
        raise ConfigError(f"missing search-space file {path}: every searched loss needs one")
    raw = read_yaml_file(str(path), "search-space file") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys to distributions")
    return {key: parse_distribution(value, f"{path}: {key}", k_minus_1)
            for key, value in raw.items()}
