"""Study files: parse, validate strictly, and expand into trial configs before anything starts.

A study is one YAML mapping. A trial's config is built by one merge rule, later
mappings deep-merging over earlier ones:

    Config defaults <- study data/model/train <- per_loss[loss] <- grid cell | searched params
                    <- seed

Two shapes:

- **grid** (no ``search``): ``losses`` x ``grid`` x ``seeds``, every cell run. A grid value list
  may be ``{around_k_minus_1: [factors]}``: feature dimensions ``max(1, round(f * (k-1)))`` for the
  cell's class count k. ``loss.<hparam>`` grid keys apply to the losses that have the hparam.
- **search**: per loss, ``search.trials_per_loss`` Optuna trials over the loss's space
  (``search_spaces/<loss>.yaml`` + the ``search.common`` keys of ``_common.yaml`` + inline
  ``search.space[loss]``), selected on validation metrics; then a **final** phase re-runs each
  loss's best config for every seed and reports test metrics.

Cells that cannot run (e.g. ``pod`` with simplex centroids below k-1) are listed with the reason,
never dropped silently. Every problem with the file is a `ConfigError` naming the file and key.
This module imports neither Ray nor Optuna.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featloss.config import Config
from featloss.errors import ConfigError
from featloss.yamlio import read_yaml_file

TOP_KEYS = {"name", "description", "data", "model", "train", "losses", "per_loss", "grid",
            "search", "seeds", "resources", "max_concurrent", "max_failures"}
SEARCH_KEYS = {"trials_per_loss", "metric", "mode", "sampler", "scheduler", "common", "space",
               "epochs", "seed"}
DIST_KEYS = {"type", "low", "high", "log", "step", "choices"}
AROUND = "around_k_minus_1"
SMOKE_TRAIN_SAMPLES, SMOKE_EVAL_SAMPLES = 512, 256


# -- search-space distributions (Optuna's vocabulary, parsed without Optuna) -----------------------

@dataclass(frozen=True)
class Distribution:
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


def reject_unknown(raw: dict, known: set[str], where: str, prefix: str = "") -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key '{prefix}{unknown[0]}' "
                          f"(known: {', '.join(sorted(known))})")


def parse_distribution(raw: Any, where: str, k_minus_1: int | None) -> Distribution:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a distribution mapping like "
                          f"{{type: float, low: 0.1, high: 1, log: true}}, got {raw!r}")
    reject_unknown(raw, DIST_KEYS, where)
    kind = raw.get("type")
    if kind == "categorical":
        choices = raw.get("choices")
        if isinstance(choices, dict):
            choices = resolve_around(choices, k_minus_1, where + ".choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty 'choices' list")
        return Distribution("categorical", choices=tuple(choices))
    if kind not in ("float", "int"):
        raise ConfigError(f"{where}: type must be float, int or categorical, got {kind!r}")
    low, high = raw.get("low"), raw.get("high")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{name}: expected a number, got {value!r}")
        if kind == "int" and not float(value).is_integer():
            raise ConfigError(f"{where}.{name}: an int distribution needs integer bounds, "
                              f"got {value!r}")
    if low >= high:
        raise ConfigError(f"{where}: low={low} must be < high={high}")
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}.log: expected true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log distribution needs low > 0, got low={low}")
    step = raw.get("step")
    bad_step = isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0
    if step is not None and bad_step:
        raise ConfigError(f"{where}.step: expected a number > 0, got {step!r}")
    if step is not None and log:
        raise ConfigError(f"{where}: step and log cannot be combined (Optuna rejects it)")
    if kind == "int":
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    return Distribution(kind, low=low, high=high, log=log, step=step)


def resolve_around(value: dict, k_minus_1: int | None, where: str) -> list[int]:
    """``{around_k_minus_1: [factors]}`` -> sorted unique ``max(1, round(f * (k-1)))``."""
    if set(value) != {AROUND} or not isinstance(value[AROUND], list) or not value[AROUND]:
        raise ConfigError(f"{where}: expected a list of values or {{{AROUND}: [factors]}}")
    if k_minus_1 is None:
        raise ConfigError(f"{where}: {AROUND} needs a known class count; set data.classes")
    dims = []
    for f in value[AROUND]:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or f <= 0:
            raise ConfigError(f"{where}: factors must be numbers > 0, got {f!r}")
        dims.append(max(1, int(round(f * k_minus_1))))
    return sorted(set(dims))


# -- the study file --------------------------------------------------------------------------------

@dataclass
class SearchSettings:
    trials_per_loss: int = 20
    metric: str = "val/accuracy"
    mode: str = "max"
    sampler: str = "tpe"  # tpe | random | grid
    scheduler: str = "none"  # asha | none
    common: list[str] = field(default_factory=list)  # keys of _common.yaml to search as well
    space: dict[str, dict] = field(default_factory=dict)  # inline per-loss overrides
    epochs: int | None = None  # search-phase epochs (default: train.epochs)
    seed: int = 0  # base seed of the samplers (each loss gets its own stream)


@dataclass
class Study:
    name: str
    source: str  # the file (or "<inline>")
    raw: dict  # the file's mapping as read
    losses: list[str]
    base: dict  # data/model/train sections as written
    per_loss: dict[str, dict]
    grid: dict[str, Any]
    seeds: list[int]
    search: SearchSettings | None
    resources: dict[str, float]
    max_concurrent: int | None
    max_failures: int
    description: str = ""

    @property
    def mode(self) -> str:
        return "search" if self.search else "grid"


def load_study(path: str | os.PathLike) -> Study:
    return parse_study(read_yaml_file(str(path), "study file"), source=str(path))


def parse_study(raw: Any, source: str = "<inline>") -> Study:
    where = source
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a study is a YAML mapping with name, data, model, train, "
                          f"losses, ...")
    reject_unknown(raw, TOP_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise ConfigError(f"{where}: 'name' must be a non-empty string without '/'")
    losses = raw.get("losses")
    if not isinstance(losses, list) or not losses:
        raise ConfigError(f"{where}: 'losses' must be a non-empty list of loss keys")
    known_losses = _known_losses()
    for i, loss in enumerate(losses):
        if loss not in known_losses:
            raise ConfigError(f"{where}: losses[{i}]: unknown loss '{loss}' "
                              f"(known: {', '.join(known_losses)})")
    if len(set(losses)) != len(losses):
        raise ConfigError(f"{where}: 'losses' lists a loss twice")
    seeds = raw.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)):
        raise ConfigError(f"{where}: 'seeds' must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: 'seeds' lists a seed twice")
    base = {}
    for section in ("data", "model", "train"):
        value = raw.get(section, {}) or {}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: '{section}' must be a mapping")
        base[section] = value
    per_loss = raw.get("per_loss", {}) or {}
    if not isinstance(per_loss, dict):
        raise ConfigError(f"{where}: 'per_loss' must map loss keys to config overrides")
    for loss, overrides in per_loss.items():
        if loss not in losses:
            raise ConfigError(f"{where}: per_loss.{loss}: '{loss}' is not in 'losses'")
        if not isinstance(overrides, dict) or set(overrides) - {"data", "model", "train", "loss"}:
            raise ConfigError(f"{where}: per_loss.{loss} may hold data, model, train and loss "
                              f"sections only")
    grid = raw.get("grid", {}) or {}
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: 'grid' must map config keys to lists of values")
    search = _parse_search(raw.get("search"), where)
    if search and grid:
        raise ConfigError(f"{where}: use either 'grid' or 'search', not both")
    resources = raw.get("resources", {}) or {}
    if not isinstance(resources, dict) or set(resources) - {"cpu", "gpu"}:
        raise ConfigError(f"{where}: 'resources' takes cpu and gpu only, "
                          f"e.g. {{cpu: 1, gpu: 0.25}}")
    for key, value in resources.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}: resources.{key} must be a number >= 0, got {value!r}")
    resources = {"cpu": float(resources.get("cpu", 1)), "gpu": float(resources.get("gpu", 0))}
    if resources["gpu"] > 1 and not float(resources["gpu"]).is_integer():
        raise ConfigError(f"{where}: resources.gpu above 1 must be a whole number of GPUs")
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None and (not isinstance(max_concurrent, int) or max_concurrent < 1):
        raise ConfigError(f"{where}: 'max_concurrent' must be an integer >= 1")
    max_failures = raw.get("max_failures", 3)
    if not isinstance(max_failures, int) or max_failures < 0:
        raise ConfigError(f"{where}: 'max_failures' must be an integer >= 0")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"{where}: 'description' must be a string")
    return Study(name=name, source=source, raw=copy.deepcopy(raw), losses=list(losses), base=base,
                 per_loss=per_loss, grid=grid, seeds=list(seeds), search=search,
                 resources=resources, max_concurrent=max_concurrent, max_failures=max_failures,
                 description=description)


def _parse_search(raw: Any, where: str) -> SearchSettings | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: 'search' must be a mapping")
    reject_unknown(raw, SEARCH_KEYS, where, prefix="search.")
    s = SearchSettings(**raw)
    if not isinstance(s.trials_per_loss, int) or isinstance(s.trials_per_loss, bool) \
            or s.trials_per_loss < 1:
        raise ConfigError(f"{where}: search.trials_per_loss must be an integer >= 1")
    if s.mode not in ("max", "min"):
        raise ConfigError(f"{where}: search.mode must be max or min")
    if s.sampler not in ("tpe", "random", "grid"):
        raise ConfigError(f"{where}: search.sampler must be tpe, random or grid")
    if s.scheduler not in ("asha", "none"):
        raise ConfigError(f"{where}: search.scheduler must be asha or none")
    if not (s.metric.startswith("val/") or s.metric.startswith("train/")):
        raise ConfigError(f"{where}: search.metric={s.metric!r}: select on validation metrics "
                          f"(val/...), never on test metrics")
    if not isinstance(s.common, list) or not isinstance(s.space, dict):
        raise ConfigError(f"{where}: search.common must be a list and search.space a mapping")
    if s.epochs is not None and (not isinstance(s.epochs, int) or s.epochs < 1):
        raise ConfigError(f"{where}: search.epochs must be an integer >= 1")
    if not isinstance(s.seed, int):
        raise ConfigError(f"{where}: search.seed must be an integer")
    return s


def _known_losses() -> list[str]:
    from featloss.losses import list_losses

    return list_losses()


# -- expansion -------------------------------------------------------------------------------------

@dataclass
class TrialSpec:
    key: str  # stable and unique within the study: the MLflow run name
    phase: str  # grid | search | final
    loss: str
    seed: int
    config: dict  # a complete Config dict
    cell: dict[str, Any] = field(default_factory=dict)  # the grid values of this trial


@dataclass
class SearchPlan:
    loss: str
    base_config: dict  # complete Config dict; searched keys are filled per trial
    space: dict[str, Distribution]  # dotted config key -> distribution
    trials: int
    sampler_seed: int
    start: dict[str, Any] = field(default_factory=dict)  # evaluated first (the config's values)


@dataclass
class Skipped:
    loss: str
    cell: dict[str, Any]
    reason: str


@dataclass
class StudyPlan:
    study: Study
    grid_trials: list[TrialSpec] = field(default_factory=list)
    searches: list[SearchPlan] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    smoke: bool = False

    @property
    def total_trials(self) -> int:
        if self.searches:
            return sum(s.trials for s in self.searches) + len(self.searches) * len(self.study.seeds)
        return len(self.grid_trials)

    def summary_lines(self) -> list[str]:
        study = self.study
        lines = [f"study '{study.name}' ({study.mode}{', smoke' if self.smoke else ''}) "
                 f"from {study.source}"]
        if study.description:
            lines.append(f"  {study.description}")
        if self.searches:
            lines.append(f"search phase: {sum(s.trials for s in self.searches)} trials "
                         f"({study.search.sampler} sampler, scheduler {study.search.scheduler}, "
                         f"metric {study.search.metric})")
            for s in self.searches:
                space = ", ".join(f"{k} {_describe(d)}" for k, d in s.space.items()) or "(nothing)"
                lines.append(f"  {s.loss:10s} {s.trials} trials over {space}")
            lines.append(f"final phase: {len(self.searches) * len(study.seeds)} trials "
                         f"(best config per loss x seeds {study.seeds}, test metrics reported)")
        else:
            lines.append(f"grid phase: {len(self.grid_trials)} trials "
                         f"(losses x cells x {len(study.seeds)} seeds)")
            by_loss: dict[str, int] = {}
            for t in self.grid_trials:
                by_loss[t.loss] = by_loss.get(t.loss, 0) + 1
            for loss in study.losses:
                lines.append(f"  {loss:10s} {by_loss.get(loss, 0)} trials")
            for key, values in self.resolved_grid().items():
                lines.append(f"  grid {key}: {values}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.skipped:
            lines.append(f"skipped cells: {len(self.skipped)}")
            for s in self.skipped:
                cell = ", ".join(f"{k}={v}" for k, v in s.cell.items()) or "(all)"
                lines.append(f"  {s.loss:10s} {cell}: {s.reason}")
        else:
            lines.append("skipped cells: none")
        lines.append(f"resources per trial: cpu {study.resources['cpu']:g}, "
                     f"gpu {study.resources['gpu']:g}")
        return lines

    def resolved_grid(self) -> dict[str, list]:
        values: dict[str, list] = {}
        for t in self.grid_trials:
            for k, v in t.cell.items():
                if v not in values.setdefault(k, []):
                    values[k].append(v)
        return {k: sorted(v, key=str) if not all(isinstance(x, (int, float)) for x in v)
                else sorted(v) for k, v in values.items()}


def _describe(d: Distribution) -> str:
    if d.type == "categorical":
        return f"in {list(d.choices)}"
    return f"{d.type}[{d.low:g}, {d.high:g}{', log' if d.log else ''}]"


def expand(study: Study, smoke: bool = False, spaces_dir: str | None = None) -> StudyPlan:
    """Validate every trial config of `study` and expand it (nothing is started)."""
    if smoke:
        study = shrink_for_smoke(study)
    plan = StudyPlan(study=study, smoke=smoke)
    for loss in study.losses:
        base = _base_config(study, loss)
        if study.search:
            plan.searches.append(_search_plan(study, loss, base, spaces_dir, plan))
        else:
            _grid_trials(study, loss, base, plan)
    if study.search is None:
        empty = [loss for loss in study.losses if not any(t.loss == loss for t in plan.grid_trials)]
        if empty:
            reasons = "; ".join(s.reason for s in plan.skipped if s.loss == empty[0])
            raise ConfigError(f"{study.source}: loss '{empty[0]}' has no runnable cell ({reasons})")
    return plan


def _base_config(study: Study, loss: str) -> dict:
    merged = deep_merge(Config().to_dict(), {k: v for k, v in study.base.items()})
    merged["loss"] = {"name": loss}
    merged = deep_merge(merged, study.per_loss.get(loss, {}))
    merged["loss"]["name"] = loss
    try:  # everything but the loss's own hyperparameter ranges, which cells may still fix
        _check_config(merged, f"{study.source}", loss, strict=False)
    except CellRejected:
        pass
    return merged


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(config: dict, key: str, value: Any) -> None:
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


class CellRejected(Exception):
    """The loss rejects this cell's hyperparameters (e.g. simplex centroids below k-1)."""


