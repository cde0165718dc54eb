"""The one summary of a study: a pandas groupby over its record's finished trials.

Rows are the study's cells: loss x grid values (grid studies) or loss x selected
hyperparameters (the final phase of a search). Per row: how many trials completed, failed,
diverged or were stopped, and for each metric over the completed trials the mean, the standard
deviation (ddof = 1), n, the standard error and the 95 % confidence interval of the mean from
Student's t distribution (scipy.stats.t, n − 1 degrees of freedom), clipped to the metric's
range (`RANGES`: with few seeds the t interval of an accuracy can pass 1). The end-of-run table,
``summary.{md,csv,parquet}`` and the report's tables all come from `summary_table`, and every
number is written by `fmt_mean` / `fmt_ci`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import pandas as pd

from featloss.names import value_label
from featloss.record import TrialRecord

METRICS = ["test/accuracy", "val/accuracy", "feat/intra_class_std", "feat/mean_angle_deg",
           "feat/min_interclass_angle_deg", "loss/frac_target_logit_negative", "loss/lambda"]
SHOWN = ["val/accuracy", "test/accuracy"]  # the end-of-run table's metrics
COUNTS = ["n", "failed", "diverged", "stopped"]
MISSING = "-"  # a grid key that does not apply to a loss (e.g. loss.lam for softmax)
STATS = ("mean", "std", "n", "se", "ci_low", "ci_high")
RANGES = {"test/accuracy": (0.0, 1.0), "val/accuracy": (0.0, 1.0),  # what a metric can take
          "feat/intra_class_std": (0.0, math.inf), "feat/mean_angle_deg": (0.0, 180.0),
          "feat/min_interclass_angle_deg": (0.0, 180.0),
          "loss/frac_target_logit_negative": (0.0, 1.0)}
DIGITS = 4


def trials_frame(trials: Iterable[TrialRecord], group_keys: list[str],
                 selected: bool = False) -> pd.DataFrame:
    """One row per trial: loss, key, seed, status, its group values and its last metrics.

    `selected` adds a ``selected`` column (``k=v, ...`` of the trial's searched values).
    """
    rows = []
    for t in trials:
        row: dict[str, Any] = {"loss": t.loss, "trial": t.key, "seed": t.seed, "status": t.status}
        if selected:
            row["selected"] = ", ".join(f"{k}={value_label(v)}" for k, v in t.params.items()) \
                or "(defaults)"
        for key in group_keys:
            row[key] = t.params.get(key, MISSING)
        for metric in METRICS:
            value = t.metrics.get(metric)
            row[metric] = float(value) if isinstance(value, (int, float)) else math.nan
        rows.append(row)
    return pd.DataFrame(rows, columns=["loss", "trial", "seed", "status",
                                       *(["selected"] if selected else []), *group_keys,
                                       *METRICS])


def summarise(frame: pd.DataFrame, by: list[str], losses: list[str]) -> pd.DataFrame:
    """Per group of `by`: trial counts by status and STATS of every metric (completed trials).

    Groups are ordered by `losses` (the study's order), then by their values (numbers first).
    """
    from scipy import stats

    columns = [*by, *COUNTS, *[f"{m} {s}" for m in METRICS for s in STATS]]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    keyed = frame.assign(**{k: frame[k].map(_hashable) for k in by})
    out = []
    for group, rows in keyed.groupby(by, sort=False, dropna=False):
        group = group if isinstance(group, tuple) else (group,)
        line: dict[str, Any] = dict(zip(by, (rows[k].iloc[0] for k in by)))
        status = rows["status"]
        line.update(n=int((status == "completed").sum()), failed=int((status == "failed").sum()),
                    diverged=int((status == "diverged").sum()),
                    stopped=int((status == "stopped").sum()))
        done = rows[status == "completed"]
        for metric in METRICS:
            values = done[metric].astype(float)
            values = values[values.map(math.isfinite)]
            n = len(values)
            mean = values.mean() if n else math.nan
            std = values.std(ddof=1) if n > 1 else math.nan
            se = std / math.sqrt(n) if n > 1 else math.nan
            half = stats.t.ppf(0.975, n - 1) * se if n > 1 else math.nan
            low, high = RANGES.get(metric, (-math.inf, math.inf))
            line.update({f"{metric} mean": mean, f"{metric} std": std, f"{metric} n": n,
                         f"{metric} se": se, f"{metric} ci_low": max(mean - half, low),
                         f"{metric} ci_high": min(mean + half, high)})
        out.append(line)
    table = pd.DataFrame(out, columns=columns)
    rank = {loss: i for i, loss in enumerate(losses)}
    order = sorted(range(len(table)), key=lambda i: (
        rank.get(table.iloc[i]["loss"], len(rank)), str(table.iloc[i]["loss"]),
        *(sort_key(table.iloc[i][k]) for k in by[1:])))
    return table.iloc[order].reset_index(drop=True)


def summary_table(trials: Iterable[TrialRecord], mode: str, grid_keys: list[str],
                  losses: list[str]) -> pd.DataFrame:
    """The study's table: grid phase by loss x grid keys, or final phase by loss x selected."""
    trials = list(trials)
    if mode == "search":
        frame = trials_frame([t for t in trials if t.phase == "final"], [], selected=True)
        return summarise(frame, ["loss", "selected"], losses)
    frame = trials_frame([t for t in trials if t.phase == "grid"], grid_keys)
    return summarise(frame, ["loss", *grid_keys], losses)


def group_columns(table: pd.DataFrame) -> list[str]:
    stat_columns = {f"{m} {s}" for m in METRICS for s in STATS}
    return [c for c in table.columns if c not in stat_columns and c not in COUNTS]


def display_table(table: pd.DataFrame, metrics: list[str] = SHOWN,
                  with_ci: bool = False) -> pd.DataFrame:
    """Markdown-ready: group columns, 'mean ± std' (and '[low, high]') per metric, counts."""
    out = pd.DataFrame({c: [v if isinstance(v, str) else value_label(v) for v in table[c]]
                        for c in group_columns(table)})
    for metric in metrics:
        out[metric] = [fmt_mean(m, s, n) for m, s, n in zip(
            table[f"{metric} mean"], table[f"{metric} std"], table[f"{metric} n"])]
        if with_ci:
            out[f"{metric} 95% CI"] = [fmt_ci(lo, hi) for lo, hi in zip(
                table[f"{metric} ci_low"], table[f"{metric} ci_high"])]
    for column in COUNTS:
        out[column] = table[column].astype(int)
    return out


def to_markdown(table: pd.DataFrame, metrics: list[str] = SHOWN, with_ci: bool = False) -> str:
    if table.empty:
        return "(no finished trials)"
    return display_table(table, metrics, with_ci).to_markdown(index=False)


def fmt_number(value: Any) -> str:
    """One number, the one way: DIGITS decimals, '-' for a missing or non-finite value."""
    if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        return MISSING
    return f"{float(value):.{DIGITS}f}"


def fmt_mean(mean: Any, std: Any, n: Any) -> str:
    """'0.9720 ± 0.0040' (n > 1), '0.9720' (n = 1) or '-' (no value)."""
    if fmt_number(mean) == MISSING:
        return MISSING
    if isinstance(n, numbers.Real) and n > 1 and fmt_number(std) != MISSING:
        return f"{fmt_number(mean)} ± {fmt_number(std)}"
    return fmt_number(mean)


def fmt_ci(low: Any, high: Any) -> str:
    if fmt_number(low) == MISSING:
        return MISSING
    return f"[{fmt_number(low)}, {fmt_number(high)}]"


def parquet_ready(table: pd.DataFrame) -> pd.DataFrame:
    """pyarrow needs one type per column: group columns mixing numbers and '-' become text."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object and not all(isinstance(v, str) for v in out[column]):
            out[column] = [value_label(v) for v in out[column]]
    return out


def sort_key(value: Any) -> tuple:
    """Numbers in numeric order, then booleans, then text."""
    if isinstance(value, bool):
        return (1, float(value), "")
    if isinstance(value, numbers.Real):
        return (0, float(value), "")
    return (2, 0.0, str(value))


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
