"""The study-file JSON Schema: shipped, valid for every shipped study, and in step with the parser."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
from conftest import DELETE, REPO, edited

from featloss.errors import ConfigError
from featloss.losses import list_losses, loss_info
from featloss.plan import check_config_key
from featloss.schema import schema_text, study_schema, varied_keys
from featloss.study import PerLoss, Study, parse_study
from featloss.yamlio import load_yaml

SHIPPED = REPO / "studies" / "study.schema.json"
STUDIES = sorted((REPO / "studies").glob("*.yaml"))
MINIMAL = {"name": "s", "losses": ["softmax"]}


@pytest.fixture(scope="module")
def validator():
    schema = study_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_shipped_schema_is_the_generated_one():
    assert SHIPPED.read_text() == schema_text(), \
        "regenerate it: featloss schema > studies/study.schema.json"


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_validates_and_points_editors_at_the_schema(path, validator):
    text = path.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=study.schema.json"
    errors = [e.message for e in validator.iter_errors(load_yaml(text))]
    assert not errors, errors


def model_keys(model) -> set[str]:
    return {f.alias or name for name, f in model.model_fields.items()}


def test_every_key_the_parser_accepts_is_in_the_schema_and_vice_versa():
    schema = study_schema()
    defs = schema["$defs"]
    assert set(schema["properties"]) == model_keys(Study)
    for name, definition in defs.items():
        if name.startswith("PerLoss_"):
            assert set(definition["properties"]) == model_keys(PerLoss)
            loss = name.removeprefix("PerLoss_")
            hparams = {h.name for h in loss_info(loss).hparams}
            assert set(definition["properties"]["loss"]["properties"]) == hparams
            continue
        model = _model_named(name)
        assert set(definition["properties"]) == model_keys(model), name
        assert definition["additionalProperties"] is False, name
        for key, prop in definition["properties"].items():
            assert prop.get("description"), f"{name}.{key} has no description"
    for key, prop in schema["properties"].items():
        assert prop.get("description") or "$ref" in prop, key
    per_loss = schema["properties"]["per_loss"]["anyOf"]
    assert set(per_loss[0]["properties"]) == set(list_losses()) and per_loss[1] == {"type": "null"}


def _model_named(name: str):
    import featloss.config as config
    import featloss.spaces as spaces
    import featloss.study as study

    for module in (config, spaces, study):
        if hasattr(module, name):
            return getattr(module, name)
    raise AssertionError(f"no model {name}")


def test_grid_keys_of_the_schema_are_the_keys_the_parser_accepts():
    everyone = parse_study({"name": "all", "losses": list_losses()})
    for key in varied_keys():
        check_config_key(everyone, key, "grid")  # raises for a key the parser rejects
    with pytest.raises(ConfigError):
        check_config_key(everyone, "model.width", "grid")
    assert "model.width" not in varied_keys()


@pytest.mark.parametrize("path,value", [
    (["epochs"], 3), (["data", "root_dir"], "x"), (["train", "learning_rate"], 0.1),
    (["search", "budget"], 3), (["per_loss", "pod", "loss", "lambda"], 1.0),
    (["per_loss", "arcface"], {}), (["resources", "tpu"], 1), (["grid", "model.width"], [1, 2]),
])
def test_an_unknown_key_is_rejected_by_both(path, value, validator):
    raw = copy.deepcopy({**MINIMAL, "losses": ["softmax", "pod"], "search": {}})
    if path[0] == "grid":
        del raw["search"]
    node = raw
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value
    assert list(validator.iter_errors(raw)), f"the schema accepts {path}"
    with pytest.raises(ConfigError):
        from featloss.plan import expand

        expand(parse_study(raw))


def test_featloss_schema_command_prints_it():
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "featloss", "schema"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and json.loads(proc.stdout)["title"] == "featloss study"


# -- every rule the schema can express agrees with featloss ----------------------------------------

BASE = {"name": "agree", "data": {"dataset": "digits"}, "model": {"feature_dim": 16},
        "train": {"epochs": 1}, "losses": ["softmax", "pod"]}
SEARCHING = {**BASE, "search": {"trials_per_loss": 2}}


def _with(base: dict, **changes) -> dict:
    return edited(base, {path.replace("__", "/"): value for path, value in changes.items()})


_DROP = DELETE
AGREEMENT = [  # (label, study, featloss and the schema both accept it)
    ("minimal", {"name": "m", "losses": ["softmax"]}, True),
    ("base", BASE, True),
    ("no name", _with(BASE, name=_DROP), False),
    ("no losses", _with(BASE, losses=_DROP), False),
    ("empty name", _with(BASE, name=""), False),
    ("blank name", _with(BASE, name="   "), False),
    ("two-line name", _with(BASE, name="a\nb"), False),
    ("tab in name", _with(BASE, name="a\tb"), False),
    ("long name", _with(BASE, name="n" * 201), False),
    ("name with spaces", _with(BASE, name="my study, v2"), True),
    ("description at the cap", _with(BASE, description="d" * 5000), True),
    ("description over the cap", _with(BASE, description="d" * 5001), False),
    ("losses empty", _with(BASE, losses=[]), False),
    ("losses twice", _with(BASE, losses=["softmax", "softmax"]), False),
    ("unknown loss", _with(BASE, losses=["arcface"]), False),
    ("seeds", _with(BASE, seeds=[0, 4294967295]), True),
    ("seed -1", _with(BASE, seeds=[-1]), False),
    ("seed 2^32", _with(BASE, seeds=[2**32]), False),
    ("seed twice", _with(BASE, seeds=[3, 3]), False),
    ("seeds empty", _with(BASE, seeds=[]), False),
    ("seed 0.5", _with(BASE, seeds=[0.5]), False),
    ("resources none", _with(BASE, resources={"cpu": 0, "gpu": 0}), False),
    ("resources cpu 0", _with(BASE, resources={"cpu": 0}), False),
    ("resources cpu 0.0 gpu 0.0", _with(BASE, resources={"cpu": 0.0, "gpu": 0.0}), False),
    ("resources gpu only", _with(BASE, resources={"cpu": 0, "gpu": 0.5}), True),
    ("resources gpu 1.5", _with(BASE, resources={"gpu": 1.5}), False),
    ("resources gpu 2", _with(BASE, resources={"gpu": 2}), True),
    ("resources cpu -1", _with(BASE, resources={"cpu": -1}), False),
    ("max_concurrent 0", _with(BASE, max_concurrent=0), False),
    ("max_failures 101", _with(BASE, max_failures=101), False),
    ("grid", _with(BASE, grid={"train.lr": [0.1, 0.05]}), True),
    ("grid empty list", _with(BASE, grid={"train.lr": []}), False),
    ("grid value twice", _with(BASE, grid={"model.feature_dim": [16, 16]}), False),
    ("grid 16 and 16.0", _with(BASE, grid={"model.feature_dim": [16, 16.0]}), False),
    ("grid true and false", _with(BASE, grid={"data.augment": [True, False]}), True),
    ("grid true twice", _with(BASE, grid={"data.augment": [True, True]}), False),
    ("grid unknown key", _with(BASE, grid={"model.width": [1]}), False),
    ("grid factors", _with(BASE, grid={"model.feature_dim": {"around_k_minus_1": [1, 2]}}),
     True),
    ("grid factor twice", _with(BASE, grid={"model.feature_dim": {"around_k_minus_1": [1, 1]}}),
     False),
    ("grid factor 0", _with(BASE, grid={"model.feature_dim": {"around_k_minus_1": [0, 1]}}),
     False),
    ("grid and search", _with(SEARCHING, grid={"train.lr": [0.1]}), False),
    ("empty grid and search", _with(SEARCHING, grid={}), True),
    ("search null and grid", _with(BASE, search=None, grid={"train.lr": [0.1]}), True),
    ("per_loss null", _with(BASE, per_loss=None), True),
    ("per_loss of a loss not in losses", _with(BASE, per_loss={"center": {}}), True),
    ("per_loss of no loss", _with(BASE, per_loss={"arcface": {}}), False),
    ("per_loss unknown hparam", _with(BASE, per_loss={"pod": {"loss": {"lambda": 1}}}), False),
    ("search.space of a loss not in losses",
     _with(SEARCHING, search__space={"center": {"loss.alpha": None}}), True),
    ("search.space of no loss", _with(SEARCHING, search__space={"arcface": {}}), False),
    ("search metric test", _with(SEARCHING, search__metric="test/accuracy"), False),
    ("search metric train", _with(SEARCHING, search__metric="train/accuracy"), True),
    ("search metric too long", _with(SEARCHING, search__metric="val/" + "m" * 300), False),
    ("search trials 0", _with(SEARCHING, search__trials_per_loss=0), False),
    ("lr milestones", _with(BASE, train__lr_milestones=[0.25, 0.5]), True),
    ("lr milestone 1.5", _with(BASE, train__lr_milestones=[1.5]), False),
    ("lr milestone 0", _with(BASE, train__lr_milestones=[0]), False),
    ("device cuda:1", _with(BASE, train__device="cuda:1"), True),
    ("device cuda:x", _with(BASE, train__device="cuda:x"), False),
    ("device tpu", _with(BASE, train__device="tpu"), False),
    ("data root too long", _with(BASE, data__root="/" + "r" * 5000), False),
    ("val_fraction 1", _with(BASE, data__val_fraction=1), False),
    ("unknown section key", _with(BASE, train__learning_rate=0.1), False),
]


@pytest.mark.parametrize("label,raw,ok", AGREEMENT, ids=[a[0] for a in AGREEMENT])
def test_the_schema_and_featloss_agree(label, raw, ok, validator):
    from featloss.plan import expand

    schema_errors = [e.message for e in validator.iter_errors(raw)]
    try:
        expand(parse_study(copy.deepcopy(raw)))
        featloss_error = None
    except ConfigError as exc:
        featloss_error = str(exc)
    assert (not schema_errors) == ok, f"schema: {schema_errors}"
    assert (featloss_error is None) == ok, f"featloss: {featloss_error}"


def test_a_file_with_base_needs_nothing_else(tmp_path, validator):
    from featloss.plan import expand
    from featloss.study import load_study

    (tmp_path / "base.yaml").write_text(json.dumps(BASE))
    (tmp_path / "tweak.yaml").write_text("_base_: base.yaml\ntrain: {epochs: 2}\n")
    assert not list(validator.iter_errors(load_yaml((tmp_path / "tweak.yaml").read_text())))
    assert expand(load_study(tmp_path / "tweak.yaml")).study.train.epochs == 2
    # without _base_, name and losses are required
    assert list(validator.iter_errors({"train": {"epochs": 2}}))
