"""The study-file JSON Schema: shipped, valid for every shipped study, and in step with the parser."""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest

from conftest import REPO
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
    assert set(schema["properties"]["per_loss"]["properties"]) == set(list_losses())


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
