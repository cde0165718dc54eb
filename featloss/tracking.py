"""MLflow, wrapped: the only module that imports mlflow.

Layout: one experiment per study; one parent run per study invocation (a resume
reopens it) holding the study YAML, the resolved plan, git commit and package versions; one nested
child run per trial (tag ``mlflow.parentRunId``) with flattened params (``loss``, ``loss.<hparam>``,
``model.feature_dim``, ...), per-epoch metrics with ``step`` = epoch, and tags ``phase``, ``seed``,
``status``, ``node_id``, ``hostname`` plus the filter tags ``study``, ``loss``, ``dataset``,
``feature_dim``, ``dropout``, ``trial_key``. Children carry every filter tag themselves, so they
can be compared in the MLflow UI without their parent.

All writes go through `MlflowClient` with explicit run ids (no global active run), with retries,
so a tracking server that restarts mid-study loses nothing (see `_retry`).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable

from featloss.errors import ConfigError

TRIAL_KEY_TAG = "featloss.trial_key"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
ROLE_TAG = "featloss.role"  # parent | trial

RETRY_SECONDS = float(os.environ.get("FEATLOSS_MLFLOW_RETRY_SECONDS", "120"))


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else an absolute SQLite file in the working directory."""
    default = f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"
    return os.environ.get("MLFLOW_TRACKING_URI") or default


