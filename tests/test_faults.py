"""Faults survived with real processes: a killed trial worker, unreadable checkpoints on resume,
bounded waits on a tracking store that is down or silent, and what a local Ray exposes.

Each study test checks that no trial is lost or duplicated and no epoch is logged twice.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import mlflow_runs, tiny_study
from featloss.yamlio import dump_yaml

pytestmark = pytest.mark.slow
EPOCHS = 4


def env() -> dict:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "FEATLOSS_PROGRESS_SECONDS": "1",
            "PYTHONWARNINGS": "ignore"}


def epochs_logged(db: Path) -> dict[str, int]:
    """Trial key -> epochs in MLflow, read straight from the SQLite file."""
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute(
                "select t.value, count(m.step) from tags t join metrics m on m.run_uuid = "
                "t.run_uuid where t.key = 'featloss.trial_key' and m.key = 'epoch' "
                "group by t.run_uuid").fetchall()
    except sqlite3.Error:
        return {}
    return dict(rows)


def start(tmp_path: Path, name: str, seeds: int = 3) -> tuple[subprocess.Popen, Path, str]:
    study = tmp_path / "study.yaml"
    study.write_text(dump_yaml(tiny_study(name, seeds=list(range(seeds)), max_concurrent=1,
                                          max_failures=2, train={"epochs": EPOCHS},
                                          data={"dataset": "mnist5k",
                                                "max_train_samples": 1200})))
    db = tmp_path / "mlflow.db"
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "featloss", "run", str(study), "--storage",
                             str(tmp_path / "results"), "--tracking-uri", f"sqlite:///{db}"],
                            cwd=tmp_path, env=env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, db, f"sqlite:///{db}"


def wait_until(check, proc, tmp_path, timeout=300.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(0.2)


def assert_each_trial_once(uri: str, name: str, seeds: int) -> None:
    parents, trials = mlflow_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = sorted(r.data.tags["featloss.trial_key"] for r in trials)
    assert keys == sorted(f"grid-softmax-s{s}" for s in range(seeds))  # none lost or doubled
    client = MlflowClient(tracking_uri=uri)
    for r in trials:
        assert r.data.tags["status"] == "completed"
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "epoch"))
        assert steps == list(range(1, EPOCHS + 1)), (r.info.run_name, steps)


def trial_worker_pids() -> list[int]:
    """Ray worker processes running a trial (function trainables run as ImplicitFunc)."""
    out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def test_a_killed_trial_worker_resumes_from_its_checkpoint(tmp_path):
    proc, db, uri = start(tmp_path, "killed-worker")
    wait_until(lambda: any(2 <= n < EPOCHS for n in epochs_logged(db).values())
               and trial_worker_pids(), proc, tmp_path)
    victim = next(k for k, n in epochs_logged(db).items() if 2 <= n < EPOCHS)
    for pid in trial_worker_pids():
        os.kill(pid, signal.SIGKILL)  # the worker dies mid-trial, no goodbye
    assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
    assert_each_trial_once(uri, "killed-worker", 3)
    (results,) = (tmp_path / "results").iterdir()
    import json

    reports = [json.loads(line) for path in (results / "tune").glob(f"grid-1/{victim}*/result.json")
               for line in path.open()]
    trained = [r["epoch"] for r in reports if not r.get("replayed")]
    assert len(trained) == len(set(trained)), trained  # no epoch trained twice


def test_resume_says_which_checkpoints_are_unreadable_and_loses_nothing_else(tmp_path):
    proc, db, uri = start(tmp_path, "bad-checkpoints", seeds=3)
    wait_until(lambda: (lambda e: sum(n == EPOCHS for n in e.values()) >= 1
                        and any(2 <= n < EPOCHS for n in e.values()))(epochs_logged(db)),
               proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    logged = epochs_logged(db)
    finished = next(k for k, n in logged.items() if n == EPOCHS)
    running = next(k for k, n in logged.items() if 0 < n < EPOCHS)
    (results,) = (tmp_path / "results").iterdir()
    (results / "checkpoints" / f"{finished}.pt").write_text("garbage")
    torn = results / "checkpoints" / f"{running}.pt"
    torn.write_bytes(torn.read_bytes()[:100])
    resumed = subprocess.run([sys.executable, "-m", "featloss", "resume", str(results)],
                             cwd=tmp_path, env=env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    warnings = [x for x in resumed.stderr.splitlines() if "is unreadable" in x]
    assert len(warnings) == 2
    assert any(f"trial {running} restarts from epoch 0" in x for x in warnings)
    assert any(f"trial {finished} had finished: its results stand" in x for x in warnings)
    assert_each_trial_once(uri, "bad-checkpoints", 3)


def test_the_retry_budget_bounds_the_whole_wait(monkeypatch):
    from featloss.tracking import TrackingClient, TrackingUnavailable

    silent = socket.socket()  # accepts connections, never answers a request
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port_refused = refused.getsockname()[1]
    refused.close()
    monkeypatch.setenv("FEATLOSS_MLFLOW_RETRY_SECONDS", "3")
    try:
        for port in (silent.getsockname()[1], port_refused):
            client = TrackingClient(f"http://127.0.0.1:{port}")
            started = time.monotonic()
            with pytest.raises(TrackingUnavailable, match="MLflow unreachable for 3 s"):
                client.call(lambda c=client: c.mlflow.search_experiments(), "listing")
            assert time.monotonic() - started < 3 + 3, port
    finally:
        silent.close()


def test_a_local_ray_shows_no_dashboard_and_refuses_connections_without_its_token(tmp_path):
    """Ray 2.60 opens its gRPC listeners on every interface whatever node IP it is given
    (checked with ss); a local featloss run keeps Ray's token authentication on and starts no
    dashboard, so what listens beyond loopback refuses a client without the token."""
    study = tmp_path / "study.yaml"
    study.write_text(dump_yaml(tiny_study("sockets", seeds=[0, 1], max_concurrent=1,
                                          train={"epochs": 30})))
    environment = {k: v for k, v in env().items() if k != "RAY_AUTH_MODE"}
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "featloss", "run", str(study), "--storage",
                             str(tmp_path / "r"), "--tracking-uri",
                             f"sqlite:///{tmp_path / 'm.db'}"], cwd=tmp_path, env=environment,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: trial_worker_pids(), proc, tmp_path)
        listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        ray_lines = [x for x in listening.splitlines()
                     if any(n in x for n in ("gcs_server", "raylet", "ray::"))]
        assert ray_lines
        assert not [x for x in listening.splitlines() if ":8265 " in x]  # no dashboard
        gcs = next(x for x in ray_lines if "gcs_server" in x).split()[3].rsplit(":", 1)[1]
        outside = socket.gethostbyname(socket.gethostname())
        probe = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address='{outside}:{gcs}')"],
            env={**{k: v for k, v in environment.items() if k != "RAY_AUTH_TOKEN"},
                 "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"},
            capture_output=True, text=True, timeout=120)
        assert probe.returncode != 0
        assert "token" in (probe.stdout + probe.stderr).lower()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
