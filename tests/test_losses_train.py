"""Every loss, at its paper defaults with its recipe, trains small_cnn on the embedded MNIST
digits to val accuracy >= 0.90 in 3 epochs; `featloss train` applies recipes as studies do."""

from __future__ import annotations

import json

import pytest

from featloss.cli import build_parser, main, train_config
from featloss.config import Config
from featloss.losses import list_losses, loss_info
from featloss.train import fit


def train_args(*argv: str):
    return build_parser().parse_args(["train", *argv])


def recipe_config(*argv: str) -> tuple[Config, dict]:
    """The config `featloss train --dataset mnist5k --backbone small_cnn --epochs 3 ARGV` runs."""
    return train_config(train_args("--dataset", "mnist5k", "--backbone", "small_cnn",
                                   "--epochs", "3", *argv))


@pytest.mark.slow
@pytest.mark.parametrize("key", list_losses())
def test_loss_trains_small_cnn_on_mnist5k_at_paper_defaults_with_its_recipe(key):
    config, applied = recipe_config("--loss", key)
    assert applied == dict(loss_info(key).recipe.settings)  # nothing here overrides the recipe
    assert config.loss.hparams == {k[5:]: v for k, v in applied.items() if k.startswith("loss.")}
    result = fit(config)
    assert result.status == "completed"
    assert result.metrics["val/accuracy"] >= 0.90, result.metrics


@pytest.mark.slow
def test_lsoftmax_trains_with_its_margin_acting():
    """With the progress schedule λ reaches 0 (within 0.01) after 2 of the 3 epochs."""
    config, _ = recipe_config("--loss", "lsoftmax", "--set", "loss.lambda_decay_epochs=2")
    result = fit(config)
    assert result.metrics["loss/lambda"] < 0.01
    assert result.metrics["val/accuracy"] >= 0.90, result.metrics


def _float_train_key(key: str) -> str | None:
    return next((k for k, v in loss_info(key).recipe.settings.items()
                 if k.startswith("train.") and isinstance(v, float)), None)


def _recipe_loss() -> str:
    """A loss whose recipe sets a float train.* key and another key (the tests below need one)."""
    for key in list_losses():
        if _float_train_key(key) and len(loss_info(key).recipe.settings) >= 2:
            return key
    raise AssertionError("no recipe with a float train.* key and another key")


def test_recipes_declare_known_config_keys_and_say_why():
    for key in list_losses():
        recipe = loss_info(key).recipe
        if recipe.settings:
            assert recipe.why, key
            config = Config().with_overrides({"loss.name": key, **recipe.settings})
            flat = config.flat()
            for name, value in recipe.settings.items():
                assert flat[name] == value, (key, name)


def test_train_applies_the_recipe_unless_a_key_is_set_explicitly(tmp_path):
    key = _recipe_loss()
    settings = dict(loss_info(key).recipe.settings)
    config, applied = recipe_config("--loss", key)
    assert applied == settings
    flat = config.flat()
    assert all(flat[k] == v for k, v in settings.items())

    first = _float_train_key(key)
    config, applied = recipe_config("--loss", key, "--set", f"{first}=0.123")
    assert first not in applied and config.flat()[first] == 0.123
    assert applied == {k: v for k, v in settings.items() if k != first}

    section, name = first.split(".")
    path = tmp_path / "config.yaml"
    path.write_text(f"{section}:\n  {name}: 0.0456\n")
    config, applied = recipe_config("--config", str(path), "--loss", key)
    assert first not in applied and config.flat()[first] == 0.0456

    config, applied = recipe_config("--loss", key, "--set", f"{section}={{{name}: 0.5}}")
    assert first not in applied and config.flat()[first] == 0.5  # a whole section counts too

    config, applied = recipe_config("--loss", "softmax")
    assert applied == {} and loss_info("softmax").recipe.settings == {}


def test_another_loss_on_the_command_line_drops_the_files_loss_keys(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("loss: {name: wsoftmax, warmup_epochs: 0}\n")
    config, applied = recipe_config("--config", str(path))
    assert config.loss.hparams == {"warmup_epochs": 0} and "loss.warmup_epochs" not in applied
    config, applied = recipe_config("--config", str(path), "--loss", "pod")
    assert config.loss.name == "pod" and "warmup_epochs" not in config.loss.hparams
    path.write_text("loss: wsoftmax\n")  # the shorthand names the loss and sets nothing else
    config, applied = recipe_config("--config", str(path))
    assert applied == dict(loss_info("wsoftmax").recipe.settings)


def test_train_prints_the_recipe_and_the_plan_warnings(capsys):
    code = main(["train", "--dataset", "digits", "--backbone", "small_cnn", "--loss", "wsoftmax",
                 "--feature-dim", "16", "--epochs", "1", "--set", "data.max_train_samples=256",
                 "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    lines = out.strip().splitlines()
    settings = dict(loss_info("wsoftmax").recipe.settings)
    assert lines[0].startswith("recipe wsoftmax: ") and "loss.warmup_epochs=1" in lines[0]
    assert json.loads(lines[-1])["recipe"] == settings
    # 1 epoch of which the recipe's 1 is warm-up: W-Softmax never trains, and stderr says so
    (warning,) = err.strip().splitlines()
    assert warning.startswith("featloss: warning: loss 'wsoftmax': warmup_epochs=1 >= ")
