"""The report's figures: each function takes the summary table (or data) and returns a Figure.

Every plot shows mean ± std over seeds (the summary table's numbers). `note` (a partial or smoke
report) goes into every title. The Agg canvas is attached per figure, so the global pyplot
state is never touched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from featloss.names import value_label as _fmt
from featloss.summary import MISSING, sort_key as _sort_key

ACCURACY = "test/accuracy"  # what the plots show
FEATURE_DIM, DROPOUT, AUGMENT, CLASSES = ("model.feature_dim", "model.dropout", "data.augment",
                                          "data.classes")
DPI = 120
ZOOM = 4.0  # the zoomed panel shows feature dimensions from (k−1)/2 to ZOOM·(k−1)
OFF_SCALE = 0.15  # ... and leaves out (naming them) losses this far below the best mean there


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1, **shared):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows))
    FigureCanvasAgg(fig)
    grid = fig.subplots(nrows, ncols, squeeze=False, **shared)
    return fig, [ax for row in grid for ax in row]


def save_figure(fig, path: str | Path) -> None:
    fig.savefig(str(path), dpi=DPI, bbox_inches="tight")


def _short_key(key: str) -> str:
    return key.split(".")[-1]


def _label(row, keys: list[str], loss: str | None = None) -> str:
    extra = ", ".join(f"{_short_key(k)}={_fmt(row[k])}" for k in keys if row[k] != MISSING)
    if loss is None:
        return extra or "all"
    return f"{loss} ({extra})" if extra else loss


def _std(values) -> list[float]:
    return [0.0 if v is None or not math.isfinite(float(v)) else float(v) for v in values]


def _title(text: str, note: str) -> str:
    return f"{text}\n({note})" if note else text


def _done(table):
    return table[table[f"{ACCURACY} n"].gt(0)]


def _errorbars(ax, rows, label: str, color=None) -> None:
    rows = sorted(rows, key=lambda r: r[FEATURE_DIM])
    ax.errorbar([r[FEATURE_DIM] for r in rows], [r[f"{ACCURACY} mean"] for r in rows],
                yerr=_std(r[f"{ACCURACY} std"] for r in rows), marker="o", capsize=3,
                label=label, color=color)


def plot_accuracy_vs_feature_dim(table, k: int | None, series_keys: list[str] | None = None,
                                 note: str = ""):
    """Small multiples of test accuracy vs feature dimension: one panel per loss (shared axes,
    log x, k−1 marked), then one panel with every loss near k−1 (d within a factor ZOOM of
    k−1, y zoomed to those points).

    `table` holds one class count k; `series_keys` (other grid keys) split a loss's panel into
    one errorbar series per value.
    """
    series_keys = series_keys or []
    part = _done(table[table[FEATURE_DIM] != MISSING])
    losses = list(dict.fromkeys(part["loss"]))
    zoom = k is not None and k > 1
    panels = len(losses) + (1 if zoom else 0)
    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    fig, axes = _figure(3.8, 3.2, nrows, ncols)
    dims = sorted({int(d) for d in part[FEATURE_DIM]} | ({k - 1} if zoom else set()))
    low = min((r[f"{ACCURACY} mean"] - _std([r[f"{ACCURACY} std"]])[0]
               for _, r in part.iterrows()), default=0.0)
    for ax, loss in zip(axes, losses):
        rows = [r for _, r in part[part["loss"] == loss].iterrows()]
        groups: dict[str, list] = {}
        for r in rows:
            groups.setdefault(_label(r, series_keys), []).append(r)
        for label, members in groups.items():
            _errorbars(ax, members, label)
        if len(groups) > 1:
            _legend(ax, fontsize="x-small", loc="lower right")
        ax.set_title(loss, fontsize="medium")
    for ax in axes[:len(losses)]:  # shared axes
        _dim_axis(ax, dims, k if zoom else None)
        ax.set_ylim(max(0.0, low - 0.03), 1.01)
    if zoom:
        ax = axes[len(losses)]
        near = part[(part[FEATURE_DIM] >= (k - 1) / 2) & (part[FEATURE_DIM] <= (k - 1) * ZOOM)]
        top_mean = near[f"{ACCURACY} mean"].max() if len(near) else 1.0
        off = sorted({r["loss"] for _, r in near.iterrows()
                      if r[f"{ACCURACY} mean"] < top_mean - OFF_SCALE}, key=losses.index)
        near = near[~near["loss"].isin(off)]
        series = [(loss, label, members) for loss in losses
                  for label, members in _groups(near[near["loss"] == loss], series_keys).items()]
        for i, (loss, label, members) in enumerate(series):
            _errorbars(ax, members, f"{loss}" + (f" ({label})" if label != "all" else ""),
                       color=f"C{i % 10}")
        near_dims = sorted({int(d) for d in near[FEATURE_DIM]} | {k - 1})
        _dim_axis(ax, near_dims, k)
        if len(near):
            means = [r[f"{ACCURACY} mean"] for _, r in near.iterrows()]
            stds = _std(r[f"{ACCURACY} std"] for _, r in near.iterrows())
            bottom = min(m - s for m, s in zip(means, stds))
            top = max(m + s for m, s in zip(means, stds))
            pad = max(0.005, 0.1 * (top - bottom))
            ax.set_ylim(bottom - pad, min(1.0, top) + pad)
        ax.set_title(f"near k−1 = {k - 1} (zoomed)", fontsize="medium")
        if off:  # left out, named: their means near k−1 are far below the best
            # beside the panel, under its legend: inside it would cover data points
            ax.text(1.02, 0.0, f"off scale (> {OFF_SCALE:g}\nbelow the best):\n" +
                    "\n".join(off), transform=ax.transAxes, fontsize="x-small", va="bottom")
        _legend(ax, fontsize="x-small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    for ax in axes[panels:]:
        ax.set_visible(False)
    for ax in axes[:panels]:
        ax.set_xlabel("feature dimension d (log scale)", fontsize="small")
        ax.set_ylabel("test accuracy", fontsize="small")
    name = "test accuracy vs feature dimension (mean ± std over seeds)"
    fig.suptitle(_title(f"{name}, k = {k}" if k else name, note))
    fig.tight_layout()
    return fig


def _groups(part, keys: list[str]) -> dict[str, list]:
    out: dict[str, list] = {}
    for _, r in part.iterrows():
        out.setdefault(_label(r, keys), []).append(r)
    return out


def _dim_axis(ax, dims: list[int], k: int | None) -> None:
    from matplotlib.ticker import NullFormatter

    if k:
        ax.axvline(k - 1, color="gray", linestyle="--", label="k−1")
    ax.set_xscale("log")
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(labelsize="small")


def plot_dropout(table, panel_key: str | None = None, grid_keys: list[str] | None = None,
                 note: str = ""):
    """The NCM paper's Table 3 layout: `plot_bars` over the dropout rate."""
    return plot_bars(table, DROPOUT, panel_key, grid_keys, note)