def _check_config(raw: dict, where: str, loss: str, strict: bool) -> Config:
    """Parse and validate one trial config. When not `strict`, the loss's own rejection of
    its hyperparameters is a CellRejected (a skipped cell); anything else is a ConfigError."""
    from featloss.train import validate_config

    config = Config.from_dict(raw, where=where)
    try:
        return validate_config(config)
    except ConfigError as exc:
        message = str(exc)
        if not strict and message.startswith(f"loss '{loss}':"):
            raise CellRejected(message) from exc
        located = message if message.startswith(where) else f"{where}: {message}"
        raise ConfigError(located) from exc


def num_classes_of(config: dict) -> int | None:
    from featloss.data import dataset_info

    classes = config["data"].get("classes")
    return classes or dataset_info(config["data"]["dataset"]).num_classes


def _grid_axes(study: Study, loss: str) -> dict[str, list]:
    """The grid dimensions that apply to `loss` (``loss.<hparam>`` only where it exists)."""
    from featloss.losses import loss_info

    hparams = {h.name for h in loss_info(loss).hparams}
    axes = {}
    for key, values in study.grid.items():
        where = f"{study.source}: grid.{key}"
        _check_grid_key(study, key, where)
        if key.startswith("loss.") and key[5:] not in hparams:
            continue
        if isinstance(values, dict):
            if key != "model.feature_dim":
                raise ConfigError(f"{where}: {AROUND} applies to model.feature_dim only")
            axes[key] = values  # resolved per cell: k may depend on data.classes
        elif isinstance(values, list) and values:
            axes[key] = values
        else:
            raise ConfigError(f"{where}: expected a non-empty list of values")
    return axes


