"""A study expanded into trial configs, validated, before anything starts.

A trial's config is built by one merge rule, later layers deep-merging over earlier ones:

    Config defaults <- study data/model/train <- the loss's recipe <- per_loss[loss]
                    <- grid cell | searched params <- seed

- **grid** (no ``search``): ``losses`` x ``grid`` x ``seeds``, every cell run. A
  ``{around_k_minus_1: [factors]}`` axis is resolved per cell from its class count k;
  ``loss.<hparam>`` axes apply to the losses that have the hyperparameter.
- **search**: per loss, an exact budget of Optuna trials over the loss's space (its
  ``search_spaces/<loss>.yaml`` + the ``search.common`` keys of ``_common.yaml`` + inline
  ``search.space[loss]``), the config's own values evaluated first; with ``sampler: grid`` every
  point of the space exactly once. Then a **final** phase re-runs each loss's best config for
  every seed with test metrics.

Cells a loss cannot run (its own hyperparameter check rejects them, e.g. ``pod`` with simplex
centroids below k-1) are listed with the reason, never dropped silently.

A study of more than `MAX_TRIALS` trials is refused before it is expanded: the count comes from
the lengths of its lists (losses x grid values x seeds, or losses x trials_per_loss + the final
phase). Expansion checks each distinct cell once and shares the parsed config across seeds.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from typing import Any

from featloss.config import Config
from featloss.errors import ConfigError, HParamError, quote
from featloss.names import safe_name, value_label
from featloss.spaces import (
    Around,
    Distribution,
    grid_points,
    load_space_file,
    resolve,
    resolve_around,
    spaces_directory,
)
from featloss.study import Study, comparable_value, deep_merge

SMOKE_TRAIN_SAMPLES, SMOKE_EVAL_SAMPLES = 512, 256
SECTIONS = ("data", "model", "train")
MAX_TRIALS = 100_000  # per study invocation; more is several studies (or a search)
# The longest suffix of the parent run's result metrics (featloss.results: RESULT_METRICS x
# RESULT_STATS): result/<loss>/<cell>/<suffix> must fit MLflow's metric-key limit.
LONGEST_RESULT_SUFFIX = "test_accuracy_ci_high"
DESCRIPTION_PREVIEW_CHARS = 200  # of the description, in the printed plan


@dataclass
class TrialSpec:
    """One trial to run: a stable key (its MLflow run name and checkpoint file), its config."""

    key: str
    phase: str  # grid | search | final
    loss: str
    seed: int
    config: Config
    params: dict[str, Any] = field(default_factory=dict)  # grid cell, or searched values


@dataclass
class SearchPlan:
    """One loss's search: an exact budget over its space, from `base` (a complete config)."""

    loss: str
    base: dict
    space: dict[str, Distribution]
    trials: int
    sampler: str  # tpe | random | grid
    sampler_seed: int
    start: dict[str, Any] = field(default_factory=dict)  # evaluated first (the config's values)
    points: list[dict[str, Any]] | None = None  # sampler grid: every point, `start` first

    def key(self, index: int) -> str:
        """The key of this loss's `index`-th search trial (1-based)."""
        return safe_name(f"search-{self.loss}-{index:03d}")

    def config(self, params: dict[str, Any], seed: int) -> Config:
        """The trial config for searched `params`. Raises ConfigError for an invalid one."""
        raw = copy.deepcopy(self.base)
        for key, value in params.items():
            set_dotted(raw, key, value)
        raw["seed"] = seed
        return Config.from_dict(raw, where=f"search {self.loss} {params}")


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
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)  # loss -> applied settings
    smoke: bool = False

    @property
    def metric(self) -> str:
        return self.study.search.metric if self.study.search else "val/accuracy"

    @property
    def mode(self) -> str:
        return self.study.search.mode if self.study.search else "max"

    @property
    def phases(self) -> list[str]:
        return ["search", "final"] if self.searches else ["grid"]

    def phase_total(self, phase: str) -> int:
        if phase == "search":
            return sum(s.trials for s in self.searches)
        if phase == "final":
            return len(self.searches) * len(self.study.seeds)
        return len(self.grid_trials)

    @property
    def total_trials(self) -> int:
        return sum(self.phase_total(p) for p in self.phases)

    def distinct_configs(self) -> list[Config]:
        """One config per grid cell (its first seed's) and each search's base config: what
        the pre-run checks look at (the seeds of a cell differ in nothing else)."""
        first = self.study.seeds[0]
        configs = [t.config for t in self.grid_trials if t.seed == first]
        return configs + [Config.from_dict(s.base, where="search") for s in self.searches]

    def final_trials(self, best: dict[str, dict[str, Any]]) -> list[TrialSpec]:
        """Each loss's best searched params (`best[loss]`), full epochs, every seed, test on."""
        trials = []
        for search in self.searches:
            if search.loss not in best:
                continue
            raw = base_config(self.study, search.loss)[0]
            for key, value in best[search.loss].items():
                set_dotted(raw, key, value)
            raw["train"]["eval_test"] = True
            for seed in self.study.seeds:
                raw["seed"] = seed
                trials.append(TrialSpec(
                    key=trial_key("final", search.loss, {}, seed), phase="final",
                    loss=search.loss, seed=seed, params=dict(best[search.loss]),
                    config=Config.from_dict(raw, where=f"final {search.loss}")))
        return trials

    def summary_lines(self) -> list[str]:
        study = self.study
        lines = [f"study '{study.name}' ({study.mode}{', smoke' if self.smoke else ''}) "
                 f"from {study.source}"]
        if study.description:
            text = " ".join(study.description.split())
            cut = DESCRIPTION_PREVIEW_CHARS
            lines.append(f"  {text if len(text) <= cut else text[:cut - 1].rstrip() + '…'}")
        if self.searches:
            search = study.search
            lines.append(f"search phase: {self.phase_total('search')} trials ({search.sampler} "
                         f"sampler, scheduler {search.scheduler}, metric {search.metric})")
            for s in self.searches:
                space = ", ".join(f"{k} {d.describe()}" for k, d in s.space.items())
                lines.append(f"  {s.loss:10s} {s.trials} trials over {space or '(nothing)'}")
                for point in s.points or []:
                    lines.append(f"    point {', '.join(f'{k}={v}' for k, v in point.items())}")
            lines.append(f"final phase: {self.phase_total('final')} trials (best config per "
                         f"loss x seeds {study.seeds}, test metrics reported)")
        else:
            lines.append(f"grid phase: {len(self.grid_trials)} trials "
                         f"(losses x cells x {len(study.seeds)} seeds)")
            for loss in study.losses:
                count = sum(t.loss == loss for t in self.grid_trials)
                lines.append(f"  {loss:10s} {count} trials")
            for key, values in self.resolved_grid().items():
                lines.append(f"  grid {key}: {values}")
        for loss, applied in self.recipes.items():
            if applied:
                lines.append(f"recipe {loss}: " + ", ".join(f"{k}={v}" for k, v in applied.items()))
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"skipped cells: {len(self.skipped) or 'none'}")
        for s in self.skipped:
            cell = ", ".join(f"{k}={v}" for k, v in s.cell.items()) or "(all)"
            lines.append(f"  {s.loss:10s} {cell}: {s.reason}")
        lines.append(f"resources per trial: cpu {study.resources.cpu:g}, "
                     f"gpu {study.resources.gpu:g}")
        return lines

    def resolved_grid(self) -> dict[str, list]:
        values: dict[str, list] = {}
        seen: set = set()
        for t in self.grid_trials:
            for k, v in t.params.items():
                values.setdefault(k, [])
                mark = (k, comparable_value(v))  # the study's own notion of equal values
                if mark not in seen:
                    seen.add(mark)
                    values[k].append(v)
        return {k: sorted(v, key=lambda x: (not isinstance(x, (int, float)), str(x))
                          if not all(isinstance(x, (int, float)) for x in v) else x)
                for k, v in values.items()}


