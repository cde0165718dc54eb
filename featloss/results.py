"""A study's results, from its record: the summary table and the parent run's front page.

`study_table` is the one table (`featloss.summary`) of a study's record; `front_page_fields`
is what the parent run starts with (study-level params, tags, the study YAML and plan);
`results_metrics` flattens the table into ``result/<loss>[/<cell>]/<metric>_<stat>`` metrics,
so the MLflow UI can filter and chart studies by their results.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from featloss.names import value_label
from featloss.record import StudyRecord
from featloss.study import Study, parse_study
from featloss.summary import summary_table
from featloss.yamlio import load_yaml

RESULT_METRICS = ("test/accuracy", "val/accuracy")
RESULT_STATS = ("mean", "std", "n", "ci_low", "ci_high")


def record_study(record: StudyRecord) -> Study:
    """The study a record was made from (its resolved YAML, parsed again)."""
    return parse_study(load_yaml(record.study_yaml), source=record.source)


def study_table(record: StudyRecord, study: Study | None = None) -> pd.DataFrame:
    study = study or record_study(record)
    return summary_table(record.trials.values(), study.mode, list(study.grid), study.losses)


def results_metrics(table: pd.DataFrame, grid_keys: list[str]) -> dict[str, float]:
    """``result/<loss>[/<key>_<value>...]/<metric>_<stat>`` -> value, for the parent run."""
    from featloss.tracking import metric_name

    out: dict[str, float] = {}
    for _, row in table.iterrows():
        cell = [f"{k.split('.')[-1]}_{value_label(row[k])}" for k in grid_keys
                if row[k] != "-"]
        for metric in RESULT_METRICS:
            label = metric.replace("/", "_")
            for stat in RESULT_STATS:
                value = row[f"{metric} {stat}"]
                if isinstance(value, (int, float)) and math.isfinite(value):
                    out[metric_name("result", row["loss"], *cell, f"{label}_{stat}")] = value
        for count in ("failed", "diverged"):
            out[metric_name("result", row["loss"], *cell, f"trials_{count}")] = float(row[count])
    return out


def front_page_fields(plan, record: StudyRecord) -> dict[str, Any]:
    """Keyword arguments of `ParentRun.start` for a new invocation of `plan`'s study.

    Params: the study-level settings (mode, losses, seeds, search settings, resources, grid
    values) and every config key whose value is the same in every trial; tags: mode, smoke,
    results folder and the run description (the study's description and plan).
    """
    from featloss.tracking.runs import NOTE_TAG

    study = plan.study
    params: dict[str, Any] = {"study.mode": study.mode, "study.losses": study.losses,
                              "study.seeds": study.seeds, "study.smoke": plan.smoke,
                              "study.trials": plan.total_trials,
                              "resources.cpu": study.resources.cpu,
                              "resources.gpu": study.resources.gpu,
                              "max_concurrent": study.max_concurrent,
                              "max_failures": study.max_failures}
    if study.search:
        params.update({f"search.{k}": v for k, v in study.search.model_dump().items()
                       if k != "space"})
    for key, values in plan.resolved_grid().items():
        params[f"grid.{key}"] = values
    if record.overrides:
        params["overrides"] = record.overrides
    params.update(shared_config(plan))
    description = "\n".join([study.description.strip(), "", "```", *plan.summary_lines(), "```"])
    return {"run_name": study.name + (" (smoke)" if plan.smoke else ""),
            "tags": {"mode": study.mode, "smoke": str(plan.smoke).lower(),
                     "results_dir": record.results_dir, NOTE_TAG: description.strip()},
            "params": params,
            "artifacts": {"study.yaml": record.study_yaml, "plan.json": plan_json(plan)}}


def shared_config(plan) -> dict[str, Any]:
    """Config keys (flattened) whose value is the same in every trial the plan describes."""
    from featloss.config import Config

    configs = [t.config.flat() for t in plan.grid_trials]
    configs += [Config.from_dict(s.base, where="search").flat() for s in plan.searches]
    if not configs:
        return {}
    searched = {k for s in plan.searches for k in s.space}
    shared = {}
    for key, value in configs[0].items():
        if key in ("seed", "train.eval_test") or key in searched:
            continue
        if all(c.get(key) == value for c in configs[1:]):
            shared[key] = value
    return shared


def plan_json(plan) -> str:
    """plan.json: the resolved plan, for the parent run."""
    import json

    return json.dumps({
        "study": plan.study.name, "mode": plan.study.mode, "smoke": plan.smoke,
        "plan": plan.summary_lines(), "recipes": plan.recipes,
        "grid_trials": [{"key": t.key, "loss": t.loss, "seed": t.seed, "params": t.params}
                        for t in plan.grid_trials],
        "searches": [{"loss": s.loss, "trials": s.trials, "sampler_seed": s.sampler_seed,
                      "space": {k: d.to_dict() for k, d in s.space.items()},
                      "points": s.points} for s in plan.searches],
        "skipped": [{"loss": s.loss, "cell": s.cell, "reason": s.reason} for s in plan.skipped],
    }, indent=1, default=str)
