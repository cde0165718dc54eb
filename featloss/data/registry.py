"""Dataset registry: every dataset is a function that returns uint8 image tensors.

A source returns `RawDataset` (train and test splits as uint8 (N, C, H, W) tensors on the CPU);
`featloss.data.splits.load_splits` then applies the `data` options. This module holds the
registry and the stratified index helpers the sources share; it imports no source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
