"""Starting or joining Ray, quietly and with bounded waits.

A run without ``--address`` always starts a fresh local Ray (a bare ``ray.init()`` would join any
cluster a ``ray start`` left recorded on this machine, even a dead one). ``--address`` is checked
with a plain TCP connection first, so an unreachable cluster is one line within seconds instead
of Ray's own endless reconnect loop.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

from featloss.errors import ConfigError

CONNECT_TIMEOUT_S = 10.0
GCS_TIMEOUT_S = 5.0  # Ray's GCS client: how long the head gets to give its cluster ID

QUIET_ENV = {  # setdefault: a user's own setting wins
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # a diverged trial reports no val metrics
    "TUNE_GLOBAL_CHECKPOINT_S": "600",  # featloss's record is the study's state, not Tune's
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "TUNE_WARN_INSUFFICENT_RESOURCE_THRESHOLD_S": "0",
    "RAY_DEDUP_LOGS": "0",
    "RAY_AIR_NEW_OUTPUT": "0",  # the old engine prints nothing at verbose=0; we print progress
    # Tune's CSV and TensorBoard loggers cost time per result and print a line per trial about
    # configs they cannot log; featloss adds Tune's JSON logger alone (result.json per trial)
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}


def quiet_environment() -> None:
    """Ray/Tune settings featloss relies on, and no notices it prints its own version of."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    # Ray >= 2.59 announces token authentication on every start; it stays enabled, unsaid.
    logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
    # Tune's own stop notices and its "Tuner.restore" hint: featloss prints its own
    # `featloss resume` line (Tune's experiment state is never restored from).
    logging.getLogger("ray.tune.impl.tuner_internal").setLevel(logging.ERROR)
    logging.getLogger("ray.tune.execution.experiment_state").setLevel(logging.ERROR)
    tune_logger = logging.getLogger("ray.tune.tune")
    if not any(isinstance(f, _TuneResumeNotices) for f in tune_logger.filters):
        tune_logger.addFilter(_TuneResumeNotices())


class _TuneResumeNotices(logging.Filter):
    """Drops Tune's interrupt notices, which tell the user to call Tuner.restore."""

    NOTICES = ("Stop signal received", "Experiment has been interrupted", "Tuner.restore")

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.NOTICES)


GCS_PROBE = """
import sys
from ray._private.services import canonicalize_bootstrap_address_or_die
from ray._raylet import InnerGcsClient
try:
    address = canonicalize_bootstrap_address_or_die(sys.argv[1])
except Exception as exc:  # no recorded cluster, several of them, a bad address
    print("ERR -", str(exc).strip().splitlines()[0]); raise SystemExit
try:
    InnerGcsClient.standalone(address, None, int(float(sys.argv[2]) * 1000))
except Exception as exc:
    print("ERR", address, str(exc).strip().splitlines()[0]); raise SystemExit
print("OK", address)
"""


def check_address(address: str) -> None:
    """Raise ConfigError unless a Ray head answers at `address` (``host:port`` or ``auto``).

    ``ray.init`` alone can wait without end: on a port that accepts connections but never
    answers, or on ``auto`` naming a cluster that is gone. So a TCP connection is tried first
    (seconds), then Ray's own GCS client asks the head for its cluster ID in a child process
    that is killed after a bound, its C++ log lines kept off the terminal. ``ray://`` client
    addresses are left to Ray itself. Checked once per process and address.
    """
    if "://" in address or address in _ANSWERED:
        return
    if address != "auto":
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise ConfigError(f"--address {address}: expected HOST:PORT of a Ray head (e.g. "
                              f"10.0.0.5:6379) or auto")
        try:
            with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            raise ConfigError(f"--address {address}: cannot join the Ray cluster "
                              f"({exc.strerror or exc}); is `ray start --head` running "
                              f"there?") from None
    _probe_gcs(address)
    _ANSWERED.add(address)


_ANSWERED: set[str] = set()


def _probe_gcs(address: str) -> None:
    import subprocess
    import sys

    try:
        proc = subprocess.run([sys.executable, "-c", GCS_PROBE, address, str(GCS_TIMEOUT_S)],
                              capture_output=True, text=True, timeout=GCS_TIMEOUT_S + 30,
                              env={**os.environ, **QUIET_ENV})
    except subprocess.TimeoutExpired:
        raise ConfigError(f"--address {address}: no Ray head answered within "
                          f"{GCS_TIMEOUT_S + 30:g} s; check the address (`ray status` on the "
                          f"head prints it)") from None
    lines = [x for x in proc.stdout.splitlines() if x.startswith(("OK ", "ERR "))]
    if lines and lines[-1].startswith("OK "):
        return
    if not lines:
        detail = (proc.stderr.strip().splitlines() or ["no reply"])[-1]
        raise ConfigError(f"--address {address}: cannot check the Ray head ({detail})")
    _, resolved, detail = lines[-1].split(" ", 2)
    if address != "auto":
        raise ConfigError(f"--address {address}: no Ray head answers there ({detail}); is "
                          f"this the address `ray start --head` printed?")
    where = f"the cluster recorded at {resolved} by an earlier `ray start` " \
        if resolved != "-" else ""
    raise ConfigError(f"--address auto: {where}does not answer ({detail}); start one with "
                      f"`ray start --head`, or pass --address HOST:PORT")


