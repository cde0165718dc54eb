"""`featloss report STUDY`: tables and plots of one invocation of a study.

The report reads the study's record (`featloss.record`): from the results folder named on the
parent run when it is reachable from here (live, for a study still running), else the copy the
run logged to its parent run. It writes to a folder and, under ``report/``, to the parent run:

- ``summary.md`` / ``summary.csv`` / ``summary.parquet``: the study's table (`featloss.summary`);
- PNG plots (`featloss.report.plots`), each shown in ``report.md`` and logged beside it;
- ``report.md``: the tables, the best feature dimension per loss with the rule that picks it,
  and the plots. A study with unfinished trials is marked partial.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featloss.errors import ConfigError
from featloss.names import safe_name
from featloss.record import StudyRecord
from featloss.report import plots
from featloss.report.tables import BEST_DIM_RULE, FEATURE_DIM, best_dims_table
from featloss.summary import MISSING, sort_key, to_markdown

DEFAULT_OUT = "featloss_report"
REPORT_METRICS = ["test/accuracy", "val/accuracy", "feat/intra_class_std", "feat/mean_angle_deg",
                  "feat/min_interclass_angle_deg", "loss/frac_target_logit_negative",
                  "loss/lambda"]


def cmd_report(args: argparse.Namespace) -> int:
    from featloss.tracking import check_store, default_tracking_uri, normalise_uri, retry_seconds

    retry_seconds()  # a garbage FEATLOSS_MLFLOW_RETRY_SECONDS is bad input, said first
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # quiet downloads
    name = study_name(args.study)
    uri = normalise_uri(args.tracking_uri or default_tracking_uri())
    out = args.out or str(Path(DEFAULT_OUT) / safe_name(name))
    check_out(out)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise ConfigError(f"no MLflow database at {uri}; pass the --tracking-uri the study "
                          f"logged to")
    check_store(uri)
    report = build_report(uri, name, out, parent_run_id=args.parent)
    if report.partial:
        print(report.partial)
    print(f"report of '{name}' (parent run {report.parent_run_id}): {report.out_dir}")
    print(f"logged to the parent run under report/ ({len(report.files)} files)")
    print(to_markdown(report.table))
    return 0


def study_name(target: str) -> str:
    """A study name, or the name inside a study YAML file given instead."""
    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        from featloss.study import load_study

        return load_study(target).name
    return target


def check_out(out: str) -> None:
    """The output folder must be creatable and writable before anything is logged; nothing is
    created here (a probe folder in the nearest existing parent is made and removed)."""
    target = Path(out).expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=existing).cleanup()
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write there ({exc.strerror or exc}); pass a "
                          f"writable folder") from None


# -- reading the study back ------------------------------------------------------------------------

def load_record(client, parent: dict, scratch: str) -> StudyRecord:
    """The parent run's record: live from its results folder, else the logged copy."""
    from featloss import storage
    from featloss.tracking.read import fetch_artifact

    folder = parent["tags"].get("results_dir")
    if folder and storage.exists(storage.join(folder, "featloss_state.json")):
        record = StudyRecord.load(folder)
        if record.parent_run_id == parent["run_id"]:
            return record
    local = fetch_artifact(client, parent["run_id"], "featloss_state.json", scratch)
    if local is None:
        raise ConfigError(f"parent run {parent['run_id']} has no featloss record: its results "
                          f"folder {folder or '(unknown)'} is not reachable from here and the "
                          f"run logged no featloss_state.json (it did not finish)")
    record = StudyRecord.model_validate_json(local.read_text())
    return record


def _parent(parents: list[dict], parent_run_id: str | None, study: str) -> dict:
    if not parents:
        raise ConfigError(f"study '{study}' has no runs; run it first")
    if parent_run_id is None:
        return parents[0]
    for parent in parents:
        if parent["run_id"] == parent_run_id:
            return parent
    raise ConfigError(f"--parent {parent_run_id} is not a run of study '{study}' (its runs: "
                      f"{', '.join(p['run_id'] for p in parents[:5])})")