def normalise_uri(uri: str) -> str:
    """Make SQLite paths absolute: trial processes change directory."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path = uri[len("sqlite:///"):]
        return f"sqlite:///{Path(path).resolve()}"
    return uri


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (ConfigError) on a tracking URI that cannot work, before any trial starts."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
        except (OSError, urllib.error.URLError) as exc:
            raise ConfigError(f"--tracking-uri {uri} is unreachable ({_reason(exc)}); start the "
                              f"MLflow server (mlflow server --host 127.0.0.1 ...) or fix the "
                              f"URI") from exc
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"--tracking-uri {uri}: folder {folder} does not exist or is not "
                              f"writable")
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError(f"--tracking-uri {uri}: MLflow 3 needs a database or server URI, e.g. "
                          f"sqlite:////abs/path/mlflow.db or http://127.0.0.1:5000")


def _reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None) or exc
    return str(reason).splitlines()[0]


class TrackingUnavailable(RuntimeError):
    """The tracking server stayed unreachable beyond RETRY_SECONDS."""


def _retry(call: Callable[[], Any], what: str) -> Any:
    """Run a tracking call, retrying connection failures for up to RETRY_SECONDS.

    The MLflow client itself retries each HTTP request with backoff
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES); this outer loop bridges longer outages such as a server
    restart. Nothing is buffered in memory: the driver waits, and the trials keep training and
    queue their results in Ray meanwhile. If the server stays down, TrackingUnavailable stops the
    study cleanly; `featloss resume` then completes it, re-logging only what MLflow lacks.
    """
    deadline = time.monotonic() + RETRY_SECONDS
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - the client raises many types on a dead server
            if not _is_connection_error(exc):
                raise
            if time.monotonic() > deadline:
                raise TrackingUnavailable(f"MLflow unreachable for {RETRY_SECONDS:.0f} s while "
                                          f"{what} ({_reason(exc)})") from exc
            print(f"featloss: MLflow unavailable while {what} ({_reason(exc)}); retrying",
                  flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _is_connection_error(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("connection", "max retries", "timed out", "refused",
                                         "temporarily unavailable", "503", "502",
                                         "database is locked"))


def versions() -> dict[str, str]:
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for package in ("featloss", "torch", "torchvision", "ray", "optuna", "mlflow", "pyarrow"):
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "not installed"
    return out


def git_commit() -> str:
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return (commit + ("-dirty" if dirty else "")) if out.returncode == 0 and commit else "unknown"


def _param_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


class StudyTracker:
    """The MLflow side of one study invocation."""

    def __init__(self, tracking_uri: str, study_name: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = normalise_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.study_name = study_name
        self.experiment_id = _retry(lambda: self._experiment(study_name), "opening the experiment")
        self.parent_run_id: str | None = None
        self.children: dict[str, str] = {}  # trial key -> run id
        self.last_step: dict[str, int] = {}  # trial key -> last epoch logged
        self.node: dict[str, str] = {}  # trial key -> node id last tagged

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                self.client.restore_experiment(found.experiment_id)
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            # Keep artifacts beside the database, not in whatever folder the command ran from.
            location = str(Path(self.uri[len("sqlite:///"):]).parent / "mlruns" / name)
        return self.client.create_experiment(name, artifact_location=location)

    # -- parent run -----------------------------------------------------------------------------
    def start_parent(self, study_yaml: str, plan: dict, tags: dict[str, str]) -> str:
        from mlflow.entities import RunTag

        def create() -> str:
            run = self.client.create_run(self.experiment_id, run_name=f"{self.study_name}",
                                         tags={ROLE_TAG: "parent", "study": self.study_name,
                                               **tags})
            return run.info.run_id

        self.parent_run_id = _retry(create, "creating the parent run")
        commit, vers = git_commit(), versions()
        _retry(lambda: self.client.log_batch(self.parent_run_id, tags=[
            RunTag("git_commit", commit),
            *[RunTag(f"version.{k}", v) for k, v in vers.items()]]), "tagging the parent run")
        self.log_text(study_yaml, "study.yaml")
        self.log_text(json.dumps(plan, indent=1, default=str), "plan.json")
        self.log_text(json.dumps(vers, indent=1), "versions.json")
        return self.parent_run_id

    def reopen_parent(self, run_id: str) -> None:
        """A resume continues the same parent run and re-attaches to its children."""
        self.parent_run_id = run_id
        _retry(lambda: self.client.update_run(run_id, status="RUNNING"), "reopening the parent")
        for run in self._child_runs():
            key = run.data.tags.get(TRIAL_KEY_TAG)
            if key:
                self.children[key] = run.info.run_id
                history = _retry(lambda: self.client.get_metric_history(run.info.run_id, "epoch"),
                                 "reading metric history")
                self.last_step[key] = max((m.step for m in history), default=0)

    def _child_runs(self) -> list:
        from mlflow.entities import ViewType

        query = f"tags.`{PARENT_TAG}` = '{self.parent_run_id}'"
        runs, token = [], None
        while True:
            page = _retry(lambda: self.client.search_runs(
                [self.experiment_id], query, run_view_type=ViewType.ACTIVE_ONLY,
                max_results=1000, page_token=token), "listing trial runs")
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def drop_stale_children(self, keep: set[str], phase: str) -> int:
        """Delete this phase's child runs whose trial Tune no longer has.

        After a driver crash Tune resumes from its last snapshot; a search trial suggested after
        that snapshot is suggested again under the same key with new parameters, and the run its
        first incarnation opened belongs to no trial. Returns how many were deleted.
        """
        dropped = 0
        for run in self._child_runs():
            key = run.data.tags.get(TRIAL_KEY_TAG)
            if run.data.tags.get("phase") == phase and key not in keep:
                _retry(lambda: self.client.delete_run(run.info.run_id), "deleting a stale run")
                self.children.pop(key, None)
                dropped += 1
        return dropped

    def finish_parent(self, status: str = "FINISHED") -> None:
        if self.parent_run_id:
            _retry(lambda: self.client.set_terminated(self.parent_run_id, status=status),
                   "closing the parent run")

    def log_text(self, text: str, artifact_file: str, run_id: str | None = None) -> None:
        _retry(lambda: self.client.log_text(run_id or self.parent_run_id, text, artifact_file),
               f"logging {artifact_file}")

    def log_file(self, path: str, artifact_path: str | None = None,
                 run_id: str | None = None) -> None:
        _retry(lambda: self.client.log_artifact(run_id or self.parent_run_id, path, artifact_path),
               f"logging {path}")

    # -- child runs -----------------------------------------------------------------------------
    def start_child(self, key: str, phase: str, seed: int, flat_params: dict[str, Any]) -> str:
        """The run of trial `key`: reused when it exists (resume), created otherwise."""
        from mlflow.entities import Param

        if key in self.children:
            run_id = self.children[key]
            _retry(lambda: self.client.update_run(run_id, status="RUNNING"), "reopening a trial")
            return run_id
        tags = {
            PARENT_TAG: self.parent_run_id, TRIAL_KEY_TAG: key, ROLE_TAG: "trial",
            "phase": phase, "seed": str(seed), "status": "running", "study": self.study_name,
            "loss": str(flat_params.get("loss")), "dataset": str(flat_params.get("data.dataset")),
            "feature_dim": str(flat_params.get("model.feature_dim")),
            "dropout": str(flat_params.get("model.dropout")),
            "backbone": str(flat_params.get("model.backbone")),
        }
        run = _retry(lambda: self.client.create_run(self.experiment_id, run_name=key, tags=tags),
                     "creating a trial run")
        run_id = run.info.run_id
        params = [Param(k, _param_value(v)[:6000]) for k, v in sorted(flat_params.items())]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            chunk = params[start:start + 100]
            _retry(lambda: self.client.log_batch(run_id, params=chunk), "logging params")
        self.children[key] = run_id
        self.last_step[key] = 0
        return run_id

    def log_epoch(self, key: str, metrics: dict[str, Any], step: int,
                  node_id: str | None = None, hostname: str | None = None) -> bool:
        """Log one epoch's metrics; an epoch already logged (replayed after a resume) is skipped."""
        from mlflow.entities import Metric, RunTag

        run_id = self.children[key]
        tags = []
        if node_id and self.node.get(key) != node_id:
            self.node[key] = node_id
            tags = [RunTag("node_id", node_id), RunTag("hostname", hostname or "")]
        if step <= self.last_step.get(key, 0):
            if tags:
                _retry(lambda: self.client.log_batch(run_id, tags=tags), "tagging a trial")
            return False
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        # NaN is a legitimate value (a diverged epoch); infinities are stored as NaN
        batch = [m if math.isfinite(m.value) or math.isnan(m.value)
                 else Metric(m.key, math.nan, m.timestamp, m.step) for m in batch]
        _retry(lambda: self.client.log_batch(run_id, metrics=batch, tags=tags), "logging metrics")
        self.last_step[key] = step
        return True

    def finish_child(self, key: str, status: str) -> None:
        """status: completed | diverged | failed | stopped (early-stopped by the scheduler)."""
        from mlflow.entities import RunTag

        run_id = self.children.get(key)
        if run_id is None:
            return
        mlflow_status = {"completed": "FINISHED", "stopped": "FINISHED", "diverged": "FAILED",
                         "failed": "FAILED"}.get(status, "KILLED")
        _retry(lambda: self.client.log_batch(run_id, tags=[RunTag("status", status)]),
               "tagging a trial")
        _retry(lambda: self.client.set_terminated(run_id, status=mlflow_status), "closing a trial")

    def log_features(self, key: str, payload: dict | None) -> None:
        """2-D validation features (and class vectors) as ``features.npz`` on the trial's run."""
        import tempfile

        import numpy as np

        if not payload:
            return
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "features.npz"
            np.savez_compressed(path, **{k: v.numpy() for k, v in payload.items()})
            self.log_file(str(path), run_id=self.children[key])

    def set_tags(self, key: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        run_id = self.children[key]
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        _retry(lambda: self.client.log_batch(run_id, tags=batch),
               "tagging a trial")

    def trial_status(self, key: str) -> str | None:
        run_id = self.children.get(key)
        if run_id is None:
            return None
        run = _retry(lambda: self.client.get_run(run_id), "reading a trial")
        return run.data.tags.get("status")

    # -- reading back ---------------------------------------------------------------------------
    def trial_records(self) -> list[dict]:
        """One record per child run of this parent: params, tags and last metric values."""
        return [run_record(run) for run in self._child_runs()]


def run_record(run) -> dict:
    return {"run_id": run.info.run_id, "name": run.data.tags.get(RUN_NAME_TAG, ""),
            "start_time": run.info.start_time,
            "params": dict(run.data.params), "tags": dict(run.data.tags),
            "metrics": dict(run.data.metrics), "status": run.info.status}


def study_runs(tracking_uri: str, study_name: str) -> tuple[list[dict], list[dict]]:
    """(parent records, trial records) of every invocation of a study, newest parent first."""
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=normalise_uri(tracking_uri))
    experiment = _retry(lambda: client.get_experiment_by_name(study_name), "finding the study")
    if experiment is None:
        raise ConfigError(f"no MLflow experiment named '{study_name}' at {tracking_uri}; run the "
                          f"study first or pass the right --tracking-uri")
    runs, token = [], None
    while True:
        page = _retry(lambda: client.search_runs([experiment.experiment_id], "",
                                                 run_view_type=ViewType.ACTIVE_ONLY,
                                                 max_results=1000, page_token=token),
                      "listing runs")
        runs.extend(page)
        token = page.token
        if not token:
            break
    parents = [run_record(r) for r in runs if r.data.tags.get(ROLE_TAG) == "parent"]
    parents.sort(key=lambda r: r["start_time"] or 0, reverse=True)
    trials = [run_record(r) for r in runs if r.data.tags.get(ROLE_TAG) == "trial"]
    return parents, trials


