"""The one exception type for bad user input.

Anything raised as `ConfigError` is turned by the CLI into one line on stderr and exit code 2,
before any compute starts. Bugs stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """Bad user input: an unknown key, a wrong type, a missing dataset folder, ...

    The message is one line that names what is wrong and how to fix it.
    """
