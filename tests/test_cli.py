"""The command line: bad input is one line on stderr and exit code 2; --json ends stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


def featloss(*args: str, cwd=None, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "featloss", *args], capture_output=True,
                          text=True, cwd=cwd or REPO, env=env, timeout=600)


TRAIN = ["train", "--dataset", "digits", "--backbone", "small_cnn", "--loss", "softmax",
         "--epochs", "1"]


@pytest.mark.parametrize("args,needle", [
    (["train", "--dataset", "mnist6k", "--backbone", "small_cnn", "--loss", "softmax"],
     "unknown dataset 'mnist6k'"),
    (["train", "--dataset", "digits", "--backbone", "vgg99", "--loss", "softmax"],
     "unknown backbone 'vgg99'"),
    (["train", "--dataset", "digits", "--backbone", "small_cnn", "--loss", "arcface"],
     "unknown loss 'arcface'"),
    (TRAIN + ["--set", "train.learning_rate=0.1"], "unknown key 'train.learning_rate'"),
    (TRAIN[:-2] + ["--feature-dim", "0"], "model.feature_dim=0 must lie in [1, 65536]"),
    (TRAIN + ["--set", "data.val_fraction=1.5"], "data.val_fraction=1.5 must lie in (0, 1)"),
    (TRAIN + ["--set", "data.val_fraction=0"], "data.val_fraction=0 must lie in (0, 1)"),
    (TRAIN + ["--set", "data.classes=12"], "data.classes=12 but dataset 'digits' has only 10"),
    (["train", "--dataset", "cifar10", "--backbone", "small_cnn", "--loss", "softmax",
      "--set", "data.root=/nonexistent/featloss"],
     "dataset 'cifar10' not found under /nonexistent/featloss"),
    (["train", "--dataset"], "expected one argument"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_and_exit_code_2(args, needle):
    proc = featloss(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("featloss: error:") and needle in lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_train_json_ends_stdout_with_the_final_metrics():
    proc = featloss(*TRAIN, "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("epoch 1/1")
    final = json.loads(lines[-1])
    assert final["status"] == "completed" and final["loss"] == "softmax"
    assert 0.0 <= final["test/accuracy"] <= 1.0 and final["epoch"] == 1


def test_help_and_catalogues():
    proc = featloss("--help")
    assert proc.returncode == 0 and "train" in proc.stdout and "losses" in proc.stdout
    proc = featloss("losses")
    assert proc.returncode == 0 and proc.stdout.startswith("softmax")
    for command, needle in (("backbones", "small_cnn"), ("datasets", "mnist5k")):
        proc = featloss(command)
        assert proc.returncode == 0 and needle in proc.stdout
