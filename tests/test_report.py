"""`featloss report`: tables, the best-dimension rule and plots, from a study's record.

Studies are built by hand: a `StudyRecord` with chosen metric values (what a study's driver
records) plus the MLflow parent and child runs written through featloss's own writers
(`ParentRun`, `TrialRuns`), read back by the report and checked with the real `MlflowClient`.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.text import Annotation
from mlflow.tracking import MlflowClient

import featloss.report as rp
from featloss.errors import ConfigError
from featloss.record import StudyRecord, TrialRecord
from featloss.report import plots
from featloss.report.tables import best_dims_table, best_feature_dim
from featloss.summary import display_table, parquet_ready, summary_table
from featloss.tracking import ParentRun, TrackingClient, TrialRuns, open_experiment
from featloss.yamlio import dump_yaml


# -- building a study in MLflow --------------------------------------------------------------------

# test/accuracy per (loss, feature_dim, dropout): one value per seed 0, 1; a string is the status
GRID_ACC = {
    ("softmax", 2, 0.0): [0.60, 0.64], ("softmax", 2, 0.5): [0.58, 0.62],
    ("softmax", 9, 0.0): [0.90, 0.94], ("softmax", 9, 0.5): [0.91, 0.95],
    ("softmax", 16, 0.0): [0.91, 0.97], ("softmax", 16, 0.5): [0.94, "diverged"],
    ("pod", 2, 0.0): [0.70, 0.72], ("pod", 2, 0.5): [0.69, 0.71],
    ("pod", 9, 0.0): [0.97, "failed"], ("pod", 9, 0.5): [0.96, 0.98],
    ("pod", 16, 0.0): [0.95, 0.97], ("pod", 16, 0.5): [0.94, 0.96],
}
GRID_STUDY = {"name": "dims", "data": {"dataset": "digits"},
              "model": {"backbone": "small_cnn"}, "losses": ["softmax", "pod"],
              "grid": {"model.feature_dim": [2, 9, 16], "model.dropout": [0.0, 0.5]},
              "seeds": [0, 1]}
FEATURES_A = np.array([[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], dtype=np.float32)
FEATURES_B = np.array([[3.0, 1.0], [-2.0, 0.5], [0.5, -4.0], [1.0, 1.0]], dtype=np.float32)


def metrics_for(acc: float, dim: int, seed: int) -> dict:
    return {"test/accuracy": acc, "val/accuracy": acc - 0.01,
            "feat/intra_class_std": dim / 10 + seed, "feat/mean_angle_deg": 30.0 + 2 * seed,
            "feat/min_interclass_angle_deg": 60.0 + dim}


class Built:
    """A study written as a run writes it: record in a results folder, MLflow parent + children."""

    def __init__(self, uri: str, raw: dict, results_dir: Path, planned: int) -> None:
        self.uri = uri
        self.raw = raw
        results_dir.mkdir(parents=True, exist_ok=True)
        self.record = StudyRecord(study=raw["name"], source=f"{raw['name']}.yaml",
                                  study_yaml=dump_yaml(raw), tracking_uri=uri,
                                  storage=str(results_dir.parent), results_dir=str(results_dir),
                                  planned=planned)
        client = TrackingClient(uri)
        experiment = open_experiment(client, raw["name"])
        self.parent = ParentRun(client, experiment, raw["name"])
        self.parent_run_id = self.parent.start(raw["name"], {"results_dir": str(results_dir)},
                                               {}, {"study.yaml": dump_yaml(raw)})
        self.record.parent_run_id = self.parent_run_id
        self.trials = TrialRuns(client, experiment, raw["name"], self.parent_run_id)
        self.record.save()

    def add(self, key: str, phase: str, loss: str, seed: int, params: dict, status: str,
            metrics: dict | None, features: dict | None = None, **sections) -> str:
        """One trial: 2 epochs logged (epoch 1 different: the report must use the last one)."""
        import torch

        from featloss.config import Config

        raw = {"data": {"dataset": self.raw["data"]["dataset"]},
               "model": {"backbone": "small_cnn", **self.raw.get("model", {})},
               "loss": {"name": loss}, "seed": seed}
        for key_path, value in params.items():
            section, name = key_path.split(".")
            raw.setdefault(section, {})[name] = value
        for section, values in sections.items():
            raw.setdefault(section, {}).update(values)
        config = Config.from_dict(raw).to_dict()
        run_id = self.trials.start(key, {"phase": phase, "loss": loss, "seed": str(seed)}, {})
        if metrics is not None:
            self.trials.log_epoch(run_id, {k: v / 2 for k, v in metrics.items()}, 1, 1000)
            self.trials.log_epoch(run_id, metrics, 2, 2000)
        if features is not None:
            self.trials.log_features(run_id, {k: torch.as_tensor(v) for k, v in features.items()})
        if status != "running":
            self.trials.finish(run_id, status)
        self.record.trials[key] = TrialRecord(
            key=key, phase=phase, loss=loss, seed=seed, config=config, params=params,
            status=status, metrics=metrics or {}, run_id=run_id, last_epoch=2, logged_epoch=2)
        self.record.save()
        return run_id

    def finish(self) -> None:
        self.record.finish("finished")
        self.record.save()
        self.parent.finish("FINISHED")


def build_grid_study(uri: str, folder: Path) -> Built:
    study = Built(uri, GRID_STUDY, folder / "dims-1", planned=24)
    for (loss, dim, dropout), values in GRID_ACC.items():
        for seed, value in enumerate(values):
            key = f"grid-{loss}-feature_dim={dim}-dropout={dropout}-s{seed}"
            features = None
            if (loss, dim, dropout, seed) == ("softmax", 2, 0.0, 1):
                features = {"features": FEATURES_A, "labels": np.array([0, 1, 2]),
                            "class_vectors": np.eye(3, 2, dtype=np.float32)}
            if (loss, dim, dropout, seed) == ("softmax", 2, 0.5, 0):
                features = {"features": FEATURES_B, "labels": np.array([0, 1, 1, 0]),
                            "class_vectors": np.array([[1.0, 0.0], [0.0, -0.5]], np.float32)}
            cell = {"model.feature_dim": dim, "model.dropout": dropout}
            if isinstance(value, str):
                study.add(key, "grid", loss, seed, cell, value, None)
            else:
                study.add(key, "grid", loss, seed, cell, "completed",
                          metrics_for(value, dim, seed), features)
    study.finish()
    return study


@pytest.fixture
def grid_study(tracking_uri, tmp_path):
    """A fresh copy per test (for tests that check what gets logged)."""
    return build_grid_study(tracking_uri, tmp_path / "results")


@pytest.fixture(scope="module")
def shared_grid(mlflow_template, tmp_path_factory) -> tuple[str, Built]:
    """One grid study for the tests that only read it (or log nothing they check)."""
    import shutil

    folder = tmp_path_factory.mktemp("report_grid")
    shutil.copy(mlflow_template, folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return uri, build_grid_study(uri, folder / "results")


def row_of(table: pd.DataFrame, **values) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for key, value in values.items():
        mask &= table[key.replace("__", ".")] == value
    assert mask.sum() == 1, f"{values}: {mask.sum()} rows"
    return table[mask].iloc[0]


GRID_KEYS = ["model.feature_dim", "model.dropout"]


def grid_table(study: Built) -> pd.DataFrame:
    return summary_table(study.record.trials.values(), "grid", GRID_KEYS, ["softmax", "pod"])


# -- the summary table -----------------------------------------------------------------------------

def test_summary_table_numbers_by_hand(shared_grid):
    table = grid_table(shared_grid[1])
    assert len(table) == 12
    assert list(table["loss"][:6]) == ["softmax"] * 6  # the study's loss order, then the grid's
    assert [(r["model.feature_dim"], r["model.dropout"]) for _, r in table[:3].iterrows()] == [
        (2, 0.0), (2, 0.5), (9, 0.0)]

    cell = row_of(table, loss="softmax", model__feature_dim=16, model__dropout=0.0)
    assert cell["test/accuracy mean"] == pytest.approx(0.94)
    assert cell["test/accuracy std"] == pytest.approx(math.sqrt(2 * 0.03 ** 2))  # ddof = 1
    assert cell["test/accuracy se"] == pytest.approx(0.03)  # std / sqrt(2)
    half = 12.7062047362 * 0.03  # t(0.975, 1 dof) x se
    assert cell["test/accuracy ci_low"] == pytest.approx(0.94 - half)
    assert cell["test/accuracy ci_high"] == 1.0  # 0.94 + half, clipped to accuracy's range
    assert cell["test/accuracy n"] == 2 and cell["n"] == 2
    assert cell["val/accuracy mean"] == pytest.approx(0.93)
    assert cell["feat/intra_class_std mean"] == pytest.approx(2.1)  # (1.6 + 2.6) / 2
    assert cell["feat/intra_class_std std"] == pytest.approx(math.sqrt(0.5))
    assert cell["feat/mean_angle_deg mean"] == pytest.approx(31.0)
    assert cell["feat/min_interclass_angle_deg mean"] == pytest.approx(76.0)
    assert cell["feat/min_interclass_angle_deg std"] == pytest.approx(0.0)
    assert (cell["failed"], cell["diverged"]) == (0, 0)

    diverged = row_of(table, loss="softmax", model__feature_dim=16, model__dropout=0.5)
    assert diverged["n"] == 1 and diverged["diverged"] == 1 and diverged["failed"] == 0
    assert diverged["test/accuracy mean"] == pytest.approx(0.94)
    assert math.isnan(diverged["test/accuracy std"])  # one seed: no std, no CI
    assert math.isnan(diverged["test/accuracy ci_low"])
    failed = row_of(table, loss="pod", model__feature_dim=9, model__dropout=0.0)
    assert (failed["n"], failed["failed"], failed["diverged"]) == (1, 1, 0)
    assert failed["test/accuracy mean"] == pytest.approx(0.97)

    shown = display_table(table, with_ci=True)
    text = shown.to_markdown(index=False)
    assert "0.9400 ± 0.0424" in text  # softmax d=16 dropout 0
    assert f"[{0.94 - half:.4f}, 1.0000]" in text
    line = row_of(shown, loss="softmax", model__feature_dim="16", model__dropout="0.5")
    assert line["test/accuracy"] == "0.9400"  # n = 1 shows the mean only


def test_summary_counts_only_finished_trials_and_the_right_phase():
    trials = [hand_trial("softmax", seed, acc, 16, status)
              for seed, (status, acc) in enumerate([("completed", 0.5), ("running", 0.9),
                                                    ("stopped", 0.1)])]
    trials.append(hand_trial("center", 0, 0.7, 16, "running"))  # unfinished, alone: no stats
    trials.append(hand_trial("center", 1, 0.7, 16, "completed", phase="search"))  # other phase
    table = summary_table(trials, "grid", [], ["softmax", "center"])
    assert list(table["loss"]) == ["softmax", "center"]
    softmax = row_of(table, loss="softmax")
    assert (softmax["n"], softmax["stopped"]) == (1, 1)
    assert softmax["test/accuracy mean"] == pytest.approx(0.5)
    assert row_of(table, loss="center")["n"] == 0


def test_confidence_intervals_stay_in_the_metric_range():
    """Two seeds at 0.99 and 0.93: the t interval (±0.38) is cut at accuracy 1 (and 0)."""
    trials = [hand_trial("softmax", seed, acc, 16, "completed")
              for seed, acc in enumerate([0.99, 0.93])]
    row = row_of(summary_table(trials, "grid", [], ["softmax"]), loss="softmax")
    assert row["test/accuracy ci_high"] == 1.0  # 0.96 + 0.381 unclipped
    assert row["test/accuracy ci_low"] == pytest.approx(0.96 - 12.7062 * 0.03, abs=1e-4)
    assert row["test/accuracy mean"] == pytest.approx(0.96)


def test_partial_note_counts_finished_trials_of_the_record(tmp_path):
    record = StudyRecord(study="s", source="s.yaml", study_yaml="", tracking_uri="sqlite:///x",
                         storage=str(tmp_path), results_dir=str(tmp_path / "r"), planned=6)
    for i, status in enumerate(["completed", "failed", "running"]):
        record.trials[str(i)] = hand_trial("softmax", i, 0.5, 4, status)
    assert rp.partial_note(record, 6) == "partial: 2 of 6 trials finished (study running)"
    record.trials["2"].status = "completed"
    record.finish("finished")
    assert rp.partial_note(record, 6) == ""


# -- the best feature dimension rule ---------------------------------------------------------------

def test_best_dim_picks_a_smaller_dim_within_one_standard_error():
    # best: d=16, mean 0.75, std 0.5, n=4 -> se 0.25 -> threshold 0.5; d=8 (0.5) qualifies
    best = best_feature_dim([(4, 0.25, 0.1, 4), (8, 0.5, 0.1, 4), (16, 0.75, 0.5, 4),
                             (32, 0.625, 0.1, 4)])
    assert best.feature_dim == 8 and best.mean == 0.5
    assert best.best_dim == 16 and best.threshold == pytest.approx(0.5)


def test_best_dim_keeps_the_argmax_when_nothing_smaller_is_close_enough():
    # se = 0.25/√4 = 0.125 -> threshold 0.625; d=8 at 0.5 is outside; a larger dim inside is
    # not a smaller one
    best = best_feature_dim([(4, 0.25, 0.1, 4), (8, 0.5, 0.1, 4), (16, 0.75, 0.25, 4),
                             (32, 0.7, 0.1, 4)])
    assert best.feature_dim == 16 == best.best_dim
    assert best.threshold == pytest.approx(0.625)


def test_best_dim_one_seed_has_no_standard_error():
    # n = 1: se is 0 even with a std given, so a cell 1e-9 below the best is not chosen
    best = best_feature_dim([(2, 0.8 - 1e-9, math.nan, 1), (8, 0.8, 0.3, 1)])
    assert best.feature_dim == 8 and best.threshold == 0.8
    assert best_feature_dim([(2, math.nan, math.nan, 0)]) is None


def test_best_dims_table_per_loss_and_other_grid_key(shared_grid):
    best = best_dims_table(grid_table(shared_grid[1]), GRID_KEYS)
    picks = {(r["loss"], r["model.dropout"]): (r["best feature_dim"], r["argmax feature_dim"])
             for _, r in best.iterrows()}
    assert picks == {
        ("softmax", 0.0): (9, 16),   # 0.92 >= 0.94 - 0.0424/√2 = 0.91
        ("softmax", 0.5): (16, 16),  # the best cell has n = 1: nothing below 0.94 counts
        ("pod", 0.0): (9, 9),        # argmax at n = 1
        ("pod", 0.5): (9, 9),        # 0.95 < 0.97 - 0.01
    }


# -- plots -----------------------------------------------------------------------------------------

def errorbar_series(ax) -> dict[str, tuple[list, list, list]]:
    """label -> (x, y, error half-widths) of every errorbar series on the axes."""
    out = {}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            line, _, bars = c.lines
            segments = bars[0].get_segments()
            out[c.get_label()] = (list(line.get_xdata()), list(line.get_ydata()),
                                  [float(s[1][1] - s[0][1]) / 2 for s in segments])
    return out


def hand_trial(loss: str, seed: int, acc: float, dim: int, status: str = "completed",
               phase: str = "grid", **params) -> TrialRecord:
    """A trial as the record holds it (for tables and plots that need no MLflow)."""
    cell = {"model.feature_dim": dim, **params}
    return TrialRecord(key=f"{loss}-{dim}-{seed}-{params}", phase=phase, loss=loss, seed=seed,
                       config={}, params=cell, status=status,
                       metrics=metrics_for(acc, dim, seed))


def test_accuracy_vs_feature_dim_small_multiples_shared_axes_k_minus_1_and_zoom():
    records = [hand_trial(loss, s, acc + 0.02 * s, d)
               for loss, base in (("softmax", 0.5), ("pod", 0.6))
               for d, acc in ((2, base), (9, base + 0.2), (64, base + 0.1)) for s in (0, 1)]
    table = summary_table(records, "grid", ["model.feature_dim"], ["softmax", "pod"])
    fig = plots.plot_accuracy_vs_feature_dim(table, 10, [], note="partial: 3 of 5 trials")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["softmax", "pod", "near k−1 = 9 (zoomed)"]
    softmax, pod, zoom = panels
    for ax in panels:
        assert ax.get_xscale() == "log"
        (k_line,) = [line for line in ax.get_lines() if line.get_label() == "k−1"]
        assert list(k_line.get_xdata()) == [9, 9]
    assert softmax.get_ylim() == pod.get_ylim()  # shared axes
    assert [t.get_text() for t in pod.get_xticklabels()] == ["2", "9", "64"]
    (series,) = errorbar_series(pod).values()
    assert series[0] == [2, 9, 64] and series[1] == pytest.approx([0.61, 0.81, 0.71])
    assert series[2] == pytest.approx([math.sqrt(2) * 0.01] * 3)  # std of (a, a + 0.02)
    zoomed = errorbar_series(zoom)
    assert set(zoomed) == {"softmax", "pod"} and zoomed["pod"][0] == [9]  # 2, 64: not within 4x
    low, high = zoom.get_ylim()
    assert 0.6 < low < 0.7 and 0.8 < high < 0.9  # zoomed to the points near k−1
    assert "partial: 3 of 5 trials" in fig._suptitle.get_text()


def test_accuracy_vs_feature_dim_splits_a_loss_by_the_other_grid_keys():
    records = [hand_trial("softmax", s, 0.5 + d / 100 + p, d, **{"model.dropout": p})
               for p in (0.0, 0.5) for d in (2, 4, 8) for s in (0, 1)]
    keys = ["model.feature_dim", "model.dropout"]
    table = summary_table(records, "grid", keys, ["softmax"])
    fig = plots.plot_accuracy_vs_feature_dim(table, 5, ["model.dropout"])
    series = errorbar_series(fig.axes[0])
    assert set(series) == {"dropout=0", "dropout=0.5"}
    assert series["dropout=0.5"][1] == pytest.approx([1.02, 1.04, 1.08])


def test_losses_side_by_side_one_bar_each_with_n():
    records = [hand_trial(loss, s, base + 0.02 * s, 16)
               for loss, base in (("softmax", 0.90), ("pod", 0.95)) for s in (0, 1, 2)]
    table = summary_table(records, "grid", [], ["softmax", "pod"])
    fig = plots.plot_losses(table)
    ax = fig.axes[0]
    (bars,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [p.get_height() for p in bars.patches] == pytest.approx([0.92, 0.97])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["softmax\nn=3", "pod\nn=3"]
    assert ax.get_ylim()[0] > 0.8  # the axis spans the data: a difference of points shows


def test_dropout_bars_with_augment_panels_on_an_axis_that_shows_differences():
    records = [hand_trial(loss, s, base + p / 10 + (0.05 if aug else 0) + 0.02 * s, 16,
                          **{"model.dropout": p, "data.augment": aug})
               for loss, base in (("softmax", 0.5), ("encm", 0.6)) for p in (0.0, 0.3, 0.6)
               for aug in (False, True) for s in (0, 1)]
    keys = ["model.dropout", "data.augment"]
    table = summary_table(records, "grid", keys, ["softmax", "encm"])
    fig = plots.plot_dropout(table, "data.augment", keys)
    assert len(fig.axes) == 2
    for ax, aug in zip(fig.axes, (False, True)):
        assert f"augment={aug}" in ax.get_title()
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert [b.get_label() for b in bars] == ["dropout=0", "dropout=0.3", "dropout=0.6"]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["softmax", "encm"]
        for bar, p in zip(bars, (0.0, 0.3, 0.6)):
            heights = [patch.get_height() for patch in bar.patches]
            expected = [base + p / 10 + (0.05 if aug else 0) + 0.01 for base in (0.5, 0.6)]
            assert heights == pytest.approx(expected)
            segments = bar.errorbar.lines[2][0].get_segments()
            assert [s[1][1] - s[0][1] for s in segments] == pytest.approx(
                [2 * math.sqrt(2) * 0.01] * 2)
    low, high = fig.axes[0].get_ylim()
    assert low > 0.4 and high < 0.9  # the data's span, not 0-1
    legend = fig.axes[-1].get_legend()
    assert legend is not None and legend.get_bbox_to_anchor().x0 > fig.axes[-1].bbox.x1 - 1


def test_heatmap_values(shared_grid):
    table = grid_table(shared_grid[1])
    fig = plots.plot_heatmap(table, "softmax", "model.feature_dim", "model.dropout")
    ax = fig.axes[0]
    values = np.ma.filled(ax.images[0].get_array(), np.nan)
    assert values == pytest.approx(np.array([[0.62, 0.60], [0.92, 0.93], [0.94, 0.94]]))
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "9", "16"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "0.5"]
    assert {t.get_text() for t in ax.texts} >= {"0.620", "0.930", "0.940"}
    assert ax.get_xlabel() == "model.dropout" and ax.get_ylabel() == "model.feature_dim"


def test_features_2d_one_figure_shared_axes_unit_scaled():
    panels = [{"loss": "pod", "run": "a", "features": FEATURES_B, "labels": np.array([0, 1, 1, 0]),
               "class_vectors": np.array([[1.0, 0.0], [0.0, -0.5]])},
              {"loss": "softmax", "run": "b", "features": FEATURES_A,
               "labels": np.array([0, 1, 2]), "class_vectors": np.zeros((0, 2))}]
    fig = plots.plot_features_2d(panels)
    pod, softmax = [ax for ax in fig.axes if ax.get_visible()][:2]
    assert pod.get_xlim() == softmax.get_xlim() == (-1.1, 1.1)
    reach = np.linalg.norm(FEATURES_B, axis=1).max()
    points = np.concatenate([c.get_offsets() for c in pod.collections])
    assert np.allclose(sorted(map(tuple, points)), sorted(map(tuple, FEATURES_B / reach)))
    assert len(pod.collections) == 2  # one colour per class
    arrows = [t for t in pod.texts if isinstance(t, Annotation)]
    assert [a.xy for a in arrows] == [pytest.approx((1.0, 0.0)), pytest.approx((0.0, -1.0))]
    assert not [t for t in softmax.texts if isinstance(t, Annotation)]
    assert "pod" in pod.get_title() and f"{reach:.3g}" in pod.get_title()


# -- search studies and partial reports ------------------------------------------------------------

SEARCH_STUDY = {"name": "cmp", "data": {"dataset": "digits"}, "model": {"feature_dim": 2},
                "losses": ["softmax", "pod"], "seeds": [0, 1],
                "search": {"trials_per_loss": 3, "metric": "val/accuracy"}}
POD_TRIALS = pd.DataFrame({"number": [0, 1, 2], "value": [0.5, 0.8, 0.7],
                           "params_loss__lam": [1.0, 0.3, 2.0],
                           "state": ["COMPLETE", "COMPLETE", "COMPLETE"]})
SOFTMAX_TRIALS = pd.DataFrame({"number": [0, 1, 2, 3], "value": [0.6, math.nan, 0.4, 0.9],
                               "params_train__lr": [0.1, 0.5, 0.01, 0.05],
                               "state": ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]})


def build_search_study(uri: str, folder: Path) -> Built:
    """Search phase done, final phase: pod seed 1 still running; the study is running."""
    study = Built(uri, SEARCH_STUDY, folder / "cmp-1", planned=10)
    study.parent.log_text(SOFTMAX_TRIALS.to_csv(index=False), "optuna/softmax_trials.csv")
    study.parent.log_text(POD_TRIALS.to_csv(index=False), "optuna/pod_trials.csv")
    study.parent.log_text(json.dumps({"loss.lam": 0.7, "train.lr": 0.3}),
                          "optuna/pod_importance.json")
    for loss, number, params in [("softmax", n, {"train.lr": lr}) for n, lr in
                                 enumerate([0.1, 0.01, 0.05])] + \
                                [("pod", n, {"loss.lam": lam}) for n, lam in
                                 enumerate([1.0, 0.3, 2.0])]:
        study.add(f"search-{loss}-{number}", "search", loss, 0, params, "completed",
                  {"val/accuracy": 0.5})
    finals = [("softmax", 0, "completed", 0.88), ("softmax", 1, "completed", 0.92),
              ("pod", 0, "completed", 0.95), ("pod", 1, "running", 0.99)]
    for loss, seed, status, acc in finals:
        params = {"train.lr": 0.05} if loss == "softmax" else {"loss.lam": 0.3}
        features = {"features": FEATURES_A, "labels": np.array([0, 1, 2]),
                    "class_vectors": np.eye(3, 2, dtype=np.float32)} if loss == "pod" else None
        study.add(f"final-{loss}-s{seed}", "final", loss, seed, params, status,
                  metrics_for(acc, 2, seed), features)
    return study


def test_search_history_and_importance_plots():
    fig = plots.plot_search_history(SOFTMAX_TRIALS, "softmax",
                                    note="partial: 1 of 2 trials finished")
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["trial"].get_xdata()) == [0, 2, 3]  # the failed trial is left out
    assert list(lines["trial"].get_ydata()) == [0.6, 0.4, 0.9]
    assert list(lines["best so far"].get_ydata()) == [0.6, 0.6, 0.9]
    assert "partial" in ax.get_title() and ax.get_xlabel() == "Optuna trial number"
    low = plots.plot_search_history(SOFTMAX_TRIALS, "softmax", mode="min").axes[0]
    assert list([line for line in low.get_lines() if line.get_label() == "best so far"][0]
                .get_ydata()) == [0.6, 0.4, 0.4]

    fig = plots.plot_importance({"loss.lam": 0.7, "train.lr": 0.2, "model.feature_dim": 0.1},
                                "pod")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["model.feature_dim", "train.lr",
                                                            "loss.lam"]
    assert [p.get_width() for p in ax.patches] == pytest.approx([0.1, 0.2, 0.7])


def test_search_study_report_is_partial(tracking_uri, tmp_path):
    study = build_search_study(tracking_uri, tmp_path / "results")
    report = rp.build_report(tracking_uri, "cmp", str(tmp_path / "out"))
    assert report.partial == "partial: 9 of 10 trials finished (study running)"
    table = report.table
    assert list(table["loss"]) == ["softmax", "pod"]
    assert list(table["selected"]) == ["train.lr=0.05", "loss.lam=0.3"]
    assert list(table["n"]) == [2, 1]  # pod seed 1 is still running
    assert table["test/accuracy mean"].tolist() == pytest.approx([0.90, 0.95])
    files = set(report.files)
    assert {"search_history_softmax.png", "search_history_pod.png", "importance_pod.png",
            "features_2d.png"} <= files
    assert "importance_softmax.png" not in files and "accuracy_vs_feature_dim.png" not in files
    text = (tmp_path / "out" / "report.md").read_text()
    assert "partial: 9 of 10 trials finished" in "\n".join(text.splitlines()[:3])
    client = MlflowClient(tracking_uri=tracking_uri)
    logged = {Path(a.path).name for a in client.list_artifacts(study.parent_run_id, "report")}
    assert logged == files
    # once the last trial and the study finish, the same report is complete
    study.record.trials["final-pod-s1"].status = "completed"
    study.finish()
    again = rp.build_report(tracking_uri, "cmp", str(tmp_path / "out2"))
    assert again.partial == "" and list(again.table["n"]) == [2, 2]
    assert "partial" not in (tmp_path / "out2" / "report.md").read_text()


def test_a_loss_whose_search_trials_all_failed_has_no_history_plot(tracking_uri, tmp_path):
    """Every search trial of softmax failed: its Optuna table has no COMPLETE row (the report
    ended in KeyError: 'number'); the report leaves out that loss's history plot only."""
    study = build_search_study(tracking_uri, tmp_path / "results")
    failed = pd.DataFrame({"number": [0, 1], "value": [math.nan, math.nan],
                           "params_train__lr": [0.1, 0.5], "state": ["FAIL", "FAIL"]})
    study.parent.log_text(failed.to_csv(index=False), "optuna/softmax_trials.csv")
    report = rp.build_report(tracking_uri, "cmp", str(tmp_path / "out"))
    assert "search_history_pod.png" in report.files
    assert "search_history_softmax.png" not in report.files
    assert plots.completed_search_trials(failed).empty


