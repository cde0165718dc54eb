"""`fit(config, report)`: train one model with one loss. Pure PyTorch: no Ray, no MLflow.

Each epoch calls ``report(metrics, state)``, where ``state()`` returns everything needed to resume
exactly (model, loss, optimizer, scheduler, epoch, RNG states); callers that checkpoint call it,
others ignore it. ``fit(config, report, resume=state)`` continues from such a state and gives the
same metrics as an uninterrupted run (on the CPU; cuDNN may reorder float sums on a GPU).

Before training, `loss_warnings(config)` says what in the planned run would defeat the loss (e.g.
an L-Softmax lambda still > 1 at the last step), one line each.

A diverged trial (non-finite training loss) stops with status ``diverged`` instead of raising.
All training randomness flows from ``config.seed`` through torch's global RNG (initialisation,
dropout) and one data generator (sampling, augmentation), both saved in the state.
"""

from __future__ import annotations

import functools
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor, nn

from featloss.backbones import backbone_info, build_backbone
from featloss.config import Config, DataConfig
from featloss.data import DeviceData, check_splits, dataset_info, epoch_order, load_splits
from featloss.data.batches import balanced_per_class
from featloss.errors import ConfigError
from featloss.losses import FeatureLoss, build_loss, loss_info
from featloss.metrics import accuracy, feature_metrics

StateFn = Callable[[], dict]
ReportFn = Callable[[dict, StateFn], None]

COMPLETED, DIVERGED = "completed", "diverged"
PLOTTED_FEATURE_DIM = 2  # runs with 2-D features keep their validation features in the state


@dataclass
class FitResult:
    status: str  # completed | diverged
    epochs_completed: int
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's report


# -- validation: every bad input is a ConfigError before any compute ------------------------------

def validate_config(config: Config) -> Config:
    """Check a parsed config against the registries, before any data is loaded.

    Raises ConfigError naming what is wrong: an unknown dataset, backbone or loss, a class count
    above the dataset's, a loss hyperparameter out of range (HParamError), a sampler or batch
    size that cannot give the loss the samples per class it needs.
    """
    data = dataset_info(config.data.dataset)
    backbone_info(config.model.backbone)
    info = loss_info(config.loss.name)
    if data.num_classes and config.data.classes and config.data.classes > data.num_classes:
        raise ConfigError(f"data.classes={config.data.classes} but dataset "
                          f"'{config.data.dataset}' has only {data.num_classes} classes; use "
                          f"data.classes <= {data.num_classes}")
    num_classes = config.data.classes or data.num_classes
    # Built on the CPU: it runs every hyperparameter check of the loss (targets are cached).
    _build_loss(config, num_classes or 2)
    needed = info.cls.min_samples_per_class(**config.loss.hparams)
    if needed and num_classes:
        _check_batch_composition(config, num_classes, needed)
    return config


def _build_loss(config: Config, num_classes: int) -> FeatureLoss:
    try:
        return build_loss(config.loss.name, num_classes=num_classes,
                          feature_dim=config.model.feature_dim, **config.loss.hparams)
    except ConfigError:
        raise
    except ValueError as exc:  # a helper's own ValueError (e.g. centroid sizes): bad input too
        raise ConfigError(str(exc)) from exc


def _check_batch_composition(config: Config, num_classes: int, needed: int) -> None:
    loss = config.loss.name
    if config.data.sampler != "balanced":
        raise ConfigError(f"data.sampler={config.data.sampler} cannot give loss '{loss}' the "
                          f">= {needed} samples of every class it needs in every batch; "
                          f"set data.sampler=balanced")
    per_class = balanced_per_class(config.train.batch_size, num_classes)
    if per_class < needed:
        raise ConfigError(
            f"train.batch_size={config.train.batch_size} gives {per_class} samples per class for "
            f"{num_classes} classes, but loss '{loss}' needs >= {needed}; use "
            f"train.batch_size >= {needed * num_classes}")


# -- the plan: optimizer steps, and what they mean for the loss -----------------------------------

