"""The loss contract, written once, and the loss registry.

Every loss is an ``nn.Module`` built by
``build_loss(name, num_classes=C, feature_dim=d, **hparams)``::

    out = loss(features, labels)   # features (B, d) float, labels (B,) long -> LossOutput
    out.total                      # scalar tensor to backpropagate
    out.terms                      # dict[str, Tensor] of named scalar parts, logged as train/<term>
    loss.logits(features)          # (B, C) class scores without any margin; argmax = prediction

Rules every loss follows:

- Hyperparameters are keyword-only constructor arguments with the paper defaults. Invalid values
  raise ``ValueError`` naming the loss, the argument and the allowed range (`check_range`).
- Tensor names are fixed: ``weight`` (C, d) Parameter for a learnable classifier, ``centers``
  (C, d) Parameter, ``w_k`` (C,) Parameter, ``centroids`` (C, d) buffer, ``anchors`` (C, d) buffer.
  No bias anywhere.
- Fixed targets are buffers; the library never calls ``.cuda()``: devices follow ``.to()``.
- ``forward`` is a pure function of (features, labels, module state). State that changes during
  training (the L-Softmax lambda schedule, a warm-up epoch counter) lives in buffers, so it is
  checkpointed by ``state_dict()``, and is set only by the trainer through the hooks:
  `on_train_start` (the run's plan: optimizer steps per epoch and epochs; before the first epoch,
  and again after a resumed run's state is loaded), `on_epoch_start` (before each epoch) and
  `on_step` (after each optimizer step).
- `class_vectors` returns the per-class direction the loss pulls features toward (weight rows,
  centroids or anchors), used by the feature-angle metric; None when the loss has none.
- `epoch_metrics` returns loss state worth logging once per epoch (e.g. ``loss/lambda``);
  `eval_metrics` returns measurements of the loss's geometry on the validation features (e.g.
  ``loss/frac_target_logit_negative``), logged with each epoch's validation metrics.
- `plan_warnings` says, before anything trains, what in a planned run defeats the loss (one
  line each: an L-Softmax lambda still > 1 at the last step, a warm-up longer than the run).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn

from featloss.errors import HParamError, quote
from featloss.registry import Registry


@dataclass
class LossOutput:
    total: Tensor  # scalar to backpropagate
    terms: dict[str, Tensor] = field(default_factory=dict)  # named scalar parts, for logging


@dataclass(frozen=True)
class HParam:
    """One hyperparameter as the catalogue shows it."""

    name: str
    default: Any
    allowed: str  # human-readable allowed range, e.g. ">= 0" or "integer >= 1"


@dataclass(frozen=True)
class Recipe:
    """The training recipe a loss's paper uses and featloss needs to train it.

    `settings` are config overrides by dotted key (``data.sampler``, ``train.loss_lr``, ...),
    applied to a run of this loss unless the study or command sets that key itself; `why` says
    where each comes from (paper section or measurement).
    """

    settings: Mapping[str, Any] = field(default_factory=dict)
    why: str = ""


@dataclass(frozen=True)
class LossInfo:
    key: str
    cls: type
    paper: str
    equations: str
    logits_meaning: str
    hparams: tuple[HParam, ...]
    recipe: Recipe = field(default_factory=Recipe)


class FeatureLoss(nn.Module):
    """Base class of every featloss loss; see the module docstring for the contract."""

    key: str = ""  # set by @register_loss
    # name -> human-readable allowed range; the catalogue and error messages use it
    allowed: dict[str, str] = {}

    def __init__(self, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        check_range(self, "num_classes", num_classes, num_classes >= 2, "an integer >= 2")
        check_range(self, "feature_dim", feature_dim, feature_dim >= 1, "an integer >= 1")
        self.num_classes = int(num_classes)
        self.feature_dim = int(feature_dim)

    def forward(self, features: Tensor, labels: Tensor) -> LossOutput:  # pragma: no cover
        raise NotImplementedError

    def logits(self, features: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def class_vectors(self) -> Tensor | None:
        return None

    @classmethod
    def min_samples_per_class(cls, **hparams: Any) -> int:
        """Samples of every present class a training batch must hold (0: no constraint).

        The trainer and the study validator use it to reject samplers that cannot guarantee it.
        """
        return 0

    def on_train_start(self, steps_per_epoch: int, epochs: int) -> None:
        """Called by the trainer with the run's plan before the first epoch, and again when a run
        resumes (after its state is loaded): `steps_per_epoch` optimizer steps in each of
        `epochs` epochs.

        A schedule expressed in training progress (the L-Softmax ``lambda_decay_epochs``) is
        derived here. What it sets must depend only on the arguments and the hyperparameters and
        be kept in buffers, so a resumed run, or a loss loaded from a checkpoint, continues
        exactly.
        """

    def on_epoch_start(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based)."""

    def on_step(self) -> None:
        """Called by the trainer after each optimizer step."""

    def epoch_metrics(self) -> dict[str, float]:
        """Loss state logged once per epoch, by full metric key (``loss/lambda``)."""
        return {}

    def eval_metrics(self, features: Tensor, labels: Tensor) -> dict[str, float]:
        """Measurements of the loss's geometry on the validation features (N, d) and labels (N,),
        by full metric key (``loss/...``); the trainer logs them each epoch. Default: none."""
        return {}

    def plan_warnings(self, steps_per_epoch: int, epochs: int) -> list[str]:
        """One-line warnings about training this loss for `epochs` x `steps_per_epoch` optimizer
        steps (what would make the run train something other than the loss it names). Pure:
        changes no state. Default: none."""
        return []

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feature_dim={self.feature_dim}"


