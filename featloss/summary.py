"""Study summary tables from trial records (MLflow runs as plain dicts); pure pandas.

A record is ``{"params": {...}, "tags": {...}, "metrics": {...}}`` with MLflow's string params.
Rows group finished trials by loss and the study's grid keys (grid studies) or by loss with the
selected hyperparameters (search studies, final phase); numbers are mean, std and n over seeds.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from featloss.yamlio import load_yaml

DONE = {"completed"}
STAT_METRICS = ["val/accuracy", "test/accuracy"]


def parse_param(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return load_yaml(text)
    except Exception:
        return text


def trials_frame(records: list[dict], metrics: list[str], param_keys: list[str]) -> pd.DataFrame:
    """One row per record: loss, phase, seed, status, the given params and last metric values."""
    rows = []
    for r in records:
        row = {"loss": r["tags"].get("loss") or r["params"].get("loss"),
               "phase": r["tags"].get("phase"), "seed": parse_param(r["tags"].get("seed")),
               "status": r["tags"].get("status"), "run_id": r.get("run_id"),
               "name": r.get("name")}
        for key in param_keys:
            row[key] = parse_param(r["params"].get(key))
        for key in metrics:
            row[key] = r["metrics"].get(key, math.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(frame: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """mean, std (ddof=1; NaN for n=1) and n of `metrics` over the rows of each group."""
    rows = []
    for keys, group in frame.groupby(by, sort=True, dropna=False):
        keys = keys if isinstance(keys, tuple) else (keys,)
        row = dict(zip(by, keys))
        row["n"] = len(group)
        for metric in metrics:
            values = (group[metric].astype(float).dropna() if metric in group
                      else pd.Series([], dtype=float))
            row[f"{metric} mean"] = values.mean() if len(values) else math.nan
            row[f"{metric} std"] = values.std(ddof=1) if len(values) > 1 else math.nan
            row[f"{metric} n"] = len(values)
        rows.append(row)
    return pd.DataFrame(rows)


def summary_table(records: list[dict], study, best: dict[str, dict]) -> pd.DataFrame:
    """The table logged on the parent run at the end of a study."""
    finished = [r for r in records if r["tags"].get("status") in DONE]
    if study.search:
        final = [r for r in finished if r["tags"].get("phase") == "final"]
        frame = trials_frame(final, STAT_METRICS, [])
        if frame.empty:
            return frame
        table = aggregate(frame, ["loss"], STAT_METRICS)
        table.insert(1, "selected", [
            ", ".join(f"{k}={_fmt(v)}" for k, v in best.get(loss, {}).get("params", {}).items())
            or "(defaults)" for loss in table["loss"]])
        table.insert(2, "search best val", [best.get(loss, {}).get("value", math.nan)
                                            for loss in table["loss"]])
        return _order(table, study.losses)
    grid_keys = list(study.grid)
    frame = trials_frame(finished, STAT_METRICS, grid_keys)
    if frame.empty:
        return frame
    frame[grid_keys] = frame[grid_keys].astype(object).where(frame[grid_keys].notna(), "-")
    return _order(aggregate(frame, ["loss", *grid_keys], STAT_METRICS), study.losses)


def _order(table: pd.DataFrame, losses: list[str]) -> pd.DataFrame:
    rank = {loss: i for i, loss in enumerate(losses)}
    table = table.assign(_rank=table["loss"].map(rank)).sort_values("_rank", kind="stable")
    return table.drop(columns="_rank").reset_index(drop=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def mean_std(mean: float, std: float, n: int) -> str:
    if not isinstance(mean, (int, float)) or math.isnan(mean):
        return "-"
    if n > 1 and not math.isnan(std):
        return f"{mean:.4f} ± {std:.4f}"
    return f"{mean:.4f}"


def display_table(table: pd.DataFrame) -> pd.DataFrame:
    """Human-readable version: 'mean ± std' cells, n per row."""
    if table.empty:
        return table
    out = table.copy()
    for metric in STAT_METRICS:
        if f"{metric} mean" in out:
            out[metric] = [mean_std(m, s, n) for m, s, n in zip(
                out[f"{metric} mean"], out[f"{metric} std"], out[f"{metric} n"])]
            out = out.drop(columns=[f"{metric} mean", f"{metric} std", f"{metric} n"])
    if "search best val" in out:
        out["search best val"] = [f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else "-"
                                  for v in out["search best val"]]
    columns = [c for c in out.columns if c != "n"] + ["n"]
    return out[columns]
