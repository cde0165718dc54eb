"""`featloss report STUDY`: tables and plots of a study's MLflow runs.

The report reads one invocation of a study (its parent run and that run's child runs) through
`featloss.tracking`, and writes to a folder and, as artifacts under ``report/``, to the parent run:

- ``summary.md`` / ``summary.csv`` / ``summary.parquet``: completed trials grouped by loss and the
  study's grid keys (grid studies) or final-phase runs by loss with the selected hyperparameters
  (search studies); mean, std (ddof=1) and n over seeds of the accuracies and feature metrics,
  plus how many trials of each group failed or diverged;
- PNG plots (accuracy vs feature dimension with the k−1 line, the dropout bars, grid heat maps,
  Optuna search history and importance, the 2-D feature scatter), each drawn by a function that
  returns its `Figure`;
- ``report.md``: the tables, the best feature dimension per loss with the rule that picks it,
  and links to the plots. A study still running (or with unfinished trials) is marked partial.

Everything here is read-only on the runs except the ``report/`` artifacts. The Agg canvas is
attached per figure, so the global pyplot state is never touched.
"""

from __future__ import annotations

import argparse
import json
import math
import numbers
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from featloss.errors import ConfigError

METRICS = ["test/accuracy", "val/accuracy", "feat/intra_class_std", "feat/mean_angle_deg",
           "feat/min_interclass_angle_deg"]
ACCURACY = "test/accuracy"  # what the plots show
SELECTION = "val/accuracy"  # what the best-dimension rule selects on: never the test set
FEATURE_DIM, DROPOUT, AUGMENT, CLASSES = ("model.feature_dim", "model.dropout", "data.augment",
                                          "data.classes")
FINISHED = {"completed", "diverged", "stopped", "failed"}
MISSING = "-"  # a grid key that does not apply to a loss (e.g. loss.lam for softmax)
DPI = 120
DEFAULT_OUT = "featloss_report"
BEST_DIM_RULE = ("the smallest feature dimension whose mean validation accuracy (over seeds) is "
                 "within one standard error of the best cell's mean: mean(d) >= best mean − "
                 "std/√n of the best cell (0 when n = 1); the best cell is the one with the "
                 "highest mean. Selection uses validation accuracy only; the chosen dimension's "
                 "test accuracy is reported beside it")


# -- the CLI ---------------------------------------------------------------------------------------

def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("report", help="tables and plots of a study's MLflow runs")
    parser.add_argument("study", help="study name (the MLflow experiment)")
    parser.add_argument("--out", help=f"output folder (default ./{DEFAULT_OUT}/<study>)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or "
                                               "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--parent", metavar="RUN_ID",
                        help="the study invocation's parent run (default: the newest)")
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    from featloss.tracking import default_tracking_uri

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet downloads
    uri = args.tracking_uri or default_tracking_uri()
    out = args.out or str(Path(DEFAULT_OUT) / args.study)
    report = build_report(uri, args.study, out, parent_run_id=args.parent)
    if report.partial:
        print(report.partial)
    print(f"report of '{args.study}' (parent run {report.parent_run_id}): {report.out_dir}")
    print(f"logged to the parent run under report/ ({len(report.files)} files)")
    short = short_table(report.table, report.group_keys)
    print(short.to_markdown(index=False) if len(short) else "(no completed trials yet)")
    return 0


def short_table(table, group_keys: list[str]):
    """The stdout version: group columns, accuracies as mean ± std, n, failed, diverged."""
    import pandas as pd

    from featloss.summary import mean_std

    if table.empty:
        return table
    out = pd.DataFrame(table[["loss", *group_keys]])
    for metric in ("val/accuracy", "test/accuracy"):
        out[metric] = [mean_std(m, s, n) for m, s, n in zip(
            table[f"{metric} mean"], table[f"{metric} std"], table[f"{metric} n"])]
    for column in ("n", "failed", "diverged"):
        out[column] = table[column]
    return out


# -- reading the study back ------------------------------------------------------------------------

