"""Small fake dataset folders in the torchvision on-disk formats.

They are read by torchvision's own dataset classes (MNIST, FashionMNIST, CIFAR10, CIFAR100,
ImageFolder) exactly as the real files would be. Pixel values are a deterministic function of
(sample, class) so tests can check what was loaded.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np


def fake_pixels(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _labels(n: int, classes: int) -> np.ndarray:
    return (np.arange(n) % classes).astype(np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX file as MNIST ships it (uncompressed): magic, dims (big-endian int32), uint8 data."""
    magic = 0x0800 | array.ndim  # 0x08 = unsigned byte
    with open(path, "wb") as fh:
        fh.write(struct.pack(">i", magic))
        for size in array.shape:
            fh.write(struct.pack(">i", size))
        fh.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def make_mnist_like(root: Path, folder: str = "MNIST", n_train: int = 60, n_test: int = 20,
                    seed: int = 0) -> dict:
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = fake_pixels(n, (28, 28), seed + (split == "t10k"))
        labels = _labels(n, 10)
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
        out[split] = (images, labels)
    return out


def make_cifar(root: Path, classes: int = 10, n_train: int = 50, n_test: int = 20,
               seed: int = 0) -> dict:
    """CIFAR-10 (classes=10) or CIFAR-100 (classes=100) python-pickle folders."""
    if classes == 10:
        base, label_key = root / "cifar-10-batches-py", "labels"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, names_key = "test_batch", "batches.meta", "label_names"
    else:
        base, label_key = root / "cifar-100-python", "fine_labels"
        train_files, test_file, meta_file, names_key = ["train"], "test", "meta", "fine_label_names"
    base.mkdir(parents=True, exist_ok=True)
    train = fake_pixels(n_train, (3072,), seed)
    train_labels = (np.arange(n_train) % classes).tolist()
    chunks = np.array_split(np.arange(n_train), len(train_files))
    for name, idx in zip(train_files, chunks):
        entry = {"data": train[idx], label_key: [train_labels[i] for i in idx]}
        with open(base / name, "wb") as fh:
            pickle.dump(entry, fh)
    test = fake_pixels(n_test, (3072,), seed + 1)
    test_labels = (np.arange(n_test) % classes).tolist()
    with open(base / test_file, "wb") as fh:
        pickle.dump({"data": test, label_key: test_labels}, fh)
    with open(base / meta_file, "wb") as fh:
        pickle.dump({names_key: [f"class{i}" for i in range(classes)]}, fh)
    return {"train": (train.reshape(-1, 3, 32, 32), train_labels),
            "test": (test.reshape(-1, 3, 32, 32), test_labels)}


def make_imagefolder(root: Path, classes: int = 3, per_class: int = 4, size: int = 16,
                     seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (16, 16),
                value: int = 100) -> None:
    """One real image file of PIL `mode` (L, LA, RGB, RGBA, P, I;16, I, F, ...), uniform `value`
    (a 16-bit image holds value * 257, the same brightness)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "I;16":
        img = Image.fromarray(np.full((h, w), value * 257, dtype=np.uint16))
    elif mode == "I":
        img = Image.fromarray(np.full((h, w), value, dtype=np.int32))
    elif mode == "F":
        img = Image.fromarray(np.full((h, w), value / 255, dtype=np.float32))
    elif mode == "P":
        img = Image.new("RGB", (w, h), (value, value, value)).convert("P")
    else:
        img = Image.new(mode, (w, h), (value,) * len(mode) if mode != "L" else value)
    img.save(path)
