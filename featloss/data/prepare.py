"""`featloss data prepare DATASET --root DIR`: stage a real dataset once per cluster.

A file lock in ROOT makes concurrent callers (one per node, say) wait for each other instead of
racing; a dataset already staged is left as it is. Trials then read it with ``download=False``.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock

from featloss.errors import ConfigError

STAGEABLE = ("mnist", "fashion_mnist", "cifar10", "cifar100")


def prepare_dataset(key: str, root: str) -> str:
    """Stage `key` under `root`; returns a one-line summary. Needs network access once."""
    if key not in STAGEABLE:
        raise ConfigError(f"featloss data prepare: '{key}' cannot be staged automatically; "
                          f"stageable: {', '.join(STAGEABLE)} (copy imagefolder/tiny_imagenet "
                          f"folders by hand)")
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10,
           "cifar100": tvd.CIFAR100}[key]
    base = Path(root).expanduser().resolve()
    base.mkdir(parents=True, exist_ok=True)
    with FileLock(str(base / f".{key}.lock")):
        try:
            train = cls(str(base), train=True, download=False)
            test = cls(str(base), train=False, download=False)
            return f"{key}: already staged under {base} ({len(train)} train, {len(test)} test)"
        except RuntimeError:
            pass
        try:
            train = cls(str(base), train=True, download=True)
            test = cls(str(base), train=False, download=True)
        except Exception as exc:  # network errors come in many types
            raise ConfigError(f"featloss data prepare {key}: download into {base} failed "
                              f"({type(exc).__name__}: {exc}); copy the torchvision files there "
                              f"by hand on an offline cluster") from exc
    return f"{key}: staged under {base} ({len(train)} train, {len(test)} test)"