@dataclass
class StudyInfo:
    """What the report needs to know about one invocation of a study."""

    name: str
    mode: str  # grid | search
    losses: list[str]
    grid_keys: list[str]
    seeds: list[int]
    search_metric: str = "val/accuracy"
    search_mode: str = "max"
    searched: dict[str, list[str]] = field(default_factory=dict)  # loss -> searched keys
    expected_trials: int | None = None  # from plan.json


def study_info(name: str, parent: dict, study_yaml: str | None, plan: dict | None) -> StudyInfo:
    from featloss.yamlio import load_yaml

    raw = load_yaml(study_yaml) if study_yaml else {}
    raw = raw if isinstance(raw, dict) else {}
    search = raw.get("search") if isinstance(raw.get("search"), dict) else None
    mode = "search" if search or parent["tags"].get("mode") == "search" else "grid"
    grid = raw.get("grid") or {}
    seeds = [s for s in raw.get("seeds", [0]) if isinstance(s, int)] or [0]
    info = StudyInfo(name=name, mode=mode, losses=list(raw.get("losses") or []),
                     grid_keys=[k for k in grid if k != "seed"] if mode == "grid" else [],
                     seeds=seeds)
    if search:
        info.search_metric = search.get("metric", info.search_metric)
        info.search_mode = search.get("mode", info.search_mode)
    if plan:
        smoke = bool(plan.get("smoke"))
        searches = plan.get("searches") or []
        info.searched = {s["loss"]: list(s.get("space", {})) for s in searches}
        if mode == "search":
            info.expected_trials = (sum(int(s.get("trials", 0)) for s in searches)
                                    + len(searches) * (1 if smoke else len(seeds)))
        else:
            info.expected_trials = len(plan.get("grid_trials") or [])
    return info


def _parent_record(parents: list[dict], parent_run_id: str | None, study: str) -> dict:
    if parent_run_id is None:
        return parents[0]
    for parent in parents:
        if parent["run_id"] == parent_run_id:
            return parent
    raise ConfigError(f"--parent {parent_run_id} is not a run of study '{study}' (its runs: "
                      f"{', '.join(p['run_id'] for p in parents[:5])})")


def _fetch(uri: str, run_id: str, path: str, folder: str) -> Path | None:
    """Download one artifact of a run; None when the run does not have it.

    Listed first: MLflow's download raises a generic error for a missing path.
    """
    from featloss.tracking import download_artifact, list_artifacts

    parent = str(Path(path).parent) if "/" in path else None
    if path not in list_artifacts(uri, run_id, parent):
        return None
    local = download_artifact(uri, run_id, path, folder)
    return Path(local) if local and Path(local).is_file() else None


def _read_text(uri: str, run_id: str, path: str, folder: str) -> str | None:
    local = _fetch(uri, run_id, path, folder)
    return local.read_text() if local else None


# -- the summary table -----------------------------------------------------------------------------

def param_value(value: Any) -> Any:
    """An MLflow param string as a Python value; absent or ``None`` -> MISSING."""
    from featloss.summary import parse_param

    value = parse_param(value)
    if value is None or value == "None" or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return value


def _sort_key(value: Any) -> tuple:
    if isinstance(value, (bool, _np_bool())):
        return (1, int(value), "")
    if isinstance(value, numbers.Real):
        return (0, float(value), "")
    return (2, 0.0, str(value))


def report_rows(records: list[dict], info: StudyInfo) -> list[dict]:
    """The finished trials that the table counts: one dict per trial with its group values.

    Grid studies: the grid phase; search studies: the final phase, grouped by loss with the
    searched keys' selected values as one ``selected`` column.
    """
    phase = "final" if info.mode == "search" else "grid"
    rows = []
    for r in records:
        status = r["tags"].get("status")
        if status not in FINISHED or r["tags"].get("phase", phase) != phase:
            continue
        loss = r["tags"].get("loss") or r["params"].get("loss")
        row = {"loss": loss, "status": status, "seed": param_value(r["tags"].get("seed")),
               "run_id": r.get("run_id")}
        if info.mode == "search":
            keys = info.searched.get(loss) or []
            row["selected"] = ", ".join(f"{k}={_fmt(param_value(r['params'].get(k)))}"
                                        for k in keys) or "(defaults)"
        for key in info.grid_keys:
            row[key] = param_value(r["params"].get(key))
        for metric in METRICS:
            value = r["metrics"].get(metric, math.nan)
            row[metric] = value if isinstance(value, (int, float)) else math.nan
        rows.append(row)
    return rows