def _check_grid_key(study: Study, key: str, where: str) -> None:
    from featloss.losses import loss_info

    section, _, name = key.partition(".")
    if key == "seed":
        raise ConfigError(f"{where}: seeds are set with the top-level 'seeds' list")
    if section == "loss":
        if name == "name":
            raise ConfigError(f"{where}: losses are set with the top-level 'losses' list")
        owners = [x for x in study.losses if name in {h.name for h in loss_info(x).hparams}]
        if not owners:
            raise ConfigError(f"{where}: grid over an unknown key: no loss in 'losses' has a "
                              f"hyperparameter '{name}'")
        return
    defaults = Config().to_dict()
    if section not in ("data", "model", "train") or name not in defaults[section]:
        raise ConfigError(f"{where}: grid over an unknown key '{key}' (use data.*, model.*, "
                          f"train.* or loss.<hparam>)")


def _grid_trials(study: Study, loss: str, base: dict, plan: StudyPlan) -> None:
    axes = _grid_axes(study, loss)
    keys = list(axes)
    # around_k_minus_1 axes are placeholders: one product element per factor, resolved per cell
    pools = [list(range(len(v[AROUND]))) if isinstance(v, dict) else v for v in axes.values()]
    seen: set[str] = set()
    for combo in itertools.product(*pools) if keys else [()]:
        raw = copy.deepcopy(base)
        cell: dict[str, Any] = {}
        deferred = []
        for key, value in zip(keys, combo):
            if isinstance(axes[key], dict):
                deferred.append((key, value))
            else:
                set_dotted(raw, key, value)
                cell[key] = value
        for key, index in deferred:
            k = num_classes_of(raw)
            factor = axes[key][AROUND][index]
            dims = resolve_around({AROUND: [factor]}, (k - 1) if k else None,
                                  f"{study.source}: grid.{key}")
            set_dotted(raw, key, dims[0])
            cell[key] = dims[0]
        signature = repr(sorted(cell.items()))
        if signature in seen:  # two factors rounding to the same dimension
            continue
        seen.add(signature)
        try:
            _check_config(raw, f"{study.source} (loss {loss}, cell {cell})", loss, strict=False)
        except CellRejected as exc:
            plan.skipped.append(Skipped(loss, cell, str(exc)))
            continue
        for seed in study.seeds:
            trial = copy.deepcopy(raw)
            trial["seed"] = seed
            plan.grid_trials.append(TrialSpec(
                key=trial_key("grid", loss, cell, seed), phase="grid", loss=loss, seed=seed,
                config=trial, cell=dict(cell)))


