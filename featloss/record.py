"""The one record of a study's state: what the study is and what has happened in it.

`StudyRecord` is the study invocation (the resolved study file and overrides, where it logs,
its phases, the selected configs) and one `TrialRecord` per trial that exists: its config,
status (pending | running | completed | diverged | failed | stopped), error line, last epoch and
last metrics. `featloss run` creates it, the driver updates it as trials report, and run,
resume, the progress line, the report and the summary all read it. Tune's experiments and the
MLflow runs are written *from* it; neither is consulted to rebuild it.

It lives in ``<results>/featloss_state.json``, rewritten atomically (write, then rename): at once
when a trial gets its MLflow run or finishes (completed, diverged, failed, stopped), at every
phase boundary and when the study stops; epoch progress at most every `FLUSH_SECONDS`. So a
crash loses at most some epochs' progress, never an ending or a run id: a trial the record does
not show finished is served again on resume and continues from its per-epoch checkpoint (the
source of truth for its training state; a finished one re-reports its last epoch without
training), into the same MLflow run (`featloss.engine.children`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from featloss import storage
from featloss.errors import ConfigError

STATE_FILE = "featloss_state.json"
FLUSH_SECONDS = 2.0
MAX_STATE_BYTES = 512 * 1024**2  # far above any real record (about 2 kB per trial)
FINISHED = ("completed", "diverged", "failed", "stopped")
TrialStatus = Literal["pending", "running", "completed", "diverged", "failed", "stopped"]
StudyStatus = Literal["running", "finished", "failed", "interrupted"]
VERSION = 2


class TrialRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str
    phase: str  # grid | search | final
    loss: str
    seed: int
    config: dict[str, Any]  # Config.to_dict()
    params: dict[str, Any] = {}  # the grid cell, or the searched / selected values
    status: TrialStatus = "pending"
    error: str | None = None  # last line of the trial's error
    last_epoch: int = 0  # epochs finished (reported)
    logged_epoch: int = 0  # highest epoch logged to MLflow
    metrics: dict[str, float] = {}  # the last report's scalar metrics
    run_id: str | None = None  # the MLflow child run
    optuna_number: int | None = None  # the Optuna trial (search phase)
    node: str | None = None  # Ray node id of the last worker
    started: float | None = None  # unix seconds, first start
    finished: float | None = None  # unix seconds
    new_run: bool = False  # restarts from epoch 0: its next run supersedes any earlier one

    @property
    def done(self) -> bool:
        return self.status in FINISHED

    def restart(self) -> None:
        """Start over from epoch 0 (its checkpoint is lost), in a new MLflow run that
        supersedes the old one (`featloss.engine.children`)."""
        self.run_id, self.logged_epoch, self.last_epoch = None, 0, 0
        self.metrics, self.started, self.new_run = {}, None, True

    def value(self, metric: str) -> float | None:
        value = self.metrics.get(metric)
        return value if isinstance(value, (int, float)) and math.isfinite(value) else None


class StudyRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    version: int = VERSION
    study: str  # the study's name
    source: str  # the study file
    study_yaml: str  # the resolved study mapping, as YAML
    overrides: dict[str, Any] = {}  # --set key=value given to `run`
    smoke: bool = False
    planned: int = 0  # trials the plan expects (search phases add theirs as they are asked)
    tracking_uri: str
    storage: str
    results_dir: str
    status: StudyStatus = "running"
    error: str | None = None
    phases_done: list[str] = []
    best: dict[str, dict[str, Any]] = {}  # loss -> {params, value, trial}
    parent_run_id: str | None = None
    created: float = Field(default_factory=time.time)
    commit: str = ""  # featloss's git commit when the study started
    trials: dict[str, TrialRecord] = {}

    _dirty: bool = False
    _flushed: float = 0.0

    # -- persistence ----------------------------------------------------------------------------
    @classmethod
    def new(cls, plan, tracking_uri: str, storage_uri: str, source: str,
            overrides: dict[str, Any] | None = None) -> StudyRecord:
        """The record of a new invocation of `plan`, in a new results folder (not yet written)."""
        from featloss.provenance import git_commit
        from featloss.study import study_yaml

        return cls(study=plan.study.name, source=source, study_yaml=study_yaml(plan.study),
                   commit=git_commit(),
                   overrides=overrides or {}, smoke=plan.smoke, planned=plan.total_trials,
                   tracking_uri=tracking_uri, storage=storage_uri,
                   results_dir=storage.new_results_dir(storage_uri, plan.study.name))

    @classmethod
    def load(cls, results_dir: str) -> StudyRecord:
        """Read ``<results_dir>/featloss_state.json``. Raises ConfigError when it is missing,
        not a regular file, over `MAX_STATE_BYTES`, unreadable, empty, truncated or not a
        featloss record."""
        uri = storage.join(results_dir, STATE_FILE)
        data = _read_state(uri, results_dir)
        try:
            record = cls.model_validate_json(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, ValidationError) as exc:
            detail = "empty" if not data.strip() else _first_error(exc)
            raise ConfigError(f"{uri} is corrupt ({detail}); the study cannot be resumed from "
                              f"it (its MLflow runs are intact; start it again with featloss "
                              f"run)") from None
        if record.version != VERSION:
            raise ConfigError(f"{uri} was written by another featloss version (record "
                              f"version {record.version}, this one reads {VERSION})")
        record.results_dir = results_dir
        return record

    def save(self, force: bool = True) -> None:
        """Write the record atomically; with force=False only when dirty and FLUSH_SECONDS
        have passed since the last write (for epoch progress; a trial's run id and its end
        are written with force=True). Raises OSError when the storage refuses."""
        now = time.monotonic()
        if not force and (not self._dirty or now - self._flushed < FLUSH_SECONDS):
            return
        storage.write_bytes(storage.join(self.results_dir, STATE_FILE),
                            self.model_dump_json(indent=None).encode())
        self._dirty = False
        self._flushed = now

    def started(self) -> bool:
        """Whether anything of this study ever ran: a parent run in MLflow or a trial."""
        return self.parent_run_id is not None or bool(self.trials)

    def discard(self) -> None:
        """Remove the record of an invocation refused before it started, and its results
        folder when nothing else is in it: a refused start leaves nothing behind."""
        storage.discard(self.results_dir, (STATE_FILE,))

    def touch(self) -> None:
        self._dirty = True

    # -- trials ---------------------------------------------------------------------------------
    def add(self, trial: TrialRecord) -> TrialRecord:
        """Register a trial (kept as it is when its key exists: a resume re-plans it)."""
        existing = self.trials.get(trial.key)
        if existing is not None:
            return existing
        self.trials[trial.key] = trial
        self.touch()
        return trial

    def phase(self, phase: str) -> list[TrialRecord]:
        return [t for t in self.trials.values() if t.phase == phase]

    def counts(self, phase: str) -> dict[str, int]:
        out = {status: 0 for status in ("pending", "running", *FINISHED)}
        for trial in self.phase(phase):
            out[trial.status] += 1
        return out

    def best_by_loss(self, phase: str, metric: str, mode: str,
                     statuses: Iterable[str] = ("completed", "stopped")) -> dict[str, TrialRecord]:
        """The trial with the best finite `metric` per loss among `statuses` of `phase`."""
        sign = 1.0 if mode == "max" else -1.0
        best: dict[str, TrialRecord] = {}
        allowed = set(statuses)
        for trial in self.phase(phase):
            value = trial.value(metric)
            if trial.status not in allowed or value is None:
                continue
            current = best.get(trial.loss)
            if current is None or sign * value > sign * current.value(metric):
                best[trial.loss] = trial
        return best

    def finish(self, status: StudyStatus, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.touch()


def _read_state(uri: str, results_dir: str) -> bytes:
    """The record's bytes, read once, after checking it is a regular file of a sane size (a
    directory, a FIFO or a link to /dev/zero must be one error line, not a traceback, a hang or
    all the memory). Raises ConfigError."""
    fix = "it must be the file featloss wrote; restore it, or resume another results folder"
    try:
        kind, size = storage.file_kind(uri)
    except OSError as exc:
        raise ConfigError(f"{uri} cannot be read ({exc.strerror or exc})") from None
    if kind is None:
        raise ConfigError(f"{results_dir} is not a featloss results folder (no {STATE_FILE})")
    if kind != "a file":
        raise ConfigError(f"{uri} is {kind}, not a regular file; {fix}")
    if size is not None and size > MAX_STATE_BYTES:
        raise ConfigError(f"{uri} is {size / 1024**2:.0f} MiB, over the "
                          f"{MAX_STATE_BYTES // 1024**2} MiB a featloss record can be; {fix}")
    try:
        if storage.is_remote(uri):
            return storage.read_bytes(uri)
        with open(uri, "rb") as fh:  # plain Python: a local record needs no pyarrow
            data = fh.read(MAX_STATE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{uri} cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_STATE_BYTES:  # it grew since the check
        raise ConfigError(f"{uri} is over the {MAX_STATE_BYTES // 1024**2} MiB a featloss record "
                          f"can be; {fix}")
    return data


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        loc = ".".join(str(p) for p in error["loc"])
        return f"{loc}: {error['msg']}" if loc else error["msg"]
    return str(exc).splitlines()[0][:200]


def study_records(storage_uri: str, study_name: str) -> Iterable[tuple[str, StudyRecord]]:
    """(results folder, record) of every readable record of `study_name` under `storage_uri`,
    newest first."""
    from featloss.names import safe_name

    prefix = f"{safe_name(study_name, max_len=80)}-"
    for name in sorted((n for n in storage.list_dirs(storage_uri) if n.startswith(prefix)),
                       reverse=True):
        folder = storage.join(storage_uri, name)
        try:
            record = StudyRecord.load(folder)
        except ConfigError:
            continue
        if record.study == study_name:
            yield folder, record


def find_results_dir(storage_uri: str, study_name: str) -> str:
    """The newest unfinished results folder of `study_name` under `storage_uri`.

    Raises ConfigError when there is none.
    """
    for folder, record in study_records(storage_uri, study_name):
        if record.status != "finished":
            return folder
    raise ConfigError(f"no unfinished results of study '{study_name}' under {storage_uri}; pass "
                      f"the results folder (featloss resume RESULTS_DIR) or --storage")


def job_mode(storage_uri: str, study_name: str, restarts: int) -> str:
    """What a (re)started Slurm job of `study_name` does: "resume" an unfinished record,
    "finished" when a restarted job finds the study done, else "run"."""
    statuses = {record.status == "finished" for _, record in study_records(storage_uri,
                                                                            study_name)}
    if False in statuses:
        return "resume"
    return "finished" if restarts > 0 and True in statuses else "run"


if __name__ == "__main__":  # the Slurm job script: python -m featloss.record STORAGE NAME RESTARTS
    import sys

    print(job_mode(sys.argv[1], sys.argv[2], int(sys.argv[3])))
