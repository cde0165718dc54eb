"""`load_splits`: a registered dataset with the `data` options applied.

First k classes, stratified caps, the seeded validation split carved from train, and the
normalisation statistics of the training split. Raw datasets are cached per process: Tune actors
reused across trials load each dataset once, and check their content once (`raw_problem`; the
sources raise `DataError` for files they cannot read); the loader's warning lines (skipped files)
are shown once per process and kept in `DataSplits.warnings`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch
from torch import Tensor

import featloss.data.sources  # noqa: F401  registers the built-in datasets
from featloss.config import DataConfig
from featloss.data.content import raw_problem, warn_once
from featloss.data.registry import DATASETS, RawDataset, stratified_cap, stratified_split
from featloss.errors import ConfigError, DataError


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
    warnings: list[str] = field(default_factory=list)  # the loader's lines (skipped files, ...)

    # Normalisation statistics, computed when training asks for them: the checks that load
    # splits (validate, the data checks) need counts and labels, not a float copy of the images.
    @functools.cached_property
    def mean(self) -> Tensor:
        """(C,) per-channel mean of the training split's pixels, in [0, 1]."""
        return self._stats[0]

    @functools.cached_property
    def std(self) -> Tensor:
        """(C,) per-channel std (>= 1e-3: constant channels, as in fuzzy_rgb, stay finite)."""
        return self._stats[1]

    @functools.cached_property
    def _stats(self) -> tuple[Tensor, Tensor]:
        images = self.train.images.float().div_(255.0)
        return images.mean(dim=(0, 2, 3)), images.std(dim=(0, 2, 3)).clamp_min(1e-3)


def load_splits(cfg: DataConfig) -> DataSplits:
    """Load a dataset and apply the `data` options.

    Raises ConfigError on bad options, DataError (a ConfigError) for a dataset that is missing,
    staged wrongly, or holds files it cannot use. Every class keeps at least one training image.
    """
    info = DATASETS.get(cfg.dataset)
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
    train_idx, val_idx = stratified_split(train_y, cfg.val_fraction, gen, min_held=1, min_kept=1)
    if cfg.max_train_samples is not None:
        train_idx = stratified_cap(train_idx, train_y, cfg.max_train_samples, gen)
    test_idx = torch.arange(len(test_y))
    if cfg.max_eval_samples is not None:
        val_idx = stratified_cap(val_idx, train_y, cfg.max_eval_samples, gen)
        test_idx = stratified_cap(test_idx, test_y, cfg.max_eval_samples, gen)
    if len(val_idx) == 0:
        raise ConfigError(f"data.val_fraction={cfg.val_fraction} leaves an empty validation "
                          f"split for '{cfg.dataset}'; use a larger fraction")

    return DataSplits(
        train=Split(train_x[train_idx].contiguous(), train_y[train_idx].contiguous()),
        val=Split(train_x[val_idx].contiguous(), train_y[val_idx].contiguous()),
        test=Split(test_x[test_idx].contiguous(), test_y[test_idx].contiguous()),
        num_classes=num_classes,
        in_channels=int(train_x.shape[1]),
        image_size=int(train_x.shape[-1]),
        class_names=raw.class_names[:num_classes],
        warnings=list(raw.warnings),
    )


@functools.lru_cache(maxsize=4)
def _load_raw(key: str, root: str | None, image_size: int | None) -> RawDataset:
    # Cached per process: Tune actors reused across trials load each dataset once.
    raw = DATASETS.get(key).load(root, image_size)
    problem = raw_problem(raw)
    if problem:
        raise DataError(f"dataset '{key}'{f' under {root}' if root else ''} loaded unusable "
                        f"data: {problem}")
    for line in raw.warnings:
        warn_once(line)
    return raw


