"""Scaling out on one machine with real components.

- several raylets (``ray.cluster_utils.Cluster``): trials land on several nodes; a worker node
  crashes mid-study and its trials resume from their checkpoints elsewhere; fractional GPUs pack
  four trials on one (declared) GPU;
- separate processes: ``ray start --head`` and ``ray start --address`` on 127.0.0.1, joined by
  ``featloss run --address``;
- a real ``mlflow server`` on 127.0.0.1 receives a whole study over HTTP and is stopped and
  restarted mid-study without losing a run or a metric.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, tiny_study
from featloss.yamlio import dump_yaml

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1", "FEATLOSS_PROGRESS_SECONDS": "2"}


def scenario(name: str, workdir: Path) -> dict:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "cluster_scenarios.py"), name,
                           str(workdir)], capture_output=True, text=True, env=env(), timeout=900)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_trials_land_on_several_nodes(tmp_path):
    result = scenario("multi_node", tmp_path)
    assert result["cluster_nodes"] == 3 and result["trials"] == 6
    assert result["status"] == ["completed"]
    assert len(result["nodes"]) >= 2  # node_id tags of the MLflow runs


def test_a_crashed_node_costs_no_finished_epoch(tmp_path):
    r = scenario("node_failure", tmp_path)
    epochs = r["epochs"]
    assert r["trials"] == 4 and set(r["status"].values()) == {"completed"}
    assert all(steps == list(range(1, epochs + 1)) for steps in r["histories"].values())
    # Tune's own per-result log of every trial that was on the crashed node when it died.
    moved = {}
    for key in r["status"]:
        results = [json.loads(line) for line in
                   (Path(r["results_dir"]) / "tune" / "grid-1" / key / "result.json").open()]
        nodes = [x["node_id"] for x in results]
        if r["doomed"] in nodes and r["survivor"] in nodes:
            moved[key] = results
    assert r["victim"] in moved  # the trial running on the node when it was removed
    for key, results in moved.items():
        trained = [x["epoch"] for x in results if not x.get("replayed")]
        replayed = [x["epoch"] for x in results if x.get("replayed")]
        # every epoch trained exactly once: the move resumed from the last checkpoint
        assert len(trained) == len(set(trained)), f"{key}: an epoch was trained twice: {trained}"
        assert sorted(set(trained) | set(replayed)) == list(range(1, epochs + 1))
        first_on_survivor = next(x for x in results if x["node_id"] == r["survivor"])
        assert first_on_survivor.get("replayed")  # it started from its checkpointed epoch
        assert r["final_node"][key] == r["survivor"]  # MLflow's node tag follows the move


def test_fractional_gpus_pack_four_trials_on_one_gpu(tmp_path):
    result = scenario("gpu_packing", tmp_path)
    assert result["trials"] == 4 and result["max_concurrent"] == 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def ray_node(address: str, cpus: int, head: bool = False) -> subprocess.Popen:
    """`ray start --block` as its own process group: a head on `address`'s port, or a worker."""
    port = address.rpartition(":")[2]
    role = (["--head", f"--port={port}", "--include-dashboard=false"] if head
            else [f"--address={address}"])
    return subprocess.Popen([str(BIN / "ray"), "start", *role, f"--num-cpus={cpus}", "--block",
                             "--node-ip-address=127.0.0.1"], env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def cluster_cpus(address: str) -> str:
    return subprocess.run([str(BIN / "ray"), "status", f"--address={address}"],
                          capture_output=True, text=True, env=env()).stdout


def featloss_cmd(study: Path, address: str, tmp_path: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "featloss", "run", str(study), "--address", address,
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--storage",
            str(tmp_path / "results"), *extra]


def trial_runs(tmp_path: Path, name: str) -> list:
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name(name)
    return [r for r in client.search_runs([exp.experiment_id], "")
            if r.data.tags.get("featloss.role") == "trial"]


def test_separate_ray_processes_run_one_study(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    nodes = [ray_node(address, 1, head=True)]
    try:
        wait_for(lambda: "1.0 CPU" in cluster_cpus(address), 120, "the Ray head")
        nodes.append(ray_node(address, 1))
        wait_for(lambda: "2.0 CPU" in cluster_cpus(address), 120, "the worker to join")
        study = tmp_path / "study.yaml"
        study.write_text(dump_yaml(tiny_study("two-processes", seeds=[0, 1, 2, 3])))
        proc = subprocess.run(featloss_cmd(study, address, tmp_path), capture_output=True,
                              text=True, env=env(), cwd=tmp_path, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs = trial_runs(tmp_path, "two-processes")
        assert len(runs) == 4 and {r.data.tags["status"] for r in runs} == {"completed"}
        assert len({r.data.tags["node_id"] for r in runs}) == 2
    finally:
        for p in reversed(nodes):
            stop(p)


def test_a_run_waits_for_a_node_its_trials_fit_on(tmp_path):
    """Trials needing 2 CPUs on a 1-CPU cluster: one error line at once without
    --wait-for-nodes, leaving no results folder; with it, the run waits and starts when a 2-CPU node joins."""
    address = f"127.0.0.1:{free_port()}"
    nodes = [ray_node(address, 1, head=True)]
    try:
        wait_for(lambda: "1.0 CPU" in cluster_cpus(address), 120, "the Ray head")
        study = tmp_path / "study.yaml"
        study.write_text(dump_yaml(tiny_study("wait-nodes", resources={"cpu": 2, "gpu": 0},
                                              train={"epochs": 1})))
        proc = subprocess.run(featloss_cmd(study, address, tmp_path), capture_output=True,
                              text=True, env=env(), cwd=tmp_path, timeout=300)
        assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "fit no node" in proc.stderr and "--wait-for-nodes" in proc.stderr
        results = tmp_path / "results"  # the refused start left no results folder behind
        assert not results.exists() or not any(results.iterdir()), list(results.iterdir())
        log = tmp_path / "wait.log"
        with log.open("w") as out:
            waiting = subprocess.Popen(featloss_cmd(study, address, tmp_path,
                                                    "--wait-for-nodes", "300"),
                                       stdout=out, stderr=subprocess.STDOUT, env=env(),
                                       cwd=tmp_path, start_new_session=True)
        try:
            wait_for(lambda: "waiting up to 300 s" in log.read_text(), 180, "the wait message")
            nodes.append(ray_node(address, 2))
            assert waiting.wait(timeout=600) == 0, log.read_text()[-3000:]
        finally:
            stop(waiting)
        runs = trial_runs(tmp_path, "wait-nodes")
        assert len(runs) == 1 and runs[0].data.tags["status"] == "completed"
        assert len(list(results.iterdir())) == 1  # the run that waited, only
    finally:
        for p in reversed(nodes):
            stop(p)


def start_mlflow_server(db: Path, artifacts: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{db}",
         "--default-artifact-root", str(artifacts), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], env=env(), start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT)


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def study_over_http(tmp_path: Path, name: str, port: int, extra_env: dict | None = None):
    epochs, seeds = 4, list(range(6))
    study = tmp_path / "study.yaml"
    study.write_text(dump_yaml(tiny_study(name, seeds=seeds, train={"epochs": epochs},
                                          data={"dataset": "mnist5k",
                                                "max_train_samples": 1200})))
    log = open(tmp_path / "run.log", "w")
    run = subprocess.Popen([sys.executable, "-m", "featloss", "run", str(study),
                            "--tracking-uri", f"http://127.0.0.1:{port}", "--storage",
                            str(tmp_path / "results")], env={**env(), **(extra_env or {})},
                           cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    return run, epochs, seeds


def first_epoch_logged(client: MlflowClient, name: str) -> bool:
    exp = client.get_experiment_by_name(name)
    return exp is not None and any(
        "epoch" in r.data.metrics for r in client.search_runs([exp.experiment_id], ""))


def assert_nothing_lost(client: MlflowClient, name: str, epochs: int, seeds: list[int]) -> None:
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], "")
    parents = [r for r in runs if r.data.tags.get("featloss.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("featloss.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["featloss.trial_key"] for r in trials) == sorted(
        f"grid-softmax-s{s}" for s in seeds)
    for r in trials:
        assert r.data.tags["status"] == "completed" and r.info.status == "FINISHED"
        for key in ("epoch", "val/accuracy", "train/loss"):
            steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, key))
            assert steps == list(range(1, epochs + 1)), (r.info.run_name, key, steps)


