"""`featloss slurm`: run a study as a Slurm batch job, on a Ray cluster started inside the job.

The generated sbatch script follows Ray's documented SLURM pattern: one ``srun`` step per node,
``ray start --head --block`` on the first node of the allocation (where the batch script itself
runs), ``ray start --address HEAD:PORT --block`` on every other node, and the featloss driver
(``featloss run STUDY --address HEAD:PORT``) on the head. Results, checkpoints and the MLflow
SQLite file live on the shared file system (``--storage``), so the job can stop at any point:

- ``#SBATCH --signal=B:USR1@<grace>`` warns the batch shell before the time limit; the script
  sends SIGINT to the driver (a clean stop, as on Ctrl+C) and requeues the job
  (``#SBATCH --requeue``);
- whenever the job starts while an unfinished results folder of the study exists under the
  storage (a requeue, a preemption, or ``scancel`` and the same ``featloss slurm`` command again)
  it runs ``featloss resume STUDY --storage S`` instead of ``featloss run``.

This module builds and submits the script; it imports neither Ray, Optuna nor MLflow.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from featloss.errors import ConfigError

DEFAULT_STORAGE = "featloss_results"
DEFAULT_GRACE_S = 120
MIN_GRACE_S = 30
RAY_BASE_PORT = 6379  # Ray's default GCS port; a job without --ray-port adds its job id % 1000
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_TIME = re.compile(r"^(?:(?P<days>\d+)-)?(?P<a>\d+)(?::(?P<b>\d+))?(?::(?P<c>\d+))?$")


@dataclass
class SlurmJob:
    """Everything the sbatch script needs, validated.

    Paths are absolute. `gpus_per_node` is whole GPUs (0: none requested); `cpus_per_node`
    None means whole nodes (``--exclusive``) with every CPU of the node given to Ray;
    `time_limit` is Slurm's own syntax (None: the partition's default); `grace_s` is seconds.
    """

    study_path: str
    study_name: str
    total_trials: int
    storage: str
    tracking_uri: str
    python: str
    ray_cmd: list[str]
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_node: int | None = None
    partition: str | None = None
    time_limit: str | None = None
    account: str | None = None
    job_name: str = "featloss"
    grace_s: int = DEFAULT_GRACE_S
    ray_port: int | None = None
    ray_dashboard: bool = False
    smoke: bool = False
    max_concurrent: int | None = None
    setup: list[str] = field(default_factory=list)
    sbatch_args: list[str] = field(default_factory=list)
    trial_gpus: float = 0.0  # the study's resources.gpu

    @property
    def log_dir(self) -> str:
        return str(Path(self.storage) / "slurm")

    @property
    def default_job_name(self) -> str:
        return "featloss-" + (_SAFE_NAME.sub("-", self.study_name).strip("-") or "study")

    def command(self) -> str:
        """The ``featloss slurm`` command that submits this job again (absolute paths)."""
        parts = ["featloss", "slurm", self.study_path, "--nodes", str(self.nodes)]
        optional = [("--gpus-per-node", self.gpus_per_node or None),
                    ("--cpus-per-node", self.cpus_per_node), ("--partition", self.partition),
                    ("--time", self.time_limit), ("--account", self.account),
                    ("--job-name", None if self.job_name == self.default_job_name
                     else self.job_name), ("--storage", self.storage),
                    ("--tracking-uri", None if self.tracking_uri == tracking_uri(None, self.storage)
                     else self.tracking_uri),
                    ("--max-concurrent", self.max_concurrent),
                    ("--grace", None if self.grace_s == DEFAULT_GRACE_S else self.grace_s),
                    ("--ray-port", self.ray_port),
                    ("--python", None if self.python == sys.executable else self.python)]
        for flag, value in optional:
            if value is not None:
                parts += [flag, str(value)]
        parts += ["--smoke"] * self.smoke + ["--ray-dashboard"] * self.ray_dashboard
        for line in self.setup:
            parts += ["--setup", line]
        parts += [f"--sbatch-arg={arg}" for arg in self.sbatch_args]
        return shlex.join(parts)


# -- command line ----------------------------------------------------------------------------------

def add_parser(sub) -> argparse.ArgumentParser:
    """Add the ``slurm`` sub-command to `sub` (an argparse sub-parsers action); return it."""
    parser = sub.add_parser(
        "slurm", help="write and submit an sbatch script that runs a study on a Ray cluster "
                      "inside a Slurm job (resumes after requeue, timeout or scancel)")
    parser.add_argument("study", help="study YAML file (on the shared file system)")
    parser.add_argument("--nodes", type=int, default=1, help="Slurm nodes = Ray nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=0, metavar="G",
                        help="GPUs per node (default 0)")
    parser.add_argument("--cpus-per-node", type=int, metavar="N",
                        help="CPUs per node (default: whole nodes, --exclusive, every CPU)")
    parser.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    parser.add_argument("--time", dest="time_limit", metavar="T",
                        help="time limit, Slurm syntax: MM, HH:MM:SS, D-HH[:MM[:SS]] "
                             "(default: the partition's)")
    parser.add_argument("--account", help="Slurm account to charge")
    parser.add_argument("--job-name", help="job name (default featloss-<study name>); one job of "
                                           "a name runs at a time (--dependency=singleton)")
    parser.add_argument("--storage", help=f"results folder on the shared file system (default "
                                          f"$FEATLOSS_STORAGE or ./{DEFAULT_STORAGE})")
    parser.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///<storage>/mlflow.db, "
                                               "written by the driver only)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once")
    parser.add_argument("--smoke", action="store_true", help="pass --smoke to featloss run")
    parser.add_argument("--grace", type=int, default=DEFAULT_GRACE_S, metavar="SECONDS",
                        help=f"stop the driver and requeue the job this long before the time "
                             f"limit (default {DEFAULT_GRACE_S})")
    parser.add_argument("--ray-port", type=int, help=f"Ray head port (default "
                                                     f"{RAY_BASE_PORT} + job id %% 1000)")
    parser.add_argument("--ray-dashboard", action="store_true",
                        help="start Ray's dashboard, on 127.0.0.1 of the head node only "
                             "(needs ray[default]; default: no dashboard)")
    parser.add_argument("--python", help="Python of the featloss environment on the nodes "
                                         "(default: the one running this command)")
    parser.add_argument("--setup", action="append", default=[], metavar="CMD",
                        help="shell line run first in the job, e.g. 'module load cuda' "
                             "(repeatable)")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                        help="extra #SBATCH option, e.g. --sbatch-arg=--mem=64G (repeatable)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the script; write and submit nothing")
    return parser


def cmd_slurm(args: argparse.Namespace) -> int:
    """Validate, write and submit (or with ``--dry-run`` print) the sbatch script.

    Returns the exit code 0. Raises ConfigError (exit code 2, one line) on a bad study file or
    option, when ``sbatch`` is not on PATH, or when sbatch rejects the job.
    """
    job = job_from_args(args)
    for note in notes(job):
        print(f"featloss: note: {note}", file=sys.stderr)
    script = render_script(job)
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise ConfigError("sbatch not found on PATH: run featloss slurm where Slurm's commands "
                          "are installed (a login node), or add --dry-run to print the script")
    path = write_script(job, script)
    job_id = submit(path, sbatch)
    log = Path(job.log_dir) / f"{job.job_name}-{job_id}.out"
    print(f"submitted batch job {job_id} ({job.job_name}, {job.nodes} node(s))")
    print(f"script:  {path}")
    print(f"log:     {log}")
    print(f"results: under {job.storage}/   MLflow: {job.tracking_uri}")
    print(f"follow:  squeue -j {job_id}; tail -f {log}")
    return 0


def job_from_args(args: argparse.Namespace) -> SlurmJob:
    """Validate the command line and the study file into a `SlurmJob`; raises ConfigError."""
    study_path = Path(args.study).expanduser().resolve()
    study, total = validate_study(str(study_path), smoke=args.smoke)
    if args.nodes < 1:
        raise ConfigError("--nodes must be >= 1")
    if args.gpus_per_node < 0:
        raise ConfigError("--gpus-per-node must be >= 0")
    if args.cpus_per_node is not None and args.cpus_per_node < 1:
        raise ConfigError("--cpus-per-node must be >= 1")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError("--max-concurrent must be >= 1")
    if args.ray_port is not None and not 1024 <= args.ray_port <= 65535:
        raise ConfigError("--ray-port must lie in 1024..65535")
    if args.grace < MIN_GRACE_S:
        raise ConfigError(f"--grace must be >= {MIN_GRACE_S} seconds (the driver needs time to "
                          f"stop; Slurm may signal up to 60 s early)")
    if args.time_limit is not None:
        seconds = time_limit_seconds(args.time_limit)
        if seconds is not None and seconds <= args.grace + 60:
            raise ConfigError(f"--time {args.time_limit} leaves no time to run: it must exceed "
                              f"--grace ({args.grace} s) by more than a minute")
    for flag, value in (("--partition", args.partition), ("--account", args.account),
                        ("--time", args.time_limit), ("--job-name", args.job_name)):
        if value is not None and (not value.strip() or re.search(r"\s", value)):
            raise ConfigError(f"{flag} {value!r}: must be one word without spaces")
    for arg in args.sbatch_arg:
        if not arg.startswith("-") or "\n" in arg or "\r" in arg:
            raise ConfigError(f"--sbatch-arg {arg!r}: expected one sbatch option such as "
                              f"--sbatch-arg=--mem=64G")
    for line in args.setup:
        if "\n" in line or "\r" in line:
            raise ConfigError(f"--setup {line!r}: one shell line per --setup")
    check_resources(study, args.gpus_per_node, args.cpus_per_node)

    storage = args.storage or os.environ.get("FEATLOSS_STORAGE") or DEFAULT_STORAGE
    if "://" in storage:
        raise ConfigError(f"--storage {storage}: featloss slurm needs a folder on the shared "
                          f"file system that every node mounts (checkpoints, resume state)")
    storage = str(Path(storage).expanduser().resolve())
    if re.search(r"[\s%]", storage):
        raise ConfigError(f"--storage {storage}: pick a path without spaces or '%' (it becomes "
                          f"the job's #SBATCH --output path)")
    uri = tracking_uri(args.tracking_uri, storage)
    python = str(Path(args.python).expanduser()) if args.python else sys.executable
    if not os.path.isabs(python):
        raise ConfigError(f"--python {args.python}: give an absolute path")
    job = SlurmJob(
        study_path=str(study_path), study_name=study.name, total_trials=total, storage=storage,
        tracking_uri=uri, python=python, ray_cmd=ray_command(python), nodes=args.nodes,
        gpus_per_node=args.gpus_per_node, cpus_per_node=args.cpus_per_node,
        partition=args.partition, time_limit=args.time_limit, account=args.account,
        grace_s=args.grace, ray_port=args.ray_port,
        ray_dashboard=args.ray_dashboard, smoke=args.smoke, max_concurrent=args.max_concurrent,
        setup=list(args.setup), sbatch_args=list(args.sbatch_arg),
        trial_gpus=_resource(study, "gpu"))
    job.job_name = args.job_name or job.default_job_name
    return job


# -- validation ------------------------------------------------------------------------------------

def validate_study(path: str, smoke: bool = False):
    """Load and expand the study file exactly as ``featloss run`` would, starting nothing.

    Returns ``(study, total_trials)``. Raises ConfigError on any problem with the file.
    """
    from featloss import study as study_module

    study = study_module.load_study(path)
    expand = getattr(study_module, "expand", None)
    if expand is None:  # the expansion moved out of featloss.study in newer trees
        from featloss.plan import expand  # type: ignore[no-redef]
    plan = expand(study, smoke=smoke)
    return study, int(plan.total_trials)


def _resource(study, key: str) -> float:
    resources = study.resources
    value = resources[key] if isinstance(resources, dict) else getattr(resources, key)
    return float(value)


def check_resources(study, gpus_per_node: int, cpus_per_node: int | None) -> None:
    """Raise ConfigError when one trial's ``resources`` cannot fit on one node."""
    gpu, cpu = _resource(study, "gpu"), _resource(study, "cpu")
    if gpu > 0 and gpus_per_node == 0:
        raise ConfigError(f"the study asks resources.gpu: {gpu:g} per trial but the job has no "
                          f"GPU; add --gpus-per-node G")
    if gpu > gpus_per_node > 0:
        raise ConfigError(f"the study asks resources.gpu: {gpu:g} per trial, more than "
                          f"--gpus-per-node {gpus_per_node}")
    if cpus_per_node is not None and cpu > cpus_per_node:
        raise ConfigError(f"the study asks resources.cpu: {cpu:g} per trial, more than "
                          f"--cpus-per-node {cpus_per_node}")


