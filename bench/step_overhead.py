"""Full training step with each loss divided by the same step with softmax, side by side.

One step is what `featloss.train` does per batch: backbone forward, loss forward, zero_grad,
backward, optimizer step (SGD with momentum, the param groups of `featloss.train.build_optimizer`:
the loss's own tensors in their own group), the loss's `on_step`, and the training-accuracy
logits. Random images and features of the given shape, d = 512, B = 128, C = 10 and 100; each
loss gets its own identically initialised backbone and optimizer. Within a repeat every loss runs
`--steps` steps in turn (the order rotates between repeats), so machine noise hits all alike; a
loss's ratio is the median over repeats of (its time / softmax's time in the same repeat).
Target: <= 1.05 for every loss.

Labels: C = 10, every class about equally often; C = 100, 16 classes x 8 samples (σ²R needs
n + 1 = 8 samples of every class present; the same labels go to every loss).

    python bench/step_overhead.py [--device cpu|cuda] [--threads N] [--repeats 9]
                                  [--backbones small_cnn,cnn_cifar10] [--classes 10,100]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from featloss.backbones import build_backbone
from featloss.config import Config
from featloss.losses import build_loss, list_losses
from featloss.train import build_optimizer

REPO = Path(__file__).resolve().parents[1]
INPUTS = {"small_cnn": (1, 28), "cnn_mnist": (1, 28), "lenet": (1, 28)}  # else (3, 32)
TARGET = 1.05


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    """Short HEAD, with '+' when tracked files differ from it (the numbers are of the tree)."""
    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True,
                                  check=False).stdout.strip()
        except OSError:  # no git at all
            return ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:  # a copy without .git (the GPU machine): gpu_check.sh passes it on
        return os.environ.get("FEATLOSS_COMMIT", "unknown")
    return head + ("+" if git("status", "--porcelain", "--untracked-files=no") else "")


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return (f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), "
                f"host {cpu_model()}")
    return f"{cpu_model()}, {torch.get_num_threads()} threads of {os.cpu_count()} cores"


def labels_for(num_classes: int, batch: int) -> torch.Tensor:
    if num_classes * 8 <= batch:
        return torch.arange(batch) % num_classes
    present = batch // 8  # σ²R: 8 samples of every class present
    return torch.arange(present).repeat_interleave(batch // present)


class Runner:
    """One loss with its own backbone and optimizer, stepping on a fixed random batch."""

    def __init__(self, key: str, backbone: str, num_classes: int, feature_dim: int,
                 images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> None:
        channels, size = images.shape[1], images.shape[2]
        torch.manual_seed(0)  # the same backbone weights for every loss
        self.model = build_backbone(backbone, in_channels=channels, image_size=size,
                                    feature_dim=feature_dim).to(device)
        self.loss = build_loss(key, num_classes=num_classes, feature_dim=feature_dim).to(device)
        config = Config.from_dict({"model": {"backbone": backbone, "feature_dim": feature_dim},
                                   "loss": {"name": key},
                                   "train": {"lr": 0.01, "loss_lr": 0.1, "device": str(device)}})
        self.optimizer = build_optimizer(config, self.model, self.loss)
        self.loss.on_train_start(100, 10)
        self.loss.on_epoch_start(0)
        self.model.train()
        self.loss.train()
        self.images, self.labels, self.device = images, labels, device

    def steps(self, count: int) -> float:
        """Seconds per training step, over `count` steps."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        sync()
        start = time.perf_counter()
        for _ in range(count):  # the body of featloss.train._Run.train_epoch, fp32
            features = self.model(self.images)  # (B, d)
            out = self.loss(features.float(), self.labels)
            self.optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            self.optimizer.step()
            self.loss.on_step()
            with torch.no_grad():
                logits = self.loss.logits(features.detach().float())
                correct += (logits.argmax(1) == self.labels).sum()
        sync()
        return (time.perf_counter() - start) / count


def measure(backbone: str, num_classes: int, args: argparse.Namespace,
            device: torch.device) -> list[tuple[str, float, float]]:
    channels, size = INPUTS.get(backbone, (3, 32))
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, channels, size, size, generator=gen).to(device)
    labels = labels_for(num_classes, args.batch).to(device)
    runners = {key: Runner(key, backbone, num_classes, args.feature_dim, images, labels, device)
               for key in args.losses}
    for runner in runners.values():
        runner.steps(args.warmup)
    times: dict[str, list[float]] = {key: [] for key in runners}
    order = list(runners)
    for repeat in range(args.repeats):
        rotated = order[repeat % len(order):] + order[:repeat % len(order)]
        for key in rotated:
            times[key].append(runners[key].steps(args.steps))
    ratios = {key: statistics.median(t / s for t, s in zip(times[key], times["softmax"]))
              for key in runners}
    return [(key, statistics.median(times[key]), ratios[key]) for key in runners]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default torch's)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--steps", type=int, default=3, help="steps per timing")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per loss first")
    parser.add_argument("--backbones", default="small_cnn,cnn_cifar10")
    parser.add_argument("--classes", default="10,100")
    parser.add_argument("--losses", default=",".join(list_losses()))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--feature-dim", type=int, default=512)
    args = parser.parse_args()
    args.losses = ["softmax", *[k for k in args.losses.split(",") if k and k != "softmax"]]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device visible to torch {torch.__version__}")
    print(f"# training step with each loss / with softmax; B={args.batch}, d={args.feature_dim}, "
          f"fp32, SGD; {args.repeats} repeats x {args.steps} steps, median of per-repeat ratios")
    print(f"# device {device}: {hardware(device)}; torch {torch.__version__}; commit {commit()}")
    for backbone in args.backbones.split(","):
        for num_classes in (int(c) for c in args.classes.split(",")):
            rows = measure(backbone, num_classes, args, device)
            base = rows[0][1]
            print(f"\n{backbone}, C={num_classes} (input {INPUTS.get(backbone, (3, 32))[0]}x"
                  f"{INPUTS.get(backbone, (3, 32))[1]}²; softmax step {base * 1e3:.2f} ms)\n"
                  f"| loss | ms / step | × softmax | <= {TARGET} |\n|---|---|---|---|")
            for key, seconds, ratio in rows:
                print(f"| {key} | {seconds * 1e3:.2f} | {ratio:.3f} | "
                      f"{'yes' if ratio <= TARGET else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
