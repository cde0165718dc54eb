"""Flat cost per trial at scale: N tiny trials (1 epoch, 128 images) through the real engine.

Runs one grid study of N trials (softmax, digits, 128 training images, 1 epoch, seeds 0..N-1)
in this process with a local Ray and a SQLite MLflow store, samples this process's resident
memory (the driver) every 0.5 s, and prints per hundred trials: the wall time between the
completions that close the hundred, the per-trial overhead (that time x slots / 100 minus the
mean time a trial spends in `fit`), and the driver RSS at the hundred's end. Also prints the size
of featloss's record and of Tune's experiment-state files.

    python bench/scale.py [--trials 1000] [--slots 2]

Target (issue 13): the last hundred within 1.2x of the first; RSS growth <= 0.05 MB per trial.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WARMUP = 10  # completions before the first hundred (Ray's workers start, torch imports)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bare_tune(trials: int, slots: int, samples: list) -> list[float]:
    """The same number of no-op trials through Tune alone (no featloss): completion times."""
    from ray import tune

    finished: list[float] = []

    class Done(tune.Callback):
        def on_trial_complete(self, iteration, trials, trial, **info):
            finished.append(time.time())

    def noop(config):
        tune.report({"epoch": 1, "val/accuracy": 0.5})

    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(slots)
    tuner = tune.Tuner(noop, param_space={"seed": tune.grid_search(list(range(trials)))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=slots,
                                                   reuse_actors=True),
                       run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0,
                                                 callbacks=[Done()]))
    tuner.fit()
    return finished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--bare-tune", action="store_true",
                        help="the same number of no-op trials through Tune alone, for Tune's "
                             "own share of the cost")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["FEATLOSS_PROGRESS_SECONDS"] = "30"
    import ray

    from featloss.engine.progress import Progress
    from featloss.engine.run import run_new_study
    from featloss.plan import expand
    from featloss.study import parse_study

    work = Path(tempfile.mkdtemp(prefix="featloss-scale-"))
    raw = {"name": "scale", "losses": ["softmax"], "seeds": list(range(args.trials)),
           "max_concurrent": args.slots,
           "data": {"dataset": "digits", "max_train_samples": 128, "max_eval_samples": 64},
           "model": {"backbone": "small_cnn", "feature_dim": 16},
           "train": {"epochs": 1, "batch_size": 32, "lr": 0.05}}
    plan = expand(parse_study(raw, source="scale.yaml"))
    samples: list[tuple[float, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((time.time(), rss_mb()))
            time.sleep(0.5)

    ray.init(address="local", num_cpus=args.slots, include_dashboard=False,
             log_to_driver=False)
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    started = time.time()
    try:
        if args.bare_tune:
            finished = bare_tune(args.trials, args.slots, samples)
            record = None
        else:
            record, _ = run_new_study(plan, f"sqlite:///{work / 'mlflow.db'}",
                                      str(work / "results"), "scale.yaml",
                                      progress=Progress(every=30))
            finished = sorted(t.finished for t in record.trials.values())
    finally:
        done.set()
        ray.shutdown()
    wall = time.time() - started
    fit = sorted(((t.finished, t.metrics.get("epoch_seconds", 0.0))
                  for t in record.trials.values()) if record else [(f, 0.0) for f in finished])
    fit_seconds = [seconds for _, seconds in fit]
    kind = "bare Tune (no-op trainable)" if args.bare_tune else "featloss"
    print(f"# {kind} scale: {args.trials} trials, {args.slots} slots, wall {wall:.0f} s; "
          f"hundreds counted from the {WARMUP}th completion (start-up left out)")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, python "
          f"{platform.python_version()}, commit {commit()}")
    print("| trials | wall s | s per trial x slots | in fit s | overhead s per trial "
          "| driver RSS MB |")
    print("|---|---|---|---|---|---|")
    first = None
    for start in range(WARMUP, len(finished) - 99, 100):
        span = finished[start + 99] - finished[start - 1]
        per = span * args.slots / 100
        in_fit = sum(fit_seconds[start:start + 100]) / 100
        overhead = per - in_fit
        rss = next((r for t, r in samples if t >= finished[start + 99]), samples[-1][1])
        first = first or overhead
        print(f"| {start + 1}-{start + 100} | {span:.1f} | {per:.3f} | {in_fit:.3f} | "
              f"{overhead:.3f} ({overhead / first:.2f}x) | {rss:.0f} |")
    rss0 = next(r for t, r in samples if t >= finished[WARMUP - 1])
    growth = (samples[-1][1] - rss0) / max(len(finished) - WARMUP, 1)
    print(f"driver RSS: {rss0:.0f} MB after {WARMUP} trials, {samples[-1][1]:.0f} MB at the end: "
          f"{growth:.3f} MB per trial")
    if record is not None:
        results = Path(record.results_dir)
        state = results / "featloss_state.json"
        tune_state = sorted((results / "tune").rglob("experiment_state*.json"))
        print(f"record {state.stat().st_size / 1e6:.2f} MB; Tune experiment state "
              f"{sum(p.stat().st_size for p in tune_state) / 1e6:.2f} MB")
    shutil.rmtree(work, ignore_errors=True)


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                         text=True, check=False)
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