class CellRejected(Exception):
    """The loss rejects this cell's hyperparameters (e.g. simplex centroids below k-1)."""


# -- expansion -------------------------------------------------------------------------------------

def expand(study: Study, smoke: bool = False, spaces_dir: str | None = None) -> StudyPlan:
    """Validate every trial config of `study` and expand it (nothing is started).

    Raises ConfigError for anything wrong with the study, naming the file and key.
    """
    if smoke:
        study = shrink_for_smoke(study)
    check_size(study)
    plan = StudyPlan(study=study, smoke=smoke)
    if study.ignored:
        plan.notes.append(f"{', '.join(study.ignored)} ignored: "
                          f"{'its loss is' if len(study.ignored) == 1 else 'their losses are'} "
                          f"not in 'losses' ({', '.join(study.losses)})")
    checked: dict[str, str | None] = {}  # validation key -> None (valid) or the rejection
    for loss in study.losses:
        base, applied = base_config(study, loss)
        plan.recipes[loss] = applied
        if study.search:
            plan.searches.append(_search_plan(study, loss, base, spaces_dir, plan))
        else:
            _grid_trials(study, loss, base, plan, checked)
    if study.search is not None:
        check_size(study, sum(s.trials for s in plan.searches))  # a grid sampler's points
    else:
        for loss in study.losses:
            if not any(t.loss == loss for t in plan.grid_trials):
                reasons = "; ".join(s.reason for s in plan.skipped if s.loss == loss)
                raise ConfigError(f"{study.source}: loss '{loss}' has no runnable cell "
                                  f"({reasons})")
    return plan