def notes(job: SlurmJob) -> list[str]:
    """Harmless but probably unintended settings, one line each (printed on stderr)."""
    out = []
    if job.gpus_per_node > 0 and job.trial_gpus == 0:
        out.append(f"the study asks resources.gpu: 0, so its trials use no GPU; the "
                   f"{job.gpus_per_node} GPU(s) per node stay idle (set resources.gpu, e.g. 0.25 "
                   f"packs 4 trials per GPU)")
    if re.match(r"https?://(127\.|localhost|\[::1\])", job.tracking_uri):
        out.append(f"--tracking-uri {job.tracking_uri} is resolved on the job's head node, not "
                   f"here: an MLflow server must listen there")
    return out


def time_limit_seconds(text: str) -> int | None:
    """Seconds in a Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``); None for ``UNLIMITED``/``INFINITE``. Raises ConfigError on other text."""
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    match = _TIME.match(text)
    if not match:
        raise ConfigError(f"--time {text}: expected Slurm's syntax, e.g. 90, 12:00:00 or "
                          f"2-00:00:00")
    days, a, b, c = (int(match[g]) if match[g] else None for g in ("days", "a", "b", "c"))
    if days is None:
        if b is None:
            seconds = a * 60  # minutes
        elif c is None:
            seconds = a * 60 + b  # minutes:seconds
        else:
            seconds = a * 3600 + b * 60 + c  # hours:minutes:seconds
    else:
        seconds = days * 86400 + a * 3600 + (b or 0) * 60 + (c or 0)
    if seconds <= 0:
        raise ConfigError(f"--time {text}: must be positive")
    return seconds