def trial_key(phase: str, loss: str, cell: dict, seed: int) -> str:
    parts = [phase, loss]
    parts += [f"{k.split('.')[-1]}={_short(v)}" for k, v in cell.items()]
    parts.append(f"s{seed}")
    return "-".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace(" ", "")


# -- search spaces -------------------------------------------------------------------------------

def spaces_directory(study_source: str, override: str | None = None) -> Path:
    """`search_spaces/`: explicit, $FEATLOSS_SEARCH_SPACES, next to the study's folder, or the
    repository's."""
    candidates = [override, os.environ.get("FEATLOSS_SEARCH_SPACES")]
    if study_source and not study_source.startswith("<"):
        candidates.append(str(Path(study_source).resolve().parent.parent / "search_spaces"))
    candidates.append(str(Path(__file__).resolve().parent.parent / "search_spaces"))
    for candidate in candidates:
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise ConfigError("no search_spaces/ folder found; set FEATLOSS_SEARCH_SPACES to it")


def load_space_file(path: Path, k_minus_1: int | None) -> dict[str, Distribution]:
    if not path.is_file():
        raise ConfigError(f"missing search-space file {path}: every searched loss needs one")
    raw = read_yaml_file(str(path), "search-space file") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys to distributions")
    return {key: parse_distribution(value, f"{path}: {key}", k_minus_1)
            for key, value in raw.items()}