def planned_trials(study: Study, search_trials: int | None = None) -> tuple[int, str]:
    """(trials the study asks for, how that number comes about), from the lengths of its
    lists alone (nothing expanded). A grid counts every cell (cells two factors round to the
    same dimension, or a loss rejects, are counted too: an upper bound)."""
    import math

    from featloss.losses import loss_info

    seeds = len(study.seeds)
    if study.search:
        per_loss = study.search.trials_per_loss
        search = search_trials if search_trials is not None else per_loss * len(study.losses)
        final = len(study.losses) * seeds
        how = (f"{search} search trials + {len(study.losses)} losses x {seeds} seeds"
               if search_trials is not None else
               f"{len(study.losses)} losses x ({per_loss} trials_per_loss + {seeds} seeds)")
        return search + final, how
    total = 0
    for loss in study.losses:
        hparams = {h.name for h in loss_info(loss).hparams}
        cells = math.prod(len(v.around_k_minus_1) if isinstance(v, Around) else len(v)
                          for k, v in study.grid.items()
                          if not k.startswith("loss.") or k[5:] in hparams)
        total += cells * seeds
    lengths = " x ".join(f"{len(v.around_k_minus_1) if isinstance(v, Around) else len(v)} "
                         f"{k}" for k, v in study.grid.items())
    how = f"{len(study.losses)} losses x {lengths + ' x ' if lengths else ''}{seeds} seeds"
    return total, how


def check_size(study: Study, search_trials: int | None = None) -> None:
    """Raise ConfigError when the study asks for more than MAX_TRIALS trials."""
    total, how = planned_trials(study, search_trials)
    if total > MAX_TRIALS:
        raise ConfigError(f"{study.source}: the study asks for {total:,} trials ({how}), more "
                          f"than featloss runs in one study ({MAX_TRIALS:,}); use fewer values "
                          f"or seeds, split it into several studies, or search instead of a grid")


def base_config(study: Study, loss: str) -> tuple[dict, dict[str, Any]]:
    """(complete config dict for `loss` before grid/search values, recipe settings applied).

    A loss's recipe is a per-loss setting: it goes over the study's shared sections and under
    what the study says for this loss alone (``per_loss``, a grid axis or a searched key).
    """
    from featloss.losses import loss_info

    shared = {name: study.section(name) for name in SECTIONS}
    per_loss = study.per_loss.get(loss)
    own = {name: per_loss.section(name) if per_loss is not None else {} for name in SECTIONS}
    own["loss"] = dict(per_loss.loss) if per_loss is not None else {}
    owned = set(_dotted_keys(own)) | set(study.grid)
    if study.search:
        owned |= set(study.search.common) | set(study.search.space.get(loss) or {})
    applied = {k: v for k, v in loss_info(loss).recipe.settings.items() if k not in owned}
    merged = deep_merge(Config().to_dict(), shared)
    for key, value in applied.items():
        set_dotted(merged, key, copy.deepcopy(value))
    merged = deep_merge(merged, own)
    merged["loss"]["name"] = loss
    return merged, applied


