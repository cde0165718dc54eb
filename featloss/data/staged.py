"""Torchvision datasets staged on disk (``featloss data prepare``), read with ``download=False``.

`load_torchvision` returns torchvision's own dataset object, or raises one `DataError` line
that says what is wrong with the staged files and gives the ``featloss data prepare`` command:
a dataset folder that is absent (or a ``data.root`` that points inside it), files missing,
an archive not unpacked, a file truncated or not in its format.

What torchvision 0.29 raises for such files (each case tried; `STAGED_WRONGLY` catches exactly
these, around the constructor only):

- RuntimeError: a file missing ("Dataset not found"), a CIFAR file failing its md5 check, an
  MNIST file shorter than its header says.
- AssertionError: an MNIST file that is not IDX (a text or gzip file, 2 bytes).
- ValueError: an empty MNIST file, an MNIST labels file holding images; a CIFAR batch of the
  wrong width.
- TypeError: an IDX file of another dtype; a CIFAR file that pickles something other than a dict.
- pickle.UnpicklingError, EOFError, KeyError: a CIFAR file that is not the expected pickle.
  (Real CIFAR files are md5-checked first, so these need fakes with the check off, as in tests.)
- OSError: a file that cannot be read.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

from featloss.data.content import dataset_missing, reason, staged_wrongly
from featloss.errors import DataError

TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10",
                       "cifar100": "CIFAR100"}
STAGED_WRONGLY = (RuntimeError, AssertionError, ValueError, TypeError, KeyError, EOFError,
                  pickle.UnpicklingError, OSError)


def torchvision_class(key: str):
    import torchvision.datasets as tvd

    return getattr(tvd, TORCHVISION_CLASSES[key])


# What each class reads under ROOT: its folder (`base_folder`, or the class name for MNIST) and
# files, as torchvision 0.29 names them (a test checks this against its classes). Known here so
# that a dataset not staged is diagnosed without importing torchvision (over a second).
_MNIST_FILES = ["raw/train-images-idx3-ubyte", "raw/train-labels-idx1-ubyte",
                "raw/t10k-images-idx3-ubyte", "raw/t10k-labels-idx1-ubyte"]
STAGED_FILES = {
    "mnist": ("MNIST", _MNIST_FILES),
    "fashion_mnist": ("FashionMNIST", _MNIST_FILES),
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)]
                + ["test_batch", "batches.meta"]),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"]),
}


def load_torchvision(key: str, root: str, train: bool):
    """torchvision's dataset `key` (one split) from `root`. Raises DataError (module doc)."""
    folder, _ = staged_folder(key, root)
    if not folder.is_dir():  # not staged: the line needs no torchvision
        raise diagnose(key, root, None)
    cls = torchvision_class(key)
    try:
        return cls(root, train=train, download=False)
    except STAGED_WRONGLY as exc:
        raise diagnose(key, root, exc) from exc


def staged_folder(key: str, root: str) -> tuple[Path, list[Path]]:
    """The folder torchvision reads under `root` and the files it needs (`STAGED_FILES`)."""
    name, files = STAGED_FILES[key]
    folder = Path(root) / name
    return folder, [folder / f for f in files]


def diagnose(key: str, root: str, exc: BaseException | None) -> DataError:
    """The one line for a staged dataset that torchvision failed to load with `exc` (None: not
    loaded, its folder is absent)."""
    folder, files = staged_folder(key, root)
    if not folder.is_dir():
        expected = f"{folder}/raw/*-ubyte" if files[0].parent.name == "raw" else f"{folder}/"
        inside = Path(root).name == folder.name or any(
            (Path(root) / f.relative_to(folder)).is_file() for f in files)
        hint = (f"; data.root must be the folder that holds {folder.name}/, here "
                f"{Path(root).resolve().parent}" if inside else "")
        return dataset_missing(key, root, expected, hint)
    missing = [f for f in files if not f.is_file()]
    if missing:
        names = ", ".join(str(f.relative_to(root)) for f in missing[:4])
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        packed = [f for f in missing if f.with_name(f.name + ".gz").is_file()]
        note = f"; {packed[0].name}.gz is there but not unpacked" if packed else ""
        return staged_wrongly(key, root, folder, f"missing {names}{more}{note}")
    bad = _first_bad_file(key, files)
    problem = (f"{bad[0].relative_to(root)}: {bad[1]}" if bad
               else f"torchvision: {type(exc).__name__}: {reason(exc)}")
    return staged_wrongly(key, root, folder, problem)


def _first_bad_file(key: str, files: list[Path]) -> tuple[Path, str] | None:
    """(file, why) for the first staged file that does not parse on its own, else None."""
    cls = torchvision_class(key)
    if hasattr(cls, "base_folder"):
        from torchvision.datasets import cifar

        md5 = dict(cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]])
        for path in files:
            if not cifar.check_integrity(str(path), md5[path.name]):
                return path, "fails torchvision's md5 check (truncated or altered)"
            try:
                with open(path, "rb") as fh:
                    entry = pickle.load(fh, encoding="latin1")
            except (pickle.UnpicklingError, EOFError, ValueError, OSError) as exc:
                return path, f"not a CIFAR pickle ({reason(exc)})"
            if not isinstance(entry, dict):
                return path, f"pickles a {type(entry).__name__}, not a dict"
        return None
    from torchvision.datasets.mnist import read_image_file, read_label_file

    for path in files:
        read = read_label_file if "labels" in path.name else read_image_file
        try:
            read(str(path))
        except (RuntimeError, AssertionError, ValueError, TypeError, OSError) as exc:
            kind = "labels" if read is read_label_file else "images"
            return path, f"not an IDX {kind} file of its header's size ({reason(exc)})"
    return None
