"""The driver side of one phase: Tune's events go into the record, then MLflow and progress.

`PhaseDriver` is a plain object living in the driver process. Tune sees it through two thin
relays, `FeedSearcher` (a Tune `Searcher` asking the phase's feed for the next trial) and
`DriverCallback` (a Tune `Callback`); Tune pickles both into its experiment folder, so they carry
only a token and find the live driver in `_LIVE` (the MLflow client and the record must not
travel that way).

Order of writes for every event: the record first (the study's state), then MLflow from it. A
trial's run id and its end are written to the record at once, before MLflow hears of the end;
epoch progress is throttled (`StudyRecord.save`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback
from ray.tune.search import Searcher

from featloss import storage
from featloss.engine.children import close_run, supersede
from featloss.engine.progress import Progress
from featloss.engine.trainable import REPLAYED, from_tune, trial_params
from featloss.plan import StudyPlan
from featloss.record import StudyRecord, TrialRecord
from featloss.tracking import TrialRuns

PLAIN_METRICS = {"epoch", "lr", "epoch_seconds", "images_per_second"}
DATA_SIZES = ("data/train_size", "data/val_size", "data/test_size")
# Settings that say where and how a trial ran, not what it computed: children omit them unless
# the study varies them (the parent run's plan holds them).
INFRA_KEYS = ("data.root", "train.device", "train.eval_batch_size", "train.divergence_check_every",
              "train.eval_test")
_LIVE: dict[str, "PhaseDriver"] = {}


@dataclass
class PhaseContext:
    """What every trial of a phase shares."""

    phase: str
    plan: StudyPlan
    results_dir: str
    threads: int
    slots: int
    varied: set[str]  # config keys the study varies (grid keys, searched keys)


class PhaseDriver:
    def __init__(self, context: PhaseContext, feed, record: StudyRecord, runs: TrialRuns,
                 progress: Progress, total: int) -> None:
        self.context = context
        self.feed = feed
        self.record = record
        self.runs = runs
        self.progress = progress
        self.total = total
        self.token = f"{context.phase}-{id(self)}"
        _LIVE[self.token] = self

    def close(self) -> None:
        _LIVE.pop(self.token, None)

    # -- the feed, through FeedSearcher -----------------------------------------------------------
    def suggest(self) -> dict | None:
        spec = self.feed.next()
        if spec is None:
            return None
        self.record.save(force=False)
        return trial_params(spec.key, spec.config, self.context.results_dir, self.context.threads,
                            self.context.plan.metric)

    # -- Tune's events, through DriverCallback ------------------------------------------------------
    def started(self, key: str) -> None:
        trial = self.record.trials[key]
        trial.status = "running"
        trial.started = trial.started or time.time()
        self.record.touch()
        if trial.run_id is None:
            trial.run_id = self.runs.start(key, self._tags(trial), self._params(trial))
            self.record.save()  # at once: a resume must find this run, not open another
        else:
            self.runs.reopen(trial.run_id)
        if trial.new_run:  # restarted from epoch 0: its earlier runs give way to this one
            supersede(self.runs, trial)
            trial.new_run = False
            self.record.save()
        self.record.save(force=False)
        self._show()

    def result(self, key: str, tune_result: dict) -> None:
        result = from_tune(tune_result)
        trial = self.record.trials[key]
        if trial.run_id is None or trial.status != "running":
            self.started(key)
        if result.get("status") == "failed":
            trial.error = str(result.get("error") or "failed")
            return
        epoch = int(result.get("epoch", 0) or 0)
        metrics = metrics_of(result)
        moved = result.get("node_id") and result["node_id"] != trial.node
        tags = {"node_id": result["node_id"], "hostname": result.get("hostname", "")} \
            if moved else None
        if epoch > trial.logged_epoch:
            self.runs.log_epoch(trial.run_id, metrics, epoch,
                                int(result.get("time_ms") or time.time() * 1000), tags)
            if trial.logged_epoch == 0 and all(k in result for k in DATA_SIZES):
                self._log_dataset(trial, result)
            trial.logged_epoch = epoch
        elif tags:  # a replayed epoch on another node: only where it runs now is new
            self.runs.set_tags(trial.run_id, tags)
        trial.node = result.get("node_id") or trial.node
        trial.last_epoch = max(trial.last_epoch, epoch)
        trial.metrics = metrics
        trial.status = "running"
        self.record.touch()
        self.record.save(force=False)
        self._show()

    def completed(self, key: str, last: dict | None) -> None:
        trial = self.record.trials[key]
        last = from_tune(last) if last else {}
        reported = last.get("status", "completed")
        if trial.error is not None or reported == "failed":
            self._finish(trial, "failed", trial.error or last.get("error"))
        else:
            self._finish(trial, "stopped" if reported == "running" else reported, None)

    def errored(self, key: str, tune_trial) -> None:
        self._finish(self.record.trials[key], "failed", error_line(tune_trial))

    def step(self) -> None:
        self.record.save(force=False)
        self._show()

    # -- helpers --------------------------------------------------------------------------------
    def _finish(self, trial: TrialRecord, status: str, error: str | None) -> None:
        if trial.run_id is None:
            self.started(trial.key)
        trial.status, trial.error, trial.finished = status, error, time.time()
        self.record.touch()
        # At once, before MLflow: a run closed as finished always has its end in the record
        # (a resume never trains it again nor leaves it waiting), and an ASHA-stopped trial,
        # whose checkpoint says "running", is not continued after a crash.
        self.record.save()
        close_run(self.runs, trial, self.context.results_dir)
        self.feed.finished(trial)
        if status == "failed":
            self.progress.say(f"featloss: trial {trial.key} failed: {error}")
        self._show(force=True)

    def _show(self, force: bool = False) -> None:
        plan = self.context.plan
        self.progress.update(self.record, self.context.phase, self.total, self.context.slots,
                             plan.metric, plan.mode, force=force)

    def _tags(self, trial: TrialRecord) -> dict[str, str]:
        config = trial.config
        recipe = self.context.plan.recipes.get(trial.loss) or {}
        return {"phase": trial.phase, "seed": str(trial.seed), "loss": trial.loss,
                "dataset": str(config["data"]["dataset"]),
                "backbone": str(config["model"]["backbone"]),
                "feature_dim": str(config["model"]["feature_dim"]),
                "dropout": str(config["model"]["dropout"]),
                "smoke": str(self.context.plan.smoke).lower(),
                **({"recipe": ", ".join(sorted(recipe))} if recipe else {})}

    def _params(self, trial: TrialRecord) -> dict[str, Any]:
        return child_params(trial.config, self.context.varied)

    def _log_dataset(self, trial: TrialRecord, result: dict) -> None:
        data = trial.config["data"]
        source = {k: data[k] for k in ("dataset", "root", "classes", "val_fraction", "split_seed",
                                       "max_train_samples", "max_eval_samples") if data.get(k)
                  is not None}
        sizes = {k.split("/")[1][:-5]: int(result[k]) for k in DATA_SIZES}
        self.runs.log_dataset(trial.run_id, str(data["dataset"]), source, sizes)


def child_params(config: dict, varied: set[str]) -> dict[str, Any]:
    """A trial's MLflow params: its flattened config with every loss hyperparameter (defaults
    included), without None values and without infrastructure keys the study does not vary."""
    from featloss.config import Config
    from featloss.losses import loss_info

    flat = Config.from_dict(config, where="trial").flat()
    for h in loss_info(flat["loss"]).hparams:
        flat.setdefault(f"loss.{h.name}", h.default)
    return {k: v for k, v in flat.items()
            if v is not None and (k not in INFRA_KEYS or k in varied)}


def metrics_of(result: dict) -> dict[str, float]:
    """The featloss metrics of a Tune result (Tune adds its own bookkeeping fields)."""
    return {k: float(v) for k, v in result.items()
            if ("/" in k or k in PLAIN_METRICS) and not k.startswith(("config", "data/"))
            and isinstance(v, (int, float)) and not isinstance(v, bool) and k != REPLAYED}


def error_line(tune_trial) -> str:
    """The last line of a Tune trial's real error (Ray 2.60: get_error() / error_file)."""
    text = ""
    try:
        error = tune_trial.get_error()
        text = str(error) if error is not None else ""
    except Exception:  # noqa: BLE001 - best effort; the error file is next
        pass
    if not text.strip() and getattr(tune_trial, "error_file", None):
        try:
            text = storage.read_bytes(tune_trial.error_file).decode(errors="replace")
        except OSError:
            pass
    lines = [x.strip() for x in text.strip().splitlines() if x.strip()]
    return (lines[-1] if lines else "the trial's worker failed (no error text)")[:500]


class FeedSearcher(Searcher):
    """Tune's view of a phase's feed (see the module docstring)."""

    def __init__(self, token: str, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.token = token

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # metric and mode are fixed at construction

    def suggest(self, trial_id: str):
        params = _LIVE[self.token].suggest()
        return params if params is not None else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """Results reach Optuna through the record (`PhaseDriver._finish`), not here."""

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """Nothing to save: the record and the Optuna journal hold the search's state."""

    def __getstate__(self) -> dict:
        return {"token": self.token, "_metric": self._metric, "_mode": self._mode}


class DriverCallback(Callback):
    def __init__(self, token: str) -> None:
        self.token = token

    def _driver(self) -> PhaseDriver:
        return _LIVE[self.token]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._driver().started(trial.config["key"])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._driver().result(trial.config["key"], result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._driver().completed(trial.config["key"], trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._driver().errored(trial.config["key"], trial)

    def on_step_end(self, iteration, trials, **info):
        self._driver().step()


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
