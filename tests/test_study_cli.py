"""`featloss run|validate` on bad input: one line on stderr, exit code 2, before Ray starts."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, tiny_study
from featloss.yamlio import dump_yaml

GOOD = tiny_study("cli", losses=["softmax", "pod"], search={"trials_per_loss": 2})


def variant(**changes) -> dict:
    raw = copy.deepcopy(GOOD)
    for key, value in changes.items():
        raw[key] = value
    return raw


def with_space(space: dict) -> dict:
    raw = copy.deepcopy(GOOD)
    raw["search"]["space"] = {"pod": space}
    return raw


CASES = {
    "unknown_key": (variant(epochs=3), "unknown key 'epochs'"),
    "unknown_loss": (variant(losses=["softmax", "cosface"]), "unknown loss 'cosface'"),
    "unknown_dataset": (variant(data={"dataset": "svhn"}), "unknown dataset 'svhn'"),
    "unknown_backbone": (variant(model={"backbone": "vgg16"}), "unknown backbone 'vgg16'"),
    "low_not_below_high": (with_space({"loss.lam": {"type": "float", "low": 2, "high": 2}}),
                           "low=2 must be < high=2"),
    "log_with_low_0": (with_space({"loss.lam": {"type": "float", "low": 0, "high": 1,
                                                "log": True}}),
                       "a log distribution needs low > 0"),
    "grid_unknown_key": ({**{k: v for k, v in GOOD.items() if k != "search"},
                          "grid": {"model.depth": [1, 2]}}, "grid over an unknown key"),
    "empty_losses": (variant(losses=[]), "losses must not be empty"),
    "non_integer_seeds": (variant(seeds=[0, "one"]), "seeds[1] must be an integer, got 'one'"),
    # per_loss overrides the loss's recipe (a shared data.sampler does not: README, Recipes)
    "sigma2r_random_sampler": (variant(losses=["sigma2r"],
                                       per_loss={"sigma2r": {"data": {"sampler": "random"}}}),
                               "data.sampler=random cannot give loss 'sigma2r'"),
}


def featloss(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "featloss", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=300)


def assert_bad_input(proc: subprocess.CompletedProcess, needle: str, cwd) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featloss: error:") and needle in lines[0], \
        proc.stderr
    assert "results:" not in proc.stdout  # nothing was started
    assert not (cwd / "featloss_results").exists() and not (cwd / "mlflow.db").exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_study_file(tmp_path, case):
    raw, needle = CASES[case]
    path = tmp_path / "study.yaml"
    path.write_text(dump_yaml(raw))
    proc = featloss("run", str(path), cwd=tmp_path)
    assert_bad_input(proc, needle, tmp_path)
    assert str(path) in proc.stderr or "study.yaml" in proc.stderr  # names the file


def test_missing_search_space_file(tmp_path):
    (tmp_path / "studies").mkdir()
    shutil.copytree(REPO / "search_spaces", tmp_path / "search_spaces")
    (tmp_path / "search_spaces" / "pod.yaml").unlink()
    path = tmp_path / "studies" / "study.yaml"
    path.write_text(dump_yaml(GOOD))
    proc = featloss("run", str(path), cwd=tmp_path)
    assert_bad_input(proc, "missing search-space file", tmp_path)
    assert "pod.yaml" in proc.stderr


def test_unreachable_tracking_server_is_checked_before_trials_start(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(dump_yaml(GOOD))
    proc = featloss("run", str(path), "--tracking-uri", "http://127.0.0.1:9", cwd=tmp_path)
    assert_bad_input(proc, "--tracking-uri http://127.0.0.1:9 is unreachable", tmp_path)


def test_validate_prints_the_plan_and_starts_nothing(tmp_path):
    proc = featloss("validate", str(REPO / "studies" / "quickstart.yaml"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "search phase: 25 trials" in proc.stdout and "final phase: 18 trials" in proc.stdout
    assert "softmax: nothing to search" in proc.stdout and "total: 43 trials" in proc.stdout
    assert list(tmp_path.iterdir()) == []
