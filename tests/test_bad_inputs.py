"""Every bad input: one stderr line naming what is wrong, exit code 2, nothing started.

A table of well over 100 inputs through the real command line (`featloss.cli.main`, in this
process so the table stays fast): each row asserts exit code 2, exactly one stderr line starting
``featloss: error:`` that contains the row's needle, no Ray session, no new MLflow run or
experiment in the shared store, and no results or report folder left behind.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
from conftest import DELETE, edited, tiny_study

from featloss.yamlio import dump_yaml

GOOD = tiny_study("bad-inputs", data={"max_train_samples": 128, "max_eval_samples": 64},
                  train={"epochs": 1})
SEARCH = {**GOOD, "losses": ["softmax", "pod"], "search": {"trials_per_loss": 2}}


class Ctx:
    """A row's working folder, the shared tracking store and helpers to write inputs."""

    def __init__(self, folder: Path, uri: str) -> None:
        self.folder, self.uri = folder, uri
        self.storage = folder / "results"
        self.env: dict[str, str] = {}  # environment a row sets (applied through monkeypatch)

    def study(self, raw: Any = None, text: str | bytes | None = None, name="study.yaml") -> str:
        path = self.folder / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text if text is not None else dump_yaml(raw))
        return str(path)

    def run(self, raw: Any = None, *extra: str, text=None) -> list[str]:
        return ["run", self.study(raw, text), "--storage", str(self.storage),
                "--tracking-uri", self.uri, *extra]


def with_(base: dict, *path_value) -> dict:
    return edited(base, dict(zip(path_value[::2], path_value[1::2])))
TRAIN = ["train", "--dataset", "digits", "--backbone", "small_cnn", "--loss", "softmax",
         "--epochs", "1", "--set", "data.max_train_samples=64", "--set", "data.max_eval_samples=32"]

Row = tuple[str, Callable[[Ctx], list[str]], str]
ROWS: list[Row] = []


def row(kind: str, make: Callable[[Ctx], list[str]], needle: str) -> None:
    ROWS.append((kind, make, needle))


def study_row(kind: str, raw: Any, needle: str, *extra: str) -> None:
    row(kind, lambda c, raw=raw: c.run(raw, *extra), needle)


def text_row(kind: str, text: str | bytes, needle: str) -> None:
    row(kind, lambda c, text=text: c.run(None, text=text), needle)


# -- the study file as a file ----------------------------------------------------------------------
text_row("file", "name: a\ntrain: {epochs: 1}\nlosses: [softmax]\ntrain: {epochs: 2}\n",
         "key 'train' appears twice in one mapping (lines 2 and 4)")
text_row("file", "name: a\nlosses: [softmax]\ntrain: {lr: 0.1, lr: 0.2}\n",
         "key 'lr' appears twice")
text_row("file", b"name: \xff\xfe\x00bad\n", "not UTF-8 text (byte 0xff at position 6)")
text_row("file", "name: caf\xe9".encode("latin-1"), "not UTF-8 text")
text_row("file", "", "a study is a YAML mapping")
text_row("file", "- softmax\n- pod\n", "a study is a YAML mapping")
text_row("file", "just text\n", "a study is a YAML mapping")
text_row("file", "name: [unclosed\n", "not valid YAML")
text_row("file", "a: &a [1, 2]\n" + "".join(f"k{i}: [*a, *a, *a, *a]\n" for i in range(60)),
         "more than 200 aliases")
text_row("file", "_base_: absent.yaml\nname: a\n", "absent.yaml: no such study file")
text_row("file", "_base_: study.yaml\nname: a\n", "includes itself")
text_row("file", "_base_: 3\nname: a\n", "_base_ must be a path")
row("file", lambda c: ["run", str(c.folder), "--storage", str(c.storage)],
    "is a directory, not a study file")
row("file", lambda c: ["run", str(c.folder / "absent.yaml")], "no such study file")
row("file", lambda c: ["validate", str(c.folder)], "is a directory")

