"""Every loss trains small_cnn on the embedded MNIST digits to val accuracy >= 0.90 in 3 epochs."""

from __future__ import annotations

import pytest

from featloss.config import Config
from featloss.losses import list_losses
from featloss.train import fit

# Paper settings where a loss needs them; everything else is the featloss default.
PER_LOSS = {
    # POD paper Table III trains AM-Softmax with s=5, m=0.25; s=30 needs far smaller SGD steps.
    "amsoftmax": {"loss.scale": 5.0, "loss.margin": 0.25},
    # W-Softmax refines a network first trained with softmax (Sec. 5.1).
    "wsoftmax": {"loss.warmup_epochs": 1, "train.lr": 0.05},
    # sigma2R: balanced batches with n+1 samples per class (Sec. 5); lam=0.01, Z=40, n=7.
    "sigma2r": {"data.sampler": "balanced", "train.batch_size": 100, "train.lr": 0.02},
}


@pytest.mark.slow
@pytest.mark.parametrize("key", list_losses())
def test_loss_trains_small_cnn_on_mnist5k(key):
    config = Config.from_dict({"data": {"dataset": "mnist5k"}, "model": {"backbone": "small_cnn"},
                               "loss": {"name": key}, "train": {"epochs": 3}})
    result = fit(config.with_overrides(PER_LOSS.get(key, {})))
    assert result.status == "completed"
    assert result.metrics["val/accuracy"] >= 0.90, result.metrics
