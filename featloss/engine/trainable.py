"""The Tune function trainable: one featloss trial, resumable from its own checkpoint.

Tune's config of a trial is ``{"key", "config" (a featloss Config as its mapping), "checkpoint",
"threads", "errors"}``. Every epoch the trial rewrites its checkpoint (the source of truth for its training
state, see `featloss.storage`) and then reports the epoch's metrics to Tune, stamped with the time
the epoch finished (kept in the checkpoint, so a replayed epoch carries the same stamp). A trial
that starts with a checkpoint continues from its last finished epoch; a finished one re-reports
its final metrics without training.

A trial that raises never reaches Tune's retry loop: it reports ``status: failed`` with the last
line of its error (the traceback goes to ``errors/<key>.txt``) and ends. Only a lost worker or node
makes Tune retry a trial (``max_failures``), and that retry resumes from the checkpoint.
"""

from __future__ import annotations

import socket
import time
import traceback

from featloss import storage
from featloss.errors import ConfigError, one_line

REPLAYED = "replayed"  # a report that retrains nothing (the epoch is in the checkpoint already)
PAYLOAD = "featloss"  # the whole report, as JSON, inside a Tune result


def featloss_trial(params: dict) -> None:
    """Tune function trainable (see the module docstring)."""
    import ray
    import torch
    from ray import tune

    from featloss.config import Config

    # Tune keeps every trial's config in its experiment state: a plain mapping there (a pickled
    # model is 10x larger), typed again here.
    key, checkpoint = params["key"], params["checkpoint"]
    config = Config.from_dict(params["config"], where=f"trial {key}")
    torch.set_num_threads(max(1, int(params.get("threads", 1))))
    where = {"node_id": ray.get_runtime_context().get_node_id(),
             "hostname": socket.gethostname()}
    metric = params.get("metric", "val/accuracy")

    def send(metrics: dict) -> None:
        tune.report(to_tune(metrics, metric, where))

    try:
        resume = storage.load_trial_state(checkpoint)
        if resume is not None and resume.get("config") != config.to_dict():
            resume = None  # another trial once had this key: start over
        _train(config, checkpoint, resume, send)
    except Exception as exc:  # noqa: BLE001 - a trial fails once, with its error line
        send({"status": "failed", "error": _error_line(exc, key, params.get("errors"))})


def _train(config, checkpoint: str, resume: dict | None, send) -> None:
    from featloss.train import fit

    saved_epoch = resume["epoch"] if resume is not None else -1
    if resume is not None and resume.get("status") == "running" and resume.get("metrics"):
        # The checkpoint may be newer than anything the driver recorded (it is written before
        # the report, and the driver can die in between): replay that epoch.
        send({**resume["metrics"], REPLAYED: 1})

    def report(metrics: dict, state) -> None:
        nonlocal saved_epoch
        if metrics.get("epoch", 0) == saved_epoch:  # a finished trial re-reports: nothing ran
            send({**metrics, REPLAYED: 1})
            return
        metrics["time_ms"] = int(time.time() * 1000)
        snapshot = state()
        snapshot["metrics"]["time_ms"] = metrics["time_ms"]
        storage.save_trial_state(checkpoint, snapshot)
        saved_epoch = metrics.get("epoch", 0)
        if metrics.get("status") == "completed" and "val_features" in snapshot:
            storage.save_trial_state(features_uri(checkpoint), snapshot["val_features"])
        send(metrics)

    fit(config, report, resume=resume)


def to_tune(metrics: dict, metric: str, where: dict) -> dict:
    """What Tune gets of a report: the few keys its scheduler, searcher and result log read
    (epoch, status, the study's metric, replayed, where it ran), the full report as one JSON
    string under PAYLOAD. Tune keeps running statistics of every numeric key of every trial in
    memory and in its experiment state, so fewer keys keep the driver's cost per trial flat."""
    import json

    out = {k: metrics[k] for k in ("epoch", "status", metric, REPLAYED) if k in metrics}
    out.update(where)
    out[PAYLOAD] = json.dumps(metrics)
    return out


def from_tune(result: dict) -> dict:
    """The full report a Tune result carries (see `to_tune`), with where it ran."""
    import json

    metrics = json.loads(result[PAYLOAD]) if PAYLOAD in result else dict(result)
    for key in ("node_id", "hostname", REPLAYED):
        if key in result:
            metrics[key] = result[key]
    return metrics


def features_uri(checkpoint_uri: str) -> str:
    """Where a finished trial with 2-D features leaves them (logged to its MLflow run)."""
    return checkpoint_uri[: -len(".pt")] + ".features.pt"


def _error_line(exc: BaseException, key: str, errors_dir: str | None) -> str:
    """The error's last line; for anything but bad input, with where its traceback went."""
    text = str(exc).strip()
    line = one_line(text.splitlines()[-1] if text else "", 500)
    if isinstance(exc, ConfigError):
        return line
    line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
    if errors_dir:
        target = storage.join(errors_dir, f"{key}.txt")
        try:
            storage.write_bytes(target, traceback.format_exc().encode())
            line += f" (traceback: {target})"
        except OSError:
            pass
    return line


def trial_params(key: str, config, results_dir: str, threads: int, metric: str) -> dict:
    """Tune's config of one trial (`config` a featloss Config, carried as its mapping)."""
    return {"key": key, "config": config.to_dict(), "threads": threads, "metric": metric,
            "checkpoint": storage.join(results_dir, "checkpoints", f"{key}.pt"),
            "errors": storage.join(results_dir, "errors")}
