"""`featloss ...`: the command line. Bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Sequence

from featloss.errors import ConfigError

EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2."""

    def error(self, message: str):  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message} (see {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="featloss", description=(
        "Hyperparameter studies of feature-learning classification losses on Ray Tune, "
        "Optuna and MLflow."))
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    train = sub.add_parser("train", help="train one model with one loss")
    train.add_argument("--config", help="YAML file with data/model/loss/train/seed sections")
    train.add_argument("--dataset", help="dataset key (featloss datasets)")
    train.add_argument("--backbone", help="backbone key (featloss backbones)")
    train.add_argument("--loss", help="loss key (featloss losses)")
    train.add_argument("--feature-dim", type=int, help="features produced by the backbone")
    train.add_argument("--epochs", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override any key, e.g. --set train.lr=0.01 --set loss.alpha=1.5")
    train.add_argument("--save-state", metavar="PATH", help="write the final training state here")
    train.add_argument("--resume", metavar="PATH",
                       help="continue from a state saved by --save-state")
    train.add_argument("--json", action="store_true",
                       help="end stdout with one JSON object of the final metrics")

    sub.add_parser("losses", help="list the losses: key, paper, equations, hyperparameters")
    sub.add_parser("backbones", help="list the backbones")
    sub.add_parser("datasets", help="list the datasets")

    data = sub.add_parser("data", help="stage real datasets")
    data_sub = data.add_subparsers(dest="data_command", parser_class=_Parser, metavar="ACTION")
    prepare = data_sub.add_parser("prepare", help="download/stage a dataset once (file-locked)")
    prepare.add_argument("dataset")
    prepare.add_argument("--root", required=True, help="folder shared by every node")

    _add_study_commands(sub)
    return parser


def _add_study_commands(sub) -> None:
    try:
        from featloss import commands
    except ImportError:  # pragma: no cover - the study engine is optional at this stage
        return
    commands.add_parsers(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.version:
            from featloss import __version__

            print(__version__)
            return 0
        if args.command is None:
            parser.print_help()
            return 0
        return _dispatch(args)
    except ConfigError as exc:
        print(f"featloss: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("featloss: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `featloss losses | head`
        sys.stderr.close()
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        return cmd_train(args)
    if args.command == "losses":
        return cmd_losses()
    if args.command == "backbones":
        return cmd_backbones()
    if args.command == "datasets":
        return cmd_datasets()
    if args.command == "data":
        from featloss.data.prepare import prepare_dataset

        if args.data_command != "prepare":
            raise ConfigError("featloss data: expected an action, e.g. "
                              "featloss data prepare cifar10 "
                              "--root DIR")
        print(prepare_dataset(args.dataset, args.root))
        return 0
    from featloss import commands

    return commands.dispatch(args)


# -- train ----------------------------------------------------------------------------------------

def train_config(args: argparse.Namespace):
    """(config, recipe settings applied) for `featloss train`.

    Layers, later over earlier: Config defaults, the ``--config`` file, the flags, ``--set``;
    then the loss's recipe (`featloss losses`) sets each of its keys that none of those set
    explicitly, as studies do (`featloss.plan.base_config`).
    """
    from featloss.config import Config, LossConfig, load_config_file, parse_overrides

    raw = load_config_file(args.config) if args.config else {}
    config = Config.from_dict(raw, where=args.config or "config")
    # `loss: NAME` (the shorthand) sets the name only
    explicit = set(_dotted_keys({**raw, "loss": {"name": raw["loss"]}}
                                if isinstance(raw.get("loss"), str) else raw))
    overrides: dict[str, Any] = {}
    for flag, key in (("dataset", "data.dataset"), ("backbone", "model.backbone"),
                      ("loss", "loss.name"), ("feature_dim", "model.feature_dim"),
                      ("epochs", "train.epochs"), ("seed", "seed"), ("device", "train.device")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.loss is not None and args.loss != config.loss.name:
        # another loss: the config file's hyperparameters don't apply
        config = config.model_copy(update={"loss": LossConfig(name=config.loss.name)})
        explicit = {k for k in explicit if not k.startswith("loss.")}
    overrides.update(parse_overrides(args.set))
    explicit |= set(_dotted_keys({("loss.name" if k == "loss" else k): v
                                  for k, v in overrides.items()}))
    return apply_recipe(config.with_overrides(overrides), explicit)


def apply_recipe(config, explicit: set[str]):
    """`config` with its loss's recipe settings for every key not in `explicit` (dotted keys;
    a key counts as set when it or a section above it is in `explicit`), and those settings."""
    from featloss.losses import loss_info

    name = config.loss.name
    recipe = loss_info(name).recipe.settings  # ConfigError naming the loss when unknown

    def is_set(key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[:i]) in explicit for i in range(1, len(parts) + 1))

    applied = {k: v for k, v in recipe.items() if not is_set(k)}
    if applied:
        config = config.with_overrides(applied, where=f"recipe of loss '{name}'")
    return config, applied


def _dotted_keys(raw: dict, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves of a nested dict (``{"train": {"lr": 1}}`` -> train.lr)."""
    keys = []
    for key, value in raw.items():
        if isinstance(value, dict) and value:
            keys += _dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def _recipe_line(loss: str, applied: dict[str, Any]) -> str:
    return f"recipe {loss}: " + ", ".join(f"{k}={v}" for k, v in applied.items())


def cmd_train(args: argparse.Namespace) -> int:
    from featloss.train import fit, loss_warnings, save_state, validate_config

    config, recipe = train_config(args)
    config = validate_config(config)
    resume = _resume_state(args.resume, config) if args.resume else None
    if args.save_state:
        _check_writable(args.save_state)
    last_state: dict[str, Any] = {}
    out = sys.stdout
    for line in loss_warnings(config):
        print(f"featloss: warning: {line}", file=sys.stderr, flush=True)
    if recipe:
        print(_recipe_line(config.loss.name, recipe), file=out, flush=True)

    def report(metrics: dict, state) -> None:
        print(format_epoch(metrics, config.train.epochs), file=out, flush=True)
        if args.save_state:
            last_state["state"] = state

    result = fit(config, report, resume=resume)
    if args.save_state and last_state:
        save_state(last_state["state"](), args.save_state)
    final = {k: v for k, v in result.metrics.items()}
    final.update(status=result.status, loss=config.loss.name, dataset=config.data.dataset,
                 backbone=config.model.backbone, feature_dim=config.model.feature_dim,
                 recipe=dict(recipe))
    if args.json:
        print(json.dumps(_json_safe(final), sort_keys=True))
    else:
        print(f"{result.status}: {result.epochs_completed} epochs, "
              f"val/accuracy {final.get('val/accuracy', math.nan):.4f}, "
              f"test/accuracy {final.get('test/accuracy', math.nan):.4f}")
    return 0 if result.status == "completed" else 1


def _resume_state(path: str, config) -> dict:
    """A state saved by --save-state for this config. Raises ConfigError (one line) for a
    missing, unreadable or unsafe file (loaded with weights_only: pickled code is refused) or
    a state of another config."""
    from pathlib import Path

    from featloss.storage import read_trial_state

    if not Path(path).is_file():
        raise ConfigError(f"--resume {path}: no such file")
    state, problem = read_trial_state(str(Path(path).resolve()))
    if state is not None and "epoch" not in state:
        state, problem = None, "no training state in it"
    if state is None:
        raise ConfigError(f"--resume {path}: not a featloss training state ({problem}); "
                          f"resume only from a file written by --save-state")
    if state.get("config") != config.to_dict():
        from featloss.config import Config
        from featloss.study import changed_keys

        saved = Config.from_dict(state.get("config") or {}, where=path).to_dict()
        changed = changed_keys(saved, config.to_dict(), ignore=()) or ["the config"]
        raise ConfigError(f"--resume {path}: saved for another config ({', '.join(changed[:4])});"
                          f" resume with the same options it was trained with")
    return state


def _check_writable(path: str) -> None:
    import os
    from pathlib import Path

    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"--save-state {path}: folder {folder} does not exist or is not "
                          f"writable")


def format_epoch(metrics: dict, epochs: int) -> str:
    if metrics.get("status") == "diverged":
        return f"epoch {metrics.get('epoch', '?')}/{epochs}  DIVERGED (non-finite training loss)"
    parts = [f"epoch {metrics['epoch']}/{epochs}"]
    for key, label in (("train/loss", "loss"), ("train/accuracy", "train_acc"),
                       ("val/accuracy", "val_acc"), ("test/accuracy", "test_acc")):
        if key in metrics:
            parts.append(f"{label} {metrics[key]:.4f}")
    parts.append(f"{metrics.get('epoch_seconds', 0):.1f}s")
    parts.append(f"{metrics.get('images_per_second', 0):.0f} img/s")
    return "  ".join(parts)


def _json_safe(obj: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in obj.items()}


# -- catalogues -----------------------------------------------------------------------------------

def cmd_losses() -> int:
    from featloss.losses import list_losses, loss_info

    for key in list_losses():
        info = loss_info(key)
        print(f"{key}")
        print(f"  paper:     {info.paper}")
        print(f"  equations: {info.equations}")
        print(f"  logits:    {info.logits_meaning}")
        if info.hparams:
            for h in info.hparams:
                print(f"  {h.name} = {h.default!r}   ({h.allowed})")
        else:
            print("  (no hyperparameters)")
        if info.recipe.settings:
            settings = ", ".join(f"{k}={v}" for k, v in info.recipe.settings.items())
            print(f"  recipe:    {settings}")
            if info.recipe.why:
                print(f"             ({info.recipe.why})")
        else:
            print("  recipe:    none (the featloss defaults train it)")
    return 0


def cmd_backbones() -> int:
    from featloss.backbones import backbone_info, list_backbones

    for key in list_backbones():
        print(f"{key:14s} {backbone_info(key).description}")
    return 0


def cmd_datasets() -> int:
    from featloss.data import dataset_info, list_datasets

    for key in list_datasets():
        info = dataset_info(key)
        print(f"{key:14s} {'embedded' if info.embedded else 'staged  '}  {info.description}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
