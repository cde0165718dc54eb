"""Device-resident batches: the whole split lives on the training device as uint8.

Sampling, augmentation (pad-4 random crop + horizontal flip) and normalisation are batched tensor
operations on that device, driven by one `torch.Generator`, so an epoch has no per-sample Python
and its randomness is reproducible and checkpointable.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.nn import functional as F

from featloss.data.splits import Split
from featloss.errors import ConfigError, DataError

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
    in every batch. A class with fewer samples than one epoch needs is cycled through fresh
    permutations (each sample appears equally often, within one); no batch holds a sample twice
    unless its class has fewer samples than its slots in a batch (`check_class_counts` rejects
    that for a loss that needs distinct samples).
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
        columns.append(_cycled(members, need, per_class, generator).view(num_batches, per_class))
    return torch.cat(columns, dim=1)  # (num_batches, C * per_class)


def _cycled(members: Tensor, need: int, per_class: int, generator: torch.Generator) -> Tensor:
    """`need` draws from `members`: fresh permutations end to end, read as rows of `per_class`.

    A row that straddles two permutations takes the end of one and the start of the next; the
    next is fixed up so its start holds none of those (possible whenever there are at least
    `per_class` members), so no row repeats a member.
    """
    m, device = members.numel(), members.device
    perms = [members[torch.randperm(m, generator=generator, device=device)]]
    filled = m
    while filled < need:
        perm = members[torch.randperm(m, generator=generator, device=device)]
        done = filled % per_class  # slots of the straddling row the last permutation filled
        if done and per_class <= m:
            perm = _avoid_at_start(perm, perms[-1][-done:], per_class - done, generator)
        perms.append(perm)
        filled += m
    return torch.cat(perms)[:need]


def _avoid_at_start(perm: Tensor, taken: Tensor, head: int, generator: torch.Generator) -> Tensor:
    """`perm` with the members of `taken` moved out of its first `head` places (random swaps)."""
    clash = torch.nonzero(torch.isin(perm[:head], taken)).flatten()
    if clash.numel() == 0:
        return perm
    # places >= head holding a member not taken: m - per_class + len(clash) >= len(clash) of them
    free = head + torch.nonzero(~torch.isin(perm[head:], taken)).flatten()
    pick = free[torch.randperm(free.numel(), generator=generator, device=perm.device)]
    pick = pick[: clash.numel()]
    perm = perm.clone()
    perm[clash], perm[pick] = perm[pick], perm[clash]
    return perm


def balanced_per_class(batch_size: int, num_classes: int) -> int:
    per_class = batch_size // num_classes
    if per_class < 1:
        raise ConfigError(f"train.batch_size={batch_size} is smaller than the {num_classes} "
                          f"classes: the balanced sampler needs batch_size >= num_classes")
    return per_class


def check_class_counts(labels: Tensor, num_classes: int, batch_size: int, needed: int,
                       class_names: list[str], needed_by: str = "the loss") -> list[str]:
    """Can the balanced sampler give every batch `needed` distinct samples of every class?

    `labels` (N,) are the training labels, `needed` the loss's `min_samples_per_class` (0: no
    need), `needed_by` names it in messages ("loss 'sigma2r' with n_neighbors=7"). A class with
    fewer samples than its slots per batch (``batch_size // num_classes``) repeats samples
    within batches: a DataError when `needed` > 0 (a repeated sample is its own nearest
    neighbour), else a warning line. A class with no training sample is always a DataError.
    Returns the warning lines; names the first class at fault and counts the others.
    """
    slots = balanced_per_class(batch_size, num_classes)
    if slots < needed:
        raise ConfigError(f"train.batch_size={batch_size} gives {slots} samples per class for "
                          f"{num_classes} classes, but {needed_by} needs >= {needed}; use "
                          f"train.batch_size >= {needed * num_classes}")
    counts = torch.bincount(labels.flatten().cpu(), minlength=num_classes)[:num_classes].tolist()
    setting = f"balanced sampler: {slots} slots per class at train.batch_size {batch_size}"

    def first_below(limit: int) -> tuple[str, int, str] | None:
        below = [c for c in range(num_classes) if counts[c] < limit]
        if not below:
            return None
        c = below[0]
        name = f"class {c} ('{class_names[c]}')" if c < len(class_names) else f"class {c}"
        fewer = "none" if limit == 1 else f"fewer than {limit}"
        more = f" ({len(below) - 1} more classes have {fewer})" if len(below) > 1 else ""
        return name, counts[c], more

    if found := first_below(1):
        name, _, more = found
        raise DataError(f"{name} has no training images, but the balanced sampler puts every "
                        f"class in every batch{more}; raise data.max_train_samples or lower "
                        f"data.val_fraction")
    if needed and (found := first_below(needed)):
        name, count, more = found
        raise DataError(
            f"{name} has {count} training images but {needed_by} needs {needed} distinct images "
            f"of every class in each batch ({setting}){more}; raise data.max_train_samples (or "
            f"lower data.val_fraction) so every class keeps >= {needed}")
    if not (found := first_below(slots)):
        return []
    name, count, more = found
    if needed:
        raise DataError(
            f"{name} has {count} training images, fewer than its {slots} slots in each batch "
            f"({setting}), so batches would repeat its images, but {needed_by} needs {needed} "
            f"distinct images of every class in each batch{more}; lower train.batch_size to "
            f"<= {min(counts) * num_classes} or raise data.max_train_samples")
    return [(f"{name} has {count} training images for its {slots} slots in each batch "
             f"({setting}){more}: batches repeat its images")]


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