def tracking_uri(uri: str | None, storage: str) -> str:
    """The MLflow URI the job uses: an absolute SQLite file (default ``<storage>/mlflow.db``)
    or a server/database URI. Raises ConfigError on a file store or a relative path."""
    if not uri:
        return f"sqlite:///{Path(storage) / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):]
        return f"sqlite:///{Path(path).expanduser().resolve()}"
    if uri.startswith("file:") or "://" not in uri:
        raise ConfigError(f"--tracking-uri {uri}: MLflow 3 needs a database or server URI, e.g. "
                          f"sqlite:////shared/mlflow.db or http://mlflow-host:5000")
    return uri


def ray_command(python: str) -> list[str]:
    """The ``ray`` CLI of `python`'s environment: its ``ray`` script when it sits beside the
    interpreter, else ``python -m ray.scripts.scripts`` (the same CLI)."""
    beside = Path(python).with_name("ray")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    return [python, "-m", "ray.scripts.scripts"]


def _wrap_comment(command: str, width: int = 96) -> list[str]:
    """`command` as comment lines of at most `width` characters, continued with backslashes."""
    lines, current = [], "#  "
    for word in shlex.split(command):
        word = shlex.quote(word)
        if len(current) + len(word) + 3 > width and current != "#  ":
            lines.append(current + " \\")
            current = "#     "
        current += " " + word
    return lines + [current]


