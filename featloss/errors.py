"""featloss's exception types: bad user input is typed, never recognised by its message text.

Anything raised as `ConfigError` (or a subclass) is turned by the CLI into one line on stderr and
exit code 2, before any compute starts; inside a study's trial it fails that trial once, with its
message as the trial's error (no retries: a retry cannot fix bad input). Bugs stay ordinary
exceptions with tracebacks.
"""

from __future__ import annotations

MAX_QUOTED = 120  # user values quoted in messages are cut to this many characters


class ConfigError(ValueError):
    """Bad user input: an unknown key, a wrong type, a missing dataset folder, ...

    The message is one line that names what is wrong and how to fix it.
    """

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class HParamError(ConfigError):
    """A loss rejects one of its hyperparameters (the loss contract's ValueError).

    Attributes:
        loss: the loss key; arg: the argument name. A study cell whose loss raises this for the
        cell's own values is skipped (listed with the message), never run.
    """

    def __init__(self, loss: str, arg: str, message: str) -> None:
        super().__init__(message)
        self.loss = loss
        self.arg = arg


class DataError(ConfigError):
    """A dataset that is missing, staged wrongly, or whose content cannot serve the config."""


def one_line(text: str, limit: int = 2000) -> str:
    """`text` as a single line of at most `limit` characters (user values can be huge)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def quote(value: object, limit: int = MAX_QUOTED) -> str:
    """repr(value) cut to `limit` characters, for quoting user values in one-line errors."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"
