"""Shared test set-up: quiet, offline, deterministic."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

sys.path.insert(0, str(Path(__file__).parent))  # tests import fake_datasets as a module

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cifar_integrity_unchecked(monkeypatch):
    """torchvision md5-checks every CIFAR file; fakes cannot match, so skip the checksum only.

    This is what torchvision's own tests do; the real CIFAR classes still parse the files.
    """
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
