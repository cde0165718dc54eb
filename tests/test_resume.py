"""Interrupt a running study (SIGINT, SIGKILL) and resume it: every trial complete exactly once,
in the one MLflow run it started in, and no run left RUNNING.

`featloss run` runs as a real subprocess with its own Ray; the test watches the MLflow SQLite file
and kills the driver once some trials have finished and others are running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from conftest import mlflow_runs, tiny_study
from featloss.record import StudyRecord
from featloss.yamlio import dump_yaml

pytestmark = pytest.mark.slow
EPOCHS = 4
SEEDS = list(range(8))


def featloss_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "featloss", *args]


def env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "FEATLOSS_PROGRESS_SECONDS": "1",
            "RAY_USAGE_STATS_ENABLED": "0"}


def completed_keys(uri: str, name: str) -> set[str]:
    try:
        _, trials = mlflow_runs(uri, name)
    except Exception:  # the experiment does not exist yet
        return set()
    return {r.data.tags["featloss.trial_key"] for r in trials
            if r.data.tags.get("status") == "completed"}


def start_and_interrupt(tmp_path: Path, uri: str, name: str, sig: int):
    study = tiny_study(name, seeds=SEEDS, train={"epochs": EPOCHS},
                       data={"max_train_samples": 1000})
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_yaml(study))
    storage = tmp_path / "results"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(featloss_cmd("run", str(path), "--tracking-uri", uri,
                                         "--storage", str(storage)),
                            cwd=tmp_path, env=env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 300
    while len(completed_keys(uri, name)) < 2:
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.3)
    done_before = completed_keys(uri, name)
    assert len(done_before) < len(SEEDS), "the study finished before it could be interrupted"
    if sig == signal.SIGKILL:  # the whole driver side dies at once: driver, raylet, workers
        os.killpg(proc.pid, signal.SIGKILL)
    else:  # Ctrl+C reaches the driver
        os.kill(proc.pid, signal.SIGINT)
    rc = proc.wait(timeout=180)
    log.close()
    results = sorted(storage.iterdir())
    assert len(results) == 1
    return rc, results[0], done_before


def run_ids(uri: str, name: str) -> dict[str, str]:
    """Trial key -> its child run (not deleted); asserts there is one per key."""
    _, trials = mlflow_runs(uri, name)
    keys = [r.data.tags["featloss.trial_key"] for r in trials]
    assert len(keys) == len(set(keys)), sorted(keys)
    return {r.data.tags["featloss.trial_key"]: r.info.run_id for r in trials}


def running_children(uri: str, name: str) -> list[str]:
    """Child runs still RUNNING, deleted ones included."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "tags.`featloss.role` = 'trial'",
                              run_view_type=ViewType.ALL, max_results=1000)
    return [r.info.run_name for r in runs if r.info.status == "RUNNING"]


def checkpoint_times(results_dir: Path, keys: set[str]) -> dict[str, int]:
    return {k: (results_dir / "checkpoints" / f"{k}.pt").stat().st_mtime_ns for k in keys}


def resume_and_check(tmp_path: Path, uri: str, name: str, results_dir: Path,
                     done_before: set[str]) -> None:
    before = checkpoint_times(results_dir, done_before)
    runs_before = run_ids(uri, name)
    proc = subprocess.run(featloss_cmd("resume", str(results_dir)), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "summary of" in proc.stdout
    parents, trials = mlflow_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = [r.data.tags["featloss.trial_key"] for r in trials]
    assert sorted(keys) == sorted(f"grid-softmax-s{s}" for s in SEEDS)  # no duplicate, no orphan
    client = MlflowClient(tracking_uri=uri)
    for r in trials:
        assert r.info.status == "FINISHED" and r.data.tags["status"] == "completed"
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "epoch")]
        assert sorted(steps) == list(range(1, EPOCHS + 1)), (r.info.run_name, steps)
    # trials finished before the interruption were not trained again
    assert checkpoint_times(results_dir, done_before) == before
    # every trial that had a run kept it (the in-flight ones too), and none is left RUNNING
    runs_after = run_ids(uri, name)
    assert {k: runs_after[k] for k in runs_before} == runs_before
    assert not running_children(uri, name)


def test_sigint_then_resume(tmp_path, tracking_uri):
    rc, results_dir, done_before = start_and_interrupt(tmp_path, tracking_uri, "sigint",
                                                       signal.SIGINT)
    log = (tmp_path / "run.log").read_text()
    assert rc == 130 and "resume with: featloss resume" in log, log
    parents, trials = mlflow_runs(tracking_uri, "sigint")
    assert parents[0].info.status == "KILLED"
    # the runs of the interrupted trials are closed too, until the resume reopens them
    assert not running_children(tracking_uri, "sigint")
    interrupted = [r for r in trials if r.data.tags["status"] != "completed"]
    assert interrupted and all(r.info.status == "KILLED" and r.data.tags["status"] ==
                               "interrupted" for r in interrupted)
    resume_and_check(tmp_path, tracking_uri, "sigint", results_dir, done_before)


def test_sigkill_then_resume(tmp_path, tracking_uri):
    rc, results_dir, done_before = start_and_interrupt(tmp_path, tracking_uri, "sigkill",
                                                       signal.SIGKILL)
    assert rc == -signal.SIGKILL
    # a trial's end and its run id reach the record at once, before MLflow hears of them
    record = StudyRecord.load(str(results_dir))
    for key in completed_keys(tracking_uri, "sigkill"):
        assert record.trials[key].status == "completed", key
    _, trials = mlflow_runs(tracking_uri, "sigkill")
    for r in trials:
        if r.data.metrics.get("epoch"):  # logged: the driver had recorded its run before
            assert record.trials[r.data.tags["featloss.trial_key"]].run_id == r.info.run_id
    resume_and_check(tmp_path, tracking_uri, "sigkill", results_dir, done_before)
