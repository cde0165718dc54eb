"""A real Slurm cluster on this machine for tests: munged, slurmctld and slurmd on 127.0.0.1.

Debian's ``slurm-wlm`` and ``munge`` packages (installed by ``.ci/run``; installed here too when
missing and apt is usable as root). Everything the daemons write lives under one temporary folder:
munge's key, socket, pid and log; slurm.conf, the controller's state, slurmd's spool, pid and log
files, on ports chosen free at start-up, with a random first job id, so the cluster neither needs
nor touches /etc/slurm, /etc/munge or /var. Client commands find it through ``SLURM_CONF``
(`SlurmCluster.env`).

Stopping is ordered as jobs outlive daemons: cancel every job and wait for an empty queue, then
stop slurmd, slurmctld and munged by their pid files.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PACKAGES = ("slurm-wlm", "munge")
NEEDED = ("sbatch", "squeue", "scancel", "scontrol", "srun", "slurmctld", "slurmd", "munged",
          "mungekey")


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be installed or started here; the message says why (a skip reason)."""


def _missing() -> list[str]:
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/sbin"]
    return [tool for tool in NEEDED if not shutil.which(tool, path=os.pathsep.join(dirs))]


def ensure_installed() -> None:
    """Install slurm-wlm and munge with apt-get when a tool is missing; raise SlurmUnavailable
    when they are missing and cannot be installed (not root, no apt-get, apt fails)."""
    missing = _missing()
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise SlurmUnavailable(f"Slurm is not installed ({', '.join(missing)} not found) and "
                               f"apt-get is not usable here (needs root): apt-get install "
                               f"{' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", *PACKAGES]
    for attempt in (install, ["apt-get", "update", "-qq"], install):
        proc = subprocess.run(attempt, env=env, capture_output=True, text=True, timeout=600,
                              check=False)
        if attempt is install and proc.returncode == 0:
            break
    if _missing():
        raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: "
                               f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _sbin(tool: str) -> str:
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    assert found, tool
    return found


def _real_memory_mb() -> int:
    out = subprocess.run([_sbin("slurmd"), "-C"], capture_output=True, text=True,
                         check=False).stdout
    for word in out.split():
        if word.startswith("RealMemory="):
            return max(1, int(word.split("=", 1)[1]) - 512)
    return 1024


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie of ours is as good as gone
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _stop_pid(pid: int | None, timeout: float = 15.0) -> None:
    if pid is None or not _alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


