"""Forward+backward time of every loss divided by softmax's, measured side by side in one run.

Shapes: B=256, d=512, C=100 and C=1000 (one CPU thread by default). Each timing is the median of
`--repeats` rounds; within a round the losses run interleaved, so machine noise hits all alike.
Where a loss's default targets cannot exist (simplex centroids or one-hot anchors need
d >= C-1), the row uses ``repulsion`` targets and says so. Target: <= 1.2x softmax.

    python bench/loss_overhead.py [--device cpu|cuda] [--threads 1] [--repeats 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time

import torch

from featloss.losses import build_loss, list_losses

B, D = 256, 512
SETTINGS = {"sigma2r": {"n_neighbors": 7}}


def variant(key: str, num_classes: int) -> dict:
    """Hyperparameters that can exist at (C, d): repulsion targets where the default cannot."""
    hp = dict(SETTINGS.get(key, {}))
    if key == "pod" and num_classes > D + 1:
        hp["centroids"] = "repulsion"
    if key in ("encm", "cncm") and num_classes > D:
        hp["anchors"] = "repulsion"
    return hp


def batch(num_classes: int, device: torch.device):
    gen = torch.Generator().manual_seed(0)
    # sigma2r needs n+1 samples of every class present: 32 classes x 8 samples
    present = min(num_classes, B // 8)
    labels = torch.arange(present).repeat_interleave(B // present)
    features = torch.randn(B, D, generator=gen)
    return features.to(device), labels.to(device)


def time_step(loss, features: torch.Tensor, labels: torch.Tensor, steps: int) -> float:
    x = features.clone().requires_grad_(True)
    sync = torch.cuda.synchronize if features.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        out = loss(x, labels)
        out.total.backward()
        x.grad = None
        for p in loss.parameters():
            p.grad = None
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10, help="steps per timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"# loss forward+backward / softmax's; B={B}, d={D}; device {device} ({name}), "
          f"threads {torch.get_num_threads()}, torch {torch.__version__}, commit {commit}")
    for num_classes in (100, 1000):
        features, labels = batch(num_classes, device)
        losses = {}
        for key in list_losses():
            torch.manual_seed(0)
            hp = variant(key, num_classes)
            losses[key] = (build_loss(key, num_classes=num_classes, feature_dim=D, **hp).to(device),
                           hp)
        for loss, _ in losses.values():  # warm-up
            time_step(loss, features, labels, 2)
        times: dict[str, list[float]] = {key: [] for key in losses}
        for _ in range(args.repeats):
            for key, (loss, _) in losses.items():
                times[key].append(time_step(loss, features, labels, args.steps))
        base = statistics.median(times["softmax"])
        print(f"\nC={num_classes}\n| loss | ms / step | × softmax | variant |\n|---|---|---|---|")
        for key, (_, hp) in losses.items():
            median = statistics.median(times[key])
            note = ", ".join(f"{k}={v}" for k, v in hp.items() if k not in SETTINGS.get(key, {}))
            print(f"| {key} | {median * 1e3:.3f} | {median / base:.2f} | {note or 'defaults'} |",
                  flush=True)


if __name__ == "__main__":
    main()
