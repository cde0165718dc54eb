"""YAML reading for every featloss file: safe, strict, and `1e-3` is a float.

- PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a string; researchers write learning rates
  that way, so the float resolver here accepts it.
- A key given twice in one mapping is an error (PyYAML silently keeps the last one).
- Aliases are capped: a document that expands a few anchors into millions of nodes (an "alias
  bomb") is rejected before anything walks it.
"""

from __future__ import annotations

import re
from typing import IO, Any

import yaml

MAX_ALIASES = 200


class DuplicateKey(yaml.YAMLError):
    pass


class _Loader(yaml.SafeLoader):
    def __init__(self, stream) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent, index):  # noqa: D102 - counts aliases
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases (*anchor references)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):  # noqa: D102 - rejects duplicate keys
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let PyYAML report it
                continue
            line = key_node.start_mark.line + 1
            if first is not None:
                raise DuplicateKey(f"key '{str(key)[:60]}' appears twice in one mapping "
                                   f"(lines {first} and {line}); YAML would keep only the last")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(stream: str | IO[str]) -> Any:
    """Parse YAML text safely. Raises yaml.YAMLError (DuplicateKey for a repeated key)."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def read_yaml_file(path: str, what: str = "file") -> Any:
    """Parse a YAML file; any problem with it is one ConfigError line naming it.

    Raises ConfigError for a missing file, a directory, non-UTF-8 bytes, malformed YAML, a
    duplicate key or too many aliases.
    """
    from featloss.errors import ConfigError

    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such {what}") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"{path} is a directory, not a {what}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc.strerror})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at position "
                          f"{exc.start}); a {what} is a YAML text file") from exc
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from exc


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line: what PyYAML found wrong, and the line where it found it."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, allow_unicode=True)