def test_mlflow_server_restart_mid_study_loses_nothing(tmp_path, mlflow_template):
    """The server restarts while trials run: retries bridge the gap, the study completes."""
    import shutil

    db, artifacts, port = tmp_path / "server.db", tmp_path / "artifacts", free_port()
    shutil.copy(mlflow_template, db)  # a migrated database: the server starts faster
    server = start_mlflow_server(db, artifacts, port)
    run = None
    try:
        wait_for(lambda: healthy(port), 180, "mlflow server")
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        run, epochs, seeds = study_over_http(tmp_path, "over-http", port)
        wait_for(lambda: first_epoch_logged(client, "over-http"), 300, "the first logged epoch")
        assert run.poll() is None  # the study is mid-way when ...
        stop(server)  # ... the tracking server goes away
        time.sleep(3)
        assert run.poll() is None  # still running: trials train, the driver waits
        server = start_mlflow_server(db, artifacts, port)  # ... and comes back
        assert run.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-3000:]
        wait_for(lambda: healthy(port), 180, "mlflow server")
        assert_nothing_lost(client, "over-http", epochs, seeds)
    finally:
        if run is not None and run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        stop(server)


def test_mlflow_server_down_for_good_stops_cleanly_then_resume_completes(tmp_path,
                                                                         mlflow_template):
    """Beyond the retry window the study stops with one clear line; resume loses nothing."""
    import shutil

    db, artifacts, port = tmp_path / "server.db", tmp_path / "artifacts", free_port()
    shutil.copy(mlflow_template, db)
    server = start_mlflow_server(db, artifacts, port)
    run = None
    try:
        wait_for(lambda: healthy(port), 180, "mlflow server")
        client = MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
        short = {"FEATLOSS_MLFLOW_RETRY_SECONDS": "3", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
        run, epochs, seeds = study_over_http(tmp_path, "outage", port, short)
        wait_for(lambda: first_epoch_logged(client, "outage"), 300, "the first logged epoch")
        stop(server)
        assert run.wait(timeout=300) == 75
        log = (tmp_path / "run.log").read_text()
        assert "featloss: study stopped: MLflow unreachable" in log and "Traceback" not in log
        results = next((tmp_path / "results").iterdir())
        assert f"resume with: featloss resume {results}" in log
        server = start_mlflow_server(db, artifacts, port)
        wait_for(lambda: healthy(port), 180, "mlflow server")
        resumed = subprocess.run([sys.executable, "-m", "featloss", "resume", str(results)],
                                 env=env(), cwd=tmp_path, capture_output=True, text=True,
                                 timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        assert_nothing_lost(client, "outage", epochs, seeds)
    finally:
        if run is not None and run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        stop(server)


def test_an_address_where_no_ray_head_answers_is_one_line_in_bounded_time(tmp_path):
    """A port that accepts connections but never answers, and ``auto`` naming a recorded
    cluster that is gone: ``ray.init`` would wait without end; featloss says so in one line."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    recorded = tmp_path / "tmp" / "ray"
    recorded.mkdir(parents=True)
    (recorded / "ray_current_cluster").write_text(f"127.0.0.1:{port}")
    study = tmp_path / "study.yaml"
    study.write_text(dump_yaml(tiny_study("no-head")))
    try:
        for address, expected in ((f"127.0.0.1:{port}", "no Ray head answers there"),
                                  ("auto", "by an earlier `ray start` does not answer")):
            started = time.monotonic()
            proc = subprocess.run(featloss_cmd(study, address, tmp_path), capture_output=True,
                                  text=True, cwd=tmp_path, timeout=180,
                                  env={**env(), "TMPDIR": str(tmp_path / "tmp")})
            took = time.monotonic() - started
            assert proc.returncode == 2, proc.stderr[-2000:]
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and expected in lines[0], proc.stderr[-2000:]
            assert took < 90, f"{address}: {took:.0f} s"
            assert not (tmp_path / "results").exists() or not any(
                (tmp_path / "results").iterdir())  # refused before a results folder
    finally:
        silent.close()