def group_keys_of(info: StudyInfo) -> list[str]:
    return ["selected"] if info.mode == "search" else list(info.grid_keys)


def summary_table(records: list[dict], info: StudyInfo):
    """One row per group: group values, n (completed), failed, diverged, mean/std/n per metric.

    Only completed trials enter the statistics; std has ddof=1 (NaN when n < 2).
    """
    import pandas as pd

    keys = group_keys_of(info)
    groups: dict[tuple, list[dict]] = {}
    for row in report_rows(records, info):
        groups.setdefault((row["loss"], *(row[k] for k in keys)), []).append(row)
    rank = {loss: i for i, loss in enumerate(info.losses)}
    ordered = sorted(groups, key=lambda g: (rank.get(g[0], len(rank)), str(g[0]),
                                            *(_sort_key(v) for v in g[1:])))
    out = []
    for group in ordered:
        rows = groups[group]
        done = [r for r in rows if r["status"] == "completed"]
        line = dict(zip(["loss", *keys], group))
        line["n"] = len(done)
        line["failed"] = sum(r["status"] == "failed" for r in rows)
        line["diverged"] = sum(r["status"] == "diverged" for r in rows)
        for metric in METRICS:
            values = [float(r[metric]) for r in done if math.isfinite(float(r[metric]))]
            line[f"{metric} mean"] = sum(values) / len(values) if values else math.nan
            line[f"{metric} std"] = (pd.Series(values).std(ddof=1) if len(values) > 1
                                     else math.nan)
            line[f"{metric} n"] = len(values)
        out.append(line)
    columns = ["loss", *keys, "n", "failed", "diverged",
               *[f"{m} {s}" for m in METRICS for s in ("mean", "std", "n")]]
    return pd.DataFrame(out, columns=columns)


def display_summary(table):
    """Markdown-ready: 'mean ± std' per metric, then n, failed, diverged."""
    from featloss.summary import mean_std

    out = table.copy()
    for metric in METRICS:
        out[metric] = [mean_std(m, s, n) for m, s, n in zip(
            table[f"{metric} mean"], table[f"{metric} std"], table[f"{metric} n"])]
        out = out.drop(columns=[f"{metric} mean", f"{metric} std", f"{metric} n"])
    front = [c for c in out.columns if c not in ("n", "failed", "diverged")]
    return out[front + ["n", "failed", "diverged"]]


def _parquet_ready(table):
    """pyarrow needs one type per column: grid columns mixing numbers and '-' become text."""
    out = table.copy()
    for column in out.columns:
        if out[column].dtype == object:
            values = list(out[column])
            if not all(isinstance(v, str) for v in values):
                out[column] = [_fmt(v) for v in values]
    return out


def _np_bool() -> type:
    import numpy as np

    return np.bool_


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# -- the best feature dimension --------------------------------------------------------------------

@dataclass(frozen=True)
class BestDim:
    feature_dim: int  # the rule's choice
    mean: float  # its mean
    best_dim: int  # the cell with the highest mean
    best_mean: float
    best_std: float
    best_n: int
    threshold: float  # best_mean − standard error of the best cell


def best_feature_dim(cells: Iterable[tuple[int, float, float, int]]) -> BestDim | None:
    """Apply BEST_DIM_RULE to (feature_dim, mean, std, n) cells; None when no cell has a mean.

    The standard error is std/√n of the best cell (0 when n = 1 or its std is unknown); the
    choice is the smallest dimension whose mean is >= best mean − that standard error.
    """
    usable = [(int(d), float(m), float(s) if s is not None else math.nan, int(n))
              for d, m, s, n in cells
              if n and n > 0 and m is not None and math.isfinite(float(m))]
    if not usable:
        return None
    best = max(usable, key=lambda c: (c[1], -c[0]))  # ties: the smaller dimension
    _, best_mean, best_std, best_n = best
    se = best_std / math.sqrt(best_n) if best_n > 1 and math.isfinite(best_std) else 0.0
    threshold = best_mean - se
    chosen = min((c for c in usable if c[1] >= threshold - 1e-12), key=lambda c: c[0])
    return BestDim(chosen[0], chosen[1], best[0], best_mean, best_std, best_n, threshold)


