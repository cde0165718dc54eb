"""Ray Tune + Optuna orchestration: the only module that imports ray or optuna.

`run_study(plan, options)` runs a study's phases as Tune experiments in one results folder:

- grid studies: one ``grid`` experiment, ``tune.grid_search`` over the expanded trial specs;
- search studies: a ``search`` experiment driven by `PerLossSearcher` (one seeded OptunaSearch per
  loss, equal budget, optional ASHA), then a ``final`` grid of each loss's best config x seeds.

The trainable wraps `train.fit`: every epoch it rewrites the trial's checkpoint (the source of
truth, see `featloss.storage`) and reports the metrics to Tune with a small checkpoint pointing at
it, so a restarted trial -- after a lost node, a Ctrl+C or a SIGKILL of the driver -- continues
from its last finished epoch. A driver-side callback logs to MLflow through `featloss.tracking`
(exactly one child run per trial key, epochs replayed after a resume are not logged twice) and
prints progress.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import pickle
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from featloss import storage
from featloss.config import Config
from featloss.errors import ConfigError
from featloss.study import Distribution, SearchPlan, StudyPlan, TrialSpec, final_trials, set_dotted
from featloss.tracking import StudyTracker, TrackingUnavailable, check_reachable
from featloss.yamlio import dump_yaml

# Keys of a trial's report that are metrics (Tune adds its own bookkeeping fields beside them).
PLAIN_METRICS = {"epoch", "lr", "epoch_seconds", "images_per_second"}
PROGRESS_EVERY_S = float(os.environ.get("FEATLOSS_PROGRESS_SECONDS", "10"))


class StudyInterrupted(Exception):
    """The study stopped before every trial finished; `featloss resume` continues it.

    `reason` is None for Ctrl+C, else one line saying what stopped it (e.g. MLflow unreachable).
    """

    def __init__(self, results_dir: str, reason: str | None = None) -> None:
        super().__init__(results_dir)
        self.results_dir = results_dir
        self.reason = reason


@dataclass
class RunOptions:
    tracking_uri: str
    storage: str
    address: str | None = None
    max_concurrent: int | None = None
    smoke: bool = False


@dataclass
class StudyOutcome:
    results_dir: str
    parent_run_id: str
    tracking_uri: str
    summary_markdown: str
    counts: dict[str, int] = field(default_factory=dict)


# -- the trainable (runs in Ray workers) -----------------------------------------------------------

def featloss_trial(params: dict) -> None:
    """Tune function trainable: one featloss trial, resumable from its checkpoint."""
    import ray
    import torch
    from ray import tune

    from featloss.train import fit

    spec = params["trial"]
    config = Config.from_dict(spec["config"])
    torch.set_num_threads(max(1, int(spec.get("threads", 1))))
    checkpoint_uri = spec["checkpoint"]
    resume = storage.load_trial_state(checkpoint_uri)
    if resume is not None and resume.get("config") != config.to_dict():
        resume = None  # a different trial once had this key (a search re-suggested it): start over
    node_id = ray.get_runtime_context().get_node_id()
    hostname = socket.gethostname()
    saved_epoch = resume["epoch"] if resume is not None else -1

    def report(metrics: dict, state) -> None:
        nonlocal saved_epoch
        if metrics.get("epoch", 0) == saved_epoch:  # a finished trial re-reports: nothing trained
            _report({**metrics, "replayed": 1})
            return
        snapshot = state()
        storage.save_trial_state(checkpoint_uri, snapshot)
        saved_epoch = metrics.get("epoch", 0)
        if metrics.get("status") == "completed" and "val_features" in snapshot:
            storage.save_trial_state(features_uri(checkpoint_uri), snapshot["val_features"])
        _report(metrics)

    def _report(metrics: dict) -> None:
        extra = {"trial_key": spec["key"], "node_id": node_id, "hostname": hostname}
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, "pointer.json"), "w") as fh:
                json.dump({"state": checkpoint_uri, "epoch": metrics.get("epoch")}, fh)
            tune.report({**metrics, **extra}, checkpoint=tune.Checkpoint.from_directory(folder))

    if resume is not None and resume.get("status") == "running" and resume.get("metrics"):
        # The checkpoint may be newer than anything the driver logged (it is written before the
        # report, and the driver can die in between): replay that epoch; MLflow keeps it once.
        _report({**resume["metrics"], "replayed": 1})
    fit(config, report, resume=resume)


def features_uri(checkpoint_uri: str) -> str:
    """Where a finished trial with 2-D features leaves them (logged to its MLflow run)."""
    return checkpoint_uri[: -len(".pt")] + ".features.pt"


def _with_resources(resources: dict[str, float]):
    from ray import tune

    return tune.with_resources(featloss_trial, {"cpu": resources["cpu"], "gpu": resources["gpu"]})


# -- Optuna search, one per loss -------------------------------------------------------------------

def _encode(key: str) -> str:
    return key.replace(".", "__")  # Tune nests names with '/' and '.'; Optuna names stay flat


def _decode(name: str) -> str:
    return name.replace("__", ".")


def optuna_distribution(dist: Distribution):
    import optuna.distributions as od

    if dist.type == "categorical":
        return od.CategoricalDistribution(list(dist.choices))
    if dist.type == "int":
        return od.IntDistribution(int(dist.low), int(dist.high), log=dist.log, step=dist.step or 1)
    return od.FloatDistribution(float(dist.low), float(dist.high), log=dist.log, step=dist.step)


def _sampler(kind: str, seed: int, space: dict[str, Distribution]):
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        return optuna.samplers.GridSampler({_encode(k): list(d.choices) for k, d in space.items()},
                                           seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def _searcher_base():
    from ray.tune.search import Searcher

    return Searcher


class PerLossSearcher(_searcher_base()):  # type: ignore[misc]
    """Equal Optuna budgets for every loss inside one Tune experiment.

    Each loss has its own seeded OptunaSearch over its own space; `suggest` serves the loss with
    the fewest trials so far, so every loss gets `trials_per_loss` trials and the cluster stays
    busy across losses. Diverged or failed trials are told to Optuna as failed.
    """

    def __init__(self, searches: list[SearchPlan], metric: str, mode: str, sampler: str,
                 seed: int, results_dir: str, threads: int) -> None:
        from ray.tune.search.optuna import OptunaSearch

        super().__init__(metric=metric, mode=mode)
        self._plans = {s.loss: s for s in searches}
        self._order = [s.loss for s in searches]
        self._optuna = {
            s.loss: OptunaSearch(
                space={_encode(k): optuna_distribution(d) for k, d in s.space.items()},
                metric=metric, mode=mode, sampler=_sampler(sampler, s.sampler_seed, s.space),
                points_to_evaluate=([{_encode(k): v for k, v in s.start.items()}]
                                    if s.start else None))
            for s in searches if s.space}
        self._suggested = {loss: 0 for loss in self._order}
        self._loss_of: dict[str, str] = {}
        self._seed = seed
        self._results_dir = results_dir
        self._threads = threads

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode are fixed at construction

    def suggest(self, trial_id: str):
        open_losses = [x for x in self._order if self._suggested[x] < self._plans[x].trials]
        if not open_losses:
            return self.FINISHED
        loss = min(open_losses, key=lambda x: (self._suggested[x], self._order.index(x)))
        params: dict[str, Any] = {}
        if loss in self._optuna:
            suggested = self._optuna[loss].suggest(trial_id)
            if suggested is None:
                return None
            if suggested == self.FINISHED:  # a grid sampler ran out of points for this loss
                self._suggested[loss] = self._plans[loss].trials
                return self.suggest(trial_id)
            params = {_decode(k): v for k, v in suggested.items()}
        self._suggested[loss] += 1
        self._loss_of[trial_id] = loss
        plan = self._plans[loss]
        config = copy.deepcopy(plan.base_config)
        for key, value in params.items():
            set_dotted(config, key, value)
        config["seed"] = self._seed
        key = f"search-{loss}-{self._suggested[loss]:03d}"
        return {"trial": {"key": key, "phase": "search", "loss": loss, "seed": self._seed,
                          "config": config, "params": params, "threads": self._threads,
                          "checkpoint": storage.join(self._results_dir, "checkpoints",
                                                     f"{key}.pt")}}

    def _usable(self, result: dict | None) -> bool:
        value = (result or {}).get(self.metric)
        return isinstance(value, (int, float)) and math.isfinite(value)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        loss = self._loss_of.get(trial_id)
        if loss in self._optuna and self._usable(result):
            self._optuna[loss].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        loss = self._loss_of.get(trial_id)
        if loss not in self._optuna:
            return
        if self._usable(result) and not error:
            self._optuna[loss].on_trial_complete(trial_id, result)
        else:
            self._optuna[loss].on_trial_complete(trial_id, None, error=True)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(self.__dict__, fh)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as fh:
            self.__dict__.update(pickle.load(fh))


# -- driver-side callback: MLflow and progress -----------------------------------------------------

_DRIVERS: dict[str, "_PhaseDriver"] = {}


def _callback_base():
    from ray.tune import Callback

    return Callback


class _Relay(_callback_base()):  # type: ignore[misc]
    """A picklable Tune callback forwarding to the live driver of this process.

    Tune pickles callbacks into its experiment folder and unpickles them on restore; the MLflow
    client and progress state must not travel that way, so they live in `_DRIVERS`.
    """

    def __init__(self, token: str = "featloss") -> None:
        self.token = token

    def _driver(self) -> "_PhaseDriver":
        return _DRIVERS[self.token]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._driver().trial_started(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._driver().trial_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._driver().trial_finished(trial, failed=False)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._driver().trial_finished(trial, failed=True)

    def on_step_end(self, iteration, trials, **info):
        self._driver().tick(trials)


def resolved_params(config: Config) -> dict[str, Any]:
    """Flattened config with every loss hyperparameter, defaults included (MLflow params)."""
    from featloss.losses import loss_info

    flat = config.flat()
    for h in loss_info(config.loss.name).hparams:
        flat.setdefault(f"loss.{h.name}", h.default)
    return flat


def metrics_of(result: dict) -> dict[str, float]:
    return {k: v for k, v in result.items()
            if ("/" in k or k in PLAIN_METRICS) and not k.startswith("config")
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


class _PhaseDriver:
    def __init__(self, tracker: StudyTracker, phase: str, total: int, metric: str,
                 mode: str, already_done: int = 0) -> None:
        self.tracker = tracker
        self.phase = phase
        self.total = total
        self.metric = metric
        self.sign = 1.0 if mode == "max" else -1.0
        self.started = time.monotonic()
        self.last_print = 0.0
        self.done = already_done
        self.counts = {"completed": 0, "diverged": 0, "stopped": 0, "failed": 0}
        self.running: set[str] = set()
        self.best: dict[str, float] = {}
        self.finished: set[str] = set()

    @staticmethod
    def spec(trial) -> dict:
        return trial.config["trial"]

    def trial_started(self, trial) -> None:
        spec = self.spec(trial)
        flat = resolved_params(Config.from_dict(spec["config"]))
        self.tracker.start_child(spec["key"], spec["phase"], spec["seed"], flat)
        self.running.add(spec["key"])

    def trial_result(self, trial, result: dict) -> None:
        spec = self.spec(trial)
        if spec["key"] not in self.tracker.children:  # restored trials skip on_trial_start
            self.trial_started(trial)
        epoch = int(result.get("epoch", 0) or 0)
        self.tracker.log_epoch(spec["key"], metrics_of(result), step=epoch,
                               node_id=result.get("node_id"), hostname=result.get("hostname"))
        value = result.get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            loss = spec["loss"]
            if loss not in self.best or self.sign * value > self.sign * self.best[loss]:
                self.best[loss] = value

    def trial_finished(self, trial, failed: bool) -> None:
        spec = self.spec(trial)
        key = spec["key"]
        if key not in self.tracker.children:
            self.trial_started(trial)
        if failed:
            status = "failed"
            message = str(getattr(trial, "error_message", None) or "").strip().splitlines()
            self.tracker.set_tags(key, {"error": (message[-1] if message else "error")[:500]})
        else:
            reported = (trial.last_result or {}).get("status", "completed")
            status = "stopped" if reported == "running" else reported
        features = features_uri(spec["checkpoint"])
        if status == "completed" and storage.exists(features):
            self.tracker.log_features(key, storage.load_trial_state(features))
        self.tracker.finish_child(key, status)
        self.running.discard(key)
        if key not in self.finished:
            self.finished.add(key)
            self.done += 1
            self.counts[status] = self.counts.get(status, 0) + 1
        self.print_progress(force=True)

    def tick(self, trials) -> None:
        self.running = {t.config["trial"]["key"] for t in trials if t.status == "RUNNING"}
        self.print_progress()

    def print_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < PROGRESS_EVERY_S:
            return
        self.last_print = now
        elapsed = now - self.started
        finished_here = len(self.finished)
        left = self.total - self.done
        eta = (f", ~{_duration(elapsed / finished_here * left)} left"
               if finished_here and left > 0 else "")
        bad = [f"{n} {k}" for k, n in self.counts.items() if k in ("failed", "diverged") and n]
        best = " ".join(f"{loss} {value:.4f}" for loss, value in sorted(self.best.items()))
        print(f"[{self.phase} {self.done}/{self.total} done, {len(self.running)} running"
              f"{', ' + ', '.join(bad) if bad else ''} | {_duration(elapsed)} elapsed{eta}]"
              f"{' best ' + self.metric + ': ' + best if best else ''}", flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# -- Ray set-up ------------------------------------------------------------------------------------

def _start_ray(address: str | None) -> bool:
    """Start or join Ray; returns True when this call started it (and should shut it down)."""
    quiet = {  # setdefault: a user's own setting wins
        "RAY_USAGE_STATS_ENABLED": "0",
        "TUNE_GLOBAL_CHECKPOINT_S": "2",  # bound how stale Tune's experiment snapshot can be
        "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",  # a diverged trial reports no val metrics
        # num_to_keep=1 forces a snapshot per checkpoint, which we want; don't warn about it
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        "RAY_DEDUP_LOGS": "0",
        "RAY_AIR_NEW_OUTPUT": "0",  # the old engine prints nothing at verbose=0; we print progress
    }
    for key, value in quiet.items():
        os.environ.setdefault(key, value)
    import optuna
    import ray

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    if address:
        try:
            ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"--address {address}: cannot join the Ray cluster "
                              f"({str(exc).splitlines()[0]})") from exc
    else:
        # "local": always a fresh local Ray; a bare ray.init() would join any cluster a
        # `ray start` left recorded on this machine, even a dead one.
        ray.init(address="local", include_dashboard=False, **kwargs)
    return True


def _cluster_slots(resources: dict[str, float]) -> int:
    import ray

    total = ray.cluster_resources()
    slots = [int(total.get("CPU", 1) // max(resources["cpu"], 1e-9))]
    if resources["gpu"] > 0:
        slots.append(int(total.get("GPU", 0) // resources["gpu"] + 1e-9))
    return max(1, min(slots))


# -- the study -------------------------------------------------------------------------------------

def run_study(plan: StudyPlan, options: RunOptions, results_dir: str | None = None) -> StudyOutcome:
    """Run (or, with `results_dir`, resume) a study. Raises StudyInterrupted on Ctrl+C."""
    study = plan.study
    check_reachable(options.tracking_uri)
    if plan.searches and study.search.sampler == "grid":
        _check_grid_sampler(plan)
    resuming = results_dir is not None
    results_dir = results_dir or storage.new_results_dir(options.storage, study.name)
    state = storage.read_state(results_dir) if resuming else {
        "study": study.name, "source": study.source, "study_yaml": dump_yaml(study.raw),
        "smoke": plan.smoke, "tracking_uri": options.tracking_uri, "storage": options.storage,
        "status": "running", "phases_done": [], "best": {}, "parent_run_id": None}
    owns_ray = _start_ray(options.address)
    tracker = StudyTracker(options.tracking_uri, study.name)
    try:
        if state.get("parent_run_id"):
            tracker.reopen_parent(state["parent_run_id"])
        else:
            tracker.start_parent(dump_yaml(study.raw), _plan_record(plan),
                                 {"results_dir": results_dir, "mode": study.mode,
                                  "smoke": str(plan.smoke)})
            state["parent_run_id"] = tracker.parent_run_id
        _save_state(results_dir, state)
        print(f"results: {results_dir}\nMLflow: {tracker.uri} (experiment '{study.name}', "
              f"parent run {tracker.parent_run_id})", flush=True)
        slots = _cluster_slots(study.resources)
        concurrency = min(x for x in (options.max_concurrent, study.max_concurrent, slots) if x)
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(concurrency)
        threads = max(1, int(study.resources["cpu"]))
        if plan.searches:
            if "search" not in state["phases_done"]:
                state["best"] = _run_search(plan, results_dir, tracker, concurrency, threads)
                state["phases_done"].append("search")
                _save_state(results_dir, state)
            finals = final_trials(plan, {loss: b["params"] for loss, b in state["best"].items()})
            _run_grid_phase("final", finals, plan, results_dir, tracker, concurrency, threads)
        else:
            _run_grid_phase("grid", plan.grid_trials, plan, results_dir, tracker, concurrency,
                            threads)
        state["phases_done"].append("final" if plan.searches else "grid")
        summary = _finish(plan, tracker, state)
        state["status"] = "finished"
        _save_state(results_dir, state)
        return StudyOutcome(results_dir, tracker.parent_run_id, tracker.uri, summary)
    except (KeyboardInterrupt, StudyInterrupted):
        try:
            tracker.finish_parent("KILLED")
        except TrackingUnavailable:
            pass  # the resume reopens it anyway
        raise StudyInterrupted(results_dir) from None
    except Exception as exc:  # Tune re-raises a callback's error wrapped in its own types
        unavailable = _cause(exc, TrackingUnavailable)
        if unavailable is None:
            raise
        raise StudyInterrupted(results_dir, str(unavailable)) from None
    finally:
        _DRIVERS.pop("featloss", None)
        if owns_ray:
            import ray

            ray.shutdown()


def _cause(exc: BaseException, kind: type) -> BaseException | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _save_state(results_dir: str, state: dict) -> None:
    storage.write_json(storage.join(results_dir, storage.STATE_FILE), state)


def _plan_record(plan: StudyPlan) -> dict:
    return {
        "study": plan.study.name, "mode": plan.study.mode, "smoke": plan.smoke,
        "plan": plan.summary_lines(),
        "grid_trials": [{"key": t.key, "loss": t.loss, "seed": t.seed, "cell": t.cell,
                         "config": t.config} for t in plan.grid_trials],
        "searches": [{"loss": s.loss, "trials": s.trials, "sampler_seed": s.sampler_seed,
                      "space": {k: d.to_dict() for k, d in s.space.items()},
                      "base_config": s.base_config} for s in plan.searches],
        "skipped": [{"loss": s.loss, "cell": s.cell, "reason": s.reason} for s in plan.skipped],
    }


def _check_grid_sampler(plan: StudyPlan) -> None:
    for search in plan.searches:
        for key, dist in search.space.items():
            if dist.type != "categorical":
                raise ConfigError(f"{plan.study.source}: search.sampler=grid needs categorical "
                                  f"spaces; {search.loss} {key} is {dist.type}")


def _tuner(name: str, results_dir: str, tracker: StudyTracker, driver: _PhaseDriver,
           trainable, param_space: dict, tune_config, max_failures: int):
    from ray import tune

    _DRIVERS["featloss"] = driver
    experiment = storage.join(results_dir, name)
    if storage.exists(storage.join(experiment, "tuner.pkl")):
        return tune.Tuner.restore(experiment, trainable, resume_unfinished=True,
                                  resume_errored=True, param_space=param_space)
    run_config = tune.RunConfig(
        name=name, storage_path=results_dir, verbose=0, callbacks=[_Relay("featloss")],
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1))
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=run_config)


def _specs(trials: list[TrialSpec], results_dir: str, threads: int) -> list[dict]:
    return [{"key": t.key, "phase": t.phase, "loss": t.loss, "seed": t.seed, "config": t.config,
             "params": t.cell, "threads": threads,
             "checkpoint": storage.join(results_dir, "checkpoints", f"{t.key}.pt")}
            for t in trials]


def _run_grid_phase(name: str, trials: list[TrialSpec], plan: StudyPlan, results_dir: str,
                    tracker: StudyTracker, concurrency: int, threads: int) -> None:
    from ray import tune

    if not trials:
        return
    metric = plan.study.search.metric if plan.study.search else "val/accuracy"
    mode = plan.study.search.mode if plan.study.search else "max"
    driver = _PhaseDriver(tracker, name, len(trials), metric, mode)
    tune_config = tune.TuneConfig(max_concurrent_trials=concurrency, reuse_actors=True,
                                  trial_name_creator=lambda t: t.config["trial"]["key"],
                                  trial_dirname_creator=lambda t: t.config["trial"]["key"][:120])
    tuner = _tuner(name, results_dir, tracker, driver, _with_resources(plan.study.resources),
                   {"trial": tune.grid_search(_specs(trials, results_dir, threads))},
                   tune_config, plan.study.max_failures)
    print(f"{name} phase: {len(trials)} trials, up to {concurrency} at a time", flush=True)
    results = tuner.fit()
    _raise_if_interrupted(results, len(trials), results_dir)
    tracker.drop_stale_children({t.key for t in trials}, phase=name)


def _run_search(plan: StudyPlan, results_dir: str, tracker: StudyTracker, concurrency: int,
                threads: int) -> dict[str, dict]:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    search = plan.study.search
    total = sum(s.trials for s in plan.searches)
    expected = sum(_budget(s, search.sampler) for s in plan.searches)
    driver = _PhaseDriver(tracker, "search", total, search.metric, search.mode)
    searcher = PerLossSearcher(plan.searches, search.metric, search.mode, search.sampler,
                               plan.study.seeds[0], results_dir, threads)
    scheduler = None
    if search.scheduler == "asha":
        epochs = max(s.base_config["train"]["epochs"] for s in plan.searches)
        # "epoch", not Tune's iteration counter: a resumed trial replays its checkpointed epoch
        scheduler = ASHAScheduler(time_attr="epoch", metric=search.metric,
                                  mode=search.mode, max_t=epochs, grace_period=1,
                                  reduction_factor=2)
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=total,
                                  max_concurrent_trials=concurrency, reuse_actors=True,
                                  trial_name_creator=lambda t: t.config["trial"]["key"],
                                  trial_dirname_creator=lambda t: t.config["trial"]["key"])
    tuner = _tuner("search", results_dir, tracker, driver, _with_resources(plan.study.resources),
                   {}, tune_config, plan.study.max_failures)
    print(f"search phase: {total} trials ({search.trials_per_loss} per loss), up to "
          f"{concurrency} at a time", flush=True)
    results = tuner.fit()
    _raise_if_interrupted(results, expected, results_dir)
    best: dict[str, dict] = {}
    keys = set()
    for result in results:
        spec = (result.config or {}).get("trial")
        if not spec:
            continue
        keys.add(spec["key"])
        value = (result.metrics or {}).get(search.metric)
        if result.error or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        sign = 1 if search.mode == "max" else -1
        current = best.get(spec["loss"])
        if current is None or sign * value > sign * current["value"]:
            best[spec["loss"]] = {"params": spec["params"], "value": value, "trial": spec["key"]}
    tracker.drop_stale_children(keys, phase="search")
    for loss in plan.study.losses:
        if loss not in best:
            print(f"note: every search trial of '{loss}' failed or diverged; it has no final "
                  f"phase", flush=True)
    _log_optuna_studies(storage.join(results_dir, "search"), tracker)
    return best


def _budget(search: SearchPlan, sampler: str) -> int:
    if sampler != "grid" or not search.space:
        return search.trials
    points = math.prod(len(d.choices) for d in search.space.values())
    return min(points, search.trials)


def _log_optuna_studies(experiment_dir: str, tracker: StudyTracker) -> None:
    """Optuna trial tables on the parent run (the report plots history and importance).

    Read from the searcher state Tune saved, which is the live one even after a resume.
    """
    import pyarrow.fs as pafs

    fs, path = storage._fs(experiment_dir)
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path))
                   if i.base_name.startswith("searcher-state") and i.base_name.endswith(".pkl"))
    if not files:
        return
    with fs.open_input_stream(files[-1]) as stream:
        saved = pickle.loads(stream.read())
    import optuna

    for loss, search in saved.get("_optuna", {}).items():
        study = search._ot_study
        tracker.log_text(study.trials_dataframe().to_csv(index=False), f"optuna/{loss}_trials.csv")
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if len(done) >= 2 and len({t.value for t in done}) > 1:
            # fANOVA importances of the searched keys (Optuna's default evaluator)
            importance = optuna.importance.get_param_importances(study)
            tracker.log_text(json.dumps({_decode(k): v for k, v in importance.items()}, indent=1),
                             f"optuna/{loss}_importance.json")


def _raise_if_interrupted(results, expected: int, results_dir: str) -> None:
    """Tune returns normally after Ctrl+C; unfinished or never-started trials mean interrupted."""
    finished = results.num_terminated + results.num_errors
    if finished < len(results) or len(results) < expected:
        raise StudyInterrupted(results_dir)


def _finish(plan: StudyPlan, tracker: StudyTracker, state: dict) -> str:
    from featloss.summary import display_table, summary_table

    records = tracker.trial_records()
    table = summary_table(records, plan.study, state.get("best", {}))
    markdown = (display_table(table).to_markdown(index=False) if len(table)
                else "(no finished trials)")
    tracker.log_text(markdown, "summary.md")
    tracker.log_text(table.to_csv(index=False), "summary.csv")
    tracker.finish_parent("FINISHED")
    return markdown


def python_executable() -> str:
    return sys.executable
