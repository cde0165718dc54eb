"""The JSON Schema of study files, generated from the typed definition (`featloss.study.Study`).

`featloss schema > studies/study.schema.json` writes it; every shipped study starts with
``# yaml-language-server: $schema=study.schema.json`` so editors (the YAML language server in VS
Code, Neovim, JetBrains) complete and check keys. Pydantic writes the schema of the models; this
module adds what lives in the registries: the loss, dataset and backbone keys, each loss's own
hyperparameters under ``per_loss.<loss>.loss``, and the config keys a grid or search may vary.
"""

from __future__ import annotations

import copy
import json
from typing import Any

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def study_schema() -> dict[str, Any]:
    """The study-file schema as a dict (draft 2020-12)."""
    from featloss.backbones import list_backbones
    from featloss.data import list_datasets
    from featloss.losses import list_losses, loss_info
    from featloss.study import Study

    schema = Study.model_json_schema(by_alias=True)
    defs = schema["$defs"]
    losses = list_losses()
    props = schema["properties"]
    props["losses"]["items"] = {"type": "string", "enum": losses}
    defs["DataConfig"]["properties"]["dataset"]["enum"] = list_datasets()
    defs["ModelConfig"]["properties"]["backbone"]["enum"] = list_backbones()
    per_loss = {}
    for key in losses:
        entry = copy.deepcopy(defs["PerLoss"])
        entry["title"] = f"PerLoss {key}"
        entry["properties"]["loss"] = {
            "type": "object", "additionalProperties": False,
            "description": f"hyperparameters of {key} ({loss_info(key).paper})",
            "properties": {h.name: hparam_schema(h) for h in loss_info(key).hparams}}
        defs[f"PerLoss_{key}"] = entry
        per_loss[key] = {"$ref": f"#/$defs/PerLoss_{key}"}
    del defs["PerLoss"]
    props["per_loss"] = {"anyOf": [{"type": "object", "additionalProperties": False,
                                    "properties": per_loss}, {"type": "null"}],
                         "description": props["per_loss"]["description"], "default": {}}
    keys = varied_keys()
    props["grid"]["propertyNames"] = {"enum": keys}
    space = defs["SearchSettings"]["properties"]["space"]
    space["propertyNames"] = {"enum": losses}
    space["additionalProperties"]["propertyNames"] = {"enum": keys}
    factors = defs["Around"]["properties"]["around_k_minus_1"]
    factors["items"].update(exclusiveMinimum=0)
    # A file with _base_ is completed by its base: the merged study must have name and losses
    # (featloss checks that), the file alone need not.
    required = schema.pop("required", [])
    schema["if"] = {"required": ["_base_"]}
    schema["else"] = {"required": required}
    # 'grid' or 'search', not both (an empty grid or a null search counts as absent)
    schema["not"] = {"required": ["grid", "search"],
                     "properties": {"grid": {"minProperties": 1}, "search": {"type": "object"}}}
    schema["$schema"] = DRAFT
    schema["title"] = "featloss study"
    schema["description"] = ("A featloss study: losses, the sections every trial starts from, "
                              "and a grid or an equal-budget search (see README, Studies).")
    return schema


def hparam_schema(h) -> dict[str, Any]:
    """A loss hyperparameter: its type from the default, its allowed range as description."""
    default = h.default
    kind = ("boolean" if isinstance(default, bool) else "integer" if isinstance(default, int)
            else "number" if isinstance(default, float) else "string"
            if isinstance(default, str) else None)
    out: dict[str, Any] = {"description": f"allowed: {h.allowed or 'see featloss losses'}",
                           "default": default}
    if kind == "number":
        out["type"] = ["number", "integer"]
    elif kind:
        out["type"] = kind
    return out


def varied_keys() -> list[str]:
    """Every dotted config key a grid or search may vary: data.*, model.*, train.* and
    loss.<hyperparameter> of any loss (the parser further checks the hyperparameter belongs to a
    loss of the study)."""
    from featloss.config import Config
    from featloss.losses import list_losses, loss_info

    keys = [f"{section}.{name}" for section in ("data", "model", "train")
            for name in Config.model_fields[section].annotation.model_fields]
    hparams = sorted({h.name for loss in list_losses() for h in loss_info(loss).hparams})
    return keys + [f"loss.{name}" for name in hparams]


def schema_text() -> str:
    return json.dumps(study_schema(), indent=1, ensure_ascii=False) + "\n"


def add_parser(sub) -> None:
    sub.add_parser("schema", help="print the JSON Schema of study files (for editors)")


def cmd_schema() -> int:
    print(schema_text(), end="")
    return 0