def test_report_reads_the_logged_record_when_the_results_folder_is_gone(tracking_uri,
                                                                        tmp_path):
    import shutil

    study = build_grid_study(tracking_uri, tmp_path / "results")
    study.parent.log_text(study.record.model_dump_json(), "featloss_state.json")
    shutil.rmtree(tmp_path / "results")
    report = rp.build_report(tracking_uri, "dims", str(tmp_path / "out"))
    assert len(report.table) == 12 and report.partial == ""


# -- the command, end to end -----------------------------------------------------------------------

def test_cmd_report_end_to_end(grid_study, tracking_uri, tmp_path, capsys, monkeypatch):
    drawn = []
    real = plots.plot_features_2d

    def spy(panels, note=""):
        drawn.extend((p["loss"], np.asarray(p["features"]).tolist(),
                      np.asarray(p["class_vectors"]).tolist(), p["run"]) for p in panels)
        return real(panels, note)

    monkeypatch.setattr(plots, "plot_features_2d", spy)
    out = tmp_path / "report"
    args = argparse.Namespace(study="dims", out=str(out), tracking_uri=tracking_uri, parent=None)
    assert rp.cmd_report(args) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "0.9400 ± 0.0424" in printed and "partial" not in printed

    expected = {"summary.md", "summary.csv", "summary.parquet", "trials.csv", "report.md",
                "accuracy_vs_feature_dim.png", "dropout.png", "heatmap_softmax.png",
                "heatmap_pod.png", "features_2d.png"}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        assert (out / name).stat().st_size > 0
    client = MlflowClient(tracking_uri=tracking_uri)
    logged = {a.path for a in client.list_artifacts(grid_study.parent_run_id, "report")}
    assert logged == {f"report/{name}" for name in expected}

    csv = pd.read_csv(out / "summary.csv")
    parquet = pd.read_parquet(out / "summary.parquet")
    for frame in (csv, parquet):
        assert len(frame) == 12
        cell = row_of(frame, loss="pod", model__feature_dim=16, model__dropout=0.5)
        assert cell["test/accuracy mean"] == pytest.approx(0.95)
        assert cell["test/accuracy std"] == pytest.approx(math.sqrt(2) * 0.01)
        assert cell["n"] == 2
    assert "0.9400 ± 0.0424" in (out / "summary.md").read_text()
    text = (out / "report.md").read_text()
    assert "within one standard error" in text and "## Best feature dimension per loss" in text
    assert "![dropout](dropout.png)" in text and "partial" not in text
    assert "| loss | feature_dim = 2 |" not in text  # two grid keys: no single-key pivot
    assert text.index("## Summary") < text.index("## Best feature dimension")

    # features_2d: the lowest seed with features (seed 0, dropout 0.5), not seed 1
    assert drawn == [("softmax", FEATURES_B.tolist(), [[1.0, 0.0], [0.0, -0.5]],
                      "grid-softmax-feature_dim=2-dropout=0.5-s0")]
    from PIL import Image

    with Image.open(out / "features_2d.png") as image:
        assert image.info.get("dpi", (plots.DPI, plots.DPI))[0] == pytest.approx(plots.DPI, abs=1)