def batches_per_epoch(train_size: int, batch_size: int, sampler: str, num_classes: int) -> int:
    """Optimizer steps in one epoch of `train_size` images: the rows of `epoch_order`'s plan
    (the last partial batch dropped; at least one batch)."""
    if sampler == "balanced":
        return max(train_size // (balanced_per_class(batch_size, num_classes) * num_classes), 1)
    return max(train_size // batch_size, 1)


def planned_train_size(data: DataConfig) -> int | None:
    """Images in the training split `data` selects, or None when it cannot be known cheaply.

    Exact for the embedded datasets (mnist5k, digits, fuzzy_rgb): the split is made as training
    makes it (the raw data are cached per process). None for staged datasets, which would have
    to be read from disk (their registry records carry no train size).
    """
    if not dataset_info(data.dataset).embedded:
        return None
    return _embedded_train_size(data.model_dump_json())


@functools.lru_cache(maxsize=64)
def _embedded_train_size(data_json: str) -> int:
    return len(load_splits(DataConfig.model_validate_json(data_json)).train)


def loss_warnings(config: Config) -> list[str]:
    """One line per thing in the planned run that defeats `config`'s loss (e.g. an L-Softmax
    lambda still > 1 at the last step: the margin never acts), from the loss's `plan_warnings`
    with the planned optimizer steps: epochs x `batches_per_epoch` of the training split.

    [] when the training split's size is unknown (a staged dataset; see `planned_train_size`).
    Raises ConfigError for a config `validate_config` rejects.
    """
    size = planned_train_size(config.data)
    num_classes = config.data.classes or dataset_info(config.data.dataset).num_classes
    if size is None or num_classes is None:
        return []
    t = config.train
    steps = batches_per_epoch(size, t.batch_size, config.data.sampler, num_classes)
    return _build_loss(config, num_classes).plan_warnings(steps, t.epochs)


# -- building blocks ------------------------------------------------------------------------------

def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name} but no CUDA device is available; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def build_optimizer(config: Config, model: nn.Module, loss: nn.Module) -> torch.optim.Optimizer:
    t = config.train
    groups = [{"params": list(model.parameters()), "lr": t.lr, "weight_decay": t.weight_decay}]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:  # the loss's own tensors get their own group (train.loss_lr)
        groups.append({
            "params": loss_params,
            "lr": t.lr if t.loss_lr is None else t.loss_lr,
            "weight_decay": t.weight_decay if t.loss_weight_decay is None else t.loss_weight_decay,
        })
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.Adam(groups, lr=t.lr)


def lr_factor(config: Config, epoch: int) -> float:
    """Multiplier of the initial learning rates for `epoch` (0-based)."""
    t = config.train
    if t.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / t.epochs))
    if t.schedule == "step":
        milestones = [round(f * t.epochs) for f in t.lr_milestones]
        return t.lr_gamma ** sum(epoch >= m for m in milestones)
    return 1.0


# -- the loop -------------------------------------------------------------------------------------