# -- keys and types of the study -------------------------------------------------------------------
study_row("keys", with_(GOOD, "epochs", 3), "unknown key 'epochs'")
study_row("keys", with_(GOOD, "data/root_dir", "x"), "unknown key 'data.root_dir'")
study_row("keys", with_(GOOD, "train/learning_rate", 0.1), "unknown key 'train.learning_rate'")
study_row("keys", with_(SEARCH, "search/budget", 3), "unknown key 'search.budget'")
study_row("keys", with_(GOOD, "per_loss/arcface", {}),
          "per_loss.arcface: unknown loss 'arcface' (known: softmax,")
study_row("keys", with_(GOOD, "base", "other.yaml"),
          "unknown key 'base' (did you mean '_base_'? known keys: _base_, name,")
study_row("keys", with_(GOOD, "per_loss/softmax/optim", {}),
          "unknown key 'per_loss.softmax.optim'")
study_row("keys", with_(GOOD, "name", ""), "name must not be empty")
study_row("keys", with_(GOOD, "name", "two\nlines"), "must be one line of text")
study_row("keys", with_(GOOD, "name", "n" * 201), "name is too long")
study_row("keys", with_(GOOD, "name", 7), "name must be a string, got 7")
study_row("keys", with_(GOOD, "name", DELETE), "missing key 'name'")
study_row("keys", with_(GOOD, "description", ["x"]), "description must be a string")
study_row("keys", with_(GOOD, "losses", []), "losses must not be empty")
study_row("keys", with_(GOOD, "losses", ["arcface"]), "unknown loss 'arcface'")
study_row("keys", with_(GOOD, "losses", ["softmax", "softmax"]), "lists a loss twice")
study_row("keys", with_(GOOD, "losses", "softmax"), "losses must be a list")
study_row("keys", with_(GOOD, "seeds", []), "seeds must not be empty")
study_row("keys", with_(GOOD, "seeds", [0.5]), "seeds[0] must be an integer, got 0.5")
study_row("keys", with_(GOOD, "seeds", [-1]), "seeds must lie in [0, 4294967295], got -1")
study_row("keys", with_(GOOD, "seeds", [10**20]), "seeds must lie in [0, 4294967295]")
study_row("keys", with_(GOOD, "seeds", [1, 1]), "lists a seed twice")
study_row("keys", with_(GOOD, "seeds", "0"), "seeds must be a list")
study_row("keys", with_(GOOD, "resources/tpu", 1), "unknown key 'resources.tpu'")
study_row("keys", with_(GOOD, "resources/cpu", -1), "resources.cpu=-1 must lie in")
study_row("keys", with_(GOOD, "resources/gpu", 1.5), "a whole number of GPUs")
study_row("keys", with_(GOOD, "resources", {"cpu": 0, "gpu": 0}),
          "resources: cpu 0 and gpu 0 ask Ray for nothing")
study_row("keys", with_(GOOD, "resources", {"cpu": 0}), "cpu 0 and gpu 0 ask Ray for nothing")
study_row("keys", with_(GOOD, "resources/cpu", 0.00001), "below Ray's resolution of 0.0001")
study_row("keys", with_(GOOD, "description", "d" * 200_000),
          "description has 200000 characters, more than 5000")
study_row("keys", with_(GOOD, "data/root", "/" + "r" * 5000),
          "data.root is too long (at most 4096 characters)")
study_row("keys", with_(GOOD, "max_concurrent", 0), "max_concurrent=0 must be >= 1")
study_row("keys", with_(GOOD, "max_failures", -1), "max_failures=-1 must lie in")
study_row("keys", with_(SEARCH, "grid", {"train.lr": [0.1]}), "use either 'grid' or 'search'")
study_row("keys", with_(GOOD, "grid", {"train.lr": []}), "grid.train.lr: expected a non-empty")
study_row("keys", with_(GOOD, "grid", {"model.width": [1, 2]}), "grid over an unknown key")
study_row("keys", with_(GOOD, "grid", {"loss.margin": [1, 2]}),
          "no loss in 'losses' has a hyperparameter 'margin'")
