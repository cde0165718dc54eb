"""Can this config's data serve this config's run? Checked before any compute.

`check_data(config)` is for the driver (``featloss run`` / ``validate`` / ``train``, where the
data is reachable): it loads the splits and runs every content check; `check_splits` runs the
same checks on splits already loaded (the trainer, inside a trial, so a trial on a cluster fails
with the same line). Both raise `DataError` (a `ConfigError`: one line, exit code 2 through the
CLI, a trial failed once without retries) and return the warning lines, which have already been
shown once per process on the ``featloss.data`` logger: return values are for a record (a tag,
a summary), not for printing again.

What is checked (the rest happens where the data is read, `load_splits` and its sources):
files missing, staged wrongly or truncated; image folders with empty or mismatched class
folders, unreadable images, mixed sizes; a raw dataset with inconsistent images and labels; and
here, against the run: every class of the training split, with the balanced sampler, has samples
for its slots in each batch, and at least the loss's `min_samples_per_class` distinct ones
(`check_class_counts`).
"""

from __future__ import annotations

import json

import torch

from featloss.config import Config
from featloss.data.batches import check_class_counts
from featloss.data.content import warn_once
from featloss.data.splits import DataSplits, load_splits
from featloss.errors import ConfigError

_CHECKED: dict[str, list[str]] = {}  # check_data's key -> warning lines, for configs that passed


def check_data(config: Config) -> list[str]:
    """Load `config.data` and check it against `config` (module doc); returns warning lines.

    Raises ConfigError for bad options, DataError for data that cannot serve the run. Expects a
    config that passed `featloss.train.validate_config`. A config whose data, loss, sampler and
    batch size were checked before in this process returns at once (cached results; a failure
    is not cached, so fixed files are seen on the next call). The loaded dataset stays in the
    per-process cache of `load_splits` (memory: the whole raw dataset).
    """
    key = json.dumps([config.data.model_dump(), config.loss.model_dump(),
                      config.train.batch_size], sort_keys=True, default=str)
    if key not in _CHECKED:
        _CHECKED[key] = check_splits(config, load_splits(config.data))
    return list(_CHECKED[key])


def check_splits(config: Config, splits: DataSplits) -> list[str]:
    """The checks of `check_data` on `splits` = ``load_splits(config.data)``; warning lines."""
    needed, needed_by = loss_need(config)
    lines = list(splits.warnings)
    labels, num_classes = splits.train.labels, splits.num_classes
    if config.data.sampler == "balanced":
        lines += check_class_counts(labels, num_classes, config.train.batch_size, needed,
                                    splits.class_names, needed_by)
    else:
        counts = torch.bincount(labels.cpu(), minlength=num_classes)[:num_classes]
        absent = [splits.class_names[c] for c in torch.nonzero(counts == 0).flatten().tolist()]
        if absent:
            lines.append(f"{len(absent)} classes have no training images (first: "
                         f"'{absent[0]}'): the model never trains on them")
    for line in lines:
        warn_once(line)
    return lines


def loss_need(config: Config) -> tuple[int, str]:
    """(the loss's `min_samples_per_class`, a phrase naming the loss and what sets the need)."""
    from featloss.losses import loss_info

    info = loss_info(config.loss.name)
    hparams = config.loss.hparams
    needed = info.cls.min_samples_per_class(**hparams)
    setters = [f"{h.name}={hparams.get(h.name, h.default)}" for h in info.hparams
               if needed and _need_moves(info.cls, hparams, h.name, h.default, needed)]
    return needed, f"loss '{info.key}'" + (f" with {', '.join(setters)}" if setters else "")


def _need_moves(cls: type, hparams: dict, name: str, default: object, needed: int) -> bool:
    """Does the loss's need change when integer hyperparameter `name` moves one up?"""
    value = hparams.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    try:
        return cls.min_samples_per_class(**{**hparams, name: value + 1}) != needed
    except ConfigError:
        return False
