"""Forward+backward time of every loss divided by softmax's, measured side by side in one run.

Shapes: B=256, d=512, C=100 and C=1000 (one CPU thread by default). Each timing is the median of
`--repeats` rounds; within a round the losses run interleaved, so machine noise hits all alike.
Where a loss's default targets cannot exist (simplex centroids or one-hot anchors need
d >= C-1), the row uses ``repulsion`` targets and says so. Target: <= 1.2x softmax.

Then, in the same run and the same interleaved way, featloss against the public implementations
of pytorch-metric-learning (the ``bench`` extra: ``pip install -e .[bench]``; without it this
part is skipped with a note), at the same shapes (target: featloss <= 1.0x theirs):

- L-Softmax vs PML ``LargeMarginSoftmaxLoss`` at the same margin m, scale 1. PML has no λ: its
  target logit is ‖w_y‖‖x‖ψ(θ_y) (Eq. 4 with λ = 0), reached through CosineSimilarity (x and
  the columns of W normalised, then every logit multiplied back by ‖w_j‖‖x‖) and acos for k.
  featloss pins (λ‖w_y‖‖x‖cos θ_y + ‖w_y‖‖x‖ψ(θ_y))/(1 + λ) on raw x·w_j logits, k from cos θ
  thresholds; it runs with ``lambda_base=0`` here (λ = 0, the same formula; λ is a Python
  float on the CPU, so the cost is the same at any λ).
- AM-Softmax vs PML ``CosFaceLoss`` at the same scale s and margin m: both s·(cos θ_j − m[j=y]).

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
        (out if isinstance(out, torch.Tensor) else out.total).backward()  # PML: a tensor
        x.grad = None
        for p in loss.parameters():
            p.grad = None
    sync()
    return (time.perf_counter() - start) / steps


def interleaved(losses: dict, features: torch.Tensor, labels: torch.Tensor,
                args: argparse.Namespace) -> dict[str, list[float]]:
    """Per-repeat seconds per step of every loss, all run in turn within each repeat."""
    for loss in losses.values():  # warm-up
        time_step(loss, features, labels, 2)
    times: dict[str, list[float]] = {key: [] for key in losses}
    for _ in range(args.repeats):
        for key, loss in losses.items():
            times[key].append(time_step(loss, features, labels, args.steps))
    return times


# (featloss key, its hyperparameters, PML class name, PML arguments); scale/margin matched
PML_PAIRS = [
    ("lsoftmax", {"margin": 2, "lambda_base": 0.0}, "LargeMarginSoftmaxLoss",
     {"margin": 2, "scale": 1}),
    ("lsoftmax", {"margin": 4, "lambda_base": 0.0}, "LargeMarginSoftmaxLoss",
     {"margin": 4, "scale": 1}),
    ("amsoftmax", {"scale": 30.0, "margin": 0.35}, "CosFaceLoss", {"scale": 30.0, "margin": 0.35}),
]


def pml_table(num_classes: int, features: torch.Tensor, labels: torch.Tensor,
              args: argparse.Namespace, device: torch.device) -> None:
    try:
        import pytorch_metric_learning
        from pytorch_metric_learning import losses as pml
    except ImportError:
        print("\n(pytorch-metric-learning not installed: the comparison with it is skipped; "
              "`pip install -e .[bench]` adds it)")
        return
    pairs = {}
    for key, hp, pml_name, pml_hp in PML_PAIRS:
        torch.manual_seed(0)
        ours = build_loss(key, num_classes=num_classes, feature_dim=D, **hp).to(device)
        theirs = getattr(pml, pml_name)(num_classes=num_classes, embedding_size=D,
                                        **pml_hp).to(device)
        label = f"{key} {', '.join(f'{k}={v}' for k, v in hp.items())}"
        pairs[label] = (ours, theirs, f"{pml_name}({', '.join(f'{k}={v}' for k, v in pml_hp.items())})")
    losses = {}
    for label, (ours, theirs, _) in pairs.items():
        losses[("featloss", label)] = ours
        losses[("pml", label)] = theirs
    times = interleaved(losses, features, labels, args)
    print(f"\nC={num_classes}: featloss vs pytorch-metric-learning "
          f"{pytorch_metric_learning.__version__} (forward+backward; target featloss <= 1.0x)\n"
          f"| featloss loss | ms | PML loss | ms | featloss / PML |\n|---|---|---|---|---|")
    for label, (_, _, pml_label) in pairs.items():
        ours, theirs = times[("featloss", label)], times[("pml", label)]
        ratio = statistics.median(a / b for a, b in zip(ours, theirs))
        print(f"| {label} | {statistics.median(ours) * 1e3:.3f} | {pml_label} | "
              f"{statistics.median(theirs) * 1e3:.3f} | {ratio:.2f} |", flush=True)


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
                            text=True, check=False).stdout.strip()
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
        times = interleaved({key: loss for key, (loss, _) in losses.items()}, features, labels,
                            args)
        base = statistics.median(times["softmax"])
        print(f"\nC={num_classes}\n| loss | ms / step | × softmax | variant |\n|---|---|---|---|")
        for key, (_, hp) in losses.items():
            median = statistics.median(times[key])
            note = ", ".join(f"{k}={v}" for k, v in hp.items() if k not in SETTINGS.get(key, {}))
            print(f"| {key} | {median * 1e3:.3f} | {median / base:.2f} | {note or 'defaults'} |",
                  flush=True)
        pml_table(num_classes, features, labels, args, device)


if __name__ == "__main__":
    main()