study_row("keys", with_(GOOD, "grid", {"seed": [1, 2]}), "top-level 'seeds' list")
study_row("keys", with_(GOOD, "grid", {"loss.name": ["pod"]}), "top-level 'losses' list")
study_row("keys", with_(GOOD, "grid", {"model.dropout": {"around_k_minus_1": [1]}}),
          "applies to model.feature_dim only")
study_row("keys", with_(GOOD, "grid", {"model.feature_dim": {"around_k_minus_1": [-1]}}),
          "factors must be finite numbers > 0")
study_row("keys", with_(GOOD, "grid", {"train.lr": [0.1, float("inf")]}),
          "inf is not a finite number")
study_row("keys", with_(GOOD, "grid", {"model.feature_dim": [8, 16, 8]}),
          "grid.model.feature_dim lists the value 8 twice")
study_row("keys", with_(GOOD, "grid", {"train.lr": [0.1, 0.1]}), "lists the value 0.1 twice")
study_row("keys", with_(GOOD, "grid", {"model.feature_dim": {"around_k_minus_1": [1, 2, 1]}}),
          "grid.model.feature_dim lists the factor 1 twice")
study_row("keys", with_(GOOD, "grid", {"train.lr": [1e-4 * (i + 1) for i in range(2000)],
                                       "train.momentum": [i / 200 for i in range(100)]},
                        "seeds", [0, 1, 2, 3, 4]),
          "asks for 1,000,000 trials (1 losses x 2000 train.lr x 100 train.momentum x 5 seeds), "
          "more than featloss runs in one study (100,000)")
study_row("keys", with_(GOOD, "grid", {"data.root": ["/" + "r" * 300, "/r"]}),
          "names its MLflow result metrics with")

# -- values ----------------------------------------------------------------------------------------
for path, value, needle in [
    ("train/lr", float("inf"), "train.lr=inf must be a finite number"),
    ("train/lr", float("nan"), "train.lr=nan must be a finite number"),
    ("train/lr", 0, "train.lr=0 must lie in (0, 1e+06]"),
    ("train/lr", -0.1, "train.lr=-0.1 must lie in"),
    ("train/lr", 1e7, "train.lr=10000000.0 must lie in"),
    ("train/lr", "fast", "train.lr must be a number, got 'fast'"),
    ("train/weight_decay", float("inf"), "train.weight_decay=inf must be a finite number"),
    ("train/momentum", 1.0, "train.momentum=1.0 must lie in [0, 1)"),
    ("train/epochs", 0, "train.epochs=0 must lie in [1, 100000]"),
    ("train/epochs", 10**9, "train.epochs=1000000000 must lie in"),
    ("train/epochs", 2.5, "train.epochs must be an integer, got 2.5"),
    ("train/epochs", True, "train.epochs must be an integer, got True"),
    ("train/batch_size", 1, "train.batch_size=1 must lie in [2, 1000000]"),
    ("train/batch_size", 10**9, "train.batch_size=1000000000 must lie in"),
    ("model/feature_dim", 0, "model.feature_dim=0 must lie in [1, 65536]"),
    ("model/feature_dim", 1e9, "model.feature_dim must be an integer, got 1000000000.0"),
    ("model/feature_dim", 10**12, "model.feature_dim=1000000000000 must lie in"),
    ("model/dropout", 1.0, "model.dropout=1.0 must lie in [0, 1)"),
    ("data/val_fraction", 0, "data.val_fraction=0 must lie in (0, 1)"),
    ("data/val_fraction", 1.5, "data.val_fraction=1.5 must lie in (0, 1)"),
    ("data/classes", 1, "data.classes=1 must lie in [2, 1000000]"),
    ("data/classes", 20, "data.classes=20 but dataset 'digits' has only 10 classes"),
    ("data/dataset", "imagenet21k", "unknown dataset 'imagenet21k'"),
    ("model/backbone", "vit", "unknown backbone 'vit'"),
    ("train/device", "cuda:abc", "train.device='cuda:abc' must be auto, cpu, cuda or cuda:N"),
    ("train/device", "tpu", "train.device='tpu' must be auto"),
    ("train/device", "cuda", "train.device=cuda but resources.gpu is 0"),
    ("data/sampler", "stratified", "data.sampler='stratified' is not one of"),
    ("train/optimizer", "lion", "train.optimizer='lion' is not one of"),
    ("train/schedule", "linear", "train.schedule='linear' is not one of"),
    ("train/lr_milestones", [1.5], "must be fractions of the epochs in (0, 1)"),
    ("train/precision", "fp8", "train.precision='fp8' is not one of"),
    ("data/split_seed", 2**40, "data.split_seed=1099511627776 must lie in"),
    ("data/image_size", 2, "data.image_size=2 must lie in [4, 4096]"),
    ("data/max_train_samples", 0, "data.max_train_samples=0 must be >= 1"),
]:
    study_row("values", with_(GOOD, path, value), needle)
