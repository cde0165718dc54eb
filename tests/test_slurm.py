"""`featloss slurm`: the generated sbatch script, and real jobs on a single-node Slurm cluster.

The dry-run tests run everywhere. The job tests (marked slow) start munged, slurmctld and slurmd
on 127.0.0.1 (`slurm_cluster.py`), submit tiny studies with `featloss slurm` and read the
outcome back from the MLflow SQLite file the job's driver wrote:

- a study runs to completion in one job;
- `scancel` mid-study, then the same `featloss slurm` command again: the new job resumes;
- SIGUSR1 (what `--signal=B:USR1@120` sends before the time limit): the job stops the driver
  cleanly, requeues itself and resumes on its restart;
- two Slurm nodes (two slurmd on this machine): the Ray head on the first, a Ray worker on the
  second, trials on both.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm_cluster as cluster_fixtures
from conftest import REPO, mlflow_runs, tiny_study

from featloss.cli import main
from featloss.slurm import time_limit_seconds
from featloss.yamlio import dump_yaml

slurm_cluster = cluster_fixtures.slurm_cluster  # the fixtures, for this module
slurm_cluster_two_nodes = cluster_fixtures.slurm_cluster_two_nodes
QUICKSTART = str(REPO / "studies" / "quickstart.yaml")
JOB_TIMEOUT = 240  # seconds; a job here takes ~15-40 s


# -- the script, without Slurm --------------------------------------------------------------------

def dry_run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["slurm", *args, "--dry-run"])
    out, err = capsys.readouterr()
    return rc, out, err


def test_dry_run_prints_a_slurm_script(capsys, tmp_path):
    rc, script, err = dry_run(capsys, QUICKSTART, "--nodes", "2", "--gpus-per-node", "4",
                              "--storage", str(tmp_path / "store"))
    assert rc == 0, err
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    header = [ln for ln in lines[1:] if ln.startswith("#SBATCH")]
    assert lines[1:1 + len(header)] == header  # the #SBATCH header comes first, in one block
    directives = {ln.split()[1].split("=")[0]: ln.split()[1] for ln in header}
    assert directives["--nodes"] == "--nodes=2"
    assert directives["--ntasks-per-node"] == "--ntasks-per-node=1"
    assert directives["--gpus-per-task"] == "--gpus-per-task=4"
    assert "--exclusive" in directives  # no --cpus-per-node: whole nodes
    assert directives["--signal"] == "--signal=B:USR1@120"
    for flag in ("--requeue", "--open-mode", "--dependency", "--output", "--job-name"):
        assert flag in directives, flag
    # Ray's SLURM pattern: head on the first node, one worker per other node, driver on the head
    assert re.search(r'srun --nodes=1 --ntasks=1 .*-w "\$HEAD_NODE" \\\n\s+"\$\{RAY\[@\]\}" '
                     r'start --head --block --node-ip-address="\$HEAD_IP"', script)
    assert re.search(r'for node in "\$\{NODES\[@\]:1\}"; do\n\s+srun --nodes=1 --ntasks=1 .*'
                     r'-w "\$node" \\\n\s+"\$\{RAY\[@\]\}" start --block '
                     r'--address="\$RAY_ADDRESS_HEAD"', script)
    assert '"${FEATLOSS[@]}" run "$STUDY"' in script
    assert '--address "$RAY_ADDRESS_HEAD"' in script
    # stop cleanly before the time limit, requeue, resume on restart
    assert "trap on_usr1 USR1" in script and 'kill -INT "$DRIVER_PID"' in script
    assert 'scontrol requeue "$SLURM_JOB_ID"' in script
    assert '"${FEATLOSS[@]}" resume "$STUDY"' in script and "SLURM_RESTART_COUNT" in script
    assert "set -m" in script  # else the backgrounded driver would ignore SIGINT
    # secure defaults: token auth, no dashboard, nothing bound to every interface on purpose
    assert "--include-dashboard=false" in script
    assert "export RAY_AUTH_MODE=token" in script and "0.0.0.0" not in script
    # the environment that generated it, and the shared storage
    assert f"PYTHON={sys.executable}" in script
    assert f"STORAGE={tmp_path / 'store'}" in script
    assert f"TRACKING_URI=sqlite:///{tmp_path / 'store' / 'mlflow.db'}" in script
    assert "resources.gpu: 0" in err  # the note: 4 GPUs per node would stay idle
    assert not (tmp_path / "store").exists()  # a dry run writes nothing
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True,
                           check=False)
    assert check.returncode == 0, check.stderr


def test_dry_run_options(capsys, tmp_path):
    rc, script, _ = dry_run(
        capsys, QUICKSTART, "--cpus-per-node", "8", "--partition", "gpu", "--time", "2-00:00:00",
        "--account", "proj42", "--job-name", "qs", "--grace", "300", "--ray-port", "7001",
        "--ray-dashboard", "--max-concurrent", "3", "--smoke", "--setup", "module load cuda",
        "--sbatch-arg=--mem=64G", "--tracking-uri", "http://mlflow.internal:5000",
        "--storage", str(tmp_path))
    assert rc == 0
    for line in ("#SBATCH --cpus-per-task=8", "#SBATCH --partition=gpu",
                 "#SBATCH --time=2-00:00:00", "#SBATCH --account=proj42",
                 "#SBATCH --job-name=qs", "#SBATCH --signal=B:USR1@300", "#SBATCH --mem=64G",
                 "RAY_PORT=7001", "RUN_OPTIONS=(--smoke)", "OPTIONS=(--max-concurrent 3)",
                 "module load cuda", "TRACKING_URI=http://mlflow.internal:5000",
                 "--dashboard-host=127.0.0.1"):
        assert line in script, line
    assert "--exclusive" not in script and "--gpus-per-task" not in script


def test_the_cli_prints_the_script(tmp_path):
    """The installed entry point (a subprocess), as the README shows it."""
    proc = subprocess.run([sys.executable, "-m", "featloss", "slurm", QUICKSTART, "--nodes", "2",
                           "--gpus-per-node", "4", "--dry-run"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("#!/bin/bash\n#SBATCH --job-name=featloss-quickstart\n")


@pytest.mark.parametrize("args, message", [
    (["missing.yaml"], "missing.yaml"),
    ([QUICKSTART, "--nodes", "0"], "--nodes"),
    ([QUICKSTART, "--time", "soon"], "--time soon"),
    ([QUICKSTART, "--time", "1"], "--grace"),
    ([QUICKSTART, "--partition", "a b"], "--partition"),
    ([QUICKSTART, "--sbatch-arg", "mem=1G"], "--sbatch-arg"),
    ([QUICKSTART, "--storage", "s3://bucket/x"], "shared file system"),
    ([QUICKSTART, "--tracking-uri", "./mlruns"], "--tracking-uri"),
    ([QUICKSTART, "--grace", "5"], "--grace"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, message):
    rc, out, err = dry_run(capsys, *args)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("featloss: error: ") and message in err, err


def test_bad_study_file_is_rejected_before_anything(capsys, tmp_path):
    study = tmp_path / "bad.yaml"
    study.write_text(dump_yaml(tiny_study("bad", losses=["no_such_loss"])))
    rc, out, err = dry_run(capsys, str(study))
    assert rc == 2 and out == "" and err.count("\n") == 1 and "no_such_loss" in err


def test_gpu_study_needs_gpus(capsys, tmp_path):
    study = tmp_path / "gpu.yaml"
    study.write_text(dump_yaml(tiny_study("gpu", resources={"cpu": 1, "gpu": 0.5})))
    rc, _, err = dry_run(capsys, str(study))
    assert rc == 2 and "--gpus-per-node" in err
    rc, _, err = dry_run(capsys, str(study), "--gpus-per-node", "1")
    assert rc == 0, err


def test_sbatch_missing_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch there
    rc = main(["slurm", QUICKSTART, "--storage", str(tmp_path / "store")])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and err.count("\n") == 1 and "sbatch not found" in err
    assert not (tmp_path / "store").exists()


def test_time_limits():
    assert time_limit_seconds("90") == 5400
    assert time_limit_seconds("10:30") == 630
    assert time_limit_seconds("12:00:00") == 43200
    assert time_limit_seconds("2-00") == 172800
    assert time_limit_seconds("1-02:03") == 93780
    assert time_limit_seconds("1-02:03:04") == 93784
    assert time_limit_seconds("UNLIMITED") is None


# -- real jobs ------------------------------------------------------------------------------------

def write_study(folder: Path, name: str, **sections) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(dump_yaml(tiny_study(name, **sections)))
    return path


def submit(cluster, study: Path, storage: Path, cwd: Path) -> str:
    """`featloss slurm` as a user runs it, on every node of `cluster`; returns the job id."""
    proc = subprocess.run(
        [sys.executable, "-m", "featloss", "slurm", str(study), "--nodes", str(cluster.nodes),
         "--cpus-per-node", str(cluster.cpus), "--time", "15", "--storage", str(storage)],
        cwd=cwd, env=cluster.env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    match = re.search(r"submitted batch job (\d+)", proc.stdout)
    assert match, proc.stdout
    return match[1]


def job_log(storage: Path, job_id: str) -> str:
    logs = list((storage / "slurm").glob(f"*-{job_id}.out"))
    return logs[0].read_text() if logs else "(no log)"


def wait_done(cluster, storage: Path, job_id: str) -> dict:
    fields = cluster.wait_for(job_id, {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                       "NODE_FAIL", "OUT_OF_MEMORY"}, JOB_TIMEOUT)
    assert fields["JobState"] == "COMPLETED", (fields, job_log(storage, job_id))
    assert fields["ExitCode"] == "0:0", job_log(storage, job_id)
    return fields


def no_ray_left(job_id: str) -> None:
    """No process of the job's Ray (its RAY_TMPDIR names the job) outlives the job."""
    deadline = time.monotonic() + 20
    while True:
        found = subprocess.run(["pgrep", "-af", f"featloss-ray-{job_id}/"], capture_output=True,
                               text=True, check=False).stdout.strip()
        if not found:
            return
        assert time.monotonic() < deadline, f"Ray processes left by job {job_id}:\n{found}"
        time.sleep(0.5)


