"""The report's figures: each function takes the summary table (or data) and returns a Figure.

The Agg canvas is attached per figure, so the global pyplot state is never touched.
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