study_row("values", with_(GOOD, "losses", ["pod"], "per_loss", {"pod": {"loss": {"lam": -1}}}),
          "loss 'pod': lam=-1 is invalid")
study_row("values", with_(GOOD, "losses", ["pod"], "per_loss",
                          {"pod": {"loss": {"lambda": 1}}}),
          "loss 'pod': unknown hyperparameter 'lambda'")
study_row("values", with_(GOOD, "losses", ["sigma2r"], "per_loss",
                          {"sigma2r": {"data": {"sampler": "random"}}}),
          "data.sampler=random cannot give loss 'sigma2r'")
study_row("values", with_(GOOD, "losses", ["sigma2r"], "per_loss",
                          {"sigma2r": {"data": {"sampler": "balanced"},
                                       "train": {"batch_size": 20}}}),
          "train.batch_size=20 gives 2 samples per class")

# -- searches --------------------------------------------------------------------------------------
for path, value, needle in [
    ("search/trials_per_loss", 0, "search.trials_per_loss=0 must lie in"),
    ("search/metric", 5, "search.metric must be a string, got 5"),
    ("search/metric", "test/accuracy", "never a test metric"),
    ("search/mode", "maximise", "search.mode='maximise' is not one of"),
    ("search/sampler", "cmaes", "search.sampler='cmaes' is not one of"),
    ("search/scheduler", "hyperband", "search.scheduler='hyperband' is not one of"),
    ("search/common", ["train.momentum"], "'train.momentum' is not in"),
    ("search/epochs", 0, "search.epochs=0 must lie in"),
    ("search/seed", -3, "search.seed=-3 must lie in"),
    ("search/space", {"arcface": {}}, "search.space.arcface: unknown loss 'arcface'"),
    ("search/trials_per_loss", 60_000, "asks for 120,002 trials"),
    ("search/metric", "val/" + "m" * 300, "search.metric is too long (at most 250"),
    ("search/space", {"pod": {"loss.lam": {"type": "gaussian"}}}, "type='gaussian' is not one"),
    ("search/space", {"pod": {"loss.lam": {"type": "float", "low": 2, "high": 1}}},
     "low=2 must be < high=1"),
    ("search/space", {"pod": {"loss.lam": {"type": "float", "low": 0, "high": 1, "log": True}}},
     "a log distribution needs low > 0"),
    ("search/space", {"pod": {"loss.lam": {"type": "float", "low": 0.1, "high": 1, "log": True,
                                           "step": 0.1}}}, "step and log cannot be combined"),
    ("search/space", {"pod": {"loss.lam": {"type": "categorical", "choices": []}}},
     "a categorical needs a non-empty 'choices' list"),
    ("search/space", {"pod": {"model.feature_dim": {"type": "int", "low": 1.5, "high": 4}}},
     "an int distribution needs integer low, high and step"),
    ("search/space", {"pod": {"loss.alpha": {"type": "float", "low": 0, "high": 1}}},
     "has 'loss.alpha', which is not a hyperparameter of pod"),
    ("search/space", {"pod": {"loss.lam": {"type": "float", "low": 0, "high": float("inf")}}},
     "low and high must be finite numbers"),
]:
    study_row("search", with_(SEARCH, path, value), needle)
