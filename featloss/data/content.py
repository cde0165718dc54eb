"""What every loaded dataset must satisfy, and the one-line messages for data that does not.

`raw_problem` checks a source's `RawDataset` (shapes, dtypes, label range, image and label
counts); `dataset_missing` / `staged_wrongly` are the `DataError` lines for a real dataset that is
absent or broken on disk, each with the `featloss data prepare` command that fixes it;
`warn_once` shows a warning line (a skipped file, a class that repeats in batches) once per
process on the ``featloss.data`` logger, which prints the bare line on stderr when nothing else
configured logging.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from featloss.data.registry import RawDataset
from featloss.errors import DataError, one_line

LOGGER = logging.getLogger("featloss.data")
MAX_REASON_CHARS = 300  # a library's own error text quoted inside our line
_WARNED: set[str] = set()  # lines already shown by this process


def warn_once(line: str) -> None:
    """Log `line` (prefixed ``featloss: warning:``) unless this process already did."""
    if line not in _WARNED:
        _WARNED.add(line)
        LOGGER.warning("featloss: warning: %s", line)


def reason(exc: BaseException) -> str:
    """An exception as a short phrase for a one-line message: its text, else its type."""
    text = one_line(str(exc), MAX_REASON_CHARS)
    return text or type(exc).__name__


def dataset_missing(key: str, root: str, expected: str, hint: str = "") -> DataError:
    return DataError(
        f"dataset '{key}' not found under {root} (expected {expected}){hint}; stage it once with "
        f"`featloss data prepare {key} --root {root}` or set data.root to where it is staged")


def staged_wrongly(key: str, root: str, folder: Path, problem: str) -> DataError:
    """A staged dataset that does not load: name the problem and how to stage it again."""
    return DataError(
        f"dataset '{key}' under {root} is staged wrongly or truncated ({problem}); remove "
        f"{folder} and stage it again with `featloss data prepare {key} --root {root}`")


def raw_problem(raw: RawDataset) -> str | None:
    """What makes `raw` unusable, as a phrase (None when it is fine).

    Both splits: uint8 (N, C, H, W) images with N > 0, int64 (N,) labels in
    [0, len(class_names)), the same (C, H, W) in train and test.
    """
    classes = len(raw.class_names)
    for name, images, labels in (("training", raw.train_images, raw.train_labels),
                                 ("test", raw.test_images, raw.test_labels)):
        if images.dtype != torch.uint8 or images.dim() != 4:
            return (f"the {name} images are {images.dtype} of shape {tuple(images.shape)}, "
                    f"expected uint8 (N, C, H, W)")
        if labels.dim() != 1 or labels.dtype != torch.int64:
            return f"the {name} labels are {labels.dtype} of shape {tuple(labels.shape)}"
        if len(images) != len(labels):
            return f"the {name} split has {len(images)} images but {len(labels)} labels"
        if len(labels) == 0:
            return f"the {name} split has no images"
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= classes:
            bad = low if low < 0 else high
            return f"a {name} label is {bad}, outside the {classes} classes 0..{classes - 1}"
    if raw.train_images.shape[1:] != raw.test_images.shape[1:]:
        return (f"training images are {tuple(raw.train_images.shape[1:])} but test images "
                f"{tuple(raw.test_images.shape[1:])} (C, H, W)")
    return None
