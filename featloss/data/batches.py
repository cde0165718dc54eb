"""Device-resident batches: the whole split lives on the training device as uint8.

Sampling, augmentation (pad-4 random crop + horizontal flip) and normalisation are batched tensor
operations on that device, driven by one `torch.Generator`, so an epoch has no per-sample Python
and its randomness is reproducible and checkpointable.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor
from torch.nn import functional as F

from featloss.data.splits import Split
from featloss.errors import ConfigError

PAD = 4  # pixels of zero padding before the random crop (the "+" datasets)


class DeviceData:
    """One split on `device`, yielding normalised float batches."""

    def __init__(self, split: Split, mean: Tensor, std: Tensor, device: torch.device) -> None:
        self.images = split.images.to(device)  # (N, C, H, W) uint8
        self.labels = split.labels.to(device)  # (N,)
        self.device = device
        channels = self.images.shape[1]
        # x = (u8 / 255 - mean) / std, as one multiply-add
        self.scale = (1.0 / (255.0 * std)).view(1, channels, 1, 1).to(device)
        self.shift = (-mean / std).view(1, channels, 1, 1).to(device)

    def __len__(self) -> int:
        return int(self.labels.numel())

    def normalise(self, images: Tensor) -> Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)  # (B, C, H, W) float32

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.normalise(self.images[start:stop]), self.labels[start:stop]

    def train_batches(self, order: Tensor, augment: bool,
                      generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches for one epoch; `order` is (num_batches, batch) indices from `epoch_order`."""
        for idx in order:
            images = self.images[idx]
            if augment:
                images = random_crop_flip(images, generator)
            yield self.normalise(images), self.labels[idx]


def epoch_order(labels: Tensor, batch_size: int, sampler: str, num_classes: int,
                generator: torch.Generator) -> Tensor:
    """(num_batches, batch) training indices for one epoch; the last partial batch is dropped.

    ``random``: a fresh permutation. ``balanced``: every class appears ``batch_size // C`` times
    in every batch (classes with fewer samples are cycled through fresh permutations).
    """
    n, device = labels.numel(), labels.device
    if sampler == "random":
        perm = torch.randperm(n, generator=generator, device=device)
        num_batches = max(n // batch_size, 1)
        size = min(batch_size, n)
        return perm[: num_batches * size].view(num_batches, size)
    per_class = balanced_per_class(batch_size, num_classes)
    num_batches = max(n // (per_class * num_classes), 1)
    need = num_batches * per_class
    columns = []
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if members.numel() == 0:
            raise ConfigError(f"the balanced sampler needs every class in the training split; "
                              f"class {c} has no samples (raise data.max_train_samples)")
        rounds = -(-need // members.numel())
        perms = [members[torch.randperm(members.numel(), generator=generator, device=device)]
                 for _ in range(rounds)]
        columns.append(torch.cat(perms)[:need].view(num_batches, per_class))
    return torch.cat(columns, dim=1)  # (num_batches, C * per_class)


def balanced_per_class(batch_size: int, num_classes: int) -> int:
    per_class = batch_size // num_classes
    if per_class < 1:
        raise ConfigError(f"train.batch_size={batch_size} is smaller than the {num_classes} "
                          f"classes: the balanced sampler needs batch_size >= num_classes")
    return per_class


def random_crop_flip(images: Tensor, generator: torch.Generator) -> Tensor:
    """Pad-4 random crop and horizontal flip of a uint8 batch, as one gather."""
    b, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (PAD, PAD, PAD, PAD))  # (B, C, H+8, W+8), zeros like torchvision
    dy = torch.randint(0, 2 * PAD + 1, (b, 1), generator=generator, device=device)
    dx = torch.randint(0, 2 * PAD + 1, (b, 1), generator=generator, device=device)
    flip = torch.rand(b, 1, generator=generator, device=device) < 0.5
    rows = dy + torch.arange(h, device=device)  # (B, H)
    cols = torch.arange(w, device=device)
    cols = dx + torch.where(flip, cols.flip(0), cols)  # (B, W), reversed where flipped
    batch = torch.arange(b, device=device).view(b, 1, 1, 1)
    chans = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[batch, chans, rows.view(b, 1, h, 1), cols.view(b, 1, 1, w)]