@dataclass
class Report:
    out_dir: str
    parent_run_id: str
    table: Any  # featloss.summary table
    best_dims: Any
    partial: str  # "" when complete
    files: list[str] = field(default_factory=list)  # names written under out_dir


def partial_note(record: StudyRecord, expected: int) -> str:
    """"partial: F of T trials finished" while the study runs or has unfinished trials."""
    finished = sum(t.done for t in record.trials.values())
    total = max(len(record.trials), expected) if record.status != "finished" \
        else len(record.trials)
    if record.status == "finished" and finished == total:
        return ""
    return f"partial: {finished} of {total} trials finished (study {record.status})"


def build_report(tracking_uri: str, study: str, out_dir: str,
                 parent_run_id: str | None = None) -> Report:
    """Read the study's record, write the report to `out_dir` and log it under report/.

    Raises ConfigError for an unknown study or parent run, or a record that cannot be read.
    """
    from featloss.results import record_study, study_table
    from featloss.tracking import TrackingClient
    from featloss.tracking.read import parent_runs

    client = TrackingClient(tracking_uri)
    parent = _parent(parent_runs(client, study), parent_run_id, study)
    with tempfile.TemporaryDirectory() as scratch:
        record = load_record(client, parent, scratch)
        spec = record_study(record)
        partial = partial_note(record, record.planned)
        table = study_table(record, spec)
        best = best_dims_table(table, list(spec.grid))
        staging = Path(scratch) / "report"
        staging.mkdir()
        files = _write_tables(staging, table, record, spec)
        note = "; ".join(x for x in (partial, "smoke run" if record.smoke else "") if x)
        figures = _write_plots(staging, client, parent, record, spec, table, note, scratch)
        files += figures
        (staging / "report.md").write_text(report_markdown(
            spec, record, parent, table, best, figures, partial))
        files.append("report.md")
        client.call(lambda: client.mlflow.log_artifacts(parent["run_id"], str(staging),
                                                        "report"), "logging the report")
        target = Path(out_dir).expanduser().resolve()
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*"):  # a plot an earlier report made and this one does not
            if old.is_file() and old.name not in files and _is_report_file(old.name):
                old.unlink()
        for name in files:
            shutil.copyfile(staging / name, target / name)
    return Report(str(target), parent["run_id"], table, best, partial, files)


REPORT_FILES = ("summary.", "trials.csv", "report.md", "accuracy_vs_feature_dim", "dropout.png",
                "bars_", "heatmap_", "search_history_", "importance_", "features_2d",
                "accuracy_by_loss")


def _is_report_file(name: str) -> bool:
    return name.startswith(REPORT_FILES)


def _write_tables(folder: Path, table, record: StudyRecord, spec) -> list[str]:
    from featloss.summary import parquet_ready, trials_frame

    (folder / "summary.md").write_text(to_markdown(table, REPORT_METRICS, with_ci=True) + "\n")
    table.to_csv(folder / "summary.csv", index=False)
    parquet_ready(table).to_parquet(folder / "summary.parquet", engine="pyarrow", index=False)
    # every trial's own values (per seed), the data behind every mean in the tables
    phase = "final" if spec.mode == "search" else "grid"
    trials = [t for t in record.trials.values() if t.phase == phase]
    trials_frame(trials, list(spec.grid), selected=spec.mode == "search").to_csv(
        folder / "trials.csv", index=False)
    return ["summary.md", "summary.csv", "summary.parquet", "trials.csv"]


def _class_count(spec) -> int | None:
    from featloss.data import dataset_info

    if spec.data.classes:
        return spec.data.classes
    try:
        return dataset_info(spec.data.dataset).num_classes
    except ConfigError:
        return None