def completed_keys(uri: str, name: str) -> set[str]:
    try:
        _, trials = mlflow_runs(uri, name)
    except Exception:  # noqa: BLE001 - the experiment or the database does not exist yet
        return set()
    return {r.data.tags["featloss.trial_key"] for r in trials
            if r.data.tags.get("status") == "completed"}


def check_every_trial_once(uri: str, name: str, seeds: list[int], epochs: int) -> None:
    """One parent run; one completed child run per trial key, each epoch logged exactly once."""
    from mlflow.tracking import MlflowClient

    parents, trials = mlflow_runs(uri, name)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    keys = sorted(r.data.tags["featloss.trial_key"] for r in trials)
    assert keys == sorted(f"grid-softmax-s{s}" for s in seeds)  # no duplicate, none missing
    client = MlflowClient(tracking_uri=uri)
    for run in trials:
        assert run.data.tags["status"] == "completed", run.data.tags
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch")]
        assert sorted(steps) == list(range(1, epochs + 1)), (run.info.run_name, steps)


def new_storage(tmp_path: Path, mlflow_template: Path) -> tuple[Path, str]:
    """A storage folder holding a migrated MLflow file where the job's default URI points."""
    import shutil

    storage = tmp_path / "shared"
    storage.mkdir()
    shutil.copy(mlflow_template, storage / "mlflow.db")
    return storage, f"sqlite:///{storage / 'mlflow.db'}"


