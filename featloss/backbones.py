"""Backbones: images (B, C, H, W) -> features (B, feature_dim).

Every backbone takes ``in_channels``, ``image_size``, ``feature_dim`` and ``dropout`` and ends in
the linear layer that produces the features (the "FC layer with M units" of the W-Softmax paper).
The classifier lives in the loss, never here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from featloss.errors import ConfigError
from featloss.registry import Registry


@dataclass(frozen=True)
class BackboneInfo:
    key: str
    build: Callable[..., nn.Module]
    description: str


BACKBONES: Registry[BackboneInfo] = Registry("backbone")


def register_backbone(key: str, description: str):
    """Decorator adding a builder ``fn(*, in_channels, image_size, feature_dim, dropout)``."""

    def wrap(fn: Callable[..., nn.Module]):
        BACKBONES.add(key, BackboneInfo(key, fn, description))
        return fn

    return wrap


def list_backbones() -> list[str]:
    return BACKBONES.keys()


def backbone_info(key: str) -> BackboneInfo:
    """The record of backbone `key`. Raises ConfigError when unknown."""
    return BACKBONES.get(key)


def build_backbone(key: str, *, in_channels: int, image_size: int, feature_dim: int,
                   dropout: float = 0.0) -> nn.Module:
    info = backbone_info(key)
    return info.build(in_channels=in_channels, image_size=image_size, feature_dim=feature_dim,
                      dropout=dropout)


def _flat_size(body: nn.Module, *input_shape: int) -> int:
    """Size of `body`'s flattened output for one input, found by a dry run on the CPU."""
    if len(input_shape) == 2:  # (channels, image_size)
        input_shape = (input_shape[0], input_shape[1], input_shape[1])
    with torch.no_grad():
        was_training = body.training
        body.eval()
        try:
            out = body(torch.zeros(1, *input_shape))
        except RuntimeError as exc:  # e.g. a 5x5 kernel on a 4x4 map
            raise ConfigError(f"inputs of shape {input_shape} are too small for this backbone "
                              f"({exc})") from exc
        finally:
            body.train(was_training)
    if out.numel() == 0:
        raise ConfigError(f"images of shape {input_shape} are too small for this backbone")
    return int(out.numel())


