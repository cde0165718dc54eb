"""Strict, typed configuration of one training run (pydantic v2 models).

A run is `Config(data, model, loss, train, seed)`. Parsing is strict: an unknown key, a value of
the wrong type (``true`` for a number, ``2.5`` for an integer) or a value out of range raises one
`ConfigError` line naming the key path (``train.lr``). Registry-dependent checks (dataset,
backbone, loss hyperparameters) live in `featloss.train.validate_config`.

The `loss` section is ``{name: <registry key>, <hparam>: value, ...}``: every key other than
``name`` is a keyword argument of the loss constructor. The same models define the study-file
schema (`featloss schema`), so every key below carries its description.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from featloss.errors import ConfigError, quote
from featloss.yamlio import load_yaml, read_yaml_file

MAX_SEED = 2**32 - 1  # numpy's seed range; torch accepts it too
MAX_PATH_CHARS = 4096  # Linux's PATH_MAX


class Section(BaseModel):
    """Base of every config section: unknown keys and loose types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)

    def section(self, name: str) -> dict:
        """The keys sub-section `name` sets explicitly (defaults left out); {} when unset."""
        value = getattr(self, name)
        return value.model_dump(exclude_unset=True) if value is not None else {}


class DataConfig(Section):
    dataset: str = Field("mnist5k", description="dataset key (`featloss datasets`)")
    root: str | None = Field(None, max_length=MAX_PATH_CHARS, description="folder of a staged "
                             "real dataset (default $FEATLOSS_DATA or ~/.cache/featloss/data)")
    classes: int | None = Field(None, ge=2, le=1_000_000,
                                description="keep only the first k classes (W-Softmax Table 5)")
    val_fraction: float = Field(0.1, gt=0, lt=1, description="validation split carved from "
                                "train, stratified, seeded by split_seed")
    split_seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the validation split, "
                            "fixed across trial seeds so every trial sees the same split")
    augment: bool = Field(False, description="pad-4 random crop + horizontal flip, on the device")
    sampler: Literal["random", "balanced"] = Field(
        "random", description="batch sampler; balanced: every class the same count per batch")
    image_size: int | None = Field(None, ge=4, le=4096,
                                   description="imagefolder only: resize every image to this")
    max_train_samples: int | None = Field(None, ge=1, description="stratified cap on the "
                                          "training split (smoke runs, CPU studies)")
    max_eval_samples: int | None = Field(None, ge=1,
                                         description="stratified cap on the val and test splits")


class ModelConfig(Section):
    backbone: str = Field("small_cnn", description="backbone key (`featloss backbones`)")
    feature_dim: int = Field(64, ge=1, le=65_536, description="width of the backbone's final "
                             "linear layer: the feature dimension d (M in W-Softmax)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout rate of the backbone")


class LossConfig(BaseModel):
    """``name`` plus the loss's own hyperparameters (checked against the loss registry)."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field("softmax", description="loss key (`featloss losses`)")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def hparams(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainConfig(Section):
    epochs: int = Field(10, ge=1, le=100_000, description="training epochs")
    batch_size: int = Field(64, ge=2, le=1_000_000, description="training batch size")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="optimizer")
    lr: float = Field(0.1, gt=0, le=1e6, description="learning rate of the backbone")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, le=1e3, description="L2 weight decay")
    schedule: Literal["cosine", "step", "constant"] = Field("cosine",
                                                           description="learning-rate schedule")
    lr_milestones: list[float] = Field([0.5, 0.75], description="step schedule: fractions of "
                                       "the epochs at which the lr is multiplied by lr_gamma",
                                       json_schema_extra={"items": {
                                           "type": "number", "exclusiveMinimum": 0,
                                           "exclusiveMaximum": 1}})
    lr_gamma: float = Field(0.1, gt=0, le=1, description="step schedule: factor per milestone")
    loss_lr: float | None = Field(None, ge=0, le=1e6, description="lr of the loss's own tensors "
                                  "(weight, centers, w_k); null: the same as lr")
    loss_weight_decay: float | None = Field(None, ge=0, le=1e3,
                                            description="null: the same as weight_decay")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast of the "
                                               "backbone on CUDA (the loss stays fp32)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N",
                        json_schema_extra={"pattern": "^(auto|cpu|cuda|cuda:[0-9]+)$"})
    eval_batch_size: int = Field(1024, ge=1, le=1_000_000, description="evaluation batch size")
    eval_test: bool = Field(True, description="evaluate the test split in the last epoch "
                            "(search trials turn this off: selection never sees the test set)")
    divergence_check_every: int = Field(20, ge=1, description="steps between (syncing) checks "
                                        "for a non-finite training loss")

    @field_validator("lr_milestones")
    @classmethod
    def _fractions(cls, value: list[float]) -> list[float]:
        if not all(0 < f < 1 for f in value):
            raise ValueError("must be fractions of the epochs in (0, 1)")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value in ("auto", "cpu", "cuda"):
            return value
        head, _, index = value.partition(":")
        if head != "cuda" or not index.isdigit():
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value


class Config(Section):
    """One training run. Build it with `Config.from_dict` for one-line errors."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of initialisation, dropout, "
                      "sampling and augmentation")

    @classmethod
    def from_dict(cls, raw: dict | None, where: str = "config") -> Config:
        """Parse a nested dict. Raises ConfigError naming `where` and the key path."""
        return parse_model(cls, raw or {}, where)

    def to_dict(self) -> dict:
        return self.model_dump()

    def flat(self) -> dict[str, Any]:
        """Flattened ``section.key`` view (``loss`` for the loss name, ``loss.<hparam>``)."""
        flat: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            if not isinstance(values, dict):
                flat[section] = values
                continue
            for key, value in values.items():
                flat["loss" if (section, key) == ("loss", "name") else f"{section}.{key}"] = value
        return flat

    def with_overrides(self, overrides: dict[str, Any], where: str = "--set") -> Config:
        raw = self.to_dict()
        for path, value in overrides.items():
            set_path(raw, path, value, where)
        return Config.from_dict(raw, where=where)


