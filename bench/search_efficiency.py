"""Search efficiency: the compute TPE + ASHA needs to match a full grid, as a fraction of it.

For each loss (σ²R, AM-Softmax: two or more hyperparameters each) a full grid over a discrete
space is trained for real on mnist5k (`featloss.train.fit`, the study's own trainer; every point
with the same seed, so a point's learning curve is a fixed fact), recording the validation
accuracy after every epoch. The search is then replayed on those curves: Optuna's TPESampler
(ask/tell, seeded) proposes points and Ray Tune's own ASHAScheduler (time attribute `epoch`,
grace period 1, reduction factor 2, as `featloss run` configures it) decides after each epoch
whether a trial continues, one trial at a time. A trial that is re-proposed costs its epochs
again. Compute is counted in trial-epochs; the search "reaches" the grid when a trial it ran to
the full number of epochs is within `--tolerance` (0.5 points) of the grid's best final val
accuracy. Printed: the grid's compute and best, and per searcher seed the trial-epochs spent until
then as a fraction of the grid's compute (capped at 1: not reached within the grid's budget).

    python bench/search_efficiency.py [--seeds 0 1 2] [--epochs 4] [--train-samples 1200]

Target (issue 13): <= 25 % on average. Not a test: it trains ~50 models on the CPU (~10 min).
"""

from __future__ import annotations

import argparse
import itertools
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SPACES = {
    "sigma2r": {"loss.z": [5.0, 20.0, 40.0, 60.0], "loss.n_neighbors": [3, 5, 7],
                "loss.lam": [0.001, 0.01, 0.1]},
    "amsoftmax": {"loss.scale": [5.0, 10.0, 20.0, 30.0], "loss.margin": [0.1, 0.2, 0.35, 0.5]},
}


def grid_curves(loss: str, epochs: int, train_samples: int) -> dict[tuple, list[float]]:
    """Every point of the loss's space -> its validation accuracy after each epoch."""
    from featloss.config import Config
    from featloss.plan import base_config
    from featloss.study import parse_study
    from featloss.train import fit, validate_config

    space = SPACES[loss]
    study = parse_study({"name": "search-efficiency", "losses": [loss],
                         "data": {"dataset": "mnist5k", "max_train_samples": train_samples,
                                  "max_eval_samples": 500},
                         "model": {"backbone": "small_cnn", "feature_dim": 32},
                         "train": {"epochs": epochs, "eval_test": False}})
    curves = {}
    for values in itertools.product(*space.values()):
        raw, _ = base_config(study, loss)  # the loss's recipe applied, as in a study
        for key, value in zip(space, values):
            section, name = key.split(".")
            raw.setdefault(section, {})[name] = value
        config = validate_config(Config.from_dict(raw))
        history: list[float] = []
        fit(config, lambda m, s, h=history: h.append(m.get("val/accuracy", 0.0)))
        curves[values] = history + [history[-1] if history else 0.0] * (epochs - len(history))
    return curves


class _Trial:
    """What Ray's ASHAScheduler reads of a trial: its id (no controller is needed)."""

    def __init__(self, trial_id: str) -> None:
        self.trial_id = trial_id


def replay(loss: str, curves: dict[tuple, list[float]], epochs: int, seed: int,
           target: float) -> int | None:
    """Trial-epochs TPE + ASHA spend until a full-length trial reaches `target` (None: never,
    within the grid's compute)."""
    import optuna
    from optuna.distributions import CategoricalDistribution
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SPACES[loss]
    budget = len(curves) * epochs
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=seed))
    asha = ASHAScheduler(time_attr="epoch", metric="val", mode="max", max_t=epochs,
                         grace_period=1, reduction_factor=2)
    spent = 0
    for number in itertools.count():
        trial = study.ask({k: CategoricalDistribution(v) for k, v in space.items()})
        point = tuple(trial.params[k] for k in space)
        tune_trial = _Trial(f"t{number}")
        asha.on_trial_add(None, tune_trial)
        last = 0.0
        for epoch in range(1, epochs + 1):
            spent += 1
            last = curves[point][epoch - 1]
            decision = asha.on_trial_result(None, tune_trial, {"epoch": epoch, "val": last})
            if epoch == epochs and last >= target:
                return spent
            if spent >= budget:
                return None
            if decision == TrialScheduler.STOP:
                break
        asha.on_trial_complete(None, tune_trial, {"epoch": epoch, "val": last})
        study.tell(trial, last)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-samples", type=int, default=1200)
    parser.add_argument("--tolerance", type=float, default=0.005)
    parser.add_argument("--losses", nargs="+", default=list(SPACES))
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True, check=False).stdout.strip()
    print(f"# search efficiency: TPE + ASHA replayed on a trained grid; {args.epochs} epochs, "
          f"mnist5k {args.train_samples} train images; {platform.machine()}, torch "
          f"{torch.__version__}, commit {commit}")
    print("| loss | grid points | grid trial-epochs | grid best val | "
          + " | ".join(f"seed {s}" for s in args.seeds) + " | mean fraction |")
    print("|---|---|---|---|" + "---|" * (len(args.seeds) + 1))
    for loss in args.losses:
        started = time.time()
        curves = grid_curves(loss, args.epochs, args.train_samples)
        best = max(c[-1] for c in curves.values())
        budget = len(curves) * args.epochs
        fractions = []
        cells = []
        for seed in args.seeds:
            spent = replay(loss, curves, args.epochs, seed, best - args.tolerance)
            fraction = 1.0 if spent is None else spent / budget
            fractions.append(fraction)
            cells.append(f"{spent if spent is not None else '>' + str(budget)} "
                         f"({fraction:.0%})")
        print(f"| {loss} | {len(curves)} | {budget} | {best:.4f} | " + " | ".join(cells)
              + f" | {sum(fractions) / len(fractions):.0%} |", flush=True)
        print(f"#   {loss}: grid trained in {time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