def interrupt_when_one_completed(cluster, uri: str, name: str, total: int, storage: Path,
                                 job_id: str, *scancel_args: str) -> set[str]:
    """Wait for the first completed trial, then `scancel *scancel_args job_id`."""
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (done := completed_keys(uri, name)):
        state = cluster.job_state(job_id).get("JobState")
        assert state in ("PENDING", "RUNNING"), (state, job_log(storage, job_id))
        assert time.monotonic() < deadline, job_log(storage, job_id)
        time.sleep(0.2)
    cluster.run("scancel", *scancel_args, job_id)
    assert len(done) < total, "every trial finished before the job could be interrupted"
    return done


# A study whose trials each take ~1 s here, so there is time to interrupt it between trials.
SLOW = {"train": {"epochs": 4, "batch_size": 16}, "seeds": list(range(8)), "max_concurrent": 1}


@pytest.mark.slow
def test_study_runs_to_completion(slurm_cluster, mlflow_template, tmp_path):
    storage, uri = new_storage(tmp_path, mlflow_template)
    seeds = [0, 1, 2, 3, 4]
    study = write_study(tmp_path, "slurm-smoke", data={"max_train_samples": 256,
                                                       "max_eval_samples": 128},
                        seeds=seeds, max_concurrent=1)
    job_id = submit(slurm_cluster, study, storage, tmp_path)
    wait_done(slurm_cluster, storage, job_id)
    log = job_log(storage, job_id)
    assert re.search(r"driver: \S+ -m featloss run \S+slurm-smoke\.yaml", log), log
    assert "driver exited with code 0;" in log
    check_every_trial_once(uri, "slurm-smoke", seeds, epochs=2)
    no_ray_left(job_id)


