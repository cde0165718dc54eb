"""The engine's bookkeeping, case by case (../shared/cases O, N, R, M, J2, K2) and their siblings.

Real Ray, real Optuna, real MLflow; studies are tiny (digits, 64-256 images, 1-2 epochs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import mlflow_runs, run_inline, tiny_study
from featloss.names import safe_name
from featloss.record import StudyRecord, TrialRecord
from featloss.yamlio import dump_yaml

pytestmark = pytest.mark.slow
TINY = {"max_train_samples": 128, "max_eval_samples": 64}


def featloss(*args: str, cwd, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "FEATLOSS_PROGRESS_SECONDS": "1"}
    return subprocess.run([sys.executable, "-m", "featloss", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600, **kwargs)


# -- case O: exact search budgets ------------------------------------------------------------------

def test_grid_sampler_evaluates_every_point_exactly_once(ray_session, tracking_uri, tmp_path):
    raw = tiny_study("grid-sampler", losses=["lsoftmax", "center", "encm"], data=TINY,
                     train={"epochs": 1}, search={
                         "trials_per_loss": 3, "sampler": "grid", "space": {
                             "lsoftmax": {"loss.margin": {"type": "categorical",
                                                          "choices": [1, 2, 3]}},
                             "center": {"loss.lam": {"type": "float", "low": 0.01, "high": 0.04,
                                                     "step": 0.01}},
                             "encm": {"loss.scale": {"type": "int", "low": 1, "high": 3}}}},
                     max_concurrent=2)
    plan, record, _ = run_inline(raw, tracking_uri, tmp_path / "results")
    searched = {}
    for trial in record.phase("search"):
        searched.setdefault(trial.loss, []).append(next(iter(trial.params.values())))
    assert sorted(searched["lsoftmax"]) == [1, 2, 3]
    assert sorted(searched["center"]) == pytest.approx([0.01, 0.02, 0.03, 0.04])
    assert sorted(searched["encm"]) == [1, 2, 3]
    # the config's own value (the start point) is the first trial and one of the points
    assert record.trials["search-lsoftmax-001"].params == {"loss.margin": 2}
    assert record.trials["search-encm-001"].params == {"loss.scale": 1}
    _, runs = mlflow_runs(tracking_uri, "grid-sampler")
    assert len([r for r in runs if r.data.tags["phase"] == "search"]) == 3 + 4 + 3


def test_tpe_and_random_budgets_are_exactly_trials_per_loss(ray_session, tracking_uri, tmp_path):
    for sampler in ("tpe", "random"):
        raw = tiny_study(f"budget-{sampler}", losses=["center", "wsoftmax"], data=TINY,
                         train={"epochs": 1}, max_concurrent=2,
                         search={"trials_per_loss": 3, "sampler": sampler})
        _, record, _ = run_inline(raw, tracking_uri, tmp_path / sampler)
        per_loss = {}
        for trial in record.phase("search"):
            per_loss[trial.loss] = per_loss.get(trial.loss, 0) + 1
        assert per_loss == {"center": 3, "wsoftmax": 3}
        numbers = sorted(t.optuna_number for t in record.phase("search") if t.loss == "center")
        assert numbers == [0, 1, 2]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_search_draws_new_points_not_the_ones_before_the_interruption(sampler,
                                                                               tmp_path):
    """Optuna keeps no sampler state in its journal: a resume that seeded the sampler as the
    first invocation did drew the same points again (K2's third trial repeated its second)."""
    from featloss.engine.feeds import OptunaFeed
    from featloss.plan import expand
    from featloss.study import parse_study

    raw = tiny_study("resumed-search", losses=["pod"],
                     search={"trials_per_loss": 7, "sampler": sampler})
    plan = expand(parse_study(raw, source="s.yaml"))
    record = StudyRecord.new(plan, "sqlite:///unused.db", str(tmp_path), "s.yaml")
    journal = str(tmp_path / "optuna.journal")

    def serve(feed: OptunaFeed, count: int) -> None:
        for _ in range(count):
            trial = record.trials[feed.next().key]
            trial.status, trial.metrics = "completed", {"val/accuracy": 0.5}
            feed.finished(trial)

    serve(OptunaFeed(plan, record, journal, seed=0), 3)  # then the study is interrupted
    serve(OptunaFeed(plan, record, journal, seed=0), 4)  # the resume, on the same journal
    points = [tuple(sorted(t.params.items())) for t in record.phase("search")]
    assert len(points) == 7 and len(set(points)) == 7, points


def test_validate_prints_the_grid_points(tmp_path):
    raw = tiny_study("points", losses=["lsoftmax"], search={
        "sampler": "grid", "trials_per_loss": 2,
        "space": {"lsoftmax": {"loss.margin": {"type": "int", "low": 1, "high": 4, "step": 1}}}})
    path = tmp_path / "s.yaml"
    path.write_text(dump_yaml(raw))
    proc = featloss("validate", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    points = [line.strip() for line in proc.stdout.splitlines() if "point " in line]
    assert points == ["point loss.margin=2", "point loss.margin=1", "point loss.margin=3",
                      "point loss.margin=4"]
    assert "4 trials over" in proc.stdout and "does not apply" in proc.stdout


# -- case N: names made safe by construction -------------------------------------------------------

@pytest.mark.parametrize("name", ["a/b", "..", "my étude β", "x" * 200])
def test_safe_name_is_safe_unique_and_readable(name):
    safe = safe_name(name)
    assert "/" not in safe and not safe.startswith(".") and len(safe) <= 96
    assert safe_name(name) == safe and safe_name(name + "!") != safe
    assert safe_name("grid-softmax-s0") == "grid-softmax-s0"  # already safe: unchanged


def test_user_values_with_slashes_reach_no_path_raw(ray_session, tracking_uri, tmp_path):
    raw = tiny_study("../odd/ name é", data=TINY, train={"epochs": 1},
                     grid={"data.root": ["/data/a", "/data/b"]})
    plan, record, _ = run_inline(raw, tracking_uri, tmp_path / "results")
    results = Path(record.results_dir)
    assert results.parent == tmp_path / "results" and "/" not in results.name[:-1]
    assert not results.name.startswith(".")
    keys = sorted(record.trials)
    assert len(keys) == 2 and all("/" not in k for k in keys)
    assert {t.params["data.root"] for t in record.trials.values()} == {"/data/a", "/data/b"}
    assert all((results / "checkpoints" / f"{k}.pt").is_file() for k in keys)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("../odd/ name é")
    location = experiment.artifact_location.removeprefix("file://")
    assert Path(location).parent == Path(tracking_uri[len("sqlite:///"):]).parent / "mlruns"
    _, runs = mlflow_runs(tracking_uri, "../odd/ name é")
    assert {r.data.params["data.root"] for r in runs} == {"/data/a", "/data/b"}


# -- case R: a failed trial's real error -----------------------------------------------------------

def test_a_failed_trial_carries_its_real_error_and_is_not_retried(ray_session, tracking_uri,
                                                                  tmp_path):
    raw = tiny_study("errors", data=TINY, train={"epochs": 1}, max_failures=3,
                     grid={"data.dataset": ["digits", "cifar10"]})
    raw["data"]["root"] = str(tmp_path / "no-data")
    _, record, outcome = run_inline(raw, tracking_uri, tmp_path / "results")
    failed = [t for t in record.trials.values() if t.status == "failed"]
    assert len(failed) == 1 and failed[0].params["data.dataset"] == "cifar10"
    assert failed[0].error.startswith("dataset 'cifar10' not found under")
    assert outcome.failed == {failed[0].error: 1}
    _, runs = mlflow_runs(tracking_uri, "errors")
    tags = {r.data.params["data.dataset"]: r.data.tags for r in runs}
    assert tags["cifar10"]["status"] == "failed"
    assert tags["cifar10"]["error"] == failed[0].error
    assert tags["digits"]["status"] == "completed" and "error" not in tags["digits"]
    # one attempt only: a retry cannot fix bad input
    tune_results = list((Path(record.results_dir) / "tune").rglob("result.json"))
    attempts = [p for p in tune_results if "cifar10" in str(p)]
    assert len(attempts) == 1
    assert record.status == "finished"


def test_a_study_that_dies_is_marked_failed_never_running(ray_session, tracking_uri, tmp_path,
                                                          monkeypatch):
    from featloss.engine import driver

    def broken(self, key, result):
        raise RuntimeError("the driver broke")

    monkeypatch.setattr(driver.PhaseDriver, "result", broken)
    raw = tiny_study("dies", data=TINY, train={"epochs": 1})
    with pytest.raises(Exception, match="the driver broke"):
        run_inline(raw, tracking_uri, tmp_path / "results")
    (folder,) = (tmp_path / "results").iterdir()
    record = StudyRecord.load(str(folder))
    assert record.status == "failed" and "the driver broke" in record.error
    assert all(t.status != "running" for t in record.trials.values())
    parents, _ = mlflow_runs(tracking_uri, "dies")
    assert parents[0].info.status == "FAILED"


# -- case M: two studies at once on one new SQLite file --------------------------------------------

def test_two_studies_started_together_on_a_new_sqlite_file_both_complete(tmp_path):
    db = tmp_path / "mlflow.db"
    procs = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_yaml(tiny_study(f"parallel-{name}", data=TINY,
                                             train={"epochs": 1})))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "featloss", "run", str(path), "--storage",
             str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{db}"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"}))
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, out + err
    for name in ("a", "b"):
        parents, trials = mlflow_runs(f"sqlite:///{db}", f"parallel-{name}")
        assert parents[0].info.status == "FINISHED" and len(trials) == 1



