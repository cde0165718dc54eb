"""The loss catalogue: one module per loss, one line here per module.

Importing a module registers its loss(es) with `register_loss`.
"""

from featloss.losses.base import (
    FeatureLoss,
    LossInfo,
    LossOutput,
    build_loss,
    list_losses,
    loss_info,
    register_loss,
)
from featloss.losses import softmax  # noqa: F401  CE(x Wᵀ)

__all__ = [
    "FeatureLoss",
    "LossInfo",
    "LossOutput",
    "build_loss",
    "list_losses",
    "loss_info",
    "register_loss",
]