@pytest.mark.slow
def test_scancel_then_resubmit_resumes(slurm_cluster, mlflow_template, tmp_path):
    storage, uri = new_storage(tmp_path, mlflow_template)
    name = "slurm-cancel"
    study = write_study(tmp_path, name, data={"max_train_samples": 256,
                                              "max_eval_samples": 128}, **SLOW)
    first = submit(slurm_cluster, study, storage, tmp_path)
    done_before = interrupt_when_one_completed(slurm_cluster, uri, name, len(SLOW["seeds"]),
                                               storage, first)
    slurm_cluster.wait_for(first, {"CANCELLED"}, 60)
    no_ray_left(first)
    assert len(completed_keys(uri, name)) < len(SLOW["seeds"]), "cancelled too late"

    second = submit(slurm_cluster, study, storage, tmp_path)  # the same command again
    wait_done(slurm_cluster, storage, second)
    log = job_log(storage, second)
    assert re.search(r"driver: \S+ -m featloss resume \S+slurm-cancel\.yaml", log), log
    check_every_trial_once(uri, name, SLOW["seeds"], epochs=4)
    assert done_before <= completed_keys(uri, name)
    assert len(list(storage.glob(f"{name}-*"))) == 1  # resumed, not started over
    no_ray_left(second)


@pytest.mark.slow
def test_time_limit_signal_stops_cleanly_and_requeues(slurm_cluster, mlflow_template, tmp_path):
    """SIGUSR1 to the batch shell is what `#SBATCH --signal=B:USR1@120` sends near the limit."""
    storage, uri = new_storage(tmp_path, mlflow_template)
    name = "slurm-requeue"
    study = write_study(tmp_path, name, data={"max_train_samples": 256,
                                              "max_eval_samples": 128}, **SLOW)
    job_id = submit(slurm_cluster, study, storage, tmp_path)
    interrupt_when_one_completed(slurm_cluster, uri, name, len(SLOW["seeds"]), storage, job_id,
                                 "--batch", "--signal=USR1")
    fields = wait_done(slurm_cluster, storage, job_id)
    assert fields["Restarts"] == "1", fields
    log = job_log(storage, job_id)  # --open-mode=append: both runs of the job in one log
    assert "SIGUSR1" in log and "driver exited with code 130;" in log, log
    assert "interrupted; resume with" in log  # the driver stopped as on Ctrl+C
    assert re.search(r"\(restart 1\).*\n(.*\n)*.*driver: \S+ -m featloss resume ", log), log
    check_every_trial_once(uri, name, SLOW["seeds"], epochs=4)
    no_ray_left(job_id)


@pytest.mark.slow
def test_two_nodes_make_one_ray_cluster(slurm_cluster_two_nodes, mlflow_template, tmp_path):
    cluster = slurm_cluster_two_nodes  # node1 and node2, 1 CPU each
    storage, uri = new_storage(tmp_path, mlflow_template)
    seeds = [0, 1, 2, 3]
    study = write_study(tmp_path, "slurm-two-nodes", data={"max_train_samples": 256,
                                                           "max_eval_samples": 128},
                        seeds=seeds, max_concurrent=2)
    job_id = submit(cluster, study, storage, tmp_path)
    wait_done(cluster, storage, job_id)
    log = job_log(storage, job_id)
    assert "on node1 node2;" in log, log
    check_every_trial_once(uri, "slurm-two-nodes", seeds, epochs=2)
    _, trials = mlflow_runs(uri, "slurm-two-nodes")
    assert len({r.data.tags["node_id"] for r in trials}) == 2  # trials ran on both Ray nodes
    no_ray_left(job_id)