def check_range(loss: FeatureLoss | str, arg: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise the contract's ValueError (as `HParamError`): loss name, argument, allowed range."""
    if not ok:
        name = loss if isinstance(loss, str) else (type(loss).key or type(loss).__name__)
        raise HParamError(name, arg, f"loss '{name}': {arg}={quote(value)} is invalid; "
                                     f"allowed: {allowed}")


def check_integer(loss: FeatureLoss, arg: str, value: Any, minimum: int) -> int:
    """An integer >= minimum; floats are rejected, never truncated."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    check_range(loss, arg, value, ok, f"an integer >= {minimum}")
    return int(value)


def check_positive(loss: FeatureLoss, arg: str, value: Any, allow_zero: bool = False) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = number and (value >= 0 if allow_zero else value > 0) and value == value
    check_range(loss, arg, value, ok and abs(value) != float("inf"),
                "a finite number >= 0" if allow_zero else "a finite number > 0")
    return float(value)


def check_choice(loss: FeatureLoss, arg: str, value: Any, choices: tuple[str, ...]) -> str:
    check_range(loss, arg, value, value in choices, "one of " + ", ".join(choices))
    return value


LOSSES: Registry[LossInfo] = Registry("loss")  # filled by the modules `featloss.losses` imports


def register_loss(key: str, *, paper: str, equations: str, logits: str,
                  recipe: Recipe | None = None) -> Callable[[type], type]:
    """Class decorator adding a loss to the registry under `key` (its module name)."""

    def wrap(cls: type) -> type:
        if not issubclass(cls, FeatureLoss):
            raise TypeError(f"{cls.__name__} must subclass FeatureLoss")
        cls.key = key
        LOSSES.add(key, LossInfo(key, cls, paper, equations, logits, _hparams_of(cls),
                                 recipe or Recipe()))
        return cls

    return wrap


def _hparams_of(cls: type) -> tuple[HParam, ...]:
    params = inspect.signature(cls.__init__).parameters.values()
    return tuple(
        HParam(p.name, p.default, cls.allowed.get(p.name, ""))
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    )


def target_logit_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """``loss/frac_target_logit_negative``: the fraction of samples whose target logit
    ``logits[i, labels[i]]`` is < 0, for the losses whose logits are raw inner products x·w_j.

    Their loss can be low while z_y < 0 (W-Softmax Eq. 12 holds with z_y·‖ŵ_y + ŵ_j‖ > z_y + z_j
    without z_y > z_j, so it reaches 0 on misclassified samples), so a high fraction flags that
    degenerate geometry. Used by softmax, center, lsoftmax and sigma2r (x Wᵀ) and wsoftmax
    (x Ŵᵀ, raw x). Not by amsoftmax and pod: their logits are cosines in [−1, 1] and the loss
    sees the angle only, so no raw scale can satisfy it on the wrong side (a negative target
    cosine is just a wrong direction, which accuracy measures); nor by encm and cncm, whose
    logits −distance are <= 0 by construction (the fraction would always be 1).
    """
    target = logits.gather(1, labels.unsqueeze(1))  # (N, 1)
    return {"loss/frac_target_logit_negative": float((target < 0).double().mean())}


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy, always in float32 or wider (the loss is never computed in bf16)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return nn.functional.cross_entropy(logits, labels)
