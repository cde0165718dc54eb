"""Study files: strict validation (file + key path in every error) and expansion counts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from conftest import tiny_study
from featloss.errors import ConfigError
from featloss.losses import list_losses, loss_info
from featloss.plan import expand, shrink_for_smoke
from featloss.spaces import load_space_file
from featloss.study import load_study, parse_study
from featloss.yamlio import dump_yaml

REPO = Path(__file__).resolve().parents[1]
GRID = {
    "name": "t", "data": {"dataset": "digits"}, "model": {"backbone": "small_cnn"},
    "train": {"epochs": 1}, "losses": ["softmax", "pod", "wsoftmax"],
    "grid": {"model.feature_dim": {"around_k_minus_1": [0.25, 0.5, 1, 2]},
             "loss.alpha": [0.5, 1.5]},
    "seeds": [0, 1, 2],
}
SEARCH = {
    "name": "s", "data": {"dataset": "digits"}, "train": {"epochs": 2},
    "losses": ["softmax", "pod", "amsoftmax"], "seeds": [0, 1],
    "search": {"trials_per_loss": 4, "common": ["train.lr"]},
}


def plan_of(raw, smoke=False, source="study.yaml"):
    return expand(parse_study(copy.deepcopy(raw), source=source), smoke=smoke)


def test_grid_expansion_counts_and_skipped_cells():
    plan = plan_of(GRID)
    # k = 10: dims 2, 4, 9, 18. softmax 4 cells; pod simplex needs d >= 9: 2 runnable + 2 skipped;
    # wsoftmax 4 dims x 2 alphas (loss.alpha applies to wsoftmax only)
    counts = {loss: sum(t.loss == loss for t in plan.grid_trials) for loss in GRID["losses"]}
    assert counts == {"softmax": 4 * 3, "pod": 2 * 3, "wsoftmax": 8 * 3}
    assert plan.resolved_grid()["model.feature_dim"] == [2, 4, 9, 18]
    assert sorted(s.cell["model.feature_dim"] for s in plan.skipped) == [2, 4]
    assert all(s.loss == "pod" and "simplex" in s.reason for s in plan.skipped)
    keys = [t.key for t in plan.grid_trials]
    assert len(keys) == len(set(keys))
    trial = next(t for t in plan.grid_trials if t.loss == "wsoftmax")
    assert trial.config.loss.hparams["alpha"] in (0.5, 1.5) and "alpha" not in next(
        t for t in plan.grid_trials if t.loss == "softmax").config.loss.hparams
    text = "\n".join(plan.summary_lines())
    assert "skipped cells: 2" in text and "pod" in text


def test_factors_rounding_to_the_same_dimension_are_one_cell():
    raw = copy.deepcopy(GRID)
    raw["data"]["classes"] = 3  # k-1 = 2: 0.25 and 0.5 both give 1
    raw["losses"] = ["softmax"]
    raw["grid"] = {"model.feature_dim": {"around_k_minus_1": [0.25, 0.5, 1]}}
    assert [t.params["model.feature_dim"] for t in plan_of(raw).grid_trials][::3] == [1, 2]


def test_around_k_minus_1_follows_a_class_grid():
    raw = {"name": "k", "data": {"dataset": "digits"}, "losses": ["softmax"],
           "grid": {"data.classes": [5, 10], "model.feature_dim": {"around_k_minus_1": [1, 2]}}}
    trials = plan_of(raw).grid_trials
    cells = {(t.params["data.classes"], t.params["model.feature_dim"]) for t in trials}
    assert cells == {(5, 4), (5, 8), (10, 9), (10, 18)}


def test_search_expansion_counts():
    plan = plan_of(SEARCH)
    assert [(s.loss, s.trials) for s in plan.searches] == [("softmax", 4), ("pod", 4),
                                                           ("amsoftmax", 4)]
    assert set(plan.searches[0].space) == {"train.lr"}
    assert set(plan.searches[1].space) == {"train.lr", "loss.lam", "model.feature_dim"}
    assert plan.total_trials == 12 + 3 * 2
    assert all(s.base["train"]["eval_test"] is False for s in plan.searches)
    assert plan.searches[2].start == {"train.lr": 0.1, "loss.scale": 30.0, "loss.margin": 0.35}


def test_inline_space_overrides_and_removes_keys():
    raw = copy.deepcopy(SEARCH)
    raw["search"]["space"] = {"pod": {"loss.lam": {"type": "float", "low": 0.1, "high": 1.0},
                                      "model.feature_dim": None}}
    pod = plan_of(raw).searches[1]
    assert set(pod.space) == {"train.lr", "loss.lam"} and pod.space["loss.lam"].high == 1.0


def test_smoke_shrinks_everything():
    plan = plan_of(GRID, smoke=True)
    assert {t.seed for t in plan.grid_trials} == {0}
    assert plan.resolved_grid()["model.feature_dim"] == [2, 18]
    config = plan.grid_trials[0].config
    assert config.train.epochs == 1 and config.data.max_train_samples == 512
    search = plan_of(SEARCH, smoke=True)
    assert all(s.trials == 2 for s in search.searches)
    assert shrink_for_smoke(parse_study(copy.deepcopy(SEARCH))).seeds == [0]


def bad(**changes):
    raw = copy.deepcopy(GRID)
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


@pytest.mark.parametrize("raw,message", [
    (bad(optimiser={"lr": 1}), "study.yaml: unknown key 'optimiser'"),
    (bad(train={"lr_rate": 1}), "study.yaml: unknown key 'train.lr_rate'"),
    (bad(losses=["softmax", "arcface"]), "study.yaml: losses[1]: unknown loss 'arcface'"),
    (bad(losses=[]), "losses must not be empty"),
    (bad(losses=None), "missing key 'losses'"),
    (bad(data={"dataset": "imagenet21k"}), "unknown dataset 'imagenet21k'"),
    (bad(model={"backbone": "vit"}), "unknown backbone 'vit'"),
    (bad(seeds=[0, 1.5]), "seeds[1] must be an integer, got 1.5"),
    (bad(seeds="0"), "seeds must be a list"),
    (bad(seeds=[-1]), "seeds must lie in [0, 4294967295], got -1"),
    (bad(seeds=[2**40]), "seeds must lie in"),
    (bad(grid={"model.width": [1, 2]}), "grid.model.width: grid over an unknown key"),
    (bad(grid={"loss.margin": [1, 2]}), "no loss in 'losses' has a hyperparameter 'margin'"),
    (bad(grid={"model.dropout": []}), "grid.model.dropout: expected a non-empty list"),
    (bad(grid={"model.dropout": {"around_k_minus_1": [1]}}), "applies to model.feature_dim only"),
    (bad(losses=["sigma2r"], grid={}, per_loss={"sigma2r": {"data": {"sampler": "random"}}}),
     "cannot give loss 'sigma2r'"),
    (bad(name=""), "name must not be empty"),
    (bad(name="a\nb"), "name='a\\nb' must be one line of text"),
    (bad(name="x" * 300), "name is too long (at most 200 characters)"),
])
def test_bad_grid_studies(raw, message):
    with pytest.raises(ConfigError, match=_escape(message)):
        plan_of(raw)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def search_with(space: dict, loss: str = "pod") -> dict:
    raw = copy.deepcopy(SEARCH)
    raw["search"]["space"] = {loss: space}
    return raw


@pytest.mark.parametrize("raw,message", [
    (search_with({"loss.lam": {"type": "float", "low": 1.0, "high": 1.0}}),
     "search.space.pod.loss.lam: low=1 must be < high=1"),
    (search_with({"loss.lam": {"type": "float", "low": 2, "high": 1}}), "low=2 must be < high=1"),
    (search_with({"loss.lam": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}),
     "a log distribution needs low > 0"),
    (search_with({"loss.lam": {"type": "gaussian", "low": 0, "high": 1}}),
     "type='gaussian' is not one of 'float', 'int', 'categorical'"),
    (search_with({"loss.alpha": {"type": "float", "low": 0, "high": 1}}),
     "has 'loss.alpha', which is not a hyperparameter of pod"),
    (search_with({"loss.lam": {"type": "categorical", "choices": []}}),
     "categorical needs a non-empty 'choices' list"),
    ({**SEARCH, "search": {"trials_per_loss": 0}}, "search.trials_per_loss=0 must lie in [1, "),
    ({**SEARCH, "search": {"metric": "test/accuracy"}}, "never a test metric"),
    ({**SEARCH, "search": {"metric": 5}}, "search.metric must be a string, got 5"),
    ({**SEARCH, "search": {"sampler": "cmaes"}},
     "search.sampler='cmaes' is not one of 'tpe', 'random', 'grid'"),
    ({**SEARCH, "search": {"sampler": "grid"}}, "search.sampler=grid needs a finite set of values"),
    ({**SEARCH, "search": {"common": ["train.momentum"]}}, "'train.momentum' is not in"),
    ({**SEARCH, "search": {"budget": 3}}, "unknown key 'search.budget'"),
])
def test_bad_search_studies(raw, message):
    with pytest.raises(ConfigError, match=_escape(message)):
        plan_of(raw)


def test_missing_search_space_file(tmp_path):
    spaces = tmp_path / "search_spaces"
    spaces.mkdir()
    (spaces / "softmax.yaml").write_text("{}\n")
    (spaces / "_common.yaml").write_text((REPO / "search_spaces" / "_common.yaml").read_text())
    studies = tmp_path / "studies"
    studies.mkdir()
    path = studies / "s.yaml"
    path.write_text(dump_yaml(SEARCH))
    with pytest.raises(ConfigError, match=r"missing search-space file .*pod\.yaml"):
        expand(load_study(path))


def test_bad_yaml_and_missing_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_study(path)
    with pytest.raises(ConfigError, match="no such study file"):
        load_study(tmp_path / "absent.yaml")


@pytest.mark.parametrize("key", list_losses())
def test_search_space_file_matches_the_loss_constructor(key):
    space = load_space_file(REPO / "search_spaces" / f"{key}.yaml", k_minus_1=9)
    hparams = {h.name for h in loss_info(key).hparams}
    for name in space:
        section, _, arg = name.partition(".")
        assert section in ("loss", "model", "train", "data"), name
        if section == "loss":
            assert arg in hparams, f"{key}.yaml searches {name}, not an argument of {key}"
    if hparams:
        assert any(n.startswith("loss.") for n in space), f"{key} has hparams but no space"


def test_common_space_parses():
    common = load_space_file(REPO / "search_spaces" / "_common.yaml", k_minus_1=9)
    assert {"train.lr", "train.weight_decay", "model.feature_dim"} <= set(common)


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_validate(path):
    plan = expand(load_study(path))
    assert plan.total_trials > 0


def test_base_files_compose_and_set_wins(tmp_path):
    """`_base_` chains deep-merge mappings (the file over its base), lists are replaced whole,
    paths resolve relative to the including file, and --set is applied last."""
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "root.yaml").write_text(
        "data: {dataset: digits, max_train_samples: 400}\n"
        "model: {backbone: small_cnn, feature_dim: 16, dropout: 0.1}\n"
        "train: {epochs: 3, batch_size: 64, lr: 0.05}\nlosses: [softmax, center]\nseeds: [0]\n")
    (tmp_path / "common" / "mid.yaml").write_text(
        "_base_: root.yaml\nmodel: {feature_dim: 32}\nseeds: [0, 1, 2]\n")
    (tmp_path / "study.yaml").write_text(
        "_base_: common/mid.yaml\nname: composed\ntrain: {lr: 0.01}\nlosses: [pod]\n")
    study = load_study(tmp_path / "study.yaml", {"train.epochs": 7})
    assert study.name == "composed"
    assert study.model.feature_dim == 32 and study.model.dropout == 0.1  # merged, not replaced
    assert (study.train.lr, study.train.batch_size, study.train.epochs) == (0.01, 64, 7)
    assert study.losses == ["pod"] and study.seeds == [0, 1, 2]  # lists replaced whole
    assert study.data.max_train_samples == 400
    assert "_base_" not in study.raw


def test_base_cycle_is_one_error(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\nlosses: [softmax]\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_study(tmp_path / "a.yaml")


# -- --set: dotted keys, _base_, resume ------------------------------------------------------------

SWEEP = REPO / "studies" / "feature_dim_sweep_mnist5k.yaml"
QUICKSTART = REPO / "studies" / "quickstart.yaml"


def test_set_reaches_grid_and_search_space_keys_that_contain_dots(tmp_path):
    study = load_study(SWEEP, {"grid.model.feature_dim": [2, 4]})
    assert study.grid == {"model.feature_dim": [2, 4]}
    # an existing dotted key is matched first, then the parts below it
    study = load_study(SWEEP, {"grid.model.feature_dim.around_k_minus_1": [1, 2]})
    assert study.grid["model.feature_dim"].around_k_minus_1 == [1.0, 2.0]
    # a new key under grid (or under search.space.<loss>) is the rest of the path
    study = load_study(SWEEP, {"grid.train.lr": [0.01, 0.1]})
    assert set(study.grid) == {"model.feature_dim", "train.lr"}
    lam = {"type": "float", "low": 0, "high": 1}
    study = load_study(QUICKSTART, {"search.space.pod.loss.lam": lam})
    assert set(study.search.space["pod"]) == {"model.feature_dim", "loss.lam"}
    path = tmp_path / "s.yaml"
    path.write_text(dump_yaml({**SEARCH, "search": {"trials_per_loss": 2}}))
    study = load_study(path, {"search.space.pod.loss.lam": lam, "search.space.pod.train.lr": None})
    assert study.search.space["pod"]["loss.lam"].high == 1 and study.search.space["pod"]["train.lr"] is None
    assert expand(study).searches[1].space["loss.lam"].high == 1.0


def test_set_path_prefers_the_longest_existing_key():
    from featloss.config import set_path

    raw = {"a": {"b.c": {"d": 1}, "b": {"c": {"d": 2}}}}
    set_path(raw, "a.b.c.d", 3, "--set")
    assert raw == {"a": {"b.c": {"d": 3}, "b": {"c": {"d": 2}}}}
    set_path(raw, "x.y.z", 1, "--set", (("x",),))
    assert raw["x"] == {"y.z": 1}
    set_path(raw, "s.space.pod.loss.lam", 1, "--set", (("s", "space", "*"),))
    assert raw["s"] == {"space": {"pod": {"loss.lam": 1}}}


@pytest.mark.parametrize("key,value,message", [
    ("_base_", "other.yaml", "--set _base_: _base_ cannot be set with --set; put it in the file"),
    ("TRAIN.LR", 0.1, "unknown key 'TRAIN' (did you mean 'train'? known keys: _base_, name,"),
    ("train.LR", 0.1, "unknown key 'train.LR' (did you mean 'train.lr'? known keys: "),
    ("base", "x.yaml", "unknown key 'base' (did you mean '_base_'? known keys: _base_, name,"),
])
def test_set_errors_name_the_key_as_given(key, value, message):
    with pytest.raises(ConfigError, match=_escape(message)):
        expand(load_study(SWEEP, {key: value}))


def test_unknown_key_lists_the_keys_a_file_writes():
    with pytest.raises(ConfigError) as info:
        parse_study({**GRID, "bogus": 1})
    known = str(info.value).split("known keys: ")[1]
    assert known.startswith("_base_, name, description,") and " base," not in known


# -- narrowing a study to fewer losses -------------------------------------------------------------

def test_per_loss_and_search_space_of_unlisted_losses_are_ignored_with_one_note(tmp_path, capsys):
    from featloss.cli import main

    plan = expand(load_study(QUICKSTART, {"losses": ["softmax"]}))
    assert [s.loss for s in plan.searches] == ["softmax"] and plan.study.per_loss == {}
    notes = [n for n in plan.notes if "ignored" in n]
    assert notes == ["per_loss.lsoftmax, search.space.pod ignored: their losses are not in "
                     "'losses' (softmax)"]
    (tmp_path / "narrow.yaml").write_text(f"_base_: {QUICKSTART}\nlosses: [softmax, center]\n")
    assert main(["validate", str(tmp_path / "narrow.yaml")]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "ignored" in line] == [
        "note: per_loss.lsoftmax, search.space.pod ignored: their losses are not in 'losses' "
        "(softmax, center)"]
    assert load_study(QUICKSTART, {"per_loss": None}).per_loss == {}
    # typo protection stays: a name that is no loss at all is an error naming the known losses
    with pytest.raises(ConfigError, match=r"per_loss\.lsoftmx: unknown loss 'lsoftmx' \(known: "):
        load_study(QUICKSTART, {"per_loss.lsoftmx": {}})


# -- caps: what MLflow and Ray accept, trial counts ------------------------------------------------

def test_caps_keep_values_inside_mlflow_limits():
    from mlflow.utils import validation

    from featloss.study import MAX_DESCRIPTION_CHARS, MAX_METRIC_NAME_CHARS, MAX_NAME_CHARS

    # the description is the experiment's note (hard limit) and starts the parent run's note
    # (a run tag: MLflow cuts it, or refuses it with MLFLOW_TRUNCATE_LONG_VALUES=false)
    assert MAX_DESCRIPTION_CHARS < validation.MAX_TAG_VAL_LENGTH
    assert MAX_DESCRIPTION_CHARS < validation.MAX_EXPERIMENT_TAG_VAL_LENGTH
    assert MAX_METRIC_NAME_CHARS == validation.MAX_ENTITY_KEY_LENGTH
    assert MAX_NAME_CHARS + len(" (smoke)") <= 250  # runs.name is VARCHAR(250)
    assert MAX_NAME_CHARS <= validation.MAX_EXPERIMENT_NAME_LENGTH
    parse_study({**GRID, "description": "d" * MAX_DESCRIPTION_CHARS})
    with pytest.raises(ConfigError, match="description has 5001 characters, more than 5000"):
        parse_study({**GRID, "description": "d" * (MAX_DESCRIPTION_CHARS + 1)})


def test_the_printed_plan_shows_a_preview_of_a_long_description():
    plan = plan_of({**GRID, "description": "word " * 900})
    line = plan.summary_lines()[1]
    assert len(line) <= 203 and line.endswith("…")


def test_result_metric_suffix_is_the_longest_the_report_writes():
    from featloss.plan import LONGEST_RESULT_SUFFIX
    from featloss.results import RESULT_METRICS, RESULT_STATS

    suffixes = [f"{m.replace('/', '_')}_{s}" for m in RESULT_METRICS for s in RESULT_STATS]
    assert LONGEST_RESULT_SUFFIX == max(suffixes, key=len)


@pytest.mark.parametrize("resources,ok", [
    ({"cpu": 0, "gpu": 0}, False), ({"cpu": 0}, False), ({"cpu": 0, "gpu": 0.25}, True),
    ({"cpu": 0.5}, True), ({"cpu": 0.00001}, False), ({"gpu": 0.00001, "cpu": 0}, False),
])
def test_resources_ask_ray_for_something(resources, ok):
    raw = {**GRID, "resources": resources}
    if ok:
        parse_study(raw)
    else:
        with pytest.raises(ConfigError, match="resources"):
            parse_study(raw)


def test_the_trial_count_is_known_before_expanding():
    from featloss.plan import MAX_TRIALS, planned_trials

    study = parse_study(copy.deepcopy(GRID))
    # loss.alpha applies to wsoftmax only: softmax 4 dims, pod 4, wsoftmax 4 x 2; 3 seeds each
    assert planned_trials(study)[0] == (4 + 4 + 8) * 3
    assert planned_trials(parse_study(copy.deepcopy(SEARCH)))[0] == 3 * 4 + 3 * 2
    huge = {**GRID, "grid": {"train.lr": [1e-5 * (i + 1) for i in range(2000)],
                             "train.momentum": [i / 100 for i in range(100)]}, "seeds": [0, 1, 2, 3, 4]}
    assert planned_trials(parse_study(huge))[0] == 3_000_000 > MAX_TRIALS
    import time

    start = time.process_time()
    with pytest.raises(ConfigError, match=r"asks for 3,000,000 trials \(3 losses x 2000 train.lr "
                                          r"x 100 train.momentum x 5 seeds\), more than featloss "
                                          r"runs in one study \(100,000\)"):
        plan_of(huge)
    assert time.process_time() - start < 1.0


def test_ten_thousand_cells_expand_fast():
    import time

    raw = {"name": "big", "data": {"dataset": "digits"}, "losses": ["softmax", "pod"],
           "grid": {"train.lr": [1e-3 * (i + 1) for i in range(100)],
                    "train.weight_decay": [1e-5 * i for i in range(50)]}, "seeds": [0, 1]}
    plan_of({**raw, "grid": {"train.lr": [0.1]}})  # imports and caches warm
    start = time.process_time()
    plan = plan_of(raw)
    seconds = time.process_time() - start
    assert seconds < 2.0, seconds
    assert len(plan.grid_trials) == 20_000 and len(plan.distinct_configs()) == 10_000
    first = plan.grid_trials[0]
    one = [t for t in plan.grid_trials if (t.loss, t.params) == (first.loss, first.params)]
    assert [t.seed for t in one] == [0, 1] and one[1].config.seed == 1 and one[0].config.seed == 0


@pytest.mark.parametrize("grid,message", [
    ({"model.feature_dim": [8, 8]}, "grid.model.feature_dim lists the value 8 twice"),
    ({"train.lr": [0.1, 0.05, 0.1]}, "grid.train.lr lists the value 0.1 twice"),
    ({"model.feature_dim": [8, 8.0]}, "lists the value 8 twice"),
    ({"train.lr_milestones": [[0.5], [0.5]]}, "lists the value [0.5] twice"),
    ({"model.feature_dim": {"around_k_minus_1": [0.5, 0.5]}}, "lists the factor 0.5 twice"),
])
def test_a_grid_value_given_twice_is_an_error(grid, message):
    with pytest.raises(ConfigError, match=_escape(message)):
        parse_study({**GRID, "grid": grid})


# -- resume --set: runtime keys only, applied and recorded -----------------------------------------

def test_resume_set_changes_runtime_keys_and_records_them(tmp_path, tracking_uri, monkeypatch,
                                                          capsys):
    from conftest import tiny_study

    from featloss import commands
    from featloss.cli import main
    from featloss.record import StudyRecord

    path = tmp_path / "s.yaml"
    path.write_text(dump_yaml(tiny_study("resumed", train={"epochs": 1})))
    plan = expand(load_study(path, {"train.epochs": 2}))
    record = StudyRecord.new(plan, tracking_uri, str(tmp_path / "results"), str(path),
                             {"train.epochs": 2})
    record.save()
    seen = []

    def execute(plan, record, address, args):
        seen.append((plan, record))
        record.save()
        return 0

    monkeypatch.setattr(commands, "_execute", execute)
    folder = record.results_dir
    assert main(["resume", folder, "--set", "max_concurrent=1", "--set", "resources.cpu=2",
                 "--set", "description=resumed on 2 CPUs"]) == 0
    study = seen[-1][0].study
    assert (study.max_concurrent, study.resources.cpu, study.train.epochs) == (1, 2.0, 2)
    assert study.description == "resumed on 2 CPUs"
    assert StudyRecord.load(folder).overrides == {
        "train.epochs": 2, "max_concurrent": 1, "resources.cpu": 2,
        "description": "resumed on 2 CPUs"}
    # the next resume keeps them, with the study file or without it
    assert main(["resume", folder]) == 0 and seen[-1][0].study.resources.cpu == 2.0
    path.unlink()
    assert main(["resume", folder]) == 0
    study = seen[-1][0].study
    assert (study.max_concurrent, study.resources.cpu, study.train.epochs) == (1, 2.0, 2)
    # anything else would change the plan: one line, nothing resumed, with or without
    # --accept-changes
    capsys.readouterr()
    for extra in ([], ["--accept-changes"]):
        assert main(["resume", folder, "--set", "train.epochs=4", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "a resume continues the recorded plan" in err[0]
        assert "featloss run STUDY.yaml --set train.epochs=4" in err[0]
    assert len(seen) == 3


def test_the_optuna_hint_says_how_to_get_the_dashboard(monkeypatch):
    import importlib.util

    from featloss.commands import optuna_hint

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "optuna_dashboard" else real(name, *a))
    assert optuna_hint("/r/optuna.journal") == (
        "pip install 'featloss[dashboard]', then optuna-dashboard /r/optuna.journal")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert optuna_hint("/r/optuna.journal") == "optuna-dashboard /r/optuna.journal"


def test_a_data_root_for_an_embedded_dataset_is_a_warning():
    from featloss.plan import expand
    from featloss.preflight import plan_warnings

    rooted = tiny_study("root", grid={"data.root": ["/data/a", "/data/b"]})
    lines = plan_warnings(expand(parse_study(rooted)))
    assert [line for line in lines if "data.root is ignored: dataset 'digits' is embedded" in line]
    assert not [line for line in plan_warnings(expand(parse_study(tiny_study("plain"))))
                if "data.root" in line]