# -- the script ------------------------------------------------------------------------------------

def sbatch_directives(job: SlurmJob) -> list[str]:
    """The ``#SBATCH`` lines, in the order they appear in the script."""
    lines = [f"--job-name={job.job_name}", f"--nodes={job.nodes}", "--ntasks-per-node=1"]
    if job.cpus_per_node is None:
        lines.append("--exclusive")
    else:
        lines.append(f"--cpus-per-task={job.cpus_per_node}")
    if job.gpus_per_node:
        lines.append(f"--gpus-per-task={job.gpus_per_node}")
    if job.partition:
        lines.append(f"--partition={job.partition}")
    if job.time_limit:
        lines.append(f"--time={job.time_limit}")
    if job.account:
        lines.append(f"--account={job.account}")
    lines += [f"--output={job.log_dir}/%x-%j.out", "--open-mode=append", "--requeue",
              f"--signal=B:USR1@{job.grace_s}", "--dependency=singleton"]
    lines += job.sbatch_args
    return ["#SBATCH " + line for line in lines]


def render_script(job: SlurmJob) -> str:
    """The complete sbatch script (bash) for `job`, as text ending in a newline."""
    q = shlex.quote
    cpus = ("${SLURM_CPUS_ON_NODE}  # --exclusive: every CPU of the node"
            if job.cpus_per_node is None else "${SLURM_CPUS_PER_TASK}")
    port = (str(job.ray_port) if job.ray_port is not None
            else f"$(( {RAY_BASE_PORT} + SLURM_JOB_ID % 1000 ))  # jobs sharing a node differ")
    options = []
    if job.max_concurrent is not None:
        options += ["--max-concurrent", str(job.max_concurrent)]
    run_options = "--smoke" if job.smoke else ""
    options = " ".join(options)
    dashboard = ("--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port=8265"
                 if job.ray_dashboard else "--include-dashboard=false")
    from featloss import __version__

    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    header = "\n".join(["#!/bin/bash", *sbatch_directives(job)])
    setup = ("\n".join(job.setup) if job.setup
             else "# (none: add lines with featloss slurm --setup 'module load ...')")
    settings = f"""\
# ---- settings written by featloss slurm -------------------------------------------------------
STUDY={q(job.study_path)}
STUDY_NAME={q(job.study_name)}
STORAGE={q(job.storage)}      # shared file system: results, checkpoints, logs
TRACKING_URI={q(job.tracking_uri)}
PYTHON={q(job.python)}        # the environment featloss was installed in
FEATLOSS=("$PYTHON" -m featloss)
RAY=({" ".join(q(part) for part in job.ray_cmd)})
RUN_OPTIONS=({run_options})      # extra options of featloss run only
OPTIONS=({options})          # extra options of featloss run and resume
GPUS_PER_NODE={job.gpus_per_node}
CPUS_PER_NODE={cpus}
RAY_PORT={port}
RAY_DASHBOARD=({dashboard})
STOP_TIMEOUT={max(job.grace_s - 30, 20)}   # seconds the driver gets to stop after SIGUSR1
"""
    reasons = ["#   --ntasks-per-node=1    one Ray node per Slurm node; Ray places the trials"]
    if job.cpus_per_node is None:
        reasons.append("#   --exclusive            whole nodes: each Ray node offers all its CPUs")
    else:
        reasons.append(f"#   --cpus-per-task={job.cpus_per_node:<6} the CPUs each Ray node offers")
    if job.gpus_per_node:
        reasons.append("#   --gpus-per-task        the GPUs of each Ray node (Ray's SLURM example)")
    reasons += [
        "#   --open-mode=append     a requeued job appends to this log, not truncates it",
        "#   --requeue              a preempted or requeued job runs again (SLURM_RESTART_COUNT+1)",
        (f"#   --signal=B:USR1@{job.grace_s:<6} {job.grace_s} s before the time limit the batch "
         f"shell gets"),
        "#                          SIGUSR1: the driver stops cleanly (as on Ctrl+C) and the",
        "#                          job requeues itself",
        "#   --dependency=singleton one job of this name at a time: never two drivers on a study",
    ]
    mlflow = ("a SQLite file that only the driver writes" if job.tracking_uri.startswith("sqlite:")
              else "the server given with --tracking-uri")
    dash = ("on 127.0.0.1 of the head node only\n# (ssh -L 8265:127.0.0.1:8265 HEAD_NODE)"
            if job.ray_dashboard else "off")
    why = "\n".join([
        "#",
        (f"# featloss study '{job.study_name}' ({job.total_trials} trials) on {job.nodes} "
         f"node(s), written by"),
        f"# featloss {__version__} on {stamp} from:",
        *_wrap_comment(job.command()),
        "# Submit this file again (sbatch FILE), or rerun that command, at any time: a study",
        "# that an earlier job left unfinished is resumed from its checkpoints, never restarted.",
        "#",
        "# Why these #SBATCH lines:",
        *reasons,
        "#",
        "# Security: Ray's services authenticate every connection with a random token made for",
        f"# this job alone; Ray's dashboard is {dash}.",
        f"# MLflow is {mlflow}; no server is started (browse with",
        "# `mlflow ui --backend-store-uri URI`, which binds 127.0.0.1).",
    ]) + "\n"
    rule = "# ---- environment set-up " + "-" * 71
    return f"{header}\n{why}\n{settings}\n{rule}\n{setup}\n{_BODY}"


