"""Study wall time through featloss divided by the ideal, measured in one run.

A grid study of N identical trials (softmax, small_cnn, mnist5k subset, E epochs of ~1 s each:
about 5 s of training per trial) runs through `featloss.engine.run.run_study` with real Ray,
Tune and MLflow (SQLite). The ideal is the sum of the trials' own training time (Σ epoch_seconds,
read back from MLflow) divided by the concurrent slots. Printed:

- wall (study)        run_study with Ray already up, / ideal
- wall (incl. Ray)    the same plus starting and stopping Ray, / ideal
- standalone ideal    N x (one trial timed alone in this process, 1 thread) / slots, as a check
  on how much the trials slow each other down when they share the machine
- bare Tune           N no-op trials through Tune alone (no featloss): Tune's own fixed cost,
  which no trainable can avoid
- the per-trial timeline: from the record, the gap between a trial's slot freeing and the next
  trial starting (scheduling + start), and its time outside `fit` (set-up, checkpoint, logging)

    python bench/orchestration.py [--trials 16] [--epochs 5] [--samples 1200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from featloss.config import Config
from featloss.plan import expand
from featloss.study import parse_study
from featloss.train import fit


def study(trials: int, epochs: int, samples: int) -> dict:
    return {
        "name": "orchestration-bench",
        "data": {"dataset": "mnist5k", "max_train_samples": samples, "max_eval_samples": 400},
        "model": {"backbone": "small_cnn", "feature_dim": 32},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.05},
        "losses": ["softmax"],
        "seeds": list(range(trials)),
        "resources": {"cpu": 1},
    }


def standalone_seconds(raw: dict) -> float:
    torch.set_num_threads(1)
    config = Config.from_dict({k: raw[k] for k in ("data", "model", "train")})
    fit(config)  # warm caches (dataset load, allocator)
    start = time.perf_counter()
    fit(config)
    return time.perf_counter() - start


def bare_tune_seconds(trials: int, slots: int) -> float:
    """Wall time of `trials` no-op trials through Tune alone, Ray already up."""
    from ray import tune

    def noop(config):
        tune.report({"epoch": 1})

    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(slots)
    tuner = tune.Tuner(noop, param_space={"seed": tune.grid_search(list(range(trials)))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=slots,
                                                   reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0))
    began = time.perf_counter()
    tuner.fit()
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=1200, help="training images per epoch")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from mlflow.tracking import MlflowClient

    from featloss.engine import ray_setup
    from featloss.engine.progress import Progress
    from featloss.engine.run import run_new_study

    raw = study(args.trials, args.epochs, args.samples)
    alone = standalone_seconds(raw)
    workdir = Path(tempfile.mkdtemp(prefix="featloss-bench-"))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()  # create the schema outside the timing

    started = time.perf_counter()
    ray_setup.start_ray(None)
    ray_up = time.perf_counter() - started
    import ray

    slots = int(ray.cluster_resources().get("CPU", 1))
    plan = expand(parse_study(raw, source="bench"))
    began = time.perf_counter()
    record, _ = run_new_study(plan, uri, str(workdir / "results"), "bench",
                              progress=Progress(every=60))
    study_wall = time.perf_counter() - began
    bare = bare_tune_seconds(args.trials, slots)
    stopping = time.perf_counter()
    ray.shutdown()
    ray_down = time.perf_counter() - stopping

    client = MlflowClient(tracking_uri=uri)
    trials = sorted(record.trials.values(), key=lambda t: t.started)
    trial_seconds = [sum(m.value for m in client.get_metric_history(t.run_id, "epoch_seconds"))
                     for t in trials]
    ideal = sum(trial_seconds) / slots
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, check=False).stdout.strip()
    print(f"# featloss orchestration: {len(trials)} trials x {args.epochs} epochs, {slots} slots, "
          f"{os.cpu_count()} cores, commit {commit}")
    print(f"trial training time: mean {sum(trial_seconds) / len(trials):.2f} s "
          f"(alone in one process: {alone:.2f} s)")
    print(f"ideal (sum of trial times / slots): {ideal:.1f} s")
    print("| measure | seconds | / ideal |\n|---|---|---|")
    print(f"| wall (study, Ray already up) | {study_wall:.1f} | {study_wall / ideal:.3f} |")
    total = ray_up + study_wall + ray_down
    print(f"| wall (incl. Ray start {ray_up:.1f} s and stop {ray_down:.1f} s) | {total:.1f} | "
          f"{total / ideal:.3f} |")
    standalone_ideal = len(trials) * alone / slots
    print(f"| wall (study) / standalone ideal ({standalone_ideal:.1f} s) | {study_wall:.1f} | "
          f"{study_wall / standalone_ideal:.3f} |")
    print(f"| bare Tune, {len(trials)} no-op trials (Tune's own cost) | {bare:.1f} | "
          f"{bare / ideal:.3f} |")
    spans = [t.finished - t.started for t in trials]
    outside = [span - fit for span, fit in zip(spans, trial_seconds)]
    first_start = trials[0].started - (began + time.time() - time.perf_counter())
    print(f"timeline: first trial started {first_start:.1f} s after run_study began (experiment "
          f"start-up, workers importing torch); per trial outside fit (set-up, checkpoints, "
          f"reports): mean {sum(outside) / len(outside):.2f} s; overhead beyond the ideal "
          f"{study_wall - ideal:.1f} s in all")


if __name__ == "__main__":
    main()