def best_dims_table(table, info: StudyInfo):
    """Per loss (and per value of the other grid keys): BestDim as a table."""
    import pandas as pd

    if FEATURE_DIM not in info.grid_keys or table.empty:
        return pd.DataFrame()
    others = [k for k in info.grid_keys if k != FEATURE_DIM]
    rows = []
    seen: dict[tuple, list] = {}
    tests: dict[tuple, tuple] = {}
    for _, r in table.iterrows():
        if r[FEATURE_DIM] == MISSING:
            continue
        seen.setdefault((r["loss"], *(r[k] for k in others)), []).append(
            (r[FEATURE_DIM], r[f"{SELECTION} mean"], r[f"{SELECTION} std"], r[f"{SELECTION} n"]))
        tests[(r["loss"], *(r[k] for k in others), r[FEATURE_DIM])] = (
            r[f"{ACCURACY} mean"], r[f"{ACCURACY} std"])
    for group, cells in seen.items():
        best = best_feature_dim(cells)
        if best is None:
            continue
        test_mean, test_std = tests[(*group, best.feature_dim)]
        row = dict(zip(["loss", *others], group))
        row.update({"best feature_dim": best.feature_dim, "its val mean": best.mean,
                    "its test mean": test_mean, "its test std": test_std,
                    "argmax feature_dim": best.best_dim, "argmax mean": best.best_mean,
                    "argmax std": best.best_std, "argmax n": best.best_n,
                    "threshold": best.threshold})
        rows.append(row)
    return pd.DataFrame(rows)


# -- plots -----------------------------------------------------------------------------------------