_BODY = r"""
set -o pipefail
log() { echo "featloss-slurm $(date '+%F %T'): $*"; }

export PYTHONUNBUFFERED=1
export RAY_USAGE_STATS_ENABLED=0
# Ray >= 2.59 authenticates every connection with a token. This job makes its own; srun passes
# the environment to every node's raylet and to the driver, and it is never written to disk.
export RAY_AUTH_MODE=token
RAY_AUTH_TOKEN=$("$PYTHON" -c 'import secrets; print(secrets.token_hex(32))') || exit 1
export RAY_AUTH_TOKEN
# Ray's sockets and session logs in a folder of this job, not the node-wide /tmp/ray
export RAY_TMPDIR=/tmp/featloss-ray-$SLURM_JOB_ID
# On SIGTERM a Ray node stops at once (nothing here needs Ray's 30 s drain for Ray Serve)
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0

# ---- the Ray cluster: head on the first node (here), one worker per other node -----------------
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD_NODE=${NODES[0]}   # Slurm runs the batch script on the first node of the allocation
# The head's address inside the cluster network (as in Ray's SLURM example); set
# FEATLOSS_HEAD_IP when the node has several interfaces and this picks the wrong one.
HEAD_IP=${FEATLOSS_HEAD_IP:-$(hostname --ip-address | awk '{print $1}')}
if [[ ${#NODES[@]} -gt 1 && $HEAD_IP == 127.* ]]; then
    HEAD_IP=$(hostname -I | awk '{print $1}')   # a loopback name: take the first real address
fi
RAY_ADDRESS_HEAD=$HEAD_IP:$RAY_PORT
RAY_PIDS=()
DRIVER_PID=
WATCHDOG_PID=
REQUEUE=0

stop_driver() {   # SIGINT = Ctrl+C: the driver marks its MLflow runs and stops cleanly
    if [[ -n $DRIVER_PID ]] && kill -0 "$DRIVER_PID" 2>/dev/null; then
        kill -INT "$DRIVER_PID"
        # a driver that does not stop in time is killed: its trials resume from checkpoints
        ( sleep "$STOP_TIMEOUT"; kill -KILL "$DRIVER_PID" 2>/dev/null ) &
        WATCHDOG_PID=$!
    fi
}
on_usr1() {
    log "SIGUSR1: the time limit is near; stopping the driver, then requeueing the job"
    REQUEUE=1
    stop_driver
}
on_term() {
    log "SIGTERM (scancel or preemption): stopping; the next job resumes the study"
    stop_driver
}
stop_ray() {   # each `ray start --block` stops its node's Ray processes on SIGTERM
    local pid
    for pid in "${RAY_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${RAY_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
    RAY_PIDS=()
    rm -rf "$RAY_TMPDIR"
}
trap on_usr1 USR1
trap on_term TERM
trap stop_ray EXIT

log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${NODES[*]};" \
    "Ray head $RAY_ADDRESS_HEAD"
srun --nodes=1 --ntasks=1 --cpus-per-task="$CPUS_PER_NODE" -w "$HEAD_NODE" \
    "${RAY[@]}" start --head --block --node-ip-address="$HEAD_IP" --port="$RAY_PORT" \
        --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" "${RAY_DASHBOARD[@]}" \
        --disable-usage-stats &
RAY_PIDS+=($!)
for _ in $(seq 120); do   # wait for the head before the workers join it
    "${RAY[@]}" health-check --address "$RAY_ADDRESS_HEAD" >/dev/null 2>&1 && break
    kill -0 "${RAY_PIDS[0]}" 2>/dev/null || { log "the Ray head failed (see above)"; exit 1; }
    sleep 1
done
"${RAY[@]}" health-check --address "$RAY_ADDRESS_HEAD" >/dev/null 2>&1 \
    || { log "the Ray head did not answer within 120 s"; exit 1; }
for node in "${NODES[@]:1}"; do
    srun --nodes=1 --ntasks=1 --cpus-per-task="$CPUS_PER_NODE" -w "$node" \
        "${RAY[@]}" start --block --address="$RAY_ADDRESS_HEAD" \
            --num-cpus="$CPUS_PER_NODE" --num-gpus="$GPUS_PER_NODE" --disable-usage-stats &
    RAY_PIDS+=($!)
done
if [[ ${#NODES[@]} -gt 1 ]]; then   # the driver sizes its concurrency from the joined nodes
    "$PYTHON" -m featloss.engine.ray_setup "$RAY_ADDRESS_HEAD" "${#NODES[@]}" 300 \
        || { log "Ray workers missing"; exit 1; }
fi

# ---- run the study, or resume what an earlier job left unfinished -------------------------------
# A results folder of this study whose featloss_state.json is not "finished" means an earlier
# job stopped mid-study (requeue, preemption, timeout, scancel, node failure): then
# `featloss resume STUDY --storage S` continues it, each unfinished trial from its checkpoint.
MODE=$("$PYTHON" -m featloss.record "$STORAGE" "$STUDY_NAME" "${SLURM_RESTART_COUNT:-0}") \
    || { log "cannot read $STORAGE"; exit 1; }
if [[ $MODE == finished ]]; then
    log "job restarted after its study finished; nothing to do"
    exit 0
fi
if [[ $REQUEUE == 1 ]]; then   # SIGUSR1 came while Ray was starting
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
if [[ $MODE == resume ]]; then
    CMD=("${FEATLOSS[@]}" resume "$STUDY")
else
    CMD=("${FEATLOSS[@]}" run "$STUDY" "${RUN_OPTIONS[@]}")
fi
CMD+=("${OPTIONS[@]}" --storage "$STORAGE" --tracking-uri "$TRACKING_URI"
      --address "$RAY_ADDRESS_HEAD")
log "driver: ${CMD[*]}"
# Job control for this one line: a background job of a non-interactive shell ignores SIGINT,
# and the driver must receive it to stop cleanly.
set -m
"${CMD[@]}" &
DRIVER_PID=$!
set +m
while :; do
    wait "$DRIVER_PID"
    RC=$?
    kill -0 "$DRIVER_PID" 2>/dev/null || break   # still running: a signal interrupted `wait`
done
log "driver exited with code $RC; stopping Ray (srun then reports its steps as cancelled)"
[[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null
stop_ray
if [[ $REQUEUE == 1 && $RC != 0 ]]; then
    log "requeueing job $SLURM_JOB_ID: its next run resumes the study"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
fi
exit "$RC"
"""


# -- writing and submitting ------------------------------------------------------------------------

def write_script(job: SlurmJob, script: str) -> Path:
    """Write `script` to ``<storage>/slurm/<job name>-<timestamp>.sbatch`` (creating the
    storage and log folders, which sbatch needs to exist); return the path.

    Raises ConfigError when the folders cannot be created or the SQLite folder is missing."""
    try:
        Path(job.log_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--storage {job.storage}: cannot create {job.log_dir} ({exc})") from exc
    if job.tracking_uri.startswith("sqlite:///"):
        folder = Path(job.tracking_uri[len("sqlite:///"):]).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise ConfigError(f"--tracking-uri {job.tracking_uri}: folder {folder} does not "
                              f"exist or is not writable")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path(job.log_dir) / f"{job.job_name}-{stamp}.sbatch"
    path.write_text(script)
    return path


def submit(path: Path, sbatch: str = "sbatch") -> str:
    """Submit the script with ``sbatch --parsable``; return the job id (a string of digits).

    Raises ConfigError with sbatch's own first error line when it rejects the job."""
    proc = subprocess.run([sbatch, "--parsable", str(path)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ConfigError(f"sbatch rejected {path}: {reason}")
    return proc.stdout.strip().split(";")[0]