study_row("search", with_(SEARCH, "search/sampler", "grid", "search/common", ["train.lr"]),
          "search.sampler=grid needs a finite set of values")
row("search", lambda c: ["validate", c.study(with_(SEARCH, "search/sampler", "grid",
                                                   "search/common", ["train.lr"]))],
    "search.sampler=grid needs a finite set of values")

# -- options, stores and paths ---------------------------------------------------------------------
row("options", lambda c: c.run(GOOD, "--set", "train.lr"), "expected section.key=value")
row("options", lambda c: c.run(GOOD, "--set", "train.lrr=0.1"), "unknown key 'train.lrr'")
row("options", lambda c: c.run(GOOD, "--set", "train.epochs=many"),
    "train.epochs must be an integer, got 'many'")
row("options", lambda c: c.run(GOOD, "--set", "seeds=[-5]"), "seeds must lie in")
row("options", lambda c: c.run(GOOD, "--set", "_base_=other.yaml"),
    "--set _base_: _base_ cannot be set with --set; put it in the file")
row("options", lambda c: c.run(GOOD, "--set", "TRAIN.LR=0.1"),
    "unknown key 'TRAIN' (did you mean 'train'?")
row("options", lambda c: c.run(GOOD, "--set", "train.lr.value=0.1"),
    "cannot set 'train.lr.value': 'train.lr' is not a section")
row("options", lambda c: c.run(GOOD, "--max-concurrent", "0"), "--max-concurrent 0: must be >= 1")
row("options", lambda c: c.run(GOOD, "--max-concurrent", "two"), "invalid int value: 'two'")
row("options", lambda c: c.run(GOOD, "--wait-for-nodes", "-5"), "--wait-for-nodes -5: must be between 0")
row("options", lambda c: c.run(GOOD, "--wait-for-nodes", "60"), "--wait-for-nodes needs --address")
row("options", lambda c: c.run(GOOD, "--frobnicate"), "unrecognized arguments: --frobnicate")
row("options", lambda c: ["frobnicate"], "invalid choice: 'frobnicate'")
row("options", lambda c: c.run(GOOD, "--address", "127.0.0.1:1"),
    "--address 127.0.0.1:1: cannot join the Ray cluster")
row("options", lambda c: c.run(GOOD, "--address", "nonsense"), "--address nonsense: expected")
row("options", lambda c: c.run(with_(GOOD, "resources/cpu", 512)),
    "resources.cpu=512 but this machine has")
row("options", lambda c: c.run(with_(GOOD, "resources/gpu", 1)),
    "resources.gpu=1 but this machine has 0 GPUs")
for label, uri, needle in [
    ("dir", lambda c: f"sqlite:///{c.folder}", "is a directory"),
    ("notdb", lambda c: c.study(text="not a database", name="x.db").join(["sqlite:///", ""]),
     "is not a SQLite database"),
    ("nofolder", lambda c: f"sqlite:///{c.folder / 'absent' / 'x.db'}",
     "does not exist or is not writable"),
    ("ftp", lambda c: "ftp://example/mlflow", "unsupported"),
    ("file", lambda c: f"file:{c.folder}/mlruns", "unsupported"),
    ("bare", lambda c: str(c.folder / "mlruns"), "unsupported"),
    ("badport", lambda c: "http://127.0.0.1:abc", "not a valid URL"),
    ("down", lambda c: "http://127.0.0.1:9", "is unreachable"),
    ("ipv6", lambda c: "http://[::1]:9", "is unreachable"),
    ("postgres", lambda c: "postgresql://u@127.0.0.1:1/db", "--tracking-uri postgresql://"),
]:
    row("stores", lambda c, uri=uri: ["run", c.study(GOOD), "--storage", str(c.storage),
                                      "--tracking-uri", uri(c)], needle)
