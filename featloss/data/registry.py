"""Dataset registry: every dataset is a function that returns uint8 image tensors.

A source returns `RawDataset` (train and test splits as uint8 (N, C, H, W) tensors on the CPU);
`featloss.data.splits.load_splits` then applies the `data` options. This module holds the
registry and the stratified index helpers the sources share; it imports no source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from featloss.registry import Registry


@dataclass
class RawDataset:
    train_images: Tensor  # (N, C, H, W) uint8
    train_labels: Tensor  # (N,) int64
    test_images: Tensor  # (M, C, H, W) uint8
    test_labels: Tensor  # (M,) int64
    class_names: list[str]
    # one line each: what the loader skipped or changed (e.g. non-image files it passed over)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DatasetInfo:
    key: str
    load: Callable[[str | None, int | None], RawDataset]  # (root, image_size) -> RawDataset
    description: str
    embedded: bool  # ships with a dependency (no files, no network)
    num_classes: int | None  # None when it depends on the folder (imagefolder)
    in_channels: int | None
    image_size: int | None


DATASETS: Registry[DatasetInfo] = Registry("dataset")  # filled by `featloss.data.sources`


def register_dataset(key: str, *, description: str, embedded: bool, num_classes: int | None,
                     in_channels: int | None, image_size: int | None):
    """Decorator adding a source ``fn(root, image_size) -> RawDataset`` under `key`."""

    def wrap(fn: Callable[[str | None, int | None], RawDataset]):
        DATASETS.add(key, DatasetInfo(key, fn, description, embedded, num_classes, in_channels,
                                      image_size))
        return fn

    return wrap


def stratified_split(labels: Tensor, fraction: float, gen: torch.Generator,
                     min_held: int = 0, min_kept: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices into (keep, held_out) with `fraction` of every class held out.

    `min_held` holds out at least that many of every class that has more samples than that;
    `min_kept` keeps at least that many of every class (a class never vanishes from `keep`).
    """
    keep, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_held = round(len(idx) * fraction)
        if len(idx) > min_held:
            n_held = max(n_held, min_held)
        n_held = max(min(n_held, len(idx) - min_kept), 0)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def stratified_cap(idx: Tensor, labels: Tensor, cap: int, gen: torch.Generator) -> Tensor:
    """About `cap` of `idx`, keeping class proportions.

    Every class keeps at least one sample, so a cap below the number of classes keeps one each.
    """
    if len(idx) <= cap:
        return idx
    fraction = 1.0 - cap / len(idx)
    kept, _ = stratified_split(labels[idx], fraction, gen, min_kept=1)
    return idx[kept]