def loss_space(study: Study, loss: str, base: dict,
               spaces_dir: str | None) -> dict[str, Distribution]:
    from featloss.losses import loss_info

    search = study.search
    directory = spaces_directory(study.source, spaces_dir)
    k = num_classes_of(base)
    km1 = (k - 1) if k else None
    space = load_space_file(directory / f"{loss}.yaml", km1)
    if search.common:
        common = load_space_file(directory / "_common.yaml", km1)
        for key in search.common:
            if key not in common:
                raise ConfigError(f"{study.source}: search.common: '{key}' is not in "
                                  f"{directory / '_common.yaml'} (has: {', '.join(common)})")
            space.setdefault(key, common[key])
    inline = search.space.get(loss, {}) or {}
    if not isinstance(inline, dict):
        raise ConfigError(f"{study.source}: search.space.{loss} must be a mapping")
    for key, value in inline.items():
        if value is None:  # null removes a key from the file's space
            space.pop(key, None)
        else:
            where = f"{study.source}: search.space.{loss}.{key}"
            space[key] = parse_distribution(value, where, km1)
    for name in search.space:
        if name not in study.losses:
            raise ConfigError(f"{study.source}: search.space.{name}: '{name}' is not in 'losses' "
                              f"(search.space maps a loss key to its space overrides, e.g. "
                              f"search.space.pod.loss.lam)")
    hparams = {h.name for h in loss_info(loss).hparams}
    for key in space:
        section, _, name = key.partition(".")
        if section == "loss" and name not in hparams:
            raise ConfigError(f"{study.source}: search space of '{loss}' has '{key}', which is "
                              f"not a hyperparameter of {loss} (has: {', '.join(sorted(hparams))})")
        if section != "loss":
            _check_grid_key(study, key, f"{study.source}: search space of '{loss}'")
    return space