row("stores", lambda c: ["run", c.study(GOOD), "--storage", "/proc/featloss",
                         "--tracking-uri", c.uri], "--storage /proc/featloss: cannot create")
row("stores", lambda c: ["run", c.study(GOOD), "--storage", c.study(GOOD, name="file.yaml"),
                         "--tracking-uri", c.uri], "cannot create")
row("stores", lambda c: ["run", c.study(GOOD), "--storage", "/proc/featloss"],  # default store
    "--storage /proc/featloss: cannot create")
row("stores", lambda c: ["report", "bad-inputs", "--tracking-uri", c.uri, "--out",
                         "/proc/x/report"], "--out /proc/x/report: cannot write there")
row("stores", lambda c: ["report", "no-such-study", "--tracking-uri", c.uri, "--out",
                         str(c.folder / "rep")], "no MLflow experiment named 'no-such-study'")
row("stores", lambda c: ["report", "x", "--tracking-uri", f"sqlite:///{c.folder}/absent.db",
                         "--out", str(c.folder / "rep")], "no MLflow database at")
row("stores", lambda c: ["report", "x", "--tracking-uri", "http://127.0.0.1:9", "--out",
                         str(c.folder / "rep")], "is unreachable")


def _env_row(name: str, value: str, needle: str) -> None:
    def make(c: Ctx) -> list[str]:
        c.env[name] = value
        return c.run(GOOD)

    row("options", make, needle)


_env_row("FEATLOSS_MLFLOW_RETRY_SECONDS", "abc", "FEATLOSS_MLFLOW_RETRY_SECONDS='abc' must be")
_env_row("FEATLOSS_MLFLOW_RETRY_SECONDS", "-1", "must be a number of seconds >= 0")
_env_row("FEATLOSS_PROGRESS_SECONDS", "soon", "FEATLOSS_PROGRESS_SECONDS='soon' must be")


