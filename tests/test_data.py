"""Datasets: embedded sources, the data options, samplers, augmentation, torchvision folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fake_datasets import make_cifar, make_imagefolder, make_mnist_like
from featloss.config import DataConfig
from featloss.data import epoch_order, load_splits, random_crop_flip
from featloss.data.sources import make_fuzzy_rgb
from featloss.errors import ConfigError


def test_mnist5k_is_the_real_5000_digits_with_a_fixed_stratified_test_split():
    s = load_splits(DataConfig(dataset="mnist5k", val_fraction=0.1))
    assert (len(s.train), len(s.val), len(s.test)) == (3600, 400, 1000)
    assert s.train.images.dtype == torch.uint8 and s.train.images.shape[1:] == (1, 28, 28)
    assert torch.bincount(s.test.labels).tolist() == [100] * 10
    assert torch.bincount(s.val.labels).tolist() == [40] * 10
    assert s.num_classes == 10 and s.in_channels == 1 and s.image_size == 28
    assert int(s.train.images.max()) == 255  # real pixels, not normalised


def test_digits_embedded():
    s = load_splits(DataConfig(dataset="digits"))
    assert s.train.images.shape[1:] == (1, 8, 8)
    assert len(s.train) + len(s.val) + len(s.test) == 1797


def test_fuzzy_rgb_follows_the_sigma2r_recipe():
    train_x, train_y, test_x, test_y = make_fuzzy_rgb(per_class=3000, seed=0)
    assert train_x.shape == (7200, 3, 32, 32) and test_x.shape == (1800, 3, 32, 32)
    assert torch.bincount(train_y).tolist() == [2400] * 3
    colours = torch.cat([train_x, test_x])[:, :, 0, 0].float() / 255  # (N, 3): uniform images
    labels = torch.cat([train_y, test_y])
    assert torch.equal(torch.cat([train_x, test_x]).amax(dim=(2, 3)),
                       torch.cat([train_x, test_x]).amin(dim=(2, 3)))
    main = colours[torch.arange(len(labels)), labels]
    other = colours.clone()
    other[torch.arange(len(labels)), labels] = -1
    assert main.min() >= 0.2 - 1 / 255 and main.max() <= 1.0
    assert other.max() <= 0.2 + 1 / 255
    assert main.mean() == pytest.approx(0.6, abs=0.02)  # U(0.2, 1.0)
    # seeded: the same call gives the same dataset, another seed another one
    assert torch.equal(make_fuzzy_rgb(50, 0)[0], make_fuzzy_rgb(50, 0)[0])
    assert not torch.equal(make_fuzzy_rgb(50, 0)[0], make_fuzzy_rgb(50, 1)[0])


def test_first_k_classes():
    s = load_splits(DataConfig(dataset="mnist5k", classes=5))
    assert s.num_classes == 5 and len(s.class_names) == 5
    for split in (s.train, s.val, s.test):
        assert int(split.labels.max()) == 4


def test_classes_larger_than_the_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="data.classes=11.*only 10 classes"):
        load_splits(DataConfig(dataset="digits", classes=11))


def test_val_split_is_stratified_seeded_and_disjoint():
    a = load_splits(DataConfig(dataset="digits", val_fraction=0.2, split_seed=0))
    b = load_splits(DataConfig(dataset="digits", val_fraction=0.2, split_seed=0))
    c = load_splits(DataConfig(dataset="digits", val_fraction=0.2, split_seed=1))
    assert torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    train = {bytes(x.numpy()) for x in a.train.images}
    assert not any(bytes(x.numpy()) in train for x in a.val.images[:50])
    fractions = torch.bincount(a.val.labels) / (torch.bincount(a.val.labels)
                                                + torch.bincount(a.train.labels))
    assert torch.allclose(fractions, torch.full_like(fractions, 0.2), atol=0.02)


def test_max_samples_caps_are_stratified():
    s = load_splits(DataConfig(dataset="mnist5k", max_train_samples=500, max_eval_samples=100))
    assert len(s.train) == 500 and len(s.val) == 100 and len(s.test) == 100
    assert torch.bincount(s.train.labels).tolist() == [50] * 10


def test_random_order_is_a_permutation_without_the_partial_batch():
    labels = torch.arange(103) % 10
    order = epoch_order(labels, 10, "random", 10, torch.Generator().manual_seed(0))
    assert order.shape == (10, 10)
    assert len(set(order.flatten().tolist())) == 100


def test_balanced_batches_have_equal_class_counts_even_for_rare_classes():
    labels = torch.cat([torch.zeros(100), torch.ones(7), torch.full((50,), 2)]).long()
    order = epoch_order(labels, 31, "balanced", 3, torch.Generator().manual_seed(0))
    assert order.shape[1] == 30  # 10 per class
    for batch in order:
        assert torch.bincount(labels[batch], minlength=3).tolist() == [10, 10, 10]
    # a rare class is cycled through fresh permutations: each member appears about equally
    rare = torch.bincount(order.flatten()[labels[order.flatten()] == 1])[100:107]
    assert int(rare.max() - rare.min()) <= 1


def test_balanced_sampler_rejects_batches_smaller_than_the_class_count():
    with pytest.raises(ConfigError, match="batch_size=4 is smaller than the 10 classes"):
        epoch_order(torch.arange(100) % 10, 4, "balanced", 10, torch.Generator())


def test_crop_flip_output_is_a_shifted_possibly_flipped_window_of_the_padded_image():
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8, generator=gen)
    out = random_crop_flip(images, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    flips = 0
    for i in range(16):
        matches = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                   if torch.equal(out[i], (lambda w: w.flip(2) if f else w)(
                       padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, f"sample {i} is not a crop of its padded image"
        flips += matches[0][2]
    assert 0 < flips < 16  # both branches happen
    again = random_crop_flip(images, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


@pytest.mark.parametrize("key,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_formats_load_through_torchvision(tmp_path, key, folder):
    written = make_mnist_like(tmp_path, folder, n_train=60, n_test=20)
    s = load_splits(DataConfig(dataset=key, root=str(tmp_path), val_fraction=0.5))
    assert len(s.train) + len(s.val) == 60 and len(s.test) == 20
    assert s.num_classes == 10 and s.image_size == 28
    assert torch.equal(s.test.images[:, 0], torch.from_numpy(written["t10k"][0]))


@pytest.mark.parametrize("key,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_formats_load_through_torchvision(tmp_path, cifar_integrity_unchecked, key, classes):
    written = make_cifar(tmp_path, classes, n_train=200 if classes == 100 else 50, n_test=20)
    s = load_splits(DataConfig(dataset=key, root=str(tmp_path), val_fraction=0.5))
    assert s.num_classes == classes and s.in_channels == 3 and s.image_size == 32
    assert torch.equal(s.test.images, torch.from_numpy(written["test"][0]))
    assert s.test.labels.tolist() == written["test"][1]


def test_imagefolder_loads_and_resizes(tmp_path):
    make_imagefolder(tmp_path, classes=3, per_class=4, size=16)
    s = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), val_fraction=0.25))
    assert s.num_classes == 3 and s.image_size == 16 and len(s.test) == 12
    r = load_splits(DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=8))
    assert r.image_size == 8


@pytest.mark.parametrize("key", ["mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder",
                                 "tiny_imagenet"])
def test_missing_dataset_folder_says_how_to_stage_it(tmp_path, key):
    with pytest.raises(ConfigError, match=f"dataset '{key}' not found under"):
        load_splits(DataConfig(dataset=key, root=str(tmp_path / "nowhere")))


def test_unknown_dataset():
    with pytest.raises(ConfigError, match="unknown dataset 'mnist6k'"):
        load_splits(DataConfig(dataset="mnist6k"))


def test_normalisation_statistics_come_from_train():
    s = load_splits(DataConfig(dataset="digits"))
    pixels = s.train.images.float() / 255
    assert torch.allclose(s.mean, pixels.mean(dim=(0, 2, 3)))
    assert np.isfinite(s.std.numpy()).all()