@dataclass
class SlurmCluster:
    """A running cluster on this machine, partition ``debug``: one node ``localhost``
    (127.0.0.1) with `cpus` CPUs, or with `nodes` > 1, nodes ``node1`` ... ``nodeN``: one slurmd
    each, all on 127.0.0.1 with their own port, spool, pid and log file (Slurm runs several
    slurmd on one host with ``slurmd -N NAME``), `cpus` CPUs each."""

    root: Path
    cpus: int = 2
    nodes: int = 1
    env: dict[str, str] = field(default_factory=dict)

    @property
    def node_names(self) -> list[str]:
        return ["localhost"] if self.nodes == 1 else [f"node{i}" for i in range(1, self.nodes + 1)]

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        """Run a Slurm client command against this cluster; return its stdout."""
        proc = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}: {proc.stderr.strip()}")
        return proc.stdout

    def job_state(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (JobState, RestartCnt, ExitCode, ...); {} if gone."""
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        fields = {}
        for word in out.split():
            key, _, value = word.partition("=")
            fields.setdefault(key, value)
        return fields

    def active_jobs(self) -> list[str]:
        """Ids of jobs not yet ended (pending, running, completing, requeued, ...)."""
        return self.run("squeue", "-h", "-o", "%i", check=False).split()

    def wait_for(self, job_id: str, states: set[str], timeout: float) -> dict[str, str]:
        """Wait until the job's state is in `states`; return its fields (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job_state(job_id)
            if fields.get("JobState") in states:
                return fields
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not in {states} after {timeout} s: {fields}")
            time.sleep(0.5)

    def cancel_all(self, timeout: float = 60) -> None:
        """scancel every job and wait for an empty queue (jobs outlive the daemons)."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.active_jobs()
            if not jobs:
                return
            self.run("scancel", *jobs, check=False)
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still in the queue after scancel: {jobs}")
            time.sleep(0.5)

    # -- start / stop ----------------------------------------------------------------------------
    def start(self) -> None:
        root = self.root
        munge = root / "munge"
        for sub in ("state", "spool", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        munge.mkdir(mode=0o755, exist_ok=True)
        shutil.chown(munge, "munge", "munge")
        os.chmod(root, 0o755)
        as_munge = ["runuser", "-u", "munge", "--"]
        key = munge / "munge.key"
        subprocess.run([*as_munge, _sbin("mungekey"), "--create", f"--keyfile={key}"],
                       check=True, capture_output=True)
        subprocess.run([*as_munge, _sbin("munged"), f"--socket={munge / 'munge.socket'}",
                        f"--key-file={key}", f"--pid-file={munge / 'munged.pid'}",
                        f"--log-file={munge / 'munged.log'}", f"--seed-file={munge / 'seed'}"],
                       check=True, capture_output=True, timeout=30)
        ctld_port = _free_port()
        memory = _real_memory_mb() // self.nodes
        if self.nodes == 1:
            slurmd_files = f"""\
SlurmdPort={_free_port()}
SlurmdSpoolDir={root / 'spool'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmdLogFile={root / 'log' / 'slurmd.log'}
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} Sockets=1 CoresPerSocket={self.cpus} \
ThreadsPerCore=1 RealMemory={memory} State=UNKNOWN
"""
        else:  # %n: the node name, so each slurmd has its own files
            slurmd_files = f"""\
SlurmdSpoolDir={root / 'spool'}/%n
SlurmdPidFile={root}/slurmd-%n.pid
SlurmdLogFile={root / 'log'}/slurmd-%n.log
""" + "".join(f"NodeName={name} NodeHostname=localhost NodeAddr=127.0.0.1 Port={_free_port()} "
              f"CPUs={self.cpus} Sockets=1 CoresPerSocket={self.cpus} ThreadsPerCore=1 "
              f"RealMemory={memory} State=UNKNOWN\n" for name in self.node_names)
        self.conf.write_text(f"""\
# a test cluster on this machine, written by tests/slurm_cluster.py
ClusterName=featlosstest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge / 'munge.socket'},cred_expire=5
StateSaveLocation={root / 'state'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmctldLogFile={root / 'log' / 'slurmctld.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=bf_interval=1,sched_interval=1
FirstJobId={random.randint(1000, 900000)}
JobRequeue=1
KillWait=5
MinJobAge=600
ReturnToService=2
MailProg=/bin/true
{slurmd_files}PartitionName=debug Nodes={",".join(self.node_names)} Default=YES MaxTime=INFINITE \
State=UP
""")
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.env.pop("SLURM_JOB_ID", None)
        subprocess.run([_sbin("slurmctld"), "-f", str(self.conf), "-c"], env=self.env, check=True,
                       capture_output=True, timeout=30)
        for name in self.node_names:
            (root / "spool" / name).mkdir(exist_ok=True)
            subprocess.run([_sbin("slurmd"), "-f", str(self.conf), "-N", name], env=self.env,
                           check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 30
        while True:  # every node must be idle before jobs can run
            state = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).split()
            if state == ["idle"] * self.nodes:
                return
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"the Slurm node did not come up (state {state!r}); "
                                       f"see {root / 'log'}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job, wait for an empty queue, then stop slurmd, slurmctld, munged."""
        try:
            if self.env:
                self.cancel_all()
        finally:
            for pid_file in [self.root / "slurmd.pid", *self.root.glob("slurmd-*.pid")]:
                _stop_pid(_read_pid(pid_file))
            _stop_pid(_read_pid(self.root / "slurmctld.pid"))
            _stop_pid(_read_pid(self.root / "munge" / "munged.pid"))


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running single-node Slurm cluster (see module docstring), stopped after the session;
    skips the test when Slurm cannot be installed or started on this machine."""
    yield from _cluster(nodes=1)


@pytest.fixture(scope="module")
def slurm_cluster_two_nodes():
    """Two Slurm nodes (two slurmd) on this machine, 1 CPU each, stopped after the module."""
    yield from _cluster(nodes=2, cpus=1)


def _cluster(nodes: int, cpus: int | None = None):
    try:
        ensure_installed()
    except SlurmUnavailable as exc:
        pytest.skip(str(exc))
    root = Path(tempfile.mkdtemp(prefix="featloss-slurm-"))
    cluster = SlurmCluster(root, cpus=cpus or min(2, os.cpu_count() or 1), nodes=nodes)
    try:
        try:
            cluster.start()
        except (SlurmUnavailable, subprocess.SubprocessError, OSError) as exc:
            logs = " ".join(str(p) for p in (root / "log").glob("*"))
            pytest.skip(f"a Slurm cluster cannot start here: {exc} (logs: {logs})")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