def check_local_resources(resources: dict[str, float]) -> None:
    """Resources a local run's only node can never offer are bad input (the run would wait
    forever). Raises ConfigError."""
    import torch

    cpus = os.cpu_count() or 1
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if resources["cpu"] > cpus:
        raise ConfigError(f"resources.cpu={resources['cpu']:g} but this machine has {cpus} CPUs; "
                          f"a trial could never start (lower it, or join a cluster with "
                          f"--address)")
    if resources["gpu"] > gpus:
        raise ConfigError(f"resources.gpu={resources['gpu']:g} but this machine has {gpus} "
                          f"GPUs; a trial could never start (set resources.gpu: 0, or join a "
                          f"cluster with --address)")


def start_ray(address: str | None) -> bool:
    """Start a local Ray or join `address`; True when this call started it (and owns it).

    Raises ConfigError when the cluster cannot be joined.
    """
    quiet_environment()
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        check_address(address)
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"--address {address}: cannot join the Ray cluster "
                              f"({str(exc).strip().splitlines()[0]})") from None
    else:
        ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1",
                 **kwargs)
    return True


def stop_ray() -> None:
    import ray

    ray.shutdown()


def cluster_slots(resources: dict[str, float]) -> int:
    """How many trials of `resources` the cluster can run at once (>= 1)."""
    import ray

    total = ray.cluster_resources()
    slots = [int(total.get("CPU", 1) // max(resources["cpu"], 1e-9))]
    if resources["gpu"] > 0:
        slots.append(int(total.get("GPU", 0) // resources["gpu"] + 1e-9))
    return max(1, min(slots))


def wait_for_node(resources: dict[str, float], address: str, seconds: float, say,
                  poll: float = 5.0) -> None:
    """Return once a live node can hold one trial's `resources`; ConfigError after `seconds`.

    While waiting, the autoscaler is asked for one such node (``request_resources``: Tune only
    places demand once trials are pending, which is after this check); the request is cleared
    before returning. A cluster without an autoscaler ignores the request, so the wait ends in
    the same error line, later.
    """
    if fits_some_node(resources):
        return
    shape = f"{{cpu: {resources['cpu']:g}, gpu: {resources['gpu']:g}}}"
    if seconds <= 0:
        raise ConfigError(f"resources {shape} fit no node of the cluster at {address}; lower "
                          f"them, add nodes, or on an autoscaling cluster pass --wait-for-nodes "
                          f"SECONDS")
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": resources["cpu"], **({"GPU": resources["gpu"]} if resources["gpu"] else {})}
    request_resources(bundles=[bundle])
    say(f"waiting up to {seconds:g} s for a node with {shape} (autoscaler asked)…")
    deadline = time.monotonic() + seconds
    try:
        while not fits_some_node(resources):
            if time.monotonic() >= deadline:
                raise ConfigError(f"resources {shape} fit no node of the cluster at {address} "
                                  f"after waiting {seconds:g} s (--wait-for-nodes); lower them "
                                  f"or check the autoscaler (ray status)")
            time.sleep(poll)
    finally:
        request_resources(bundles=[])  # the request persists otherwise, keeping the node up


def fits_some_node(resources: dict[str, float]) -> bool:
    """Whether any live node offers `resources` in total (not just now)."""
    import ray

    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        if have.get("CPU", 0) >= resources["cpu"] and have.get("GPU", 0) >= resources["gpu"]:
            return True
    return False


def wait_for_node_count(address: str, count: int, seconds: float, poll: float = 2.0) -> None:
    """Join the cluster at `address` and return once `count` nodes are alive; ConfigError
    after `seconds`. The Slurm job script runs it (``python -m featloss.engine.ray_setup``)
    between starting the workers and the driver, which sizes its concurrency from the nodes."""
    import ray

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        deadline = time.monotonic() + seconds
        while (alive := sum(bool(n.get("Alive")) for n in ray.nodes())) < count:
            if time.monotonic() > deadline:
                raise ConfigError(f"{alive} of {count} Ray nodes joined {address} within "
                                  f"{seconds:g} s")
            time.sleep(poll)
    finally:
        ray.shutdown()


if __name__ == "__main__":  # python -m featloss.engine.ray_setup ADDRESS NODES SECONDS
    import sys

    try:
        wait_for_node_count(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
    except ConfigError as exc:
        sys.exit(f"featloss-slurm: {exc}")
