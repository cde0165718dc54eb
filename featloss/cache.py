"""featloss's on-disk cache: ``$FEATLOSS_CACHE`` (default ``~/.cache/featloss``).

Holds what is slow to build and fully determined by its inputs: repulsion-target centroids
(`featloss.losses.centroids`) and decoded embedded datasets (`cached_array`). Point
``FEATLOSS_CACHE`` at shared storage on a cluster so nodes build each entry once. Deleting the
folder is always safe.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

LOGGER = logging.getLogger("featloss.cache")


def cache_root() -> Path:
    """``$FEATLOSS_CACHE`` or ``~/.cache/featloss`` (not created here)."""
    root = os.environ.get("FEATLOSS_CACHE") or Path.home() / ".cache" / "featloss"
    return Path(root).expanduser()


def cached_array(name: str, source: Path, build: Callable[[], np.ndarray]) -> np.ndarray:
    """`build()`'s array, decoded once per version of `source` and kept as ``.npy``.

    The entry is keyed by `name` and `source`'s path, size and modification time, so an edited
    or replaced source is decoded again. It is written atomically (a temporary file renamed),
    so concurrent trial processes never read a partial file; an unusable cache folder or entry
    falls back to `build()` with one warning.
    """
    stat = source.stat()
    tag = hashlib.sha256(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    path = cache_root() / "data" / f"{name}-{tag.hexdigest()[:16]}.npy"
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        LOGGER.warning("cache: %s unreadable (%s); decoding %s again", path, exc, source)
    array = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            np.save(out, array, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as exc:
        LOGGER.warning("cache: cannot write %s (%s); decoding it each time", path, exc)
    return array