# -- train -----------------------------------------------------------------------------------------
def _state(c: Ctx, content: bytes) -> str:
    path = c.folder / "state.pt"
    path.write_bytes(content)
    return str(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/featloss-pwned",))


def _malicious(c: Ctx) -> str:
    import pickle

    return _state(c, pickle.dumps(_Payload()))


def _other_config_state(c: Ctx) -> str:
    import torch

    from featloss.config import Config

    path = c.folder / "other.pt"
    torch.save({"epoch": 1, "config": Config.from_dict({"seed": 5}).to_dict()}, path)
    return str(path)


row("train", lambda c: TRAIN + ["--resume", _state(c, b"not a checkpoint")],
    "not a featloss training state (UnpicklingError")
row("train", lambda c: TRAIN + ["--resume", _malicious(c)], "not a featloss training state")
row("train", lambda c: TRAIN + ["--resume", str(c.folder / "absent.pt")], "no such file")
row("train", lambda c: TRAIN + ["--resume", _other_config_state(c)],
    "saved for another config")
row("train", lambda c: TRAIN + ["--save-state", "/proc/x/state.pt"],
    "--save-state /proc/x/state.pt: folder /proc/x does not exist")
row("train", lambda c: TRAIN + ["--set", "train.lrr=1"], "unknown key 'train.lrr'")
row("train", lambda c: TRAIN + ["--device", "cuda:abc"], "must be auto, cpu, cuda or cuda:N")
row("train", lambda c: TRAIN + ["--feature-dim", "0"], "model.feature_dim=0 must lie in")
row("train", lambda c: ["train", "--dataset", "cifar10", "--backbone", "small_cnn", "--loss",
                        "softmax", "--set", f"data.root={c.folder / 'nodata'}"],
    "dataset 'cifar10' not found under")
row("train", lambda c: ["train", "--config", str(c.folder / "absent.yaml")], "no such file")
row("train", lambda c: TRAIN + ["--loss", "sigma2r", "--set", "data.sampler=random"],
    "cannot give loss 'sigma2r'")


# -- resume ----------------------------------------------------------------------------------------
def _results(c: Ctx, state: bytes | None) -> str:
    folder = c.folder / "old-results" / "s-1"
    folder.mkdir(parents=True)
    if state is not None:
        (folder / "featloss_state.json").write_bytes(state)
    return str(folder)


row("resume", lambda c: ["resume", _results(c, b'{"version": 2, "study": "s", "sou')],
    "featloss_state.json is corrupt")
row("resume", lambda c: ["resume", _results(c, b"")], "is corrupt (empty)")
row("resume", lambda c: ["resume", _results(c, b'{"hello": 1}')], "is corrupt")
row("resume", lambda c: ["resume", _results(c, None)], "is not a featloss results folder")
row("resume", lambda c: ["resume", str(c.folder / "nowhere")], "no such results folder")
row("resume", lambda c: ["resume", c.study(GOOD), "--storage", str(c.folder / "empty")],
    "no unfinished results of study 'bad-inputs'")
row("resume", lambda c: ["resume", str(c.folder / "nowhere"), "--set", "train.epochs=4"],
    "--set train.epochs=4: a resume continues the recorded plan, so --set may change only "
    "description, resources, max_concurrent, max_failures; a different plan is a new study: "
    "featloss run STUDY.yaml --set train.epochs=4")


@pytest.fixture(scope="module")
def store(tmp_path_factory, mlflow_template):
    import shutil

    folder = tmp_path_factory.mktemp("bad_inputs_store")
    shutil.copy(mlflow_template, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}", folder / "mlflow.db"


def counts(db: Path) -> tuple[int, int]:
    with sqlite3.connect(db) as con:
        return (con.execute("select count(*) from runs").fetchone()[0],
                con.execute("select count(*) from experiments").fetchone()[0])


@pytest.mark.parametrize("kind,make,needle", ROWS,
                         ids=[f"{k}-{i:03d}" for i, (k, _, _) in enumerate(ROWS)])
def test_bad_input_is_one_line_exit_2_and_nothing_started(kind, make, needle, store, tmp_path,
                                                          monkeypatch, capsys):
    from featloss.cli import main

    uri, db = store
    monkeypatch.chdir(tmp_path)
    for name in ("FEATLOSS_MLFLOW_RETRY_SECONDS", "FEATLOSS_PROGRESS_SECONDS", "RAY_ADDRESS",
                 "MLFLOW_TRACKING_URI", "FEATLOSS_STORAGE"):
        monkeypatch.delenv(name, raising=False)
    ctx = Ctx(tmp_path, uri)
    argv = make(ctx)
    for name, value in ctx.env.items():  # undone at teardown, so no row leaks into later tests
        monkeypatch.setenv(name, value)
    before = counts(db)
    rc = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (argv, out[-2000:], err[-2000:])
    assert len(lines) == 1 and lines[0].startswith("featloss: error:"), err[-3000:]
    assert needle in lines[0], lines[0]
    assert len(lines[0]) < 1200
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert counts(db) == before  # no run or experiment created
    assert not ctx.storage.exists() or not any(ctx.storage.iterdir())
    assert not (tmp_path / "featloss_results").exists()
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlflow.db.lock").exists()
    assert not (tmp_path / "featloss_report").exists() and not (tmp_path / "rep").exists()
    assert not Path("/tmp/featloss-pwned").exists()


def test_the_table_covers_every_kind_with_over_100_rows():
    kinds = {}
    for kind, _, _ in ROWS:
        kinds[kind] = kinds.get(kind, 0) + 1
    assert len(ROWS) >= 100, len(ROWS)
    assert set(kinds) == {"file", "keys", "values", "search", "options", "stores", "train",
                          "resume"}