def _dotted_keys(raw: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in raw.items():
        if isinstance(value, dict) and value and prefix.count(".") < 1:
            keys += _dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


def set_dotted(config: dict, key: str, value: Any) -> None:
    node = config
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def check_config(raw: dict, where: str, loss: str, strict: bool,
                 checked: dict[str, str | None] | None = None) -> Config:
    """Parse and validate one trial config. When not `strict`, the loss's own rejection of
    its hyperparameters is a CellRejected (a skipped cell); anything else is a ConfigError.

    `checked` caches the registry checks (`featloss.train.validate_config`) by what they read,
    so cells that differ only in, say, the learning rate build the loss once."""
    from featloss.train import validate_config

    config = Config.from_dict(raw, where=where)
    key = validation_key(config) if checked is not None else None
    if key is not None and key in checked:
        if checked[key] is not None:
            raise CellRejected(checked[key])
        return config
    try:
        validate_config(config)
    except HParamError as exc:
        if not strict and exc.loss == loss:
            if key is not None:
                checked[key] = str(exc)
            raise CellRejected(str(exc)) from exc
        raise ConfigError(f"{where}: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(str(exc) if str(exc).startswith(where) else f"{where}: {exc}") from exc
    if key is not None:
        checked[key] = None
    return config


def validation_key(config: Config) -> str:
    """What `featloss.train.validate_config` reads of a config: the data section, the
    backbone and feature dimension, the loss and the batch size."""
    return repr((tuple(config.data.__dict__.values()), config.model.backbone,
                 config.model.feature_dim, config.loss.name,
                 sorted(config.loss.hparams.items()), config.train.batch_size))


def num_classes_of(config: dict) -> int | None:
    from featloss.data import dataset_info

    classes = config["data"].get("classes")
    return classes or dataset_info(config["data"]["dataset"]).num_classes


def _grid_axes(study: Study, loss: str) -> dict[str, list | Around]:
    """The grid dimensions that apply to `loss` (``loss.<hparam>`` only where it exists)."""
    from featloss.losses import loss_info

    hparams = {h.name for h in loss_info(loss).hparams}
    axes = {}
    for key, values in study.grid.items():
        check_config_key(study, key, f"{study.source}: grid.{key}")
        if key.startswith("loss.") and key[5:] not in hparams:
            continue
        axes[key] = values
    return axes


def check_config_key(study: Study, key: str, where: str) -> None:
    """Raise ConfigError unless `key` is a config key a grid or search may vary."""
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
    fields = Config.model_fields
    if section not in SECTIONS or name not in fields[section].annotation.model_fields:
        raise ConfigError(f"{where}: grid over an unknown key '{key}' (use data.*, model.*, "
                          f"train.* or loss.<hparam>)")


def _grid_trials(study: Study, loss: str, base: dict, plan: StudyPlan,
                 checked: dict[str, str | None] | None = None) -> None:
    axes = _grid_axes(study, loss)
    keys = list(axes)
    # around_k_minus_1 axes are placeholders: one product element per factor, resolved per cell
    pools = [list(range(len(v.around_k_minus_1))) if isinstance(v, Around) else v
             for v in axes.values()]
    seen: set[str] = set()
    taken = {t.key for t in plan.grid_trials}
    for combo in itertools.product(*pools) if keys else [()]:
        raw = _copy_sections(base)
        cell: dict[str, Any] = {}
        for key, value in zip(keys, combo):
            if not isinstance(axes[key], Around):
                set_dotted(raw, key, value)
                cell[key] = value
        for key, value in zip(keys, combo):
            if isinstance(axes[key], Around):
                k = num_classes_of(raw)
                factor = Around(around_k_minus_1=[axes[key].around_k_minus_1[value]])
                dim = resolve_around(factor, (k - 1) if k else None,
                                     f"{study.source}: grid.{key}")[0]
                set_dotted(raw, key, dim)
                cell[key] = dim
        cell = {k: cell[k] for k in keys}  # the study's key order
        signature = repr(sorted(cell.items(), key=lambda kv: kv[0]))
        if signature in seen:  # two factors rounding to the same dimension
            continue
        seen.add(signature)
        where = f"{study.source} (loss {loss}" + (f", cell {cell})" if cell else ")")
        _check_metric_names(study, loss, cell)
        try:
            config = check_config(raw, where, loss, strict=False, checked=checked)
        except CellRejected as exc:
            plan.skipped.append(Skipped(loss, cell, str(exc)))
            continue
        for seed in study.seeds:
            key = _unique(trial_key("grid", loss, cell, seed), taken, (loss, signature, seed))
            # one parsed config per cell; each seed's is a copy with its seed
            plan.grid_trials.append(TrialSpec(key=key, phase="grid", loss=loss, seed=seed,
                                              config=_with_seed(config, seed),
                                              params=dict(cell)))


def _copy_sections(base: dict) -> dict:
    """A copy of a config dict deep enough for `set_dotted` of ``section.key`` (the only keys
    a grid varies) and cheap: values inside a section are shared (parsing copies them)."""
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}


def _with_seed(config: Config, seed: int) -> Config:
    """`config` with `seed` (a shallow copy: the seeds of a cell share its parsed sections,
    which nothing mutates)."""
    return config.model_copy(update={"seed": seed})


def _check_metric_names(study: Study, loss: str, cell: dict[str, Any]) -> None:
    """The parent run's result metrics name the cell (``result/<loss>/<key>_<value>/...``):
    a cell whose values make that longer than MLflow's metric-key limit is refused."""
    from featloss.study import MAX_METRIC_NAME_CHARS
    from featloss.tracking.runs import metric_name

    if not cell:
        return
    parts = [f"{k.split('.')[-1]}_{value_label(v)}" for k, v in cell.items()]
    name = metric_name("result", loss, *parts, LONGEST_RESULT_SUFFIX)
    if len(name) > MAX_METRIC_NAME_CHARS:
        longest = max(cell, key=lambda k: len(value_label(cell[k])))
        raise ConfigError(f"{study.source}: grid cell {quote(cell, 200)} names its MLflow result "
                          f"metrics with {len(name)} characters, more than MLflow's "
                          f"{MAX_METRIC_NAME_CHARS}; shorten the values of grid.{longest} or "
                          f"grid over fewer keys")


def trial_key(phase: str, loss: str, cell: dict, seed: int) -> str:
    """A readable key made safe by `featloss.names.safe_name`."""
    parts = [phase, loss]
    parts += [f"{k.split('.')[-1]}={value_label(v)}" for k, v in cell.items()]
    parts.append(f"s{seed}")
    return safe_name("-".join(parts))


def _unique(key: str, taken: set[str], identity: tuple) -> str:
    """`key`, or (when another cell already has it) `key` made unique by the cell's hash."""
    if key in taken:
        key = safe_name(f"{key}|{identity!r}")
    taken.add(key)
    return key


# -- search spaces ---------------------------------------------------------------------------------

def loss_space(study: Study, loss: str, base: dict,
               spaces_dir: str | None) -> dict[str, Distribution]:
    """The resolved search space of `loss`. Raises ConfigError naming a bad key or file."""
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
    for key, spec in (search.space.get(loss) or {}).items():
        if spec is None:  # null removes a key from the file's space
            space.pop(key, None)
        else:
            space[key] = resolve(spec, km1, f"{study.source}: search.space.{loss}.{key}")
    hparams = {h.name for h in loss_info(loss).hparams}
    for key in space:
        section, _, name = key.partition(".")
        if section == "loss" and name not in hparams:
            raise ConfigError(f"{study.source}: search space of '{loss}' has '{key}', which is "
                              f"not a hyperparameter of {loss} (has: {', '.join(sorted(hparams))})")
        if section != "loss":
            check_config_key(study, key, f"{study.source}: search space of '{loss}'")
    return space


def _search_plan(study: Study, loss: str, base: dict, spaces_dir: str | None,
                 plan: StudyPlan) -> SearchPlan:
    search = study.search
    raw = copy.deepcopy(base)
    if search.epochs is not None:
        raw["train"]["epochs"] = search.epochs
    raw["train"]["eval_test"] = False  # selection never sees the test set
    check_config(raw, f"{study.source} (loss {loss})", loss, strict=False)
    space = loss_space(study, loss, base, spaces_dir)
    # Every corner of the space must make a valid config, or trials would fail mid-study.
    for key, dist in space.items():
        for value in dist.corners():
            probe = copy.deepcopy(raw)
            set_dotted(probe, key, value)
            try:
                check_config(probe, f"{study.source} (loss {loss}, {key}={value})", loss,
                             strict=False)
            except CellRejected as exc:
                plan.notes.append(f"{loss}: {key}={value} is invalid ({exc}); such trials are "
                                  f"recorded as failed")
    seed = search.seed * 1000 + study.losses.index(loss)
    start = _start_point(raw, space)
    result = SearchPlan(loss=loss, base=raw, space=space, trials=search.trials_per_loss,
                        sampler=search.sampler, sampler_seed=seed, start=start)
    if not space:  # identical trials would only repeat one result
        result.trials = 1
        plan.notes.append(f"{loss}: nothing to search (add keys with search.common or "
                          f"search.space); 1 trial instead of {search.trials_per_loss}")
    elif search.sampler == "grid":
        result.points = grid_points(space, start, f"{study.source}: search space of '{loss}'")
        if plan.smoke:
            result.points = result.points[:search.trials_per_loss]
        result.trials = len(result.points)
        if result.trials != search.trials_per_loss and not plan.smoke:
            plan.notes.append(f"{loss}: the grid sampler evaluates each of its "
                              f"{result.trials} points once (trials_per_loss "
                              f"{search.trials_per_loss} does not apply)")
    return result


def _start_point(config: dict, space: dict[str, Distribution]) -> dict[str, Any]:
    """The config's own values of the searched keys, where they lie in the space: they are
    evaluated first, so the paper defaults are always among the candidates."""
    from featloss.losses import loss_info

    point = {}
    defaults = {h.name: h.default for h in loss_info(config["loss"]["name"]).hparams}
    for key, dist in space.items():
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        section, _, name = key.partition(".")
        if node is None and section == "loss":
            node = defaults.get(name)
        if dist.contains(node) and (dist.type != "float" or dist.step is None
                                    or node in dist.points("")):
            point[key] = int(node) if dist.type == "int" else (
                float(node) if dist.type == "float" else node)
    return point if len(point) == len(space) else {}


# -- smoke -----------------------------------------------------------------------------------------

def shrink_for_smoke(study: Study) -> Study:
    """1 epoch, a data subset, 2 trials per loss, 1 seed, at most 2 values per grid key."""
    small = study.model_copy(deep=True)
    small.train.epochs = 1
    data = small.data
    data.max_train_samples = min(data.max_train_samples or SMOKE_TRAIN_SAMPLES,
                                 SMOKE_TRAIN_SAMPLES)
    data.max_eval_samples = min(data.max_eval_samples or SMOKE_EVAL_SAMPLES, SMOKE_EVAL_SAMPLES)
    for overrides in small.per_loss.values():
        if overrides.train is not None and "epochs" in overrides.train.model_fields_set:
            overrides.train.epochs = 1
    small.seeds = study.seeds[:1]
    grid: dict[str, Any] = {}
    for key, values in study.grid.items():
        if isinstance(values, Around):
            factors = values.around_k_minus_1
            grid[key] = Around(around_k_minus_1=sorted({factors[0], factors[-1]}))
        else:
            grid[key] = [values[0], values[-1]] if len(values) > 2 else list(values)
    small.grid = grid
    if small.search:
        small.search.trials_per_loss = min(2, study.search.trials_per_loss)
        small.search.epochs = 1
    for loss in small.losses:
        _keep_enough_per_class(small, loss)
    return small


def _keep_enough_per_class(small: Study, loss: str) -> None:
    """A loss that needs n distinct images of every class in each batch keeps enough of them
    in a smoke run too (a 512-image cap leaves CIFAR-100 ~5 per class)."""
    import math

    from featloss.config import DataConfig
    from featloss.losses import loss_info
    from featloss.study import PerLoss

    raw, _ = base_config(small, loss)
    config = Config.from_dict(raw, where=f"smoke {loss}")
    need = loss_info(loss).cls.min_samples_per_class(**config.loss.hparams)
    k = num_classes_of(raw)
    if not need or not k or config.data.sampler != "balanced":
        return
    slots = config.train.batch_size // k
    want = math.ceil(k * max(need, slots) / (1 - config.data.val_fraction)) + k
    if want > (config.data.max_train_samples or 0):
        per_loss = small.per_loss.setdefault(loss, PerLoss())
        if per_loss.data is None:
            per_loss.data = DataConfig.model_construct(_fields_set=set())
        per_loss.data.max_train_samples = want
