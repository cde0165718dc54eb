"""The one place where user values become names of folders, files, runs and trials.

Study names, loss keys and grid values (``data.root: /data/a``) end up in paths: the results
folder, checkpoint files, Tune's trial folders (which must not contain ``/``), MLflow artifact
folders. `safe_name` turns any text into a readable name that is safe by construction: only
``[A-Za-z0-9._=+-]``, no leading dot (so never ``.`` or ``..``), at most `max_len` characters.
Whenever it had to change or cut the text it appends 8 hex digits of the text's SHA-1, so two
different inputs never collide on the same name.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

MAX_NAME = 96  # well below every file system's 255-byte limit, with room for suffixes
_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_name(text: object, max_len: int = MAX_NAME) -> str:
    """A file-system- and URL-safe, readable, unique name for `text`.

    Args:
        text: anything; converted with str().
        max_len: the longest name returned (>= 16).
    Returns:
        `text` itself when it is already safe and short, else a cleaned, shortened form
        followed by ``-`` and 8 hex digits of sha1(text).
    """
    original = str(text)
    ascii_text = unicodedata.normalize("NFKD", original).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("_", ascii_text).lstrip("._-")
    if cleaned == original and len(cleaned) <= max_len:
        return cleaned
    digest = hashlib.sha1(original.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    head = cleaned[: max(max_len - 9, 1)].rstrip("._-") or "x"
    return f"{head}-{digest}"


def value_label(value: object) -> str:
    """A short text form of a grid or search value (0.001 -> '0.001', 1e-05 -> '1e-05')."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).replace(" ", "")