class ConvFeatures(nn.Module):
    """A convolutional body, flattened, then the feature layer."""

    def __init__(self, body: nn.Module, in_channels: int, image_size: int,
                 feature_dim: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        width = _flat_size(body, in_channels, image_size)
        self.head = head if head is not None else nn.Identity()
        if head is not None:
            width = _flat_size(head, width)
        self.fc = nn.Linear(width, feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        return self.fc(self.head(torch.flatten(self.body(images), 1)))  # (B, feature_dim)


# -- the L-Softmax paper's CNNs (Table 1), with the NCM paper's dropout (Table 1) -----------------

def _conv_unit(in_ch: int, out_ch: int, repeats: int) -> list[nn.Module]:
    """[3x3, out_ch] x repeats, each conv followed by BN and PReLU (padding 1, stride 1)."""
    layers: list[nn.Module] = []
    for i in range(repeats):
        layers += [nn.Conv2d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False),
                   nn.BatchNorm2d(out_ch), nn.PReLU(out_ch)]
    return layers


def _paper_cnn(stages: list[tuple[int, int]], in_channels: int, dropout: float) -> nn.Sequential:
    """Conv0 then three (ConvN.x, 2x2 max-pool) stages; dropout after the first two pools."""
    (c0, r0), rest = stages[0], stages[1:]
    layers = _conv_unit(in_channels, c0, r0)
    width = c0
    for i, (channels, repeats) in enumerate(rest):
        layers += _conv_unit(width, channels, repeats)
        layers.append(nn.MaxPool2d(2, 2))
        if i < 2 and dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = channels
    return nn.Sequential(*layers)


def _register_paper_cnn(key: str, stages: list[tuple[int, int]], column: str) -> None:
    def build(*, in_channels: int, image_size: int, feature_dim: int, dropout: float):
        body = _paper_cnn(stages, in_channels, dropout)
        return ConvFeatures(body, in_channels, image_size, feature_dim)

    register_backbone(key, f"L-Softmax paper Table 1, {column} net (BN + PReLU; dropout after "
                           f"pools 1-2 as NCM Table 1)")(build)


_register_paper_cnn("cnn_mnist", [(64, 1), (64, 3), (64, 3), (64, 3)], "MNIST")
_register_paper_cnn("cnn_cifar10", [(64, 1), (64, 4), (96, 4), (128, 4)], "CIFAR-10")
_register_paper_cnn("cnn_cifar100", [(96, 1), (96, 4), (192, 4), (384, 4)], "CIFAR-100")


# -- CIFAR ResNets (3x3 stem, stride 1, no max-pool; POD paper Sec. IV) ---------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.shortcut = _shortcut(in_ch, ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_ch: int, ch: int, stride: int) -> None:
        super().__init__()
        out_ch = ch * self.expansion
        self.conv1 = nn.Conv2d(in_ch, ch, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)
        self.conv3 = nn.Conv2d(ch, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return torch.relu(self.bn3(self.conv3(out)) + self.shortcut(x))


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class CifarResNet(nn.Module):
    def __init__(self, block: type, blocks: list[int], in_channels: int, feature_dim: int,
                 dropout: float) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(64), nn.ReLU(inplace=True))
        layers, width = [], 64
        for i, (channels, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            for j in range(count):
                stride = 2 if (i > 0 and j == 0) else 1
                layers.append(block(width, channels, stride))
                width = channels * block.expansion
        self.layers = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(width, feature_dim)

    def forward(self, images: Tensor) -> Tensor:
        out = self.layers(self.stem(images))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.fc(self.dropout(out))  # (B, feature_dim)


@register_backbone("resnet18", "CIFAR ResNet-18 (3x3 stem, no max-pool; dropout before the "
                               "feature layer)")
def resnet18(*, in_channels: int, image_size: int, feature_dim: int, dropout: float):
    return CifarResNet(BasicBlock, [2, 2, 2, 2], in_channels, feature_dim, dropout)


@register_backbone("resnet50", "CIFAR ResNet-50 (3x3 stem, no max-pool; POD paper's net)")
def resnet50(*, in_channels: int, image_size: int, feature_dim: int, dropout: float):
    return CifarResNet(Bottleneck, [3, 4, 6, 3], in_channels, feature_dim, dropout)


# -- small nets -----------------------------------------------------------------------------------

@register_backbone("lenet", "LeNet-5 with PReLU (sigma2R paper's FMNIST / Fuzzy-RGB net)")
def lenet(*, in_channels: int, image_size: int, feature_dim: int, dropout: float):
    pad = 2 if image_size <= 28 else 0  # 28x28 inputs padded to the classic 32x32
    drop = [nn.Dropout(dropout)] if dropout > 0 else []
    body = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=pad), nn.PReLU(6), nn.MaxPool2d(2), *drop,
        nn.Conv2d(6, 16, 5), nn.PReLU(16), nn.MaxPool2d(2), *drop,
    )
    head = nn.Sequential(nn.LazyLinear(120), nn.PReLU(), nn.Linear(120, 84), nn.PReLU())
    return _with_lazy_head(body, head, in_channels, image_size, feature_dim)


def _with_lazy_head(body: nn.Module, head: nn.Sequential, in_channels: int, image_size: int,
                    feature_dim: int) -> nn.Module:
    width = _flat_size(body, in_channels, image_size)
    head[0] = nn.Linear(width, head[0].out_features)  # materialise now: no lazy modules at fit
    return ConvFeatures(body, in_channels, image_size, feature_dim, head=head)


@register_backbone("small_cnn", "3 conv blocks (32-64-128, BN + ReLU, 2x2 max-pools), 2x2 "
                                "average pooling, the feature layer: fast enough for CPU studies")
def small_cnn(*, in_channels: int, image_size: int, feature_dim: int, dropout: float):
    def block(cin: int, cout: int, pool: bool, drop: bool) -> list[nn.Module]:
        layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                  nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool2d(2))
        if drop and dropout > 0:  # after the first two blocks, as in the paper CNNs
            layers.append(nn.Dropout(dropout))
        return layers

    pools = [image_size >= 4, image_size >= 8, image_size >= 16]  # 8x8 digits pool twice
    body = nn.Sequential(*block(in_channels, 32, pools[0], True), *block(32, 64, pools[1], True),
                         *block(64, 128, pools[2], False), nn.AdaptiveAvgPool2d(2))
    return ConvFeatures(body, in_channels, image_size, feature_dim)
