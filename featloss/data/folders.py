"""Folders of image files (``imagefolder``, ``tiny_imagenet``): scanned and decoded here.

The layout is torchvision's ImageFolder (``SPLIT/<class>/**/<image>``, classes sorted by folder
name, files in the same order), with these rules, each a `DataError` line naming the file or
folder, never a traceback:

- Hidden entries (names starting with ``.``: ``.ipynb_checkpoints``, ``.DS_Store``, macOS
  ``._x.png`` shadows) are never classes or images. They are not data, so they are passed over
  without a warning. (torchvision's ImageFolder makes ``.ipynb_checkpoints`` a class.)
- Files without an image extension (`IMAGE_EXTENSIONS`, torchvision's list, any case), and files
  lying directly in a split folder outside every class folder, are skipped with ONE warning line
  that counts them by extension and names one: a README or a label CSV beside the images is
  common and harmless, but a researcher must still see that files were left out.
- A file with an image extension that does not decode (corrupt, truncated, not an image,
  unreadable) is an error naming it: silently training on fewer images than the folder holds
  would change the experiment without anyone knowing.
- A class folder with no images, or a split with fewer than two classes, is an error naming it.
- Every image becomes 8-bit RGB, whatever its mode: L / LA / 1 / CMYK / YCbCr by PIL's
  conversion (grey is repeated in the three channels), RGBA / LA / P-with-transparency by
  dropping alpha (the colour under transparent pixels is kept, as torchvision's loader does),
  16-bit grey (``I;16*``) scaled from 0..65535 to 0..255. 32-bit integer (``I``) and float
  (``F``) images have no fixed range, so they are an error naming the file.
- Images of different sizes (or non-square ones) need ``data.image_size``, which resizes every
  image bilinearly to a square.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featloss.data.content import reason
from featloss.errors import DataError

# torchvision.datasets.folder.IMG_EXTENSIONS (0.29), matched case-insensitively as it does
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I;16N")
MAX_NAMED = 5  # class names listed in a message before "and N more"


def is_hidden(name: str) -> bool:
    return name.startswith(".")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class FolderScan:
    """One split folder: its classes (sorted), (path, class index) samples, skipped files."""

    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str] = field(default_factory=list)  # non-image files passed over


def scan_split(split_dir: Path, where: str, expected_extras: tuple[str, ...] = ()) -> FolderScan:
    """Classes and image files of `split_dir`; `where` names the dataset in messages.

    Files whose names end with one of `expected_extras` (a dataset's own annotation files) are
    neither images nor counted as skipped. Raises DataError for a split without class folders, a
    class folder without images, or fewer than two classes.
    """
    classes, skipped = [], []
    try:
        with os.scandir(split_dir) as entries:
            for entry in entries:
                if is_hidden(entry.name):
                    continue
                if entry.is_dir():
                    classes.append(entry.name)
                else:
                    skipped.append(entry.path)  # outside every class folder
    except OSError as exc:
        raise DataError(f"{where}: cannot list {split_dir}/ ({_why(exc)})") from exc
    classes.sort()
    if not classes:
        raise DataError(f"{where}: {split_dir}/ has no class folders; expected one folder of "
                        f"images per class in it")
    samples: list[tuple[str, int]] = []
    for index, name in enumerate(classes):
        images, others = _class_files(split_dir / name, expected_extras)
        skipped += others
        if not images:
            found = f" (only {len(others)} non-image files such as {others[0]})" if others else ""
            raise DataError(
                f"{where}: class folder {split_dir / name}/ holds no images{found}; add images "
                f"of class '{name}' (extensions {', '.join(IMAGE_EXTENSIONS)}) or remove that "
                f"class folder from every split")
        samples += [(path, index) for path in images]
    if len(classes) < 2:
        raise DataError(f"{where}: {split_dir}/ has only one class folder ({classes[0]}/); a "
                        f"classifier needs >= 2 classes, one folder of images each")
    return FolderScan(classes, samples, skipped)


def _class_files(folder: Path, expected_extras: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(image files, skipped files) under `folder`, in torchvision's order; hidden ones pruned."""
    walked = []
    for root, dirs, files in os.walk(folder, followlinks=True):  # as torchvision's make_dataset
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        walked.append((root, files))
    images, others = [], []
    for root, files in sorted(walked):
        for name in sorted(files):
            if is_hidden(name) or name.endswith(expected_extras):
                continue
            (images if is_image_file(name) else others).append(os.path.join(root, name))
    return images, others


def check_same_classes(where: str, train: FolderScan, test: FolderScan, test_name: str) -> None:
    """Raise DataError naming the class folders only one of train/ and `test_name`/ has."""
    if train.classes == test.classes:
        return
    only_train = sorted(set(train.classes) - set(test.classes))
    only_test = sorted(set(test.classes) - set(train.classes))
    parts = [f"only in {split}/: {_names(names)}" for split, names
             in (("train", only_train), (test_name, only_test)) if names]
    raise DataError(f"{where}: train/ and {test_name}/ have different class folders "
                    f"({'; '.join(parts)}); every class needs a folder in both")


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:MAX_NAMED])
    return shown + (f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else "")


def skipped_warning(where: str, skipped: list[str]) -> list[str]:
    """The one warning line that counts skipped non-image files ([] when none)."""
    if not skipped:
        return []
    by_ext = Counter(Path(p).suffix.lower() or "(no extension)" for p in skipped)
    counts = ", ".join(f"{n} {ext}" for ext, n in by_ext.most_common())
    return [(f"{where}: skipped {len(skipped)} files that are not images or lie outside the "
             f"class folders ({counts}), e.g. {skipped[0]}; images are "
             f"{', '.join(IMAGE_EXTENSIONS)}")]


def read_images(paths: list[str], image_size: int | None, where: str) -> Tensor:
    """Decode image files into one uint8 (N, 3, S, S) tensor (module doc: modes and sizes)."""
    from PIL import Image

    arrays, first, first_size = [], None, None
    for path in paths:
        try:
            with Image.open(path) as img:
                rgb = _to_rgb(img, path, where)
        except DataError:
            raise
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"{where}: {path} is not a readable image ({_why(exc)}); replace or "
                            f"remove it") from exc
        (w, h), first, first_size = rgb.size, first or path, first_size or rgb.size
        if image_size is None and (w != h or rgb.size != first_size):
            what = (f"{path} is {w}x{h}, not square" if w != h else
                    f"{path} is {w}x{h} but {first} is {first_size[0]}x{first_size[1]}")
            raise DataError(f"{where}: images must share one square size ({what}); set "
                            f"data.image_size to resize them all")
        if image_size is not None and rgb.size != (image_size, image_size):
            rgb = rgb.resize((image_size, image_size), Image.BILINEAR)
        arrays.append(np.asarray(rgb, dtype=np.uint8))  # (S, S, 3)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _to_rgb(img, path: str, where: str):
    from PIL import Image

    if img.mode in SIXTEEN_BIT_GREY:
        grey = np.asarray(img).astype(np.float32) * (255.0 / 65535.0)  # (H, W) 0..65535 -> 0..255
        return Image.fromarray(np.round(grey).astype(np.uint8), "L").convert("RGB")
    if img.mode in ("I", "F"):
        raise DataError(f"{where}: {path} is a mode-{img.mode} image (32-bit "
                        f"{'integer' if img.mode == 'I' else 'float'}), which has no fixed "
                        f"range; save it as an 8-bit or 16-bit image")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when P with transparency goes straight to RGB
    return img.convert("RGB")


def _why(exc: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # its text repeats the path
        return "not a known image format"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return reason(exc)
