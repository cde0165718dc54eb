"""Shared test set-up: quiet, offline, deterministic."""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# repulsion targets cached for this test run only, never in the user's ~/.cache
os.environ.setdefault("FEATLOSS_CACHE", tempfile.mkdtemp(prefix="featloss-test-cache-"))

sys.path.insert(0, str(Path(__file__).parent))  # tests import fake_datasets as a module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cifar_integrity_unchecked(monkeypatch):
    """torchvision md5-checks every CIFAR file; fakes cannot match, so skip the checksum only.

    This is what torchvision's own tests do; the real CIFAR classes still parse the files.
    """
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test run (starting Ray costs ~6 s)."""
    import ray

    if not ray.is_initialized():
        # "local": never join a cluster an earlier `ray start` test recorded on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=150 * 1024**2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory):
    """A migrated MLflow SQLite file, made once (migrations take ~7 s) and copied per test."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking_uri(mlflow_template, tmp_path):
    import shutil

    target = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, target)
    return f"sqlite:///{target}"


def tiny_study(name: str, **sections) -> dict:
    """A study small enough for tests: digits, small_cnn, 2 epochs on 400 images."""
    study = {
        "name": name,
        "data": {"dataset": "digits", "max_train_samples": 400, "max_eval_samples": 200},
        "model": {"backbone": "small_cnn", "feature_dim": 16},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.05},
        "losses": ["softmax"],
        "seeds": [0],
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(study.get(key), dict):
            study[key] = {**study[key], **value}
        else:
            study[key] = value
    return study


DELETE = object()  # with `edited`: remove the key


def edited(base: dict, changes: dict[str, Any]) -> dict:
    """A deep copy of `base` with each ``a/b/c`` path set to its value (DELETE removes it)."""
    raw = copy.deepcopy(base)
    for path, value in changes.items():
        node = raw
        parts = path.split("/")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        if value is DELETE:
            node.pop(parts[-1], None)
        else:
            node[parts[-1]] = value
    return raw


def mlflow_runs(uri: str, experiment: str) -> tuple[list, list]:
    """(parent runs, trial runs) of an experiment, read with the real MLflow client."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "", max_results=1000)
    parents = [r for r in runs if r.data.tags.get("featloss.role") == "parent"]
    trials = [r for r in runs if r.data.tags.get("featloss.role") == "trial"]
    return parents, trials


def run_inline(raw: dict, uri: str, storage, smoke: bool = False, address: str | None = None,
               max_concurrent: int | None = None):
    """What `featloss run` does, in this process: (plan, record, outcome)."""
    from featloss.engine.progress import Progress
    from featloss.engine.run import RunOptions, run_new_study
    from featloss.plan import expand
    from featloss.study import parse_study

    plan = expand(parse_study(raw, source=f"{raw['name']}.yaml"), smoke=smoke)
    record, outcome = run_new_study(plan, uri, str(storage), f"{raw['name']}.yaml",
                                    RunOptions(address, max_concurrent), Progress(every=1e9))
    return plan, record, outcome