# -- one-line errors from pydantic -----------------------------------------------------------------

def parse_model(model: type[BaseModel], raw: Any, where: str) -> Any:
    """`model.model_validate(raw)`, with the first problem as one ConfigError line."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {error_line(model, exc)}") from None


def error_line(model: type[BaseModel], exc: ValidationError) -> str:
    """The first error of `exc` in featloss's words: key path, value, rule."""
    branches = _model_names(model)
    error = _most_specific(exc.errors(), branches)
    raw_loc = [p for p in error["loc"] if not _is_branch(p, branches)]
    loc = [str(p) for p in raw_loc]
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in raw_loc).lstrip(".") \
        or "config"
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        known = _known_keys(model, loc[:-1])
        return f"unknown key '{key}'" + (f" ({_did_you_mean(loc[-1], known)}known keys: "
                                         f"{', '.join(known)})" if known else "")
    if kind == "missing":
        return f"missing key '{key}'"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"'{key}' must be a mapping, got {quote(value)}"
    expected = {"int_type": "an integer", "int_from_float": "an integer", "float_type": "a number",
                "bool_type": "true or false", "string_type": "a string", "list_type": "a list",
                "finite_number": "a finite number"}.get(kind)
    if expected:
        return f"{key} must be {expected}, got {quote(value)}"
    if kind == "literal_error":
        return f"{key}={quote(value)} is not one of {ctx.get('expected', '').replace(' or ', ', ')}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        rule = _bounds(model, loc, kind, ctx)
        if isinstance(value, float) and not math.isfinite(value):
            bound = rule.replace("lie in ", "in ", 1).replace("be ", "", 1)
            return f"{key}={value} must be a finite number {bound}"
        return f"{key}={quote(value)} must {rule}"
    if kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
        if not loc or message.startswith(key):
            return message
        return f"{key}: {message}" if isinstance(value, (list, dict)) else \
            f"{key}={quote(value)} {message}"
    if kind in ("too_short", "string_too_short"):
        return f"{key} must not be empty"
    if kind in ("too_long", "string_too_long"):
        return f"{key} is too long (at most {ctx.get('max_length')} " \
               f"{'characters' if kind == 'string_too_long' else 'items'})"
    return f"{key}={quote(value)}: {error['msg']}"


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "any"}


def _is_branch(part: Any, models: frozenset[str] = frozenset()) -> bool:
    """A union branch or validator tag in a pydantic error location, not a key: a type tag
    (``list[any]``, ``function-after[...]``, ``str``) or the name of one of the models
    (`models`). A key the user wrote in capitals (``TRAIN``) stays a key."""
    text = str(part)
    return isinstance(part, str) and (
        text.startswith("function-") or "[" in text or text in _TYPE_TAGS or text in models)


def _model_names(model: type[BaseModel]) -> frozenset[str]:
    """Class names of `model` and every model its fields hold (pydantic's union tags)."""
    import typing

    names: set[str] = set()
    todo: list[Any] = [model]
    while todo:
        node = todo.pop()
        if isinstance(node, type) and issubclass(node, BaseModel):
            if node.__name__ in names:
                continue
            names.add(node.__name__)
            todo += [f.annotation for f in node.model_fields.values()]
        else:
            todo += list(typing.get_args(node))
    return frozenset(names)


def _did_you_mean(key: str, known: list[str]) -> str:
    """'did you mean 'train'? ' for a key written in other case or misspelt, else ''."""
    import difflib

    names = [k.rsplit(".", 1)[-1] for k in known]
    same = [k for k, n in zip(known, names) if n.lower() == key.lower()]
    close = same or [known[names.index(n)] for n in difflib.get_close_matches(key, names, 1)]
    return f"did you mean '{close[0]}'? " if close else ""


def _most_specific(errors: list[dict], models: frozenset[str] = frozenset()) -> dict:
    """Of a union's errors, the one that got furthest into the value (a wrong value inside the
    matching branch says more than 'not a list' from the other branch)."""
    def depth(error: dict) -> tuple[int, int]:
        keys = [p for p in error["loc"] if not _is_branch(p, models)]
        return (not error["type"].endswith("_type"), len(keys))

    return max(errors, key=depth) if len({tuple(e["loc"][:1]) for e in errors}) == 1 \
        else errors[0]