def test_the_storage_check_of_one_new_folder_by_processes_started_together(tmp_path):
    """Case M's sibling: each process's probe creates and removes the missing folders, so
    processes started together see them come and go; none may refuse a writable folder."""
    code = ("from featloss.preflight import check_storage\n"
            f"check_storage({str(tmp_path / 'a' / 'b' / 'results')!r})\nprint('ok')")
    for _ in range(5):
        procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(8)]
        outputs = [p.communicate(timeout=120) for p in procs]
        assert all(out.strip() == "ok" for out, _ in outputs), outputs

# -- cases J2 and K2: resume after an interruption -------------------------------------------------

def interrupted(tmp_path: Path, raw: dict, epochs_logged: int = 2) -> tuple[Path, Path, str]:
    """Run a study, SIGINT it once `epochs_logged` epochs are in MLflow; (study, results, uri)."""
    import sqlite3

    study = tmp_path / "study.yaml"
    study.write_text(dump_yaml(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "featloss", "run", str(study), "--storage",
                             str(tmp_path / "results"), "--tracking-uri", uri], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "FEATLOSS_PROGRESS_SECONDS": "1"})
    deadline = time.monotonic() + 300
    while True:
        assert proc.poll() is None, (tmp_path / "run.log").read_text()
        assert time.monotonic() < deadline
        try:
            with sqlite3.connect(tmp_path / "mlflow.db") as db:
                logged = db.execute("select count(*) from metrics where key = 'epoch'").fetchone()
        except sqlite3.Error:
            logged = (0,)
        if logged[0] >= epochs_logged:
            break
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, (tmp_path / "run.log").read_text()
    log.close()
    (results,) = (tmp_path / "results").iterdir()
    return study, results, uri


