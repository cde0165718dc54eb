"""The report's tables beyond the summary: the best feature dimension per loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from featloss.summary import MISSING

ACCURACY = "test/accuracy"
SELECTION = "val/accuracy"  # what the best-dimension rule selects on: never the test set
FEATURE_DIM = "model.feature_dim"
BEST_DIM_RULE = ("the smallest feature dimension whose mean validation accuracy (over seeds) is "
                 "within one standard error of the best cell's mean: mean(d) >= best mean − "
                 "std/√n of the best cell (0 when n = 1); the best cell is the one with the "
                 "highest mean. Selection uses validation accuracy only; the chosen dimension's "
                 "test accuracy is reported beside it")


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


def best_dims_table(table, grid_keys: list[str]):
    """Per loss (and per value of the other grid keys): BestDim as a table."""
    import pandas as pd

    if FEATURE_DIM not in grid_keys or table.empty:
        return pd.DataFrame()
    others = [k for k in grid_keys if k != FEATURE_DIM]
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