def _inner(annotation: Any) -> Any:
    """The model inside Optional[...], X | None, dict[str, X] or list[X], else `annotation`."""
    import typing

    for arg in typing.get_args(annotation)[::-1]:
        inner = _inner(arg)
        if hasattr(inner, "model_fields"):
            return inner
    return annotation


def _walk(model: type[BaseModel], loc: list[str]):
    """(FieldInfo of the last part, the model that holds it) along `loc`; None when unknown."""
    import typing

    node: Any = model
    info = None
    skip = False
    for part in loc:
        if skip:  # a dict key or list index between models
            skip = False
            continue
        fields = _fields_by_key(node)
        if fields is None or part not in fields:
            return None, None
        info = fields[part]
        node = _inner(info.annotation)
        skip = any(typing.get_origin(a) in (dict, list)
                   for a in (info.annotation, *typing.get_args(info.annotation)))
    return info, node


def _field(model: type[BaseModel], loc: list[str]):
    return _walk(model, loc)[0]


def _fields_by_key(node: Any) -> dict[str, Any] | None:
    """A model's fields by the key a file uses: the alias where there is one (``_base_``)."""
    fields = getattr(node, "model_fields", None)
    if fields is None:
        return None
    return {info.alias or name: info for name, info in fields.items()}


def _known_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    """The keys a file may write at `loc` (aliases, as the file writes them)."""
    node = _walk(model, loc)[1] if loc else model
    prefix = ".".join(loc) + "." if loc else ""
    return [prefix + k for k in _fields_by_key(node) or {}]


def _bounds(model: type[BaseModel], loc: list[str], kind: str, ctx: dict) -> str:
    """'lie in (0, 1)' when the field has two bounds, else 'be >= 1' and the like."""
    info = _field(model, loc)
    low = high = None
    for meta in getattr(info, "metadata", []):
        for name in ("gt", "ge"):
            if getattr(meta, name, None) is not None:
                low = (name, getattr(meta, name))
        for name in ("lt", "le"):
            if getattr(meta, name, None) is not None:
                high = (name, getattr(meta, name))
    if low and high:
        return (f"lie in {'(' if low[0] == 'gt' else '['}{_num(low[1])}, {_num(high[1])}"
                f"{')' if high[0] == 'lt' else ']'}")
    symbol = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}[kind]
    return f"be {symbol} {_num(next(iter(ctx.values()), ''))}"


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# -- --set overrides -------------------------------------------------------------------------------

def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set key=value`` as YAML (1e-3, true, [1, 2], null)."""
    try:
        return load_yaml(text)
    except Exception:  # not YAML: keep the text as a string
        return text


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` -> ``{"a.b": 1}``. Raises ConfigError for an item without '='."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {quote(item)}: expected section.key=value, "
                              f"e.g. train.lr=0.01")
        out[key.strip()] = parse_value(value)
    return out


def set_path(raw: dict, path: str, value: Any, where: str,
             one_key_under: tuple[tuple[str, ...], ...] = ()) -> None:
    """Set ``a.b.c`` in a nested dict; ``loss`` alone sets the loss name.

    Keys may contain dots (a study's ``grid: {model.feature_dim: ...}``): at each level the
    longest key that already exists there and matches the next parts of `path` is taken
    (``grid.model.feature_dim`` sets ``grid["model.feature_dim"]``). Where no such key exists,
    a mapping at a prefix in `one_key_under` (``("grid",)``, ``("search", "space", "*")``, ``*``
    for any key) takes the rest of the path as one new key; elsewhere each part is one level.
    """
    if path == "loss":
        path = "loss.name"
    keys = split_path(raw, path, one_key_under)
    node = raw
    for i, part in enumerate(keys[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: cannot set '{path}': '{'.'.join(keys[:i + 1])}' is not "
                              f"a section (it is {quote(child, 60)})")
        node = child
    node[keys[-1]] = value


def split_path(raw: Any, path: str, one_key_under: tuple[tuple[str, ...], ...] = ()
               ) -> list[str]:
    """The keys of dotted `path` in `raw`, level by level (see `set_path`)."""
    parts = path.split(".")
    keys: list[str] = []
    node = raw
    i = 0
    while i < len(parts):
        existing = node if isinstance(node, dict) else {}
        for j in range(len(parts), i, -1):  # the longest existing key first
            candidate = ".".join(parts[i:j])
            if candidate in existing:
                break
        else:
            j = len(parts) if any(_prefix_matches(keys, p) for p in one_key_under) else i + 1
            candidate = ".".join(parts[i:j])
        keys.append(candidate)
        node = existing.get(candidate)
        i = j
    return keys


def _prefix_matches(keys: list[str], pattern: tuple[str, ...]) -> bool:
    return len(keys) == len(pattern) and all(p in ("*", k) for k, p in zip(keys, pattern))


def load_config_file(path: str) -> dict:
    """A YAML file with data/model/loss/train/seed sections, as a dict (ConfigError if bad)."""
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return data
