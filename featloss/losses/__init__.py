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
from featloss.losses import center  # noqa: F401  CE + lam·½‖x − c_y‖² (sigma2R paper Eq. 1)
from featloss.losses import lsoftmax  # noqa: F401  L-Softmax, Eq. 4-7 + λ annealing
from featloss.losses import amsoftmax  # noqa: F401  AM-Softmax, POD paper Eq. 3
from featloss.losses import wsoftmax  # noqa: F401  W-Softmax, Eq. 1, 11-13
from featloss.losses import pod  # noqa: F401  POD: L_cos + lam·L_SC, Eq. 13-19
from featloss.losses import sigma2r  # noqa: F401  σ²R, Eq. 8-11
from featloss.losses import ncm  # noqa: F401  E-NCM and C-NCM, Eq. 4-8

__all__ = [
    "FeatureLoss",
    "LossInfo",
    "LossOutput",
    "build_loss",
    "list_losses",
    "loss_info",
    "register_loss",
]