def plot_bars(table, key: str, panel_key: str | None = None, grid_keys: list[str] | None = None,
              note: str = ""):
    """Grouped bars: losses on x, one bar per value of `key` (a loss without the key: one bar,
    '-'), std error bars; a panel per `panel_key` value (e.g. ``data.augment``). The y axis
    spans the data (not 0-1), so differences of a point show; the legend sits outside."""
    import numpy as np

    grid_keys = grid_keys or [key]
    group_keys = [k for k in grid_keys if k not in (key, panel_key)]
    part = _done(table)
    panels = (sorted({v for v in part[panel_key]}, key=_sort_key) if panel_key else [None])
    values = sorted({v for v in part[key]}, key=_sort_key)
    short = _short_key(key)
    fig, axes = _figure(max(4.5, 0.5 * len(part) / len(panels) + 2), 3.8, 1, len(panels),
                        sharey=True)
    lows, highs = [], []
    for ax, panel in zip(axes, panels):
        sub = part if panel is None else part[part[panel_key] == panel]
        groups = list(dict.fromkeys(_label(r, group_keys, r["loss"]) for _, r in sub.iterrows()))
        width = 0.8 / max(1, len(values))
        for i, value in enumerate(values):
            heights, errors, xs = [], [], []
            for j, label in enumerate(groups):
                match = [r for _, r in sub.iterrows() if r[key] == value
                         and _label(r, group_keys, r["loss"]) == label]
                if match:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    heights.append(match[0][f"{ACCURACY} mean"])
                    errors.append(_std([match[0][f"{ACCURACY} std"]])[0])
            lows += [h - e for h, e in zip(heights, errors)]
            highs += [h + e for h, e in zip(heights, errors)]
            ax.bar(xs, heights, width, yerr=errors, capsize=3, label=f"{short}={_fmt(value)}",
                   color=f"C{i % 10}")
        ax.set_xticks(np.arange(len(groups)), groups, rotation=20 if len(groups) > 4 else 0)
        ax.set_xlabel("loss")
        name = short if panel is None else f"{_short_key(panel_key)}={_fmt(panel)}"
        ax.set_title(name, fontsize="medium")
    if lows:
        pad = max(0.005, 0.15 * (max(highs) - min(lows)))
        axes[0].set_ylim(min(lows) - pad, min(1.0, max(highs)) + pad)
    axes[0].set_ylabel("test accuracy (mean ± std over seeds)")
    _legend(axes[-1], fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(_title(f"test accuracy by {short} (y axis not from 0)", note))
    fig.tight_layout()
    return fig


def plot_losses(table, note: str = ""):
    """One bar per loss (its one summary row: a grid without keys, or a search's final phase
    with the selected config), mean ± std over seeds, n under each loss; y spans the data."""
    import numpy as np

    part = _done(table)
    means = part[f"{ACCURACY} mean"].to_numpy(dtype=float)
    errors = np.array(_std(part[f"{ACCURACY} std"]))
    fig, (ax,) = _figure(max(4.5, 0.7 * len(part) + 2), 3.8)
    ax.bar(np.arange(len(part)), means, 0.6, yerr=errors, capsize=3, color="C0")
    ax.set_xticks(np.arange(len(part)), [f"{r['loss']}\nn={int(r['n'])}"
                                         for _, r in part.iterrows()])
    low, high = float(np.min(means - errors)), float(np.max(means + errors))
    pad = max(0.005, 0.15 * (high - low))
    ax.set_ylim(low - pad, min(1.0, high) + pad)
    ax.set_xlabel("loss")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title(_title("test accuracy by loss (y axis not from 0)", note))
    fig.tight_layout()
    return fig


def heatmap_matrix(table, loss: str, row_key: str, col_key: str):
    """(row values, column values, mean test accuracy matrix with NaN for missing cells)."""
    import numpy as np

    part = _done(table[table["loss"] == loss])
    rows = sorted({v for v in part[row_key]}, key=_sort_key)
    cols = sorted({v for v in part[col_key]}, key=_sort_key)
    matrix = np.full((len(rows), len(cols)), np.nan)
    for _, r in part.iterrows():
        matrix[rows.index(r[row_key]), cols.index(r[col_key])] = r[f"{ACCURACY} mean"]
    return rows, cols, matrix


def plot_heatmap(table, loss: str, row_key: str, col_key: str, note: str = ""):
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
    ax.set_title(_title(f"{loss}: mean test accuracy", note))
    fig.colorbar(image, ax=ax, label="test accuracy")
    fig.tight_layout()
    return fig


def completed_search_trials(trials):
    """The rows of an Optuna trials table (``number``, ``value``, ``state``) whose trial
    completed with a finite value, by trial number (none when every trial failed)."""
    import numpy as np
    import pandas as pd

    frame = trials
    if "state" in frame:
        frame = frame.loc[frame["state"] == "COMPLETE"]
    values = pd.to_numeric(frame["value"], errors="coerce").to_numpy(dtype=float)
    return frame.loc[np.isfinite(values)].sort_values("number")


def plot_search_history(trials, loss: str, metric: str = "val/accuracy", mode: str = "max",
                        note: str = ""):
    """Optuna trial number vs objective (completed trials) and the best-so-far line."""
    from matplotlib.ticker import MaxNLocator

    frame = completed_search_trials(trials)
    trial_numbers = [int(n) for n in frame["number"]]
    values = [float(v) for v in frame["value"]]
    best, current = [], None
    for v in values:
        current = v if current is None else (max(current, v) if mode == "max" else min(current, v))
        best.append(current)
    fig, (ax,) = _figure(6, 4)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.plot(trial_numbers, values, "o", alpha=0.7, label="trial")
    ax.plot(trial_numbers, best, drawstyle="steps-post", color="C3", label="best so far")
    ax.set_xlabel("Optuna trial number")
    ax.set_ylabel(f"{metric} (objective, {mode})")
    ax.set_title(_title(f"{loss}: search history", note))
    _legend(ax, fontsize="small")
    fig.tight_layout()
    return fig


def plot_importance(importance: dict[str, float], loss: str, note: str = ""):
    """Optuna hyperparameter importances as horizontal bars, the largest on top."""
    items = sorted(importance.items(), key=lambda kv: kv[1])
    fig, (ax,) = _figure(6, 0.5 * len(items) + 2)
    ax.barh(range(len(items)), [v for _, v in items])
    ax.set_yticks(range(len(items)), [k for k, _ in items])
    ax.set_xlabel("importance (fANOVA)")
    ax.set_title(_title(f"{loss}: hyperparameter importance", note))
    fig.tight_layout()
    return fig


def plot_features_2d(panels: list[dict[str, Any]], note: str = ""):
    """2-D validation features, one panel per loss on shared axes, coloured by class.

    Each panel's features are divided by their largest norm (losses differ in scale by orders
    of magnitude; directions are what the papers' figures compare), so every panel spans the
    unit disc; the class vectors (weight rows, centroids or anchors) are drawn as unit arrows.
    `panels`: dicts with ``loss``, ``features`` (N, 2), ``labels`` (N,), ``class_vectors`` (C, 2)
    and ``run`` (the trial shown).
    """
    import numpy as np

    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = _figure(3.6, 3.6, nrows, ncols, sharex=True, sharey=True)
    for ax, panel in zip(axes, panels):
        features = np.asarray(panel["features"], float)
        labels = np.asarray(panel["labels"])
        vectors = np.asarray(panel["class_vectors"], float).reshape(-1, 2)
        reach = float(np.linalg.norm(features, axis=1).max()) if len(features) else 1.0
        features = features / (reach or 1.0)
        for c in sorted(set(labels.tolist())):
            points = features[labels == c]
            ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.5, color=f"C{c % 10}",
                       label=f"class {c}")
        for c, v in enumerate(vectors):
            length = float(np.linalg.norm(v)) or 1.0
            ax.annotate("", xy=(v[0] / length, v[1] / length), xytext=(0.0, 0.0),
                        arrowprops={"arrowstyle": "->", "color": f"C{c % 10}", "lw": 1.6})
        ax.axhline(0, color="lightgray", lw=0.5)
        ax.axvline(0, color="lightgray", lw=0.5)
        ax.set_title(f"{panel['loss']}  (÷{reach:.3g})", fontsize="medium")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].set_xlim(-1.1, 1.1)
    axes[0].set_ylim(-1.1, 1.1)
    for ax in axes[:len(panels)]:
        ax.set_aspect("equal")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small",
               markerscale=3)
    fig.suptitle(_title("2-D validation features ÷ their largest norm; arrows: class vectors "
                        "(unit)", note))
    fig.tight_layout()
    return fig


def _legend(ax, **kwargs) -> None:
    """A legend where the axes hold labelled artists (matplotlib warns on an empty one: a
    study whose trials all failed draws none)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**kwargs)
