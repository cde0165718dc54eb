"""The write side: the study's parent run (its front page) and one child run per trial.

Layout: one experiment per study (tagged as a model-training experiment, its description the
study's); one parent run per study invocation (a resume reopens it) holding the study YAML, the
resolved plan (as params where study-level, and as ``plan.json``), git commit and package
versions, the record, and at the end per-loss results as metrics and the report; one nested child
run per trial (``mlflow.parentRunId``) with the trial's params, per-epoch metrics with ``step`` =
epoch, its dataset, and tags a researcher filters on.

All writes go through `TrackingClient.call` with explicit run ids (no global active run).
Epoch metrics carry the time the epoch finished in the trial, so logging an epoch a second time
(a replay after a resume) writes the same (key, step, timestamp, value) rows, which MLflow's
store keeps once.

A trial has one run (its ``featloss.trial_key`` tag under the parent). A second run of a trial
(a run the record never learnt of, a restart from epoch 0) is *retired*: closed as KILLED, tagged
``status: superseded`` and ``featloss.superseded_by`` (the run that holds the trial now), then
soft-deleted: MLflow has no API to delete a run's metric history, and a deleted run stays
restorable (the UI's deleted runs, ``mlflow runs restore``).
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featloss.tracking.client import TrackingClient

TRIAL_KEY_TAG = "featloss.trial_key"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
ROLE_TAG = "featloss.role"  # parent | trial
SUPERSEDED_TAG = "featloss.superseded_by"  # on a retired run: the run holding its trial now
NOTE_TAG = "mlflow.note.content"  # the description the MLflow UI shows
KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # MLflow 3: open in the model-training view
ARTIFACTS_FOLDER = "mlruns"
MAX_PARAM = 6000
_METRIC_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- /]+")
MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "diverged": "FAILED",
                 "failed": "FAILED"}


def metric_name(*parts: str) -> str:
    """A metric key MLflow accepts, from readable parts (``result/pod/feature_dim_9/...``)."""
    return "/".join(_METRIC_UNSAFE.sub("_", str(p)).strip("_") or "_" for p in parts)


def param_value(value: Any) -> str:
    return (json.dumps(value) if isinstance(value, (list, dict)) else str(value))[:MAX_PARAM]


def open_experiment(client: TrackingClient, study_name: str, description: str = "") -> str:
    """The study's experiment id (created if missing), tagged as a model-training experiment
    with the study's description."""
    experiment_id = client.experiment(study_name, ARTIFACTS_FOLDER)
    tags = {KIND_TAG: TRAINING_KIND, **({NOTE_TAG: description} if description else {})}
    for key, value in tags.items():
        client.call(lambda k=key, v=value: client.mlflow.set_experiment_tag(experiment_id, k, v),
                    "tagging the experiment")
    return experiment_id


