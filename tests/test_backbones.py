"""Every backbone maps images to feature_dim features and honours dropout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from featloss.backbones import build_backbone, list_backbones
from featloss.errors import ConfigError

SHAPES = [(1, 28), (3, 32)]


@pytest.mark.parametrize("key", list_backbones())
@pytest.mark.parametrize("channels,size", SHAPES)
def test_backbone_maps_images_to_features(key, channels, size):
    torch.manual_seed(0)
    model = build_backbone(key, in_channels=channels, image_size=size, feature_dim=7, dropout=0.0)
    images = torch.randn(2, channels, size, size)
    features = model(images)
    assert features.shape == (2, 7) and torch.isfinite(features).all()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 7  # ends in the feature layer
    features.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("key", list_backbones())
def test_dropout_argument_adds_dropout(key):
    without = build_backbone(key, in_channels=1, image_size=28, feature_dim=4, dropout=0.0)
    with_ = build_backbone(key, in_channels=1, image_size=28, feature_dim=4, dropout=0.3)
    drops = [m for m in with_.modules() if isinstance(m, nn.Dropout)]
    assert drops and all(m.p == 0.3 for m in drops)
    assert not [m for m in without.modules() if isinstance(m, nn.Dropout)]


@pytest.mark.parametrize("key", ["cnn_mnist", "cnn_cifar10", "cnn_cifar100"])
def test_paper_cnns_put_dropout_after_the_first_two_pools(key):
    model = build_backbone(key, in_channels=3, image_size=32, feature_dim=4, dropout=0.5)
    layers = list(model.body)
    pools = [i for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 3
    assert isinstance(layers[pools[0] + 1], nn.Dropout)
    assert isinstance(layers[pools[1] + 1], nn.Dropout)
    assert pools[2] == len(layers) - 1
    assert any(isinstance(m, nn.PReLU) for m in layers) and any(
        isinstance(m, nn.BatchNorm2d) for m in layers)


def test_paper_cnn_widths_follow_table_1():
    convs = lambda key: [m.out_channels for m in build_backbone(  # noqa: E731
        key, in_channels=3, image_size=32, feature_dim=4).modules() if isinstance(m, nn.Conv2d)]
    assert convs("cnn_mnist") == [64] * 10
    assert convs("cnn_cifar10") == [64] * 5 + [96] * 4 + [128] * 4
    assert convs("cnn_cifar100") == [96] * 5 + [192] * 4 + [384] * 4


def test_cifar_resnets_have_a_3x3_stride_1_stem_and_no_max_pool():
    for key in ("resnet18", "resnet50"):
        model = build_backbone(key, in_channels=3, image_size=32, feature_dim=4)
        stem = model.stem[0]
        assert stem.kernel_size == (3, 3) and stem.stride == (1, 1)
        assert not [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]


def test_unknown_backbone_and_too_small_images():
    with pytest.raises(ConfigError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", in_channels=1, image_size=28, feature_dim=4)
    with pytest.raises(ConfigError, match="too small"):
        build_backbone("lenet", in_channels=1, image_size=4, feature_dim=4)