def _search_plan(study: Study, loss: str, base: dict, spaces_dir: str | None,
                 plan: StudyPlan) -> SearchPlan:
    search = study.search
    space = loss_space(study, loss, base, spaces_dir)
    raw = copy.deepcopy(base)
    if search.epochs is not None:
        raw["train"]["epochs"] = search.epochs
    raw["train"]["eval_test"] = False  # selection never sees the test set
    # Every corner of the space must make a valid config, or trials would fail mid-study.
    for key, dist in space.items():
        for value in _corners(dist):
            probe = copy.deepcopy(raw)
            set_dotted(probe, key, value)
            try:
                _check_config(probe, f"{study.source} (loss {loss}, {key}={value})", loss,
                              strict=False)
            except CellRejected as exc:
                plan.notes.append(f"{loss}: {key}={value} is invalid ({exc}); such trials are "
                                  f"recorded as failed")
    seed = search.seed * 1000 + study.losses.index(loss)
    trials = search.trials_per_loss
    if not space:  # identical trials would only repeat one result
        trials = 1
        plan.notes.append(f"{loss}: nothing to search (add keys with search.common or "
                          f"search.space); 1 trial instead of {search.trials_per_loss}")
    return SearchPlan(loss=loss, base_config=raw, space=space, trials=trials,
                      sampler_seed=seed, start=_start_point(raw, space))