def _write_plots(folder: Path, client, parent: dict, record: StudyRecord, spec, table,
                 note: str, scratch: str) -> list[str]:
    written: list[str] = []

    def save(fig, name: str) -> None:
        plots.save_figure(fig, folder / name)
        written.append(name)

    keys = list(spec.grid)
    if len(table) and spec.mode == "grid":
        if _varying(table, plots.FEATURE_DIM):
            others = [k for k in keys if k not in (plots.FEATURE_DIM, plots.CLASSES)]
            if _varying(table, plots.CLASSES):
                for k in sorted({v for v in table[plots.CLASSES] if v != MISSING}, key=sort_key):
                    part = table[table[plots.CLASSES] == k]
                    save(plots.plot_accuracy_vs_feature_dim(part, int(k), others, note),
                         f"accuracy_vs_feature_dim_k{k}.png")
            else:
                save(plots.plot_accuracy_vs_feature_dim(table, _class_count(spec), others, note),
                     "accuracy_vs_feature_dim.png")
        if _varying(table, plots.DROPOUT):
            panel_key = plots.AUGMENT if _varying(table, plots.AUGMENT) else None
            save(plots.plot_dropout(table, panel_key, keys, note), "dropout.png")
        elif len(keys) == 1 and keys[0] not in (plots.FEATURE_DIM, plots.CLASSES):
            save(plots.plot_bars(table, keys[0], None, keys, note),
                 f"bars_{keys[0].split('.')[-1]}.png")
        if len(keys) == 2:
            for loss in dict.fromkeys(table["loss"]):
                part = table[table["loss"] == loss]
                if (all((part[k] != MISSING).any() for k in keys)
                        and part[f"{plots.ACCURACY} n"].gt(0).any()):
                    save(plots.plot_heatmap(table, loss, keys[0], keys[1], note),
                         f"heatmap_{loss}.png")
    one_row_per_loss = len(table) and not table["loss"].duplicated().any() and (
        spec.mode == "search" or not keys)
    if one_row_per_loss and (table[f"{plots.ACCURACY} n"] > 0).sum() > 1:  # side by side
        save(plots.plot_losses(table, note), "accuracy_by_loss.png")
    if spec.mode == "search":
        _search_plots(client, parent, spec, note, scratch, save)
    _feature_plots(client, record, spec, note, scratch, save)
    return written


def _varying(table, key: str) -> bool:
    return key in table and len({v for v in table[key] if v != MISSING}) > 1


def _search_plots(client, parent, spec, note, scratch, save) -> None:
    import io

    import pandas as pd

    from featloss.tracking.read import fetch_artifact

    for loss in spec.losses:
        local = fetch_artifact(client, parent["run_id"], f"optuna/{loss}_trials.csv", scratch)
        if local:
            frame = pd.read_csv(io.StringIO(local.read_text()))
            if ({"number", "value"} <= set(frame.columns)
                    and len(plots.completed_search_trials(frame))):  # not when all failed
                save(plots.plot_search_history(frame, loss, spec.search.metric, spec.search.mode,
                                               note), f"search_history_{loss}.png")
        # logged only for a loss with >= 10 finished search trials (fewer say nothing)
        local = fetch_artifact(client, parent["run_id"], f"optuna/{loss}_importance.json",
                               scratch)
        importance = json.loads(local.read_text()) if local else {}
        if importance:
            save(plots.plot_importance(importance, loss, note), f"importance_{loss}.png")


def _feature_plots(client, record: StudyRecord, spec, note, scratch, save) -> None:
    """One figure of every loss's 2-D features (the lowest seed's completed trial with 2-D
    features; with a grid, its first cell)."""
    import numpy as np

    from featloss.tracking.read import fetch_artifact

    phase = "final" if spec.mode == "search" else "grid"
    candidates: dict[str, list] = {}
    for t in record.trials.values():
        if (t.status == "completed" and t.phase == phase and t.run_id
                and t.config["model"]["feature_dim"] == 2):
            candidates.setdefault(t.loss, []).append(t)
    panels = []
    for loss in [x for x in spec.losses if x in candidates]:
        for trial in sorted(candidates[loss], key=lambda t: (t.seed, t.key)):
            folder = Path(scratch) / trial.run_id
            folder.mkdir(exist_ok=True)
            local = fetch_artifact(client, trial.run_id, "features.npz", str(folder))
            if local:
                with np.load(local) as data:
                    panels.append({"loss": loss, "run": trial.key,
                                   **{k: data[k] for k in ("features", "labels",
                                                           "class_vectors")}})
                break
    if panels:
        save(plots.plot_features_2d(panels, note), "features_2d.png")