def test_resume_of_an_edited_study_refuses_then_accepts_the_recorded_plan(tmp_path):
    raw = tiny_study("edited", data={"max_train_samples": 384, "max_eval_samples": 128},
                     train={"epochs": 3, "batch_size": 32, "lr": 0.05}, max_concurrent=1,
                     grid={"train.weight_decay": [0.0005, 0.001]})
    study, results, uri = interrupted(tmp_path, raw)
    assert StudyRecord.load(str(results)).status == "interrupted"
    parents, _ = mlflow_runs(uri, "edited")
    assert parents[0].info.status == "KILLED"
    raw["train"]["epochs"], raw["train"]["lr"] = 5, 0.02
    raw["max_concurrent"] = 2  # where it runs may change: not a change of the plan
    study.write_text(dump_yaml(raw))
    refused = featloss("resume", str(results), cwd=tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "changed since the study started" in line and "train.epochs (3 → 5)" in line
    assert "train.lr (0.05 → 0.02)" in line and "max_concurrent" not in line
    assert "--accept-changes" in line
    accepted = featloss("resume", str(results), "--accept-changes", cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert "going on with the recorded plan" in accepted.stdout
    _, trials = mlflow_runs(uri, "edited")
    assert {r.data.params["train.epochs"] for r in trials} == {"3"}  # the recorded plan
    assert {r.data.params["train.lr"] for r in trials} == {"0.05"}
    # K2: the resumed progress counts the trials finished before the interruption too
    last = [x for x in accepted.stdout.splitlines() if x.startswith("[grid")][-1]
    assert last.startswith("[grid 2/2 done, 0 running"), accepted.stdout


def test_progress_counts_every_finished_trial_and_the_best_over_all_of_them(tmp_path):
    from featloss.engine.progress import line

    record = StudyRecord(study="s", source="s.yaml", study_yaml="", tracking_uri="sqlite:///x",
                         storage=str(tmp_path), results_dir=str(tmp_path / "r"))
    # two trials finished before an interruption (one of them the best), one after, one running
    for i, (status, acc, started, finished) in enumerate(
            [("completed", 0.41, 0, 10), ("completed", 0.38, 10, 30), ("completed", 0.39, 40, 50),
             ("running", 0.2, 50, None)]):
        record.trials[f"t{i}"] = TrialRecord(
            key=f"t{i}", phase="search", loss="softmax" if i != 1 else "center", seed=0,
            config={}, status=status, metrics={"val/accuracy": acc}, started=started,
            finished=finished)
    # mean trial 40/3 s; left: 2 not started + what the mean leaves of the running one, / 2
    text = line(record, "search", total=6, slots=2, metric="val/accuracy", mode="max",
                elapsed=55, now=55)
    assert text.startswith("[search 3/6 done, 1 running | 55s elapsed, ~18s left]")  # 35/2
    assert text.endswith("best val/accuracy: 0.4100 (softmax)")
    later = line(record, "search", total=6, slots=2, metric="val/accuracy", mode="max",
                 elapsed=65, now=65)  # the running trial is past the mean: it counts 0
    assert later.startswith("[search 3/6 done, 1 running | 1m05s elapsed, ~13s left]")
