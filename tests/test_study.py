"""Study files: strict validation (file + key path in every error) and expansion counts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

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