def pivot_table(table, keys: list[str]) -> str:
    """Loss x the values of one grid key: 'mean ± std [95% CI] (n)' of test accuracy."""
    from featloss.summary import fmt_ci, fmt_mean

    if len(keys) != 1 or table.empty:
        return ""
    key = keys[0]
    values = sorted({v for v in table[key] if v != MISSING}, key=sort_key)
    lines = ["| loss | " + " | ".join(f"{key.split('.')[-1]} = {v}" for v in values) + " |",
             "|---|" + "---|" * len(values)]
    for loss in dict.fromkeys(table["loss"]):
        cells = []
        for value in values:
            rows = table[(table["loss"] == loss) & (table[key] == value)]
            if rows.empty:
                cells.append("")
                continue
            r = rows.iloc[0]
            m = "test/accuracy"
            cells.append(f"{fmt_mean(r[f'{m} mean'], r[f'{m} std'], r[f'{m} n'])} "
                         f"{fmt_ci(r[f'{m} ci_low'], r[f'{m} ci_high'])} (n={int(r['n'])})")
        lines.append(f"| {loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(spec, record: StudyRecord, parent: dict, table, best, figures: list[str],
                    partial: str) -> str:
    import math

    lines = [f"# featloss report: {spec.name}" + (" (SMOKE RUN: 1 epoch, a data subset, 1 seed; "
                                                  "not a result)" if record.smoke else ""), ""]
    if partial:
        lines += [f"**{partial}**; only finished trials are included.", ""]
    keys = list(spec.grid)
    lines += [f"- study mode: {spec.mode}" + (f" (grid keys: {', '.join(keys)})" if keys else ""),
              f"- parent run: {parent['run_id']} ({parent['status']})",
              "- statistics: mean ± std (ddof = 1) over seeds of completed "
              f"{'final-phase' if spec.mode == 'search' else 'grid'} trials, 95 % CI of the mean "
              "from Student's t; n = completed trials; failed, diverged and stopped trials are "
              "counted per row", "", "## Summary", ""]
    pivot = pivot_table(table, keys)
    if pivot:
        lines += ["Test accuracy, mean ± std [95 % CI] (n completed trials):", "", pivot, "",
                  "All metrics:", ""]
    lines.append(to_markdown(table, REPORT_METRICS, with_ci=True))
    lines += ["", "Files: summary.md, summary.csv, summary.parquet; every trial's values: "
                  "trials.csv", ""]
    if FEATURE_DIM in keys:
        lines += ["## Best feature dimension per loss", "", f"Rule: {BEST_DIM_RULE}.", ""]
        if len(best):
            shown = best.copy()
            for column in ("its val mean", "its test mean", "argmax mean", "threshold",
                           "its test std", "argmax std"):
                shown[column] = [f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else "-"
                                 for v in shown[column]]
            lines.append(shown.to_markdown(index=False))
        else:
            lines.append("(no completed trials)")
        lines.append("")
    if figures:
        # MLflow's artifact viewer renders this markdown but not its images: say where they are
        lines += ["## Plots", "", "Each plot is a PNG file beside this report (on the MLflow "
                  "parent run: the `report/` folder of its artifacts, which shows images).", ""]
        for name in figures:
            lines += [f"### {name[:-4]}", "", f"![{name[:-4]}]({name})", ""]
    return "\n".join(lines) + "\n"