def _start_point(config: dict, space: dict[str, Distribution]) -> dict[str, Any]:
    """The config's own values of the searched keys, where they lie in the space: Optuna
    evaluates them first, so the paper defaults are always among the candidates."""
    point = {}
    for key, dist in space.items():
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            from featloss.losses import loss_info

            section, _, name = key.partition(".")
            if section == "loss":
                defaults = {h.name: h.default for h in loss_info(config["loss"]["name"]).hparams}
                node = defaults.get(name)
        if dist.type == "categorical":
            if node in dist.choices:
                point[key] = node
        elif isinstance(node, (int, float)) and not isinstance(node, bool) \
                and dist.low <= node <= dist.high \
                and (dist.type == "float" or float(node).is_integer()):
            point[key] = int(node) if dist.type == "int" else float(node)
    return point if len(point) == len(space) else {}


def _corners(dist: Distribution) -> list:
    if dist.type == "categorical":
        return list(dist.choices)
    return [dist.low, dist.high]


def final_trials(plan: StudyPlan, best: dict[str, dict]) -> list[TrialSpec]:
    """The final phase: each loss's best searched params, full epochs, every seed, test on."""
    study = plan.study
    trials = []
    for search in plan.searches:
        params = best.get(search.loss)
        if params is None:
            continue
        raw = _base_config(study, search.loss)  # plan.study is already shrunk for smoke
        for key, value in params.items():
            set_dotted(raw, key, value)
        raw["train"]["eval_test"] = True
        for seed in study.seeds:
            trial = copy.deepcopy(raw)
            trial["seed"] = seed
            trials.append(TrialSpec(key=trial_key("final", search.loss, {}, seed), phase="final",
                                    loss=search.loss, seed=seed, config=trial, cell=dict(params)))
    return trials


# -- smoke ---------------------------------------------------------------------------------------

def _smoke_overrides(config: dict) -> dict:
    data = config["data"]
    caps = {"max_train_samples": min(data.get("max_train_samples") or SMOKE_TRAIN_SAMPLES,
                                     SMOKE_TRAIN_SAMPLES),
            "max_eval_samples": min(data.get("max_eval_samples") or SMOKE_EVAL_SAMPLES,
                                    SMOKE_EVAL_SAMPLES)}
    return {"train": {"epochs": 1}, "data": caps}


def shrink_for_smoke(study: Study) -> Study:
    """1 epoch, a data subset, 2 trials per loss, 1 seed, at most 2 values per grid key."""
    small = copy.deepcopy(study)
    merged = deep_merge(Config().to_dict(), study.base)
    small.base = deep_merge(study.base, _smoke_overrides(merged))
    for overrides in small.per_loss.values():
        if "train" in overrides and "epochs" in overrides["train"]:
            overrides["train"]["epochs"] = 1
    small.seeds = study.seeds[:1]
    grid = {}
    for key, values in study.grid.items():
        if isinstance(values, dict) and isinstance(values.get(AROUND), list):
            factors = values[AROUND]
            grid[key] = {AROUND: sorted({factors[0], factors[-1]})}
        elif isinstance(values, list) and len(values) > 2:
            grid[key] = [values[0], values[-1]]
        else:
            grid[key] = values
    small.grid = grid
    if small.search:
        small.search.trials_per_loss = min(2, study.search.trials_per_loss)
        small.search.epochs = 1
    return small


def check_math(value: float) -> bool:  # used by report/hpo to drop non-finite metrics
    return isinstance(value, (int, float)) and math.isfinite(value)