class _Run:
    """Everything one training run holds; `state()` / `load()` round-trip it exactly."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.device = resolve_device(config.train.device)
        seed_everything(config.seed)
        splits = load_splits(config.data)
        self.num_classes = splits.num_classes
        self._check_loss_against_data()
        check_splits(config, splits)  # the data's content against this run (DataError)
        self.model = build_backbone(
            config.model.backbone, in_channels=splits.in_channels, image_size=splits.image_size,
            feature_dim=config.model.feature_dim, dropout=config.model.dropout).to(self.device)
        self.loss: FeatureLoss = _build_loss(config, self.num_classes).to(self.device)
        self.optimizer = build_optimizer(config, self.model, self.loss)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda epoch: lr_factor(config, epoch))
        self.train_data = DeviceData(splits.train, splits.mean, splits.std, self.device)
        self.val_data = DeviceData(splits.val, splits.mean, splits.std, self.device)
        self.test_data = DeviceData(splits.test, splits.mean, splits.std, self.device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self.epoch = 0  # epochs completed
        self.status = "running"
        self.metrics: dict[str, Any] = {}
        self.val_features: dict[str, Tensor] | None = None  # set when feature_dim == 2

    def _check_loss_against_data(self) -> None:
        needed = loss_info(self.config.loss.name).cls.min_samples_per_class(
            **self.config.loss.hparams)
        if needed:
            _check_batch_composition(self.config, self.num_classes, needed)
        if self.config.data.sampler == "balanced":
            balanced_per_class(self.config.train.batch_size, self.num_classes)

    def steps_per_epoch(self) -> int:
        return batches_per_epoch(len(self.train_data), self.config.train.batch_size,
                                 self.config.data.sampler, self.num_classes)

    def split_sizes(self) -> dict[str, int]:
        """Images per split, reported with every epoch (the tracker logs the dataset once)."""
        return {"data/train_size": len(self.train_data), "data/val_size": len(self.val_data),
                "data/test_size": len(self.test_data)}

    def autocast(self):
        bf16 = self.config.train.precision == "bf16" and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=bf16)

    def state(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "data": self.generator.get_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "epoch": self.epoch,
            "status": self.status,
            "model": _to_cpu(self.model.state_dict()),
            "loss": _to_cpu(self.loss.state_dict()),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "metrics": dict(self.metrics),
            "config": self.config.to_dict(),
            # 2-D validation features of the last evaluation, for the report's scatter plot
            **({"val_features": self.val_features} if self.val_features is not None else {}),
        }

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["data"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.epoch = int(state["epoch"])
        self.status = state.get("status", "running")
        self.metrics = dict(state.get("metrics", {}))
        self.val_features = state.get("val_features")

    def train_epoch(self) -> dict[str, float] | None:
        """One epoch of SGD; None when the loss became non-finite (diverged)."""
        cfg = self.config
        self.model.train()
        self.loss.train()
        self.loss.on_epoch_start(self.epoch)
        order = epoch_order(self.train_data.labels, cfg.train.batch_size, cfg.data.sampler,
                            self.num_classes, self.generator)  # (num_batches, batch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        term_sums: dict[str, Tensor] = {}
        check_every = cfg.train.divergence_check_every
        batches = self.train_data.train_batches(order, cfg.data.augment, self.generator)
        for step, (images, labels) in enumerate(batches, start=1):
            with self.autocast():
                features = self.model(images)  # (B, d)
            out = self.loss(features.float(), labels)  # the loss always runs in fp32
            self.optimizer.zero_grad(set_to_none=True)
            out.total.backward()
            self.optimizer.step()
            self.loss.on_step()
            loss_sum += out.total.detach()
            for name, value in out.terms.items():
                term_sums[name] = term_sums.get(name, 0.0) + value.detach()
            with torch.no_grad():
                correct += (self.loss.logits(features.detach().float()).argmax(1) == labels).sum()
            if step % check_every == 0 and not torch.isfinite(loss_sum):  # syncs: not every step
                return None
        if not torch.isfinite(loss_sum):
            return None
        steps = order.shape[0]
        metrics = {"train/loss": float(loss_sum) / steps,
                   "train/accuracy": float(correct) / order.numel()}
        metrics.update({f"train/{k}": float(v) / steps for k, v in term_sums.items()})
        metrics["train/images"] = float(order.numel())
        return metrics

    @torch.no_grad()
    def evaluate(self, data: DeviceData, prefix: str, with_features: bool) -> dict[str, float]:
        self.model.eval()
        self.loss.eval()
        chunks = []
        for images, _ in data.eval_batches(self.config.train.eval_batch_size):
            with self.autocast():
                chunks.append(self.model(images).float())
        features = torch.cat(chunks)  # (N, d)
        labels = data.labels
        out = {f"{prefix}/accuracy": accuracy(self.loss.logits(features), labels),
               f"{prefix}/loss": float(self.loss(features, labels).total)}
        if with_features:
            vectors = self.loss.class_vectors()
            out.update(feature_metrics(features, labels, self.num_classes, vectors))
            out.update(self.loss.eval_metrics(features, labels))  # the loss's own geometry
            if features.shape[1] == PLOTTED_FEATURE_DIM:  # small enough to keep for a scatter plot
                self.val_features = {
                    "features": features.cpu(), "labels": labels.cpu(),
                    "class_vectors": (vectors.detach().float().cpu() if vectors is not None
                                      else torch.zeros(0, features.shape[1]))}
        return out


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def fit(config: Config, report: ReportFn | None = None, resume: dict | None = None) -> FitResult:
    """Train `config`; call ``report(metrics, state)`` after every epoch. See the module doc.

    `config` must have passed `validate_config` (the CLI and the study expansion run it once);
    checks that need the loaded data raise ConfigError/DataError here, before the first step.
    """
    run = _Run(config)
    if resume is not None:
        run.load(resume)
    report = report or (lambda metrics, state: None)
    epochs = config.train.epochs
    run.loss.on_train_start(run.steps_per_epoch(), epochs)  # on resume too: the same plan
    if run.status != "running" or run.epoch >= epochs:
        # Finished before the interruption: report the final metrics again, recompute nothing.
        run.status = DIVERGED if run.status == DIVERGED else COMPLETED
        run.metrics["status"] = run.status
        report(dict(run.metrics), run.state)
        return FitResult(run.status, run.epoch, dict(run.metrics))

    while run.epoch < epochs:
        started = time.perf_counter()
        train_metrics = run.train_epoch()
        if run.device.type == "cuda":
            torch.cuda.synchronize(run.device)
        train_seconds = time.perf_counter() - started
        if train_metrics is None:
            run.status = DIVERGED
            run.epoch += 1
            run.metrics = {"epoch": run.epoch, "train/loss": math.nan, "status": DIVERGED}
            report(dict(run.metrics), run.state)
            return FitResult(DIVERGED, run.epoch, dict(run.metrics))
        lr = run.optimizer.param_groups[0]["lr"]
        run.scheduler.step()
        run.epoch += 1
        last = run.epoch == epochs
        images = train_metrics.pop("train/images")
        metrics: dict[str, Any] = {"epoch": run.epoch, **train_metrics, "lr": lr}
        metrics.update(run.evaluate(run.val_data, "val", with_features=True))
        if last and config.train.eval_test:
            metrics.update(run.evaluate(run.test_data, "test", with_features=False))
        metrics.update(run.loss.epoch_metrics())
        metrics["epoch_seconds"] = time.perf_counter() - started
        metrics["images_per_second"] = images / train_seconds
        metrics.update(run.split_sizes())
        run.status = COMPLETED if last else "running"
        metrics["status"] = run.status
        run.metrics = metrics
        report(dict(metrics), run.state)
    return FitResult(COMPLETED, run.epoch, dict(run.metrics))


def save_state(state: dict, path: str) -> None:
    torch.save(state, path)


def load_state(path: str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)