def test_parent_option_and_bad_input(shared_grid, tmp_path):
    tracking_uri, grid_study = shared_grid
    report = rp.build_report(tracking_uri, "dims", str(tmp_path / "a"),
                             parent_run_id=grid_study.parent_run_id)
    assert report.parent_run_id == grid_study.parent_run_id
    with pytest.raises(ConfigError, match="not a run of study 'dims'"):
        rp.build_report(tracking_uri, "dims", str(tmp_path / "b"), parent_run_id="abc123")
    with pytest.raises(ConfigError, match="no MLflow experiment named 'nope'"):
        rp.cmd_report(argparse.Namespace(study="nope", out=str(tmp_path / "c"),
                                         tracking_uri=tracking_uri, parent=None))
    MlflowClient(tracking_uri=tracking_uri).create_experiment(
        "empty", artifact_location=str(tmp_path / "mlruns"))
    with pytest.raises(ConfigError, match="study 'empty' has no runs"):
        rp.build_report(tracking_uri, "empty", str(tmp_path / "d"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_grid_key_missing_for_a_loss_is_a_dash_and_parquet_still_writes(tmp_path):
    records = [hand_trial("softmax", s, 0.5, 16) for s in (0, 1)]
    records += [hand_trial("center", s, 0.6 + lam / 10, 16, **{"loss.lam": lam})
                for lam in (0.1, 1.0) for s in (0, 1)]
    table = summary_table(records, "grid", ["loss.lam"], ["softmax", "center"])
    assert list(zip(table["loss"], table["loss.lam"])) == [("softmax", "-"), ("center", 0.1),
                                                          ("center", 1.0)]
    parquet_ready(table).to_parquet(tmp_path / "t.parquet")
    back = pd.read_parquet(tmp_path / "t.parquet")
    assert list(back["loss.lam"]) == ["-", "0.1", "1"]
    assert back["test/accuracy mean"].tolist() == pytest.approx([0.5, 0.61, 0.7])


def test_missing_database_is_bad_input(tmp_path):
    with pytest.raises(ConfigError, match="no MLflow database"):
        rp.cmd_report(argparse.Namespace(study="dims", out=str(tmp_path / "out"),
                                         tracking_uri=f"sqlite:///{tmp_path}/absent.db",
                                         parent=None))
    assert not (tmp_path / "absent.db").exists()


def test_parser_defaults():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    rp.add_parser(sub)
    args = parser.parse_args(["report", "dims"])
    assert (args.command, args.study, args.out, args.tracking_uri, args.parent) == (
        "report", "dims", None, None, None)
    args = parser.parse_args(["report", "dims", "--out", "x", "--parent", "r1",
                              "--tracking-uri", "sqlite:///m.db"])
    assert (args.out, args.parent, args.tracking_uri) == ("x", "r1", "sqlite:///m.db")


def test_best_dimension_is_selected_on_validation_never_on_test():
    table = pd.DataFrame({
        "loss": ["pod", "pod"], "model.feature_dim": [4, 32],
        "val/accuracy mean": [0.90, 0.80], "val/accuracy std": [0.0, 0.0],
        "val/accuracy n": [3, 3],
        "test/accuracy mean": [0.70, 0.99], "test/accuracy std": [0.01, 0.01],  # test disagrees
    })
    row = best_dims_table(table, ["model.feature_dim"]).iloc[0]
    assert row["best feature_dim"] == 4 and row["argmax feature_dim"] == 4
    assert row["its val mean"] == pytest.approx(0.90) and row["its test mean"] == pytest.approx(0.70)


def test_bars_over_any_single_key_keep_losses_without_it():
    records = [hand_trial("softmax", s, 0.9 + 0.01 * s, 16) for s in (0, 1)]
    records += [hand_trial("wsoftmax", s, 0.8 + a / 10 + 0.01 * s, 16, **{"loss.alpha": a})
                for a in (1.0, 2.0) for s in (0, 1)]
    table = summary_table(records, "grid", ["loss.alpha"], ["softmax", "wsoftmax"])
    fig = plots.plot_bars(table, "loss.alpha", None, ["loss.alpha"])
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [b.get_label() for b in bars] == ["alpha=1", "alpha=2", "alpha=-"]
    assert [p.get_height() for p in bars[2].patches] == pytest.approx([0.905])  # softmax
    assert [p.get_height() for p in bars[0].patches] == pytest.approx([0.905])  # wsoftmax a=1
    assert [t.get_text() for t in ax.get_xticklabels()] == ["softmax", "wsoftmax"]


def test_a_new_report_removes_the_plots_an_earlier_one_made(grid_study, tracking_uri, tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "features_2d_pod.png").write_bytes(b"old plot")  # from an earlier report
    (out / "my_notes.txt").write_text("mine")  # not the report's: kept
    rp.build_report(tracking_uri, "dims", str(out))
    assert not (out / "features_2d_pod.png").exists()
    assert (out / "my_notes.txt").read_text() == "mine"
    assert (out / "features_2d.png").is_file()
