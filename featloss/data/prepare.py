"""`featloss data prepare DATASET --root DIR`: stage a real dataset once per cluster.

A file lock in ROOT (``ROOT/.<dataset>.lock``) makes concurrent callers (one per node, say) wait
for each other instead of racing. A dataset already staged is left exactly as it is and nothing
is downloaded. A download goes into a private folder inside ROOT and is moved into place (one
rename on the same file system) only once it loads completely, so an interrupted or failed
download never leaves a half-written dataset where trials, or the next `prepare`, would look.
Trials then read the staged files with ``download=False`` (`featloss.data.sources`).

The lock is an ``flock`` on the lock file: on NFS (v4, or v3 with lockd, as AWS EFS and most
shared file systems provide) it holds across machines.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

from filelock import FileLock, Timeout

from featloss.data.staged import STAGED_WRONGLY
from featloss.errors import ConfigError

# dataset key -> (torchvision class name, the folder it reads under ROOT)
STAGEABLE = {
    "mnist": ("MNIST", "MNIST"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
}
STAGING_PREFIX = "staging-"  # private download folders: ROOT/.<key>.staging-XXXX
MAX_REASON_CHARS = 300


def prepare_dataset(key: str, root: str) -> str:
    """Stage `key` under `root`; returns a one-line summary. Needs network access once.

    Raises ConfigError (one line) for a dataset that cannot be staged, an unusable ROOT, a
    download that failed, or a dataset folder that exists but does not load.
    """
    class_name, folder = _stageable(key)
    base = _make_root(root)
    lock_path = base / f".{key}.lock"
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"featloss: waiting for another `featloss data prepare {key}` to finish "
              f"(lock {lock_path})", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        _remove_stale_staging(base, key)
        return _stage_locked(key, class_name, folder, base)
    finally:
        lock.release()


def _stageable(key: str) -> tuple[str, str]:
    if key in STAGEABLE:
        return STAGEABLE[key]
    from featloss.data import dataset_info  # imports torch: only on this error path

    stageable = ", ".join(STAGEABLE)
    try:
        info = dataset_info(key)
    except ConfigError:
        raise ConfigError(f"featloss data prepare: unknown dataset '{key}'; stageable: "
                          f"{stageable} (`featloss datasets` lists every dataset)") from None
    if info.embedded:
        raise ConfigError(f"featloss data prepare: dataset '{key}' is embedded (it ships with "
                          f"featloss's dependencies); nothing to stage. Stageable: {stageable}")
    raise ConfigError(f"featloss data prepare: dataset '{key}' cannot be downloaded "
                      f"automatically; copy its folder into a shared data.root by hand "
                      f"(see `featloss datasets`). Stageable: {stageable}")


def _make_root(root: str) -> Path:
    base = Path(root).expanduser().resolve()
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"featloss data prepare: cannot create --root {base} "
                          f"({exc.strerror or exc})") from exc
    if not os.access(base, os.W_OK):
        raise ConfigError(f"featloss data prepare: --root {base} is not writable")
    return base


def _dataset_class(class_name: str):
    import torchvision.datasets as tvd

    return getattr(tvd, class_name)


def _load(class_name: str, base: Path) -> tuple[int, int]:
    """(train, test) sizes of the staged dataset, read exactly as trials read it."""
    cls = _dataset_class(class_name)
    train = cls(str(base), train=True, download=False)
    test = cls(str(base), train=False, download=False)
    return len(train), len(test)


def _stage_locked(key: str, class_name: str, folder: str, base: Path) -> str:
    target = base / folder
    try:
        n_train, n_test = _load(class_name, base)
        return f"{key}: already staged under {base} ({n_train} train, {n_test} test); nothing " \
               f"downloaded"
    except STAGED_WRONGLY as exc:
        if target.exists():
            # Someone's files, incomplete or corrupt: never download over them or delete them.
            raise ConfigError(
                f"featloss data prepare {key}: {target} exists but does not load "
                f"({_one_line(exc)}); remove it (or complete it by hand) and run "
                f"`featloss data prepare {key} --root {base}` again") from exc

    staging = Path(tempfile.mkdtemp(prefix=f".{key}.{STAGING_PREFIX}", dir=base))
    try:
        cls = _dataset_class(class_name)
        try:
            cls(str(staging), train=True, download=True)
            cls(str(staging), train=False, download=True)
        except Exception as exc:  # network errors come in many types (URLError, OSError, ...)
            raise ConfigError(
                f"featloss data prepare {key}: download into {base} failed "
                f"({type(exc).__name__}: {_one_line(exc)}); nothing was staged. On a machine "
                f"without internet access, copy torchvision's {folder}/ files into {base} "
                f"by hand") from exc
        for archive in (staging / folder).rglob("*.gz"):  # MNIST keeps its .gz beside the files
            archive.unlink()
        os.replace(staging / folder, target)  # atomic: the folder appears complete or not at all
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        n_train, n_test = _load(class_name, base)
    except STAGED_WRONGLY as exc:  # pragma: no cover
        raise ConfigError(f"featloss data prepare {key}: staged {target} but it does not load "
                          f"({_one_line(exc)})") from exc
    return f"{key}: staged under {base} ({n_train} train, {n_test} test)"


def _remove_stale_staging(base: Path, key: str) -> None:
    """Download folders left by a killed `prepare` (we hold the lock: none is in use)."""
    for path in base.glob(f".{key}.{STAGING_PREFIX}*"):
        shutil.rmtree(path, ignore_errors=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."
