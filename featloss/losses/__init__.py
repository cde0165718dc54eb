"""The loss catalogue: one module per loss, one line here per module.

Importing a module registers its loss(es) with `register_loss` into `LOSSES`; the lookups below
are the public way in (`build_loss`, `list_losses`, `loss_info`).
"""

from __future__ import annotations

from typing import Any

from featloss.losses.base import (
    LOSSES,
    FeatureLoss,
    HParam,
    LossInfo,
    LossOutput,
    Recipe,
    register_loss,
)
from featloss.losses import softmax  # noqa: F401  CE(x Wᵀ)
from featloss.losses import center  # noqa: F401  CE + lam·½‖x − c_y‖² (sigma2R paper Eq. 1)
from featloss.losses import lsoftmax  # noqa: F401  L-Softmax, Eq. 4-7 + λ annealing
from featloss.losses import amsoftmax  # noqa: F401  AM-Softmax, POD paper Eq. 3
from featloss.losses import wsoftmax  # noqa: F401  W-Softmax, Eq. 1, 11-13
from featloss.losses import pod  # noqa: F401  POD: L_cos + lam·L_SC, Eq. 13-19
from featloss.losses import sigma2r  # noqa: F401  σ²R, Eq. 8-11
from featloss.losses import ncm  # noqa: F401  E-NCM and C-NCM, Eq. 4-8

__all__ = [
    "FeatureLoss",
    "HParam",
    "LossInfo",
    "LossOutput",
    "Recipe",
    "build_loss",
    "list_losses",
    "loss_info",
    "register_loss",
]


def list_losses() -> list[str]:
    """Registry keys of every loss, in catalogue order."""
    return LOSSES.keys()


def loss_info(name: str) -> LossInfo:
    """The catalogue record of loss `name`. Raises ConfigError (a ValueError) when unknown."""
    return LOSSES.get(name)


def build_loss(name: str, *, num_classes: int, feature_dim: int, **hparams: Any) -> FeatureLoss:
    """The loss `name` as an nn.Module (see `featloss.losses.base` for the contract).

    Raises ConfigError for an unknown loss or hyperparameter name, and HParamError (a ValueError
    naming the loss, the argument and its allowed range) for an invalid value.
    """
    from featloss.errors import ConfigError

    info = loss_info(name)
    known = {h.name for h in info.hparams}
    unknown = sorted(set(hparams) - known)
    if unknown:
        raise ConfigError(f"loss '{name}': unknown hyperparameter '{unknown[0]}'; known: "
                          f"{', '.join(sorted(known)) or 'none'}")
    return info.cls(num_classes=num_classes, feature_dim=feature_dim, **hparams)