def metric_histories(tracking_uri: str, run_id: str,
                     keys: Iterable[str]) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=normalise_uri(tracking_uri))
    return {key: [(m.step, m.value) for m in _retry(lambda: client.get_metric_history(run_id, key),
                                                    "reading metric history")]
            for key in keys}


def list_artifacts(tracking_uri: str, run_id: str, path: str | None = None) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=normalise_uri(tracking_uri))
    found = _retry(lambda: client.list_artifacts(run_id, path), "listing artifacts")
    return [a.path for a in found]


def download_artifact(tracking_uri: str, run_id: str, path: str, folder: str) -> str | None:
    """Download one artifact into `folder`; None when the run has no such artifact."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=normalise_uri(tracking_uri))
    parent = path.rsplit("/", 1)[0] if "/" in path else None
    present = {a.path for a in _retry(lambda: client.list_artifacts(run_id, parent),
                                      "listing artifacts")}
    if path not in present:
        return None
    return _retry(lambda: client.download_artifacts(run_id, path, folder), f"reading {path}")


def log_report(tracking_uri: str, run_id: str, folder: str, artifact_path: str = "report") -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=normalise_uri(tracking_uri))
    _retry(lambda: client.log_artifacts(run_id, folder, artifact_path), "logging the report")


def dataframe_to_text(frame) -> tuple[str, str]:
    """(markdown, csv) renderings of a summary table."""
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return frame.to_markdown(index=False), buffer.getvalue()
