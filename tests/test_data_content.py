"""Data content: bad data is one `DataError` line naming what is wrong, never a traceback.

Real files throughout: PIL images in temporary folders, MNIST/CIFAR files in torchvision's
formats read by torchvision's own classes (only CIFAR's md5 check is relaxed, as torchvision's
own tests do, where a test needs the parser to see a fake file).
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from fake_datasets import make_cifar, make_imagefolder, make_mnist_like, write_idx, write_image

from featloss.config import Config, DataConfig
from featloss.data import check_class_counts, check_data, epoch_order, load_splits
from featloss.data.checks import loss_need
from featloss.data.folders import IMAGE_EXTENSIONS
from featloss.errors import ConfigError, DataError
from featloss.train import validate_config


def run_config(**sections) -> Config:
    return validate_config(Config.from_dict(sections))


def featloss(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "featloss", *args], check=False,
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=600)


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featloss: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- the balanced sampler and a loss's per-class need (case F) -----------------------------------

CASE_F = {"data": {"dataset": "mnist5k", "sampler": "balanced", "max_train_samples": 40,
                   "max_eval_samples": 64},
          "loss": {"name": "sigma2r"}, "train": {"batch_size": 80, "epochs": 1}}
CASE_F_LINE = (
    "class 0 ('0') has 4 training images but loss 'sigma2r' with n_neighbors=7 needs 8 distinct "
    "images of every class in each batch (balanced sampler: 8 slots per class at "
    "train.batch_size 80) (9 more classes have fewer than 8); raise data.max_train_samples (or "
    "lower data.val_fraction) so every class keeps >= 8")


def test_balanced_sampler_never_repeats_an_image_within_a_batch_when_the_class_has_enough():
    # 10 slots per class; the rare classes have 10..29 images, so each epoch cycles them through
    # several permutations. Before the fix a batch straddling two permutations could hold one
    # image twice (147 of 200 batches did for sizes like these).
    sizes = [300, 13, 150, 10, 11, 29, 97]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(sizes)])
    gen = torch.Generator().manual_seed(0)
    batches = 0
    for _ in range(300):  # epochs: the generator carries on, as in training
        order = epoch_order(labels, 70, "balanced", len(sizes), gen)
        for row in order:
            assert len(set(row.tolist())) == len(row)
            assert torch.bincount(labels[row], minlength=7).tolist() == [10] * 7
        batches += len(order)
        drawn = torch.bincount(order.flatten(), minlength=len(labels))
        for c in range(len(sizes)):  # each image of a cycled class drawn equally often, within 1
            counts = drawn[labels == c]
            if len(counts) < order.shape[0] * 10:
                assert int(counts.max() - counts.min()) <= 1
    assert batches == 300 * 8


def test_a_class_with_fewer_images_than_its_slots_repeats_and_is_reported():
    labels = torch.cat([torch.zeros(100), torch.ones(7), torch.full((50,), 2)]).long()
    order = epoch_order(labels, 30, "balanced", 3, torch.Generator().manual_seed(0))
    rare = order[:, 10:20]  # class 1's slots
    assert all(len(set(row.tolist())) < 10 for row in rare)  # 10 slots, 7 images: repeats
    lines = check_class_counts(labels, 3, 30, 0, ["a", "b", "c"])
    assert lines == [("class 1 ('b') has 7 training images for its 10 slots in each batch "
                     "(balanced sampler: 10 slots per class at train.batch_size 30): batches "
                     "repeat its images")]
    with pytest.raises(DataError, match=r"class 1 \('b'\) has 7 training images, fewer than its "
                                        r"10 slots .* loss 'x' needs 5 distinct images .* lower "
                                        r"train.batch_size to <= 21 or raise"):
        check_class_counts(labels, 3, 30, 5, ["a", "b", "c"], "loss 'x'")


def test_case_f_sigma2r_with_too_few_images_per_class_is_one_line():
    with pytest.raises(DataError) as info:
        check_data(run_config(**CASE_F))
    assert str(info.value) == CASE_F_LINE


def test_sigma2r_with_enough_images_but_fewer_than_the_slots_is_one_line():
    # 10 images per class >= n_neighbors + 1 = 8, but 16 slots per class: images would repeat
    config = run_config(data={**CASE_F["data"], "max_train_samples": 100}, loss="sigma2r",
                        train={"batch_size": 160, "epochs": 1})
    with pytest.raises(DataError, match=r"class 0 \('0'\) has 10 training images, fewer than its "
                                        r"16 slots in each batch .* lower train.batch_size to "
                                        r"<= 100 or raise data.max_train_samples"):
        check_data(config)


def test_the_classes_option_raises_the_slots_per_class():
    # 2 classes of 30 training images; batch 80 gives each class 40 slots
    config = run_config(data={**CASE_F["data"], "classes": 2, "max_train_samples": 60},
                        loss="sigma2r", train={"batch_size": 80, "epochs": 1})
    with pytest.raises(DataError, match=r"class 0 \('0'\) has 30 training images, fewer than its "
                                        r"40 slots"):
        check_data(config)
    config = run_config(data={**CASE_F["data"], "classes": 2, "max_train_samples": 60},
                        loss="sigma2r", train={"batch_size": 40, "epochs": 1})
    assert check_data(config) == []


def test_sigma2r_with_enough_images_passes_and_every_batch_is_distinct():
    config = run_config(data={**CASE_F["data"], "max_train_samples": 200}, loss="sigma2r",
                        train={"batch_size": 80, "epochs": 1})
    assert check_data(config) == []
    labels = load_splits(config.data).train.labels
    order = epoch_order(labels, 80, "balanced", 10, torch.Generator().manual_seed(0))
    assert all(len(set(row.tolist())) == 80 for row in order)


def test_a_loss_without_a_need_gets_a_warning_not_an_error(caplog):
    config = run_config(data={**CASE_F["data"]}, loss="softmax",
                        train={"batch_size": 80, "epochs": 1})
    with caplog.at_level(logging.WARNING, logger="featloss.data"):
        lines = check_data(config)
    assert lines == [("class 0 ('0') has 4 training images for its 8 slots in each batch "
                     "(balanced sampler: 8 slots per class at train.batch_size 80) (9 more "
                     "classes have fewer than 8): batches repeat its images")]


def test_a_class_without_training_images_is_an_error_for_the_balanced_sampler():
    labels = torch.tensor([0, 0, 0, 2, 2, 2])
    with pytest.raises(DataError, match=r"class 1 \('b'\) has no training images, but the "
                                        r"balanced sampler puts every class in every batch \(1 "
                                        r"more classes have none\)"):
        check_class_counts(labels, 4, 8, 0, ["a", "b", "c", "d"])


def test_every_class_keeps_a_training_image_under_a_tiny_cap():
    s = load_splits(DataConfig(dataset="mnist5k", max_train_samples=5))
    assert torch.bincount(s.train.labels, minlength=10).min() >= 1


def test_the_need_names_what_sets_it():
    assert loss_need(run_config(loss="sigma2r", data={"sampler": "balanced"},
                                train={"batch_size": 80})) == (8, ("loss 'sigma2r' with "
                                                                  "n_neighbors=7"))
    assert loss_need(run_config(loss={"name": "sigma2r", "n_neighbors": 3},
                                data={"sampler": "balanced"}, train={"batch_size": 80}))[0] == 4
    assert loss_need(run_config(loss="softmax")) == (0, "loss 'softmax'")


def test_check_data_is_cached_and_a_failure_is_not(monkeypatch):
    from featloss.data import checks

    calls = []
    real = checks.load_splits
    monkeypatch.setattr(checks, "load_splits", lambda cfg: calls.append(cfg) or real(cfg))
    config = run_config(data={"dataset": "digits", "max_train_samples": 300, "split_seed": 7})
    assert check_data(config) == check_data(config) == []
    assert len(calls) == 1
    for _ in range(2):
        with pytest.raises(DataError):
            check_data(run_config(**{**CASE_F, "seed": 3}))
    assert len(calls) == 3


def test_cli_case_f_is_one_line():
    args = ["train", "--dataset", "mnist5k", "--loss", "sigma2r", "--epochs", "1",
            "--set", "data.sampler=balanced", "--set", "train.batch_size=80",
            "--set", "data.max_train_samples=40", "--set", "data.max_eval_samples=64"]
    assert_one_error_line(featloss(*args), "featloss: error: " + CASE_F_LINE)
    # siblings: enough images for the need but fewer than the slots; the classes option
    assert_one_error_line(featloss(*args[:-4], "--set", "data.max_train_samples=100",
                                   "--set", "train.batch_size=160"),
                          "has 10 training images, fewer than its 16 slots")
    assert_one_error_line(featloss(*args[:-4], "--set", "data.max_train_samples=60",
                                   "--set", "data.classes=2"),
                          "has 30 training images, fewer than its 40 slots")


def test_validate_of_case_f_as_a_study_is_the_run_s_one_line(tmp_path):
    """mnist5k is embedded: the data validate checks is the data every trial gets, so a plan
    it cannot serve is refused by validate as by run (it was a note, exit 0)."""
    study = tmp_path / "f.yaml"
    study.write_text("name: f-study\n"
                     "data: {dataset: mnist5k, sampler: balanced, max_train_samples: 40, "
                     "max_eval_samples: 64}\n"
                     "train: {epochs: 1, batch_size: 80}\nlosses: [sigma2r]\n")
    for command in ("validate", "run"):
        assert_one_error_line(featloss(command, str(study), "--storage", str(tmp_path / "r"),
                                       "--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}")
                              if command == "run" else featloss(command, str(study)),
                              "featloss: error: " + CASE_F_LINE.split(" (balanced")[0])


def test_validate_notes_a_staged_dataset_absent_here(tmp_path):
    """A staged dataset may live on the cluster only: validate says so in a note, exit 0."""
    study = tmp_path / "c.yaml"
    study.write_text(f"name: c-study\ndata: {{dataset: cifar10, root: {tmp_path / 'none'}}}\n"
                     f"losses: [softmax]\n")
    proc = featloss("validate", str(study))
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stdout.splitlines() if line.startswith("note: dataset")]
    assert len(notes) == 1 and "cifar10" in notes[0] and "not checked" in notes[0], proc.stdout


# -- image folders (case H) ----------------------------------------------------------------------

def load_folder(root: Path, **options):
    return load_splits(DataConfig(dataset="imagefolder", root=str(root), **options))


@pytest.mark.parametrize("split", ["train", "test"])
def test_an_empty_class_folder_is_one_line_naming_it(tmp_path, split):
    make_imagefolder(tmp_path, classes=3, per_class=2)
    for png in (tmp_path / split / "class_1").iterdir():
        png.unlink()
    with pytest.raises(DataError, match=f"class folder {tmp_path / split / 'class_1'}/ holds no "
                                        f"images; add images of class 'class_1'"):
        load_folder(tmp_path)


def test_a_class_folder_with_only_non_image_files_names_them(tmp_path):
    make_imagefolder(tmp_path, classes=2, per_class=2)
    for png in (tmp_path / "train" / "class_0").iterdir():
        png.unlink()
    (tmp_path / "train" / "class_0" / "labels.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"class_0/ holds no images \(only 1 non-image files such "
                                        r"as .*labels.csv\)"):
        load_folder(tmp_path)


def test_hidden_entries_are_never_classes_or_images(tmp_path):
    make_imagefolder(tmp_path, classes=3, per_class=2)
    (tmp_path / "train" / ".ipynb_checkpoints").mkdir()  # empty: torchvision's ImageFolder fails
    write_image(tmp_path / "test" / ".ipynb_checkpoints" / "x.png")  # torchvision: a 4th class
    (tmp_path / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "train" / "class_0" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "train" / "class_0" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    write_image(tmp_path / "train" / "class_2" / ".hidden" / "y.png")
    s = load_folder(tmp_path, val_fraction=0.5)
    assert s.num_classes == 3 and s.class_names == ["class_0", "class_1", "class_2"]
    assert len(s.train) + len(s.val) == 6 and len(s.test) == 6
    assert s.warnings == []


def test_train_and_test_with_different_class_folders_is_one_line(tmp_path):
    make_imagefolder(tmp_path, classes=3, per_class=2)
    (tmp_path / "test" / "class_2").rename(tmp_path / "test" / "zz")
    with pytest.raises(DataError, match=r"train/ and test/ have different class folders \(only in "
                                        r"train/: class_2; only in test/: zz\)"):
        load_folder(tmp_path)


def test_a_single_class_or_no_class_folder_is_one_line(tmp_path):
    make_imagefolder(tmp_path, classes=1, per_class=2)
    with pytest.raises(DataError, match=r"has only one class folder \(class_0/\); a classifier "
                                        r"needs >= 2"):
        load_folder(tmp_path)
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "test").mkdir()
    write_image(tmp_path / "flat" / "train" / "0.png")
    with pytest.raises(DataError, match=r"flat/train/ has no class folders"):
        load_folder(tmp_path / "flat")


def _png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buf, "png")
    return buf.getvalue()


@pytest.mark.parametrize("name,content,why", [
    ("bad.png", b"\x89PNG\r\n\x1a\n this is not a png", "not a known image format"),
    ("empty.jpg", b"", "not a known image format"),
    ("notes.png", b"hello, I am text", "not a known image format"),
    ("half.png", _png()[:300], "image file is truncated"),
])
def test_a_file_with_an_image_extension_that_does_not_decode_is_named(tmp_path, name, content,
                                                                       why):
    make_imagefolder(tmp_path, classes=2, per_class=2)
    (tmp_path / "train" / "class_1" / name).write_bytes(content)
    bad = tmp_path / "train" / "class_1" / name
    with pytest.raises(DataError, match=f"{bad} is not a readable image \\({why}"):
        load_folder(tmp_path)


def test_a_broken_symlink_is_named(tmp_path):
    make_imagefolder(tmp_path, classes=2, per_class=2)
    (tmp_path / "test" / "class_0" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match=r"gone.png is not a readable image \(No such file"):
        load_folder(tmp_path)


def test_non_image_files_are_skipped_with_one_warning_line(tmp_path, caplog):
    make_imagefolder(tmp_path, classes=2, per_class=3)
    (tmp_path / "train" / "class_0" / "notes.txt").write_text("collected 2026")
    (tmp_path / "train" / "class_1" / "labels.csv").write_text("a,b")
    (tmp_path / "test" / "README").write_text("test split")
    (tmp_path / "train" / "class_1" / "anim.gif").write_bytes(b"GIF89a")
    with caplog.at_level(logging.WARNING, logger="featloss.data"):
        s = load_folder(tmp_path, split_seed=11)
    assert len(s.train) + len(s.val) == 6 and len(s.test) == 6
    assert len(s.warnings) == 1
    line = s.warnings[0]
    assert line.startswith(f"imagefolder {tmp_path}: skipped 4 files that are not images or lie "
                           f"outside the class folders (")
    for part in ("1 .txt", "1 .csv", "1 .gif", "1 (no extension)", "images are .jpg"):
        assert part in line
    assert [r.getMessage() for r in caplog.records] == [f"featloss: warning: {line}"]
    config = run_config(data={"dataset": "imagefolder", "root": str(tmp_path), "split_seed": 11})
    assert check_data(config) == [line]


def test_image_modes_all_become_the_same_rgb(tmp_path):
    make_imagefolder(tmp_path, classes=2, per_class=1, size=8)
    modes = [("L", "png"), ("LA", "png"), ("RGB", "png"), ("RGBA", "png"), ("P", "png"),
             ("I;16", "png"), ("I;16", "tiff"), ("RGB", "jpg"), ("L", "bmp"), ("RGBA", "webp")]
    for i, (mode, ext) in enumerate(modes):
        write_image(tmp_path / "train" / "class_0" / f"m{i}.{ext}", mode, (8, 8), value=100)
    s = load_folder(tmp_path, val_fraction=0.05)
    images = torch.cat([s.train.images, s.val.images])[
        torch.cat([s.train.labels, s.val.labels]) == 0]  # class_0: the random one + the modes
    assert images.shape[1:] == (3, 8, 8) and images.dtype == torch.uint8
    uniform = [img for img in images if int(img.max() - img.min()) <= 8]
    assert len(uniform) == len(modes)
    for img in uniform:  # grey 100 everywhere (P: palette rounding, jpg/webp: compression)
        assert abs(float(img.float().mean()) - 100) <= 6


@pytest.mark.parametrize("mode", ["I", "F"])
def test_images_without_a_fixed_range_are_named(tmp_path, mode):
    make_imagefolder(tmp_path, classes=2, per_class=1, size=8)
    path = tmp_path / "train" / "class_1" / "deep.tiff"
    write_image(path, mode, (8, 8))
    with pytest.raises(DataError, match=f"{path} is a mode-{mode} image"):
        load_folder(tmp_path)


def test_images_of_different_sizes_need_image_size(tmp_path):
    make_imagefolder(tmp_path, classes=2, per_class=2, size=16)
    write_image(tmp_path / "train" / "class_1" / "big.png", "RGB", (20, 20))
    with pytest.raises(DataError, match=r"images must share one square size \(.*big.png is 20x20 "
                                        r"but .*class_0/0.png is 16x16\); set data.image_size"):
        load_folder(tmp_path)
    assert load_folder(tmp_path, image_size=12).image_size == 12


def test_non_square_images_need_image_size(tmp_path):
    make_imagefolder(tmp_path, classes=2, per_class=2, size=16)
    write_image(tmp_path / "test" / "class_0" / "wide.png", "RGB", (20, 16))
    with pytest.raises(DataError, match=r"images must share one square size \(.*wide.png is 20x16, "
                                        r"not square\)"):
        load_folder(tmp_path)
    assert load_folder(tmp_path, image_size=8).test.images.shape[1:] == (3, 8, 8)


def make_tiny_imagenet(root: Path, classes: int = 3, per_class: int = 2) -> Path:
    base = root / "tiny-imagenet-200"
    wnids = [f"n{c:08d}" for c in range(classes)]
    for wnid in wnids:
        for i in range(per_class):
            write_image(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", "RGB", (8, 8))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text(f"{wnid}_0.JPEG\t0\t0\t8\t8\n")
    lines = []
    for i, wnid in enumerate(wnids):
        write_image(base / "val" / "images" / f"val_{i}.JPEG", "RGB", (8, 8))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t8\t8")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def test_tiny_imagenet_layout_loads_without_warnings_and_names_a_missing_val_image(tmp_path):
    base = make_tiny_imagenet(tmp_path)
    (base / "train" / ".ipynb_checkpoints").mkdir()
    s = load_splits(DataConfig(dataset="tiny_imagenet", root=str(tmp_path), val_fraction=0.5))
    assert s.num_classes == 3 and len(s.test) == 3 and s.warnings == []
    (base / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DataError, match=r"val_1.JPEG is not a readable image \(No such file"):
        load_splits(DataConfig(dataset="tiny_imagenet", root=str(tmp_path), image_size=8))


def test_classes_and_sample_order_are_torchvisions(tmp_path):
    from torchvision.datasets import ImageFolder

    from featloss.data.folders import scan_split

    make_imagefolder(tmp_path, classes=3, per_class=3)
    write_image(tmp_path / "train" / "class_1" / "sub" / "deep.PNG")
    write_image(tmp_path / "train" / "class_1" / "A.jpg")
    ours = scan_split(tmp_path / "train", "test")
    theirs = ImageFolder(str(tmp_path / "train"))
    assert ours.classes == theirs.classes and ours.samples == theirs.samples


def test_image_extensions_are_torchvisions():
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert IMAGE_EXTENSIONS == IMG_EXTENSIONS


def test_cli_case_h_and_siblings_are_one_line(tmp_path):
    roots = {}
    for name in ("empty", "corrupt", "mismatch", "hidden"):
        roots[name] = tmp_path / name
        make_imagefolder(roots[name], classes=2, per_class=2, size=8)
    for png in (roots["empty"] / "test" / "class_1").iterdir():
        png.unlink()
    (roots["corrupt"] / "train" / "class_1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n no")
    (roots["mismatch"] / "test" / "class_1").rename(roots["mismatch"] / "test" / "zz")
    (roots["hidden"] / "train" / ".ipynb_checkpoints").mkdir()
    (roots["hidden"] / "test" / "class_0" / "notes.txt").write_text("x")

    def train(root: Path, *extra: str) -> subprocess.CompletedProcess:
        return featloss("train", "--dataset", "imagefolder", "--epochs", "1",
                        "--set", f"data.root={root}", "--set", "train.batch_size=2", *extra)

    assert_one_error_line(train(roots["empty"]), f"class folder {roots['empty']}/test/class_1/ "
                                                 f"holds no images")
    assert_one_error_line(train(roots["corrupt"]), f"{roots['corrupt']}/train/class_1/bad.png is "
                                                   f"not a readable image")
    assert_one_error_line(train(roots["mismatch"]), "only in train/: class_1; only in test/: zz")
    ok = train(roots["hidden"])  # the hidden folder is ignored; the .txt is skipped, counted
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.strip().splitlines() == [
        (f"featloss: warning: imagefolder {roots['hidden']}: skipped 1 files that are not images "
        f"or lie outside the class folders (1 .txt), e.g. {roots['hidden']}/test/class_0/"
        f"notes.txt; images are {', '.join(IMAGE_EXTENSIONS)}")]


# -- torchvision datasets staged wrongly or truncated ------------------------------------------

def _truncate(path: Path, size: int) -> None:
    path.write_bytes(path.read_bytes()[:size])


MNIST_CASES = {
    "images missing": (lambda raw: (raw / "train-images-idx3-ubyte").unlink(),
                       "missing MNIST/raw/train-images-idx3-ubyte"),
    "test labels missing": (lambda raw: (raw / "t10k-labels-idx1-ubyte").unlink(),
                            "missing MNIST/raw/t10k-labels-idx1-ubyte"),
    "only the archive": (lambda raw: (raw / "train-images-idx3-ubyte").rename(
        raw / "train-images-idx3-ubyte.gz"), ("train-images-idx3-ubyte.gz is there but not "
                                             "unpacked")),
    "images truncated": (lambda raw: _truncate(raw / "train-images-idx3-ubyte", 20000),
                         "MNIST/raw/train-images-idx3-ubyte: not an IDX images file"),
    "labels truncated": (lambda raw: _truncate(raw / "t10k-labels-idx1-ubyte", 12),
                         "MNIST/raw/t10k-labels-idx1-ubyte: not an IDX labels file"),
    "images empty": (lambda raw: _truncate(raw / "train-images-idx3-ubyte", 0),
                     "MNIST/raw/train-images-idx3-ubyte: not an IDX images file"),
    "an html page": (lambda raw: (raw / "train-images-idx3-ubyte").write_text("<html>404</html>"),
                     "MNIST/raw/train-images-idx3-ubyte: not an IDX images file"),
    "labels hold images": (lambda raw: (raw / "train-labels-idx1-ubyte").write_bytes(
        (raw / "train-images-idx3-ubyte").read_bytes()), ("train-labels-idx1-ubyte: not an IDX "
                                                          "labels file")),
    "more labels than images": (lambda raw: write_idx(raw / "train-labels-idx1-ubyte",
                                                      np.zeros(70, np.uint8)),
                                "the training split has 60 images but 70 labels"),
    "a label out of range": (lambda raw: write_idx(raw / "t10k-labels-idx1-ubyte",
                                                   np.full(20, 12, np.uint8)),
                             "a test label is 12, outside the 10 classes 0..9"),
}


@pytest.mark.parametrize("case", list(MNIST_CASES))
def test_mnist_staged_wrongly_is_one_line_with_the_prepare_command(tmp_path, case):
    make_mnist_like(tmp_path, "MNIST", n_train=60, n_test=20)
    mutate, needle = MNIST_CASES[case]
    mutate(tmp_path / "MNIST" / "raw")
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(dataset="mnist", root=str(tmp_path)))
    line = str(info.value)
    assert line.startswith(f"dataset 'mnist' under {tmp_path} is staged wrongly or truncated (")
    assert needle in line
    assert line.endswith(f"; remove {tmp_path / 'MNIST'} and stage it again with "
                         f"`featloss data prepare mnist --root {tmp_path}`")


def test_a_data_root_pointing_inside_the_dataset_says_where_it_should_point(tmp_path):
    make_mnist_like(tmp_path, "FashionMNIST")
    with pytest.raises(DataError, match=f"data.root must be the folder that holds FashionMNIST/, "
                                        f"here {tmp_path}; stage it once with `featloss data "
                                        f"prepare fashion_mnist --root"):
        load_splits(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "FashionMNIST")))


CIFAR_CASES = {
    "a batch missing": (lambda b: (b / "data_batch_3").unlink(), ("missing cifar-10-batches-py/"
                                                                 "data_batch_3")),
    "meta missing": (lambda b: (b / "batches.meta").unlink(), ("missing cifar-10-batches-py/"
                                                              "batches.meta")),
    "a batch truncated": (lambda b: _truncate(b / "data_batch_2", 100),
                          "data_batch_2: not a CIFAR pickle (pickle data was truncated)"),
    "a batch empty": (lambda b: _truncate(b / "data_batch_2", 0),
                      "data_batch_2: not a CIFAR pickle (Ran out of input)"),
    "a batch of text": (lambda b: (b / "test_batch").write_text("hello world"),
                        "test_batch: not a CIFAR pickle"),
    "a pickled list": (lambda b: (b / "data_batch_1").write_bytes(pickle.dumps([1, 2])),
                       "data_batch_1: pickles a list, not a dict"),
    "a wrong key": (lambda b: (b / "data_batch_1").write_bytes(pickle.dumps({"data": []})),
                    "torchvision: KeyError"),
    "more images than labels": (lambda b: (b / "data_batch_4").write_bytes(pickle.dumps(
        {"data": np.zeros((10, 3072), np.uint8), "labels": [1] * 3})),
        "the training split has 50 images but 43 labels"),
}


@pytest.mark.parametrize("case", list(CIFAR_CASES))
def test_cifar_staged_wrongly_is_one_line_with_the_prepare_command(tmp_path,
                                                                   cifar_integrity_unchecked,
                                                                   case):
    make_cifar(tmp_path, 10, n_train=50, n_test=20)
    mutate, needle = CIFAR_CASES[case]
    mutate(tmp_path / "cifar-10-batches-py")
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(dataset="cifar10", root=str(tmp_path)))
    line = str(info.value)
    assert line.startswith(f"dataset 'cifar10' under {tmp_path} is staged wrongly or truncated (")
    assert needle in line, line
    assert line.endswith(f"`featloss data prepare cifar10 --root {tmp_path}`")


def test_cifar_files_failing_their_md5_name_the_first_one(tmp_path):
    make_cifar(tmp_path, 100, n_train=200, n_test=20)  # fake content: md5 checked, as in real use
    with pytest.raises(DataError, match=r"is staged wrongly or truncated \(cifar-100-python/train: "
                                        r"fails torchvision's md5 check"):
        load_splits(DataConfig(dataset="cifar100", root=str(tmp_path)))


def test_a_missing_dataset_folder_is_still_not_found(tmp_path):
    with pytest.raises(DataError, match=f"dataset 'cifar10' not found under {tmp_path} "):
        load_splits(DataConfig(dataset="cifar10", root=str(tmp_path)))


def test_cli_truncated_mnist_is_one_line_with_the_prepare_command(tmp_path):
    make_mnist_like(tmp_path, "MNIST")
    _truncate(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte", 5000)
    proc = featloss("train", "--dataset", "mnist", "--epochs", "1", "--set",
                    f"data.root={tmp_path}")
    assert_one_error_line(proc, "train-images-idx3-ubyte: not an IDX images file",
                          f"`featloss data prepare mnist --root {tmp_path}`")


def test_prepare_leaves_a_garbage_staged_folder_alone_in_one_line(tmp_path, capsys):
    from featloss.cli import main as cli_main

    make_mnist_like(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_text("<html>404</html>")
    assert cli_main(["data", "prepare", "mnist", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'MNIST'} exists but does not load" in err


def test_data_errors_are_config_errors():
    assert issubclass(DataError, ConfigError)


@pytest.mark.parametrize("key", ["mnist", "fashion_mnist", "cifar10", "cifar100"])
def test_staged_files_table_agrees_with_torchvision(key):
    """`STAGED_FILES` names what torchvision's own class reads, so the diagnosis of a dataset
    that is not staged can skip importing torchvision."""
    import torchvision.datasets as tvd

    from featloss.data.staged import STAGED_FILES, TORCHVISION_CLASSES

    cls = getattr(tvd, TORCHVISION_CLASSES[key])
    folder, files = STAGED_FILES[key]
    if hasattr(cls, "base_folder"):  # CIFAR
        expected = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        assert (folder, files) == (cls.base_folder, expected)
    else:
        names = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
        assert (folder, files) == (cls.__name__, [f"raw/{n}" for n in names])


def test_a_dataset_not_staged_is_one_line_without_importing_torchvision(tmp_path):
    code = ("import sys\nfrom featloss.data.staged import load_torchvision\n"
            "from featloss.errors import DataError\n"
            f"try:\n    load_torchvision('cifar10', {str(tmp_path)!r}, True)\n"
            "except DataError as exc:\n    print(exc)\n"
            "print('torchvision' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, cwd=REPO)
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("dataset 'cifar10' not found under"), proc.stdout + proc.stderr
    assert f"expected {tmp_path}/cifar-10-batches-py/" in lines[0]
    assert lines[-1] == "False"
