"""One MLflow run per trial across crashes and resumes, and a record that reads safely.

Real Ray (the session's), real MLflow SQLite, real training of tiny studies; the crash states are
made by editing what a crash leaves behind (the record, the checkpoints, the runs' status), so
each case is exact and fast. `test_resume.py` kills real drivers for the same properties.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from conftest import mlflow_runs, run_inline, tiny_study
from featloss.record import StudyRecord

TINY = {"max_train_samples": 128, "max_eval_samples": 64}


def all_trial_runs(uri: str, name: str) -> list:
    """Every child run, deleted ones included."""
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([exp.experiment_id], "tags.`featloss.role` = 'trial'",
                                          run_view_type=ViewType.ALL, max_results=1000)]


def epochs_of(uri: str, run_id: str) -> list[int]:
    history = MlflowClient(tracking_uri=uri).get_metric_history(run_id, "epoch")
    return sorted(m.step for m in history)


def resume_inline(plan, results_dir: str):
    from featloss.engine.progress import Progress
    from featloss.engine.run import RunOptions, run_study

    return run_study(plan, StudyRecord.load(results_dir), RunOptions(), Progress(every=1e9))


def as_after_a_crash(record: StudyRecord, keep_run_ids: bool) -> None:
    """What a driver killed mid-study leaves: trials shown running, the study interrupted."""
    for trial in record.trials.values():
        trial.status, trial.finished = "running", None
        if not keep_run_ids:  # the record's throttled save never got the run ids or the epochs
            trial.run_id, trial.logged_epoch, trial.last_epoch, trial.metrics = None, 0, 0, {}
    record.status, record.phases_done = "interrupted", []
    record.save()


def test_resume_reattaches_runs_the_record_lost_and_retires_a_second_run(
        ray_session, tracking_uri, tmp_path):
    raw = tiny_study("lost-ids", data=TINY, seeds=[0, 1], train={"epochs": 2})
    plan, record, _ = run_inline(raw, tracking_uri, tmp_path / "results")
    runs = {t.key: t.run_id for t in record.trials.values()}
    client = MlflowClient(tracking_uri=tracking_uri)
    # the driver died after logging, before closing a run and before its record caught up
    client.set_tag(runs["grid-softmax-s0"], "status", "running")
    client.update_run(runs["grid-softmax-s0"], status="RUNNING")
    # and an older featloss opened a second run for s1 on an earlier resume
    extra = client.create_run(
        client.get_experiment_by_name("lost-ids").experiment_id, run_name="grid-softmax-s1",
        tags={"mlflow.parentRunId": record.parent_run_id, "featloss.trial_key": "grid-softmax-s1",
              "featloss.role": "trial", "status": "running"}).info.run_id
    as_after_a_crash(record, keep_run_ids=False)
    checkpoints = Path(record.results_dir) / "checkpoints"
    mtimes = {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()}

    outcome = resume_inline(plan, record.results_dir)

    parents, trials = mlflow_runs(tracking_uri, "lost-ids")
    assert parents[0].info.status == "FINISHED" and not outcome.failed
    assert {r.data.tags["featloss.trial_key"]: r.info.run_id for r in trials} == runs
    for r in trials:
        assert r.info.status == "FINISHED" and r.data.tags["status"] == "completed"
        assert epochs_of(tracking_uri, r.info.run_id) == [1, 2]  # each epoch logged once
    retired = client.get_run(extra)
    assert retired.info.lifecycle_stage == "deleted" and retired.info.status == "KILLED"
    assert retired.data.tags["featloss.superseded_by"] == runs["grid-softmax-s1"]
    assert not [r for r in all_trial_runs(tracking_uri, "lost-ids") if r.info.status == "RUNNING"]
    # finished trials were not trained again: their checkpoints are untouched
    assert {p.name: p.stat().st_mtime_ns for p in checkpoints.iterdir()} == mtimes
    final = StudyRecord.load(record.results_dir)
    assert {k: t.run_id for k, t in final.trials.items()} == runs
    assert all(t.status == "completed" and t.logged_epoch == 2 for t in final.trials.values())


def test_a_trial_restarted_from_epoch_0_gets_one_new_run_and_the_old_is_retired(
        ray_session, tracking_uri, tmp_path, monkeypatch, capsys):
    from featloss.cli import main

    raw = tiny_study("restarts", data=TINY, seeds=[0, 1], train={"epochs": 2})
    _, record, _ = run_inline(raw, tracking_uri, tmp_path / "results")
    old = {t.key: t.run_id for t in record.trials.values()}
    client = MlflowClient(tracking_uri=tracking_uri)
    for run_id in old.values():  # both in flight when the driver died
        client.update_run(run_id, status="RUNNING")
    as_after_a_crash(record, keep_run_ids=True)
    for key in old:  # and every checkpoint unreadable: nothing else names the old runs
        (Path(record.results_dir) / "checkpoints" / f"{key}.pt").write_bytes(b"torn")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()

    assert main(["resume", record.results_dir, "--tracking-uri", tracking_uri]) == 0

    err = capsys.readouterr().err
    warnings = [x for x in err.splitlines() if "restarts from epoch 0" in x]
    assert len(warnings) == 2 and all("moved to MLflow's deleted runs" in x for x in warnings)
    _, trials = mlflow_runs(tracking_uri, "restarts")
    new = {r.data.tags["featloss.trial_key"]: r.info.run_id for r in trials}
    assert sorted(new) == sorted(old) and not set(new.values()) & set(old.values())
    for key, run_id in new.items():
        assert epochs_of(tracking_uri, run_id) == [1, 2]
        retired = client.get_run(old[key])
        assert retired.info.lifecycle_stage == "deleted" and retired.info.status == "KILLED"
        assert retired.data.tags["status"] == "superseded"
        assert retired.data.tags["featloss.superseded_by"] == run_id
    assert not [r for r in all_trial_runs(tracking_uri, "restarts") if r.info.status == "RUNNING"]
    assert not any(t.new_run for t in StudyRecord.load(record.results_dir).trials.values())


def test_a_study_whose_every_trial_failed_ends_failed_and_a_partial_failure_finished(
        ray_session, tracking_uri, tmp_path):
    nowhere = str(tmp_path / "no-data")
    raw = tiny_study("all-fail", data={**TINY, "dataset": "cifar10", "root": nowhere},
                     seeds=[0, 1], train={"epochs": 1})
    _, record, outcome = run_inline(raw, tracking_uri, tmp_path / "a")
    assert sum(outcome.failed.values()) == 2
    parents, trials = mlflow_runs(tracking_uri, "all-fail")
    tags = parents[0].data.tags
    assert parents[0].info.status == "FAILED" and tags["featloss.status"] == "failed"
    assert tags["error"].startswith("all 2 trials failed: dataset 'cifar10' not found under")
    assert tags["mlflow.note.content"].startswith("**All 2 trials failed.**")
    assert all(r.info.status == "FAILED" and r.data.tags["status"] == "failed" for r in trials)
    assert record.status == "finished" and record.error == "all 2 trials failed"

    raw = tiny_study("some-fail", data={**TINY, "root": nowhere}, train={"epochs": 1},
                     grid={"data.dataset": ["digits", "cifar10"]})
    run_inline(raw, tracking_uri, tmp_path / "b")
    parents, trials = mlflow_runs(tracking_uri, "some-fail")
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.tags["featloss.status"] == "finished"
    assert sorted(r.data.tags["status"] for r in trials) == ["completed", "failed"]


# -- the record file itself ------------------------------------------------------------------------

def _bad_state(folder: Path, kind: str) -> str:
    results = folder / "old-results" / "s-1"
    results.mkdir(parents=True)
    state = results / "featloss_state.json"
    if kind == "directory":
        state.mkdir()
    elif kind == "link to /dev/zero":
        state.symlink_to("/dev/zero")
    elif kind == "FIFO":
        os.mkfifo(state)
    elif kind == "huge":
        with open(state, "wb") as fh:  # sparse: no disk used
            fh.truncate(600 * 1024**2)
    elif kind == "dangling link":
        state.symlink_to(folder / "gone.json")
    return str(results)


@pytest.mark.parametrize("kind,needle", [
    ("directory", "featloss_state.json is a directory, not a regular file"),
    ("link to /dev/zero", "featloss_state.json is a character device, not a regular file"),
    ("FIFO", "featloss_state.json is a FIFO, not a regular file"),
    ("huge", "featloss_state.json is 600 MiB, over the 512 MiB a featloss record can be"),
    ("dangling link", "is not a featloss results folder (no featloss_state.json)"),
])
def test_a_state_file_that_is_not_a_record_is_one_line_exit_2(kind, needle, tmp_path,
                                                               monkeypatch, capsys):
    from featloss.cli import main

    monkeypatch.chdir(tmp_path)
    target = _bad_state(tmp_path, kind)

    def hung(signum, frame):
        raise TimeoutError(f"featloss resume hung on a {kind}")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)  # a FIFO opened for reading waits for a writer forever
    try:
        rc = main(["resume", target])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("featloss: error:"), lines
    assert needle in lines[0], lines[0]
    assert "regular file" not in needle or "restore it, or resume another results folder" \
        in lines[0]


def test_a_local_record_is_read_once_without_pyarrow(tmp_path):
    record = StudyRecord(study="s", source="s.yaml", study_yaml="name: s\n",
                         tracking_uri="sqlite:////x.db", storage=str(tmp_path),
                         results_dir=str(tmp_path / "s-1"))
    record.save()
    code = ("import sys; from featloss.record import StudyRecord; "
            f"r = StudyRecord.load({str(tmp_path / 's-1')!r}); "
            "print(r.study, 'pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["s", "False"], out.stderr[-2000:]
