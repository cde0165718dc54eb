"""Dataset registry: every dataset is a function that returns uint8 image tensors.

A source returns `RawDataset` (train and test splits as uint8 (N, C, H, W) tensors on the CPU).
`load_splits` then applies the `data` options (first k classes, stratified caps, the seeded
validation split) and computes the normalisation statistics from the training split.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from featloss.config import DataConfig
from featloss.errors import ConfigError


@dataclass
class RawDataset:
    train_images: Tensor  # (N, C, H, W) uint8
    train_labels: Tensor  # (N,) int64
    test_images: Tensor  # (M, C, H, W) uint8
    test_labels: Tensor  # (M,) int64
    class_names: list[str]


@dataclass(frozen=True)
class DatasetInfo:
    key: str
    load: Callable[[str | None, int | None], RawDataset]  # (root, image_size) -> RawDataset
    description: str
    embedded: bool  # ships with a dependency (no files, no network)
    num_classes: int | None  # None when it depends on the folder (imagefolder)
    in_channels: int | None
    image_size: int | None


_DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(key: str, *, description: str, embedded: bool, num_classes: int | None,
                     in_channels: int | None, image_size: int | None):
    def wrap(fn: Callable[[str | None, int | None], RawDataset]):
        if key in _DATASETS:
            raise KeyError(f"dataset '{key}' is registered twice")
        _DATASETS[key] = DatasetInfo(key, fn, description, embedded, num_classes, in_channels,
                                     image_size)
        return fn

    return wrap


def list_datasets() -> list[str]:
    _load_sources()
    return list(_DATASETS)


def dataset_info(key: str) -> DatasetInfo:
    _load_sources()
    if key not in _DATASETS:
        raise ConfigError(f"unknown dataset '{key}'; known datasets: {', '.join(_DATASETS)}")
    return _DATASETS[key]


def _load_sources() -> None:
    import featloss.data.sources  # noqa: F401  registers the built-in datasets


@dataclass
class Split:
    images: Tensor  # (N, C, H, W) uint8
    labels: Tensor  # (N,) int64

    def __len__(self) -> int:
        return int(self.labels.numel())


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    in_channels: int
    image_size: int
    class_names: list[str]
    mean: Tensor  # (C,) per-channel mean of the training split, in [0, 1]
    std: Tensor  # (C,)


def load_splits(cfg: DataConfig) -> DataSplits:
    """Load a dataset and apply the `data` options. Raises ConfigError on bad input."""
    info = dataset_info(cfg.dataset)
    raw = _load_raw(info.key, cfg.root, cfg.image_size)
    available = len(raw.class_names)
    num_classes = available
    train_x, train_y, test_x, test_y = (raw.train_images, raw.train_labels, raw.test_images,
                                        raw.test_labels)
    if cfg.classes is not None:
        if cfg.classes > available:
            raise ConfigError(f"data.classes={cfg.classes} but dataset '{cfg.dataset}' has only "
                              f"{available} classes; use data.classes <= {available}")
        num_classes = cfg.classes
        keep = train_y < num_classes
        train_x, train_y = train_x[keep], train_y[keep]
        keep = test_y < num_classes
        test_x, test_y = test_x[keep], test_y[keep]

    gen = torch.Generator().manual_seed(cfg.split_seed)
    train_idx, val_idx = stratified_split(train_y, cfg.val_fraction, gen, min_held=1)
    if cfg.max_train_samples is not None:
        train_idx = stratified_cap(train_idx, train_y, cfg.max_train_samples, gen)
    test_idx = torch.arange(len(test_y))
    if cfg.max_eval_samples is not None:
        val_idx = stratified_cap(val_idx, train_y, cfg.max_eval_samples, gen)
        test_idx = stratified_cap(test_idx, test_y, cfg.max_eval_samples, gen)
    if len(val_idx) == 0:
        raise ConfigError(f"data.val_fraction={cfg.val_fraction} leaves an empty validation "
                          f"split for '{cfg.dataset}'; use a larger fraction")

    train = Split(train_x[train_idx].contiguous(), train_y[train_idx].contiguous())
    images = train.images.float().div_(255.0)
    mean = images.mean(dim=(0, 2, 3))
    std = images.std(dim=(0, 2, 3)).clamp_min(1e-3)  # constant channels (fuzzy_rgb) stay finite
    return DataSplits(
        train=train,
        val=Split(train_x[val_idx].contiguous(), train_y[val_idx].contiguous()),
        test=Split(test_x[test_idx].contiguous(), test_y[test_idx].contiguous()),
        num_classes=num_classes,
        in_channels=int(train_x.shape[1]),
        image_size=int(train_x.shape[-1]),
        class_names=raw.class_names[:num_classes],
        mean=mean,
        std=std,
    )


@functools.lru_cache(maxsize=4)
def _load_raw(key: str, root: str | None, image_size: int | None) -> RawDataset:
    # Cached per process: Tune actors reused across trials load each dataset once.
    return _DATASETS[key].load(root, image_size)


def stratified_split(labels: Tensor, fraction: float, gen: torch.Generator,
                     min_held: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices into (keep, held_out) with `fraction` of every class held out.

    `min_held` holds out at least that many of every class that has more samples than that.
    """
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = int(round(len(idx) * fraction))
        if len(idx) > min_held:
            n_held = max(n_held, min_held)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def stratified_cap(idx: Tensor, labels: Tensor, cap: int, gen: torch.Generator) -> Tensor:
    """At most `cap` of `idx`, keeping class proportions (every class keeps at least one)."""
    if len(idx) <= cap:
        return idx
    fraction = 1.0 - cap / len(idx)
    kept, _ = stratified_split(labels[idx], fraction, gen)
    return idx[kept]