def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def save_figure(fig, path: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(str(path), dpi=DPI)


def _short_key(key: str) -> str:
    return key.split(".")[-1]


def _series_label(row, loss: str, keys: list[str]) -> str:
    extra = ", ".join(f"{_short_key(k)}={_fmt(row[k])}" for k in keys if row[k] != MISSING)
    return f"{loss} ({extra})" if extra else loss


def _varying(table, key: str) -> bool:
    return key in table and len({v for v in table[key] if v != MISSING}) > 1


def _std(values) -> list[float]:
    return [0.0 if v is None or not math.isfinite(float(v)) else float(v) for v in values]


def _title(text: str, suffix: str) -> str:
    return f"{text}\n({suffix})" if suffix else text


def plot_accuracy_vs_feature_dim(table, k_by_panel: dict[Any, int | None],
                                 panel_key: str | None = None, grid_keys: list[str] | None = None,
                                 partial: str = ""):
    """Mean test accuracy vs feature dimension, one errorbar series per loss, log x, k−1 line.

    `k_by_panel` maps each panel value (``data.classes`` when it varies, else None) to the class
    count k of that panel; one panel per key.
    """
    from matplotlib.ticker import NullFormatter

    grid_keys = grid_keys or [FEATURE_DIM]
    series_keys = [k for k in grid_keys if k not in (FEATURE_DIM, panel_key)]
    panels = list(k_by_panel)
    fig, axes = _figure(5.5, 4.2, len(panels))
    for ax, panel in zip(axes, panels):
        part = table[(table[FEATURE_DIM] != MISSING) & table[f"{ACCURACY} n"].gt(0)]
        if panel_key is not None:
            part = part[part[panel_key] == panel]
        labels: dict[str, list] = {}
        for _, row in part.iterrows():
            labels.setdefault(_series_label(row, row["loss"], series_keys), []).append(row)
        for label, rows in labels.items():
            rows = sorted(rows, key=lambda r: r[FEATURE_DIM])
            ax.errorbar([r[FEATURE_DIM] for r in rows], [r[f"{ACCURACY} mean"] for r in rows],
                        yerr=_std(r[f"{ACCURACY} std"] for r in rows), marker="o", capsize=3,
                        label=label)
        k = k_by_panel[panel]
        if k:
            ax.axvline(k - 1, color="gray", linestyle="--", label="k−1")
        ax.set_xscale("log")
        dims = sorted({int(d) for d in part[FEATURE_DIM]} | ({k - 1} if k else set()))
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("feature dimension d (log scale)")
        ax.set_ylabel("test accuracy (mean ± std over seeds)")
        name = "accuracy vs feature dimension"
        ax.set_title(_title(f"{name}, k = {k}" if k else name, partial))
        ax.legend(fontsize="small")
    return fig


def plot_dropout(table, panel_key: str | None = None, grid_keys: list[str] | None = None,
                 partial: str = ""):
    """Grouped bars: losses on x, one bar per dropout value, std error bars; a panel per
    ``data.augment`` value when it varies (the NCM paper's Table 3 layout)."""
    import numpy as np

    grid_keys = grid_keys or [DROPOUT]
    group_keys = [k for k in grid_keys if k not in (DROPOUT, panel_key)]
    part = table[(table[DROPOUT] != MISSING) & table[f"{ACCURACY} n"].gt(0)]
    panels = (sorted({v for v in part[panel_key]}, key=_sort_key) if panel_key else [None])
    dropouts = sorted({v for v in part[DROPOUT]}, key=_sort_key)
    fig, axes = _figure(max(5.0, 0.5 * len(part) / len(panels) + 2), 4.2, len(panels))
    for ax, panel in zip(axes, panels):
        sub = part if panel is None else part[part[panel_key] == panel]
        groups = []
        for _, row in sub.iterrows():
            label = _series_label(row, row["loss"], group_keys)
            if label not in groups:
                groups.append(label)
        width = 0.8 / max(1, len(dropouts))
        for i, p in enumerate(dropouts):
            heights, errors, xs = [], [], []
            for j, label in enumerate(groups):
                match = [r for _, r in sub.iterrows() if r[DROPOUT] == p
                         and _series_label(r, r["loss"], group_keys) == label]
                if match:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    heights.append(match[0][f"{ACCURACY} mean"])
                    errors.append(_std([match[0][f"{ACCURACY} std"]])[0])
            ax.bar(xs, heights, width, yerr=errors, capsize=3, label=f"dropout={_fmt(p)}")
        ax.set_xticks(np.arange(len(groups)), groups, rotation=20 if len(groups) > 4 else 0)
        ax.set_xlabel("loss")
        ax.set_ylabel("test accuracy (mean ± std over seeds)")
        name = "dropout" if panel is None else f"dropout, augment={_fmt(panel)}"
        ax.set_title(_title(name, partial))
        ax.legend(fontsize="small")
    return fig


def heatmap_matrix(table, loss: str, row_key: str, col_key: str):
    """(row values, column values, mean test accuracy matrix with NaN for missing cells)."""
    import numpy as np

    part = table[(table["loss"] == loss) & table[f"{ACCURACY} n"].gt(0)]
    rows = sorted({v for v in part[row_key]}, key=_sort_key)
    cols = sorted({v for v in part[col_key]}, key=_sort_key)
    matrix = np.full((len(rows), len(cols)), np.nan)
    for _, r in part.iterrows():
        matrix[rows.index(r[row_key]), cols.index(r[col_key])] = r[f"{ACCURACY} mean"]
    return rows, cols, matrix


def plot_heatmap(table, loss: str, row_key: str, col_key: str, partial: str = ""):
    """Mean test accuracy over a two-key grid, for one loss, with the values written in."""
    import numpy as np

    rows, cols, matrix = heatmap_matrix(table, loss, row_key, col_key)
    fig, (ax,) = _figure(1.2 * len(cols) + 3, 0.6 * len(rows) + 2.5)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="viridis", aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            if math.isfinite(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", color="white",
                        fontsize="small")
    ax.set_xticks(range(len(cols)), [_fmt(c) for c in cols])
    ax.set_yticks(range(len(rows)), [_fmt(r) for r in rows])
    ax.set_xlabel(col_key)
    ax.set_ylabel(row_key)
    ax.set_title(_title(f"{loss}: mean test accuracy", partial))
    fig.colorbar(image, ax=ax, label="test accuracy")
    return fig


def plot_search_history(trials, loss: str, metric: str = "val/accuracy", mode: str = "max",
                        partial: str = ""):
    """Optuna trial number vs objective (completed trials) and the best-so-far line."""
    frame = trials
    if "state" in frame:
        frame = frame[frame["state"] == "COMPLETE"]
    frame = frame[frame["value"].astype(float).map(math.isfinite)].sort_values("number")
    trial_numbers = [int(n) for n in frame["number"]]
    values = [float(v) for v in frame["value"]]
    best, current = [], None
    for v in values:
        current = v if current is None else (max(current, v) if mode == "max" else min(current, v))
        best.append(current)
    from matplotlib.ticker import MaxNLocator

    fig, (ax,) = _figure(6, 4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.plot(trial_numbers, values, "o", alpha=0.7, label="trial")
    ax.plot(trial_numbers, best, drawstyle="steps-post", color="C3", label="best so far")
    ax.set_xlabel("Optuna trial number")
    ax.set_ylabel(f"{metric} (objective, {mode})")
    ax.set_title(_title(f"{loss}: search history", partial))
    ax.legend(fontsize="small")
    return fig


def plot_importance(importance: dict[str, float], loss: str, partial: str = ""):
    """Optuna hyperparameter importances as horizontal bars, the largest on top."""
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig, (ax,) = _figure(6, 0.5 * len(items) + 2)
    ax.barh(range(len(items)), [v for _, v in items])
    ax.set_yticks(range(len(items)), [k for k, _ in items])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(_title(f"{loss}: hyperparameter importance", partial))
    return fig


def plot_features_2d(features, labels, class_vectors, loss: str, partial: str = "",
                     run: str = ""):
    """Validation features coloured by class, class vectors as arrows from the origin.

    The vectors are scaled by one common factor (shown in the legend) so the longest reaches the
    farthest feature; their directions and relative lengths are kept.
    """
    import numpy as np

    features, labels = np.asarray(features, float), np.asarray(labels)
    vectors = np.asarray(class_vectors, float).reshape(-1, 2)
    fig, (ax,) = _figure(5.5, 5)
    for c in sorted(set(labels.tolist())):
        points = features[labels == c]
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.6, color=f"C{c % 10}",
                   label=f"class {c}")
    if len(vectors):
        longest = float(np.linalg.norm(vectors, axis=1).max()) or 1.0
        reach = float(np.linalg.norm(features, axis=1).max()) if len(features) else 1.0
        scale = reach / longest
        for c, v in enumerate(vectors):
            ax.annotate("", xy=(v[0] * scale, v[1] * scale), xytext=(0.0, 0.0),
                        arrowprops={"arrowstyle": "->", "color": f"C{c % 10}", "lw": 1.8})
        ax.update_datalim(np.vstack([vectors * scale, [[0.0, 0.0]]]))  # arrows are not data
        ax.autoscale_view()
        ax.plot([], [], color="black", label=f"class vectors (×{scale:.3g})")
    ax.axhline(0, color="lightgray", lw=0.5)
    ax.axvline(0, color="lightgray", lw=0.5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("feature 1")
    ax.set_ylabel("feature 2")
    name = f"{loss}: 2-D validation features" + (f"\n{run}" if run else "")
    ax.set_title(_title(name, partial))
    ax.legend(fontsize="x-small", markerscale=2)
    return fig


# -- the report ------------------------------------------------------------------------------------

@dataclass
class Report:
    out_dir: str
    parent_run_id: str
    info: StudyInfo
    table: Any  # summary_table
    best_dims: Any
    group_keys: list[str]
    partial: str  # "" when complete
    files: list[str] = field(default_factory=list)  # names written under out_dir


def partial_note(parent: dict, trials: list[dict], expected: int | None) -> tuple[str, int, int]:
    """("partial: F of T trials finished" or "", F, T).

    A report is partial while the parent run is not FINISHED or some trial is unfinished.
    """
    finished = sum(t["tags"].get("status") in FINISHED for t in trials)
    total = max(len(trials), expected or 0) if parent["status"] != "FINISHED" else len(trials)
    if parent["status"] == "FINISHED" and finished == total:
        return "", finished, total
    return f"partial: {finished} of {total} trials finished", finished, total


def _class_count(records: list[dict]) -> int | None:
    from featloss.data import dataset_info

    for r in records:
        classes = param_value(r["params"].get(CLASSES))
        if isinstance(classes, int) and not isinstance(classes, bool):
            return classes
    for r in records:
        dataset = r["params"].get("data.dataset") or r["tags"].get("dataset")
        if dataset:
            try:
                return dataset_info(dataset).num_classes
            except ConfigError:
                return None
    return None


def build_report(tracking_uri: str, study_name: str, out_dir: str,
                 parent_run_id: str | None = None) -> Report:
    """Read the study's runs, write the report to `out_dir` and log it under report/."""
    from featloss.tracking import PARENT_TAG, log_report, normalise_uri, study_runs

    uri = normalise_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"no MLflow database at {uri}; pass the --tracking-uri the study "
                          f"logged to")
    parents, trials = study_runs(uri, study_name)
    if not parents:
        raise ConfigError(f"study '{study_name}' has no runs at {uri}; run it first")
    parent = _parent_record(parents, parent_run_id, study_name)
    trials = [t for t in trials if t["tags"].get(PARENT_TAG) == parent["run_id"]]
    with tempfile.TemporaryDirectory() as scratch:
        study_yaml = _read_text(uri, parent["run_id"], "study.yaml", scratch)
        plan_text = _read_text(uri, parent["run_id"], "plan.json", scratch)
        info = study_info(study_name, parent, study_yaml,
                          json.loads(plan_text) if plan_text else None)
        if not info.losses:
            info.losses = sorted({t["tags"].get("loss", "") for t in trials} - {""})
        partial, _, _ = partial_note(parent, trials, info.expected_trials)
        table = summary_table(trials, info)
        best = best_dims_table(table, info)
        staging = Path(scratch) / "report"
        staging.mkdir()
        files = _write_tables(staging, table)
        plots = _write_plots(staging, uri, parent, trials, table, info, partial, scratch)
        files += plots
        (staging / "report.md").write_text(report_markdown(
            info, parent, table, best, plots, partial))
        files.append("report.md")
        log_report(uri, parent["run_id"], str(staging), "report")
        target = Path(out_dir).expanduser().resolve()
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copyfile(staging / name, target / name)
    return Report(str(target), parent["run_id"], info, table, best, group_keys_of(info), partial,
                  files)


def _write_tables(folder: Path, table) -> list[str]:
    display = display_summary(table) if len(table) else table
    (folder / "summary.md").write_text(display.to_markdown(index=False) + "\n" if len(table)
                                       else "(no completed trials)\n")
    table.to_csv(folder / "summary.csv", index=False)
    _parquet_ready(table).to_parquet(folder / "summary.parquet", engine="pyarrow", index=False)
    return ["summary.md", "summary.csv", "summary.parquet"]


def _write_plots(folder: Path, uri: str, parent: dict, trials: list[dict], table,
                 info: StudyInfo, partial: str, scratch: str) -> list[str]:
    written: list[str] = []

    def save(fig, name: str) -> None:
        save_figure(fig, folder / name)
        written.append(name)

    done = [t for t in trials if t["tags"].get("status") == "completed"]
    if len(table) and info.mode == "grid":
        keys = info.grid_keys
        if _varying(table, FEATURE_DIM):
            if _varying(table, CLASSES):
                panels = sorted({v for v in table[CLASSES] if v != MISSING}, key=_sort_key)
                k_by_panel = {p: int(p) if isinstance(p, numbers.Integral) else None
                              for p in panels}
                panel_key = CLASSES
            else:
                k_by_panel, panel_key = {None: _class_count(done or trials)}, None
            save(plot_accuracy_vs_feature_dim(table, k_by_panel, panel_key, keys, partial),
                 "accuracy_vs_feature_dim.png")
        if _varying(table, DROPOUT):
            panel_key = AUGMENT if _varying(table, AUGMENT) else None
            save(plot_dropout(table, panel_key, keys, partial), "dropout.png")
        if len(keys) == 2:
            for loss in dict.fromkeys(table["loss"]):
                part = table[table["loss"] == loss]
                if (all((part[k] != MISSING).any() for k in keys)
                        and part[f"{ACCURACY} n"].gt(0).any()):
                    save(plot_heatmap(table, loss, keys[0], keys[1], partial),
                         f"heatmap_{loss}.png")
    if info.mode == "search":
        _search_plots(uri, parent, info, partial, scratch, save)
    _feature_plots(uri, done, info, partial, scratch, save)
    return written


def _search_plots(uri, parent, info, partial, scratch, save) -> None:
    import io

    import pandas as pd

    from featloss.tracking import list_artifacts

    names = [Path(p).name for p in list_artifacts(uri, parent["run_id"], "optuna")]
    losses = info.losses + sorted({n.rsplit("_", 1)[0] for n in names} - set(info.losses))
    for loss in losses:
        if f"{loss}_trials.csv" in names:
            text = _read_text(uri, parent["run_id"], f"optuna/{loss}_trials.csv", scratch)
            if text:
                frame = pd.read_csv(io.StringIO(text))
                if {"number", "value"} <= set(frame.columns):
                    save(plot_search_history(frame, loss, info.search_metric, info.search_mode,
                                             partial), f"search_history_{loss}.png")
        if f"{loss}_importance.json" in names:
            text = _read_text(uri, parent["run_id"], f"optuna/{loss}_importance.json", scratch)
            importance = json.loads(text) if text else {}
            if importance:
                save(plot_importance(importance, loss, partial), f"importance_{loss}.png")


def _feature_plots(uri, done, info, partial, scratch, save) -> None:
    import numpy as np

    phase = "final" if info.mode == "search" else "grid"
    candidates: dict[str, list[dict]] = {}
    for t in done:
        dim = param_value(t["params"].get(FEATURE_DIM, t["tags"].get("feature_dim")))
        if dim == 2 and t["tags"].get("phase", phase) == phase:
            candidates.setdefault(t["tags"].get("loss") or t["params"].get("loss"), []).append(t)
    for loss, runs in candidates.items():
        runs.sort(key=lambda t: (_sort_key(param_value(t["tags"].get("seed"))), t.get("name", "")))
        for run in runs:  # the lowest seed that has features
            folder = Path(scratch) / run["run_id"]
            folder.mkdir(exist_ok=True)
            local = _fetch(uri, run["run_id"], "features.npz", str(folder))
            if local:
                with np.load(local) as data:
                    save(plot_features_2d(data["features"], data["labels"],
                                          data["class_vectors"], loss, partial,
                                          run=run.get("name", "")),
                         f"features_2d_{loss}.png")
                break


def report_markdown(info: StudyInfo, parent: dict, table, best, plots: list[str],
                    partial: str) -> str:
    lines = [f"# featloss report: {info.name}", ""]
    if partial:
        lines += [f"**{partial}** (parent run status {parent['status']}); only finished trials "
                  f"are included.", ""]
    lines += [f"- study mode: {info.mode}"
              + (f" (grid keys: {', '.join(info.grid_keys)})" if info.grid_keys else ""),
              f"- parent run: {parent['run_id']} ({parent['status']})",
              f"- statistics: mean ± std (ddof=1) over seeds of completed "
              f"{'final-phase' if info.mode == 'search' else 'grid'} trials; n = completed, "
              f"failed and diverged trials are counted per group", "", "## Summary", ""]
    lines.append(display_summary(table).to_markdown(index=False) if len(table)
                 else "(no completed trials)")
    lines += ["", "Files: summary.md, summary.csv, summary.parquet", ""]
    if FEATURE_DIM in info.grid_keys:
        lines += ["## Best feature dimension per loss", "", f"Rule: {BEST_DIM_RULE}.", ""]
        if len(best):
            shown = best.copy()
            for column in ("its val mean", "its test mean", "argmax mean", "threshold"):
                shown[column] = [f"{v:.4f}" for v in shown[column]]
            for column in ("its test std", "argmax std"):
                shown[column] = [f"{v:.4f}" if math.isfinite(v) else "-" for v in shown[column]]
            lines.append(shown.to_markdown(index=False))
        else:
            lines.append("(no completed trials)")
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        for name in plots:
            lines += [f"### {name[:-4]}", "", f"![{name[:-4]}]({name})", ""]
    return "\n".join(lines) + "\n"