class ParentRun:
    """The study invocation's run: the study's front page in MLflow."""

    def __init__(self, client: TrackingClient, experiment_id: str, study_name: str) -> None:
        self.client = client
        self.mlflow = client.mlflow
        self.experiment_id = experiment_id
        self.study_name = study_name
        self.run_id: str | None = None

    def start(self, run_name: str, tags: dict[str, str], params: dict[str, Any],
              artifacts: dict[str, str]) -> str:
        """Create the run with its tags, study-level params and text artifacts; its id."""
        from mlflow.entities import Param

        from featloss.provenance import git_commit, versions

        vers = versions()
        all_tags = {ROLE_TAG: "parent", "study": self.study_name, "git_commit": git_commit(),
                    **{f"version.{k}": v for k, v in vers.items()}, **tags}
        run = self.client.call(lambda: self.mlflow.create_run(
            self.experiment_id, run_name=run_name, tags=all_tags), "creating the parent run")
        self.run_id = run.info.run_id
        batch = [Param(k, param_value(v)) for k, v in sorted(params.items()) if v is not None]
        for start in range(0, len(batch), 100):  # MLflow: at most 100 params a batch
            chunk = batch[start:start + 100]
            self.client.call(lambda c=chunk: self.mlflow.log_batch(self.run_id, params=c),
                             "logging the plan")
        for name, text in {**artifacts, "versions.json": json.dumps(vers, indent=1)}.items():
            self.log_text(text, name)
        return self.run_id

    def reopen(self, run_id: str) -> None:
        """A resume continues the same parent run."""
        self.run_id = run_id
        self.client.call(lambda: self.mlflow.update_run(run_id, status="RUNNING"),
                         "reopening the parent run")
        self.set_tags({"featloss.status": "running"})

    def add_note(self, line: str) -> None:
        """Put `line` first in the run's description (the MLflow UI's Description field)."""
        run = self.client.call(lambda: self.mlflow.get_run(self.run_id), "reading the parent run")
        from mlflow.entities import RunTag

        note = run.data.tags.get(NOTE_TAG, "")
        text = (f"{line}\n\n{note}" if note else line)[:8000]  # MLflow's limit for a tag
        self.client.call(lambda: self.mlflow.log_batch(self.run_id, tags=[RunTag(NOTE_TAG, text)]),
                         "describing the parent run")

    def finish(self, status: str) -> None:
        """status: FINISHED | FAILED | KILLED."""
        if self.run_id:
            self.client.call(lambda: self.mlflow.set_terminated(self.run_id, status=status),
                             "closing the parent run")

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self.client.call(lambda: self.mlflow.log_batch(self.run_id, tags=batch),
                         "tagging the parent run")

    def log_metrics(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        batch = [Metric(k, float(v), 0, 0) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and math.isfinite(v)]
        for start in range(0, len(batch), 1000):
            chunk = batch[start:start + 1000]
            self.client.call(lambda c=chunk: self.mlflow.log_batch(self.run_id, metrics=c),
                             "logging the study's results")

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.call(lambda: self.mlflow.log_text(self.run_id, text, artifact_file),
                         f"logging {artifact_file}")

    def log_folder(self, folder: str, artifact_path: str | None = None) -> None:
        self.client.call(lambda: self.mlflow.log_artifacts(self.run_id, folder, artifact_path),
                         f"logging {artifact_path or folder}")


class TrialRuns:
    """The child runs of one parent run, one per trial."""

    def __init__(self, client: TrackingClient, experiment_id: str, study_name: str,
                 parent_run_id: str) -> None:
        self.client = client
        self.mlflow = client.mlflow
        self.experiment_id = experiment_id
        self.study_name = study_name
        self.parent_run_id = parent_run_id

    def start(self, key: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        """Create the child run of trial `key` (its tags name the invocation)."""
        from mlflow.entities import Param

        all_tags = {PARENT_TAG: self.parent_run_id, TRIAL_KEY_TAG: key, ROLE_TAG: "trial",
                    "study": self.study_name, "status": "running", **tags}
        run = self.client.call(lambda: self.mlflow.create_run(
            self.experiment_id, run_name=key, tags=all_tags), "creating a trial run")
        run_id = run.info.run_id
        batch = [Param(k, param_value(v)) for k, v in sorted(params.items()) if v is not None]
        for start in range(0, len(batch), 100):
            chunk = batch[start:start + 100]
            self.client.call(lambda c=chunk: self.mlflow.log_batch(run_id, params=c),
                             "logging params")
        return run_id

    def reopen(self, run_id: str) -> None:
        """The trial runs again (a resume, a retry): its run is RUNNING, tagged so."""
        self.set_tags(run_id, {"status": "running"})
        self.client.call(lambda: self.mlflow.update_run(run_id, status="RUNNING"),
                         "reopening a trial run")

    def interrupt(self, run_id: str) -> None:
        """The study stopped while the trial ran: KILLED, ``status: interrupted`` (a resume
        reopens it)."""
        self.set_tags(run_id, {"status": "interrupted"})
        self.client.call(lambda: self.mlflow.set_terminated(run_id, status="KILLED"),
                         "closing an interrupted trial run")

    def log_epoch(self, run_id: str, metrics: dict[str, float], step: int, timestamp_ms: int,
                  tags: dict[str, str] | None = None) -> None:
        """One epoch's metrics at `step`; NaN kept (a diverged epoch), ±inf stored as NaN."""
        from mlflow.entities import Metric, RunTag

        batch = [Metric(k, float(v) if math.isfinite(v) or math.isnan(v) else math.nan,
                        timestamp_ms, step) for k, v in metrics.items()]
        tag_batch = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        self.client.call(lambda: self.mlflow.log_batch(run_id, metrics=batch, tags=tag_batch),
                         "logging metrics")

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)[:5000]) for k, v in tags.items()]
        self.client.call(lambda: self.mlflow.log_batch(run_id, tags=batch), "tagging a run")

    def finish(self, run_id: str, status: str, error: str | None = None) -> None:
        """status: completed | diverged | failed | stopped; `error` becomes the `error` tag."""
        tags = {"status": status, **({"error": error} if error else {})}
        self.set_tags(run_id, tags)
        self.client.call(lambda: self.mlflow.set_terminated(
            run_id, status=MLFLOW_STATUS.get(status, "KILLED")), "closing a trial run")

    def log_dataset(self, run_id: str, name: str, source: dict[str, Any],
                    sizes: dict[str, int]) -> None:
        """The trial's dataset through MLflow's dataset inputs (the UI's Datasets column)."""
        import hashlib

        from mlflow.entities import Dataset, DatasetInput, InputTag

        text = json.dumps(source, sort_keys=True)
        dataset = Dataset(name=name, digest=hashlib.sha1(text.encode()).hexdigest()[:8],
                          source_type="featloss", source=text,
                          profile=json.dumps(sizes, sort_keys=True))
        entry = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])
        self.client.call(lambda: self.mlflow.log_inputs(run_id, datasets=[entry]),
                         "logging the dataset")

    def log_features(self, run_id: str, payload: dict | None) -> None:
        """2-D validation features (and class vectors) as ``features.npz`` on a trial's run."""
        import numpy as np

        if not payload:
            return
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "features.npz"
            np.savez_compressed(path, **{k: v.numpy() for k, v in payload.items()})
            self.client.call(lambda: self.mlflow.log_artifact(run_id, str(path)),
                             "logging features")

    def children(self, key: str | None = None) -> list["ChildRun"]:
        """This parent's child runs not deleted (of trial `key` only, when given)."""
        from mlflow.entities import ViewType

        query = f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        if key is not None:  # trial keys are safe names: no quote can reach the filter
            query += f" and tags.`{TRIAL_KEY_TAG}` = '{key}'"
        found, token = [], None
        while True:
            page = self.client.call(lambda t=token: self.mlflow.search_runs(
                [self.experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000, page_token=t), "listing trial runs")
            found += [ChildRun(r.info.run_id, r.data.tags.get(TRIAL_KEY_TAG, ""), r.info.status,
                               int(r.data.metrics.get("epoch", 0) or 0), r.info.start_time or 0)
                      for r in page]
            token = page.token
            if not token:
                return found

    def retire(self, run_id: str, successor: str | None, why: str) -> None:
        """Close a second run of a trial as KILLED, say why and which run holds the trial
        (`successor`, None when its trial is not in the record), then soft-delete it."""
        tags = {"status": "superseded", NOTE_TAG: why[:8000],
                **({SUPERSEDED_TAG: successor} if successor else {})}
        self.set_tags(run_id, tags)
        self.client.call(lambda: self.mlflow.set_terminated(run_id, status="KILLED"),
                         "closing a superseded run")
        self.client.call(lambda: self.mlflow.delete_run(run_id), "deleting a superseded run")


@dataclass
class ChildRun:
    """What the reconciliation of runs with the record needs of one child run."""

    run_id: str
    key: str  # the trial key tag
    status: str  # MLflow's: RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    epoch: int  # the last epoch logged (the latest value of the `epoch` metric)
    start_time: int
