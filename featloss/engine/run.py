"""`run_study`: a study's phases as Tune experiments, its state in its record.

Each invocation (``featloss run``, then every ``featloss resume``) runs, per phase, a new Tune
experiment over the trials the record does not show finished; Tune's own experiment state is
never restored from. Trials continue from their own checkpoints, so nothing finished is
retrained and an interrupted trial loses at most the epoch it was in.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field

from featloss import storage
from featloss.engine import ray_setup
from featloss.engine.children import reconcile
from featloss.engine.driver import DriverCallback, FeedSearcher, PhaseContext, PhaseDriver
from featloss.engine.feeds import OptunaFeed, SpecFeed, journal_path
from featloss.engine.progress import Progress
from featloss.plan import StudyPlan
from featloss.record import StudyRecord
from featloss.results import front_page_fields, results_metrics, study_table
from featloss.tracking import (
    ParentRun,
    TrackingClient,
    TrackingUnavailable,
    TrialRuns,
    open_experiment,
)


class StudyInterrupted(Exception):
    """The study stopped before every trial finished; `featloss resume` continues it.

    `reason` is None for Ctrl+C (or SIGTERM), else one line saying what stopped it.
    """

    def __init__(self, results_dir: str, reason: str | None = None) -> None:
        super().__init__(results_dir)
        self.results_dir = results_dir
        self.reason = reason


@dataclass
class RunOptions:
    address: str | None = None
    max_concurrent: int | None = None
    wait_for_nodes: float = 0  # seconds an autoscaler gets to start a node a trial fits on


@dataclass
class StudyOutcome:
    results_dir: str
    parent_run_id: str
    experiment_id: str
    optuna_journal: str | None = None
    failed: dict[str, int] = field(default_factory=dict)  # error line -> trials


def run_study(plan: StudyPlan, record: StudyRecord, options: RunOptions,
              progress: Progress | None = None) -> StudyOutcome:
    """Run (or resume) the study whose state `record` holds.

    Every trial ends with one child run (`featloss.engine.children`). The parent run ends
    FINISHED, or FAILED when every trial failed (an outcome, not an exception).

    Raises StudyInterrupted on Ctrl+C / SIGTERM or when MLflow stays unreachable (the record
    and the parent run are then marked interrupted, and so are the runs of unfinished trials
    when MLflow answers), ConfigError for a cluster that cannot be joined; any other failure
    marks the record and the parent run failed and propagates.
    """
    progress = progress or Progress()
    study = plan.study
    client = TrackingClient(record.tracking_uri)
    owns_ray = False
    parent = trials = None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        progress.status("starting Ray…")
        owns_ray = ray_setup.start_ray(options.address)
        # after ray.init, which installs its own handler: scancel or a preemption (SIGTERM)
        # stops the study as cleanly as Ctrl+C does (signals reach the main thread only)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)
        if options.address:
            ray_setup.wait_for_node(study.resources.model_dump(), options.address,
                                    options.wait_for_nodes, progress.say)
        experiment_id = open_experiment(client, study.name, study.description)
        parent = ParentRun(client, experiment_id, study.name)
        if record.parent_run_id:
            parent.reopen(record.parent_run_id)
        else:
            record.parent_run_id = parent.start(**front_page_fields(plan, record))
        record.status = "running"
        record.save()
        trials = TrialRuns(client, experiment_id, study.name, record.parent_run_id)
        reconcile(trials, record, stopping=False)
        progress.say(f"results: {record.results_dir}\nMLflow: {client.uri} (experiment "
                     f"'{study.name}', parent run {record.parent_run_id})")
        slots = ray_setup.cluster_slots(study.resources.model_dump())
        concurrency = min(x for x in (options.max_concurrent, study.max_concurrent, slots) if x)
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(concurrency)
        journal = None
        for phase in plan.phases:
            if phase in record.phases_done:
                continue
            if phase == "search":
                journal = journal_path(record.results_dir)
                feed = OptunaFeed(plan, record, journal, study.seeds[0])
                total = plan.phase_total("search")
            else:
                specs = (plan.grid_trials if phase == "grid"
                         else plan.final_trials({k: v["params"] for k, v in record.best.items()}))
                feed, total = SpecFeed(specs, record), len(specs)
            _run_phase(phase, feed, total, plan, record, trials, progress, concurrency)
            if phase == "search":
                _select(plan, record, progress)
                for files in feed.summaries().values():
                    for name, text in files.items():
                        parent.log_text(text, name)
            record.phases_done.append(phase)
            record.save()
        _results_to_parent(plan, record, parent)
        reconcile(trials, record, stopping=True)
        failed = _end(record, parent)
        return StudyOutcome(record.results_dir, record.parent_run_id, experiment_id, journal,
                            failed)
    except (KeyboardInterrupt, StudyInterrupted) as exc:
        reason = exc.reason if isinstance(exc, StudyInterrupted) else None
        _close(record, parent, trials, "interrupted", "KILLED", reason)
        raise StudyInterrupted(record.results_dir, reason) from None
    except Exception as exc:  # noqa: BLE001 - recorded, then re-raised
        unavailable = _cause(exc, TrackingUnavailable)
        if unavailable is not None:
            _close(record, parent, trials, "interrupted", None, str(unavailable))
            raise StudyInterrupted(record.results_dir, str(unavailable)) from None
        _close(record, parent, trials, "failed", "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)
        progress.close()
        if owns_ray:
            ray_setup.stop_ray()


def run_new_study(plan: StudyPlan, tracking_uri: str, storage_uri: str, source: str,
                  options: RunOptions | None = None, progress: Progress | None = None,
                  overrides: dict | None = None) -> tuple[StudyRecord, StudyOutcome]:
    """A new invocation of `plan` from Python (what `featloss run` does after its checks).

    Raises what `check_store` and `run_study` raise.
    """
    from featloss.tracking import check_store

    check_store(tracking_uri)
    record = StudyRecord.new(plan, tracking_uri, storage_uri, source, overrides)
    record.save()
    return record, run_study(plan, record, options or RunOptions(), progress)


def _run_phase(phase: str, feed, total: int, plan: StudyPlan, record: StudyRecord,
               trials: TrialRuns, progress: Progress, concurrency: int) -> None:
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler

    from featloss.engine.trainable import featloss_trial

    pending = feed.remaining()
    if pending == 0:
        return
    varied = set(plan.study.grid) | {k for s in plan.searches for k in s.space}
    context = PhaseContext(phase, plan, record.results_dir, max(1, int(plan.study.resources.cpu)),
                           concurrency, varied)
    driver = PhaseDriver(context, feed, record, trials, progress, total)
    scheduler = None
    search = plan.study.search
    if phase == "search" and search.scheduler == "asha":
        epochs = max(s.base["train"]["epochs"] for s in plan.searches)
        # "epoch", not Tune's iteration counter: a resumed trial replays its checkpointed epoch
        scheduler = ASHAScheduler(time_attr="epoch", metric=search.metric, mode=search.mode,
                                  max_t=epochs, grace_period=1, reduction_factor=2)
    resources = plan.study.resources
    trainable = tune.with_resources(featloss_trial, {"cpu": resources.cpu, "gpu": resources.gpu})
    attempt = sum(1 for name in storage.list_dirs(storage.join(record.results_dir, "tune"))
                  if name.startswith(f"{phase}-")) + 1
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=FeedSearcher(driver.token, plan.metric, plan.mode), scheduler=scheduler,
            num_samples=pending, max_concurrent_trials=concurrency, reuse_actors=True,
            trial_name_creator=trial_name, trial_dirname_creator=trial_name),
        run_config=tune.RunConfig(
            name=f"{phase}-{attempt}", storage_path=storage.join(record.results_dir, "tune"),
            verbose=0, callbacks=[DriverCallback(driver.token), JsonLoggerCallback()],
            failure_config=tune.FailureConfig(max_failures=plan.study.max_failures)))
    progress.say(f"{phase} phase: {pending} trials to run, up to {concurrency} at a time")
    progress.status("importing torch in workers…")
    try:
        tuner.fit()
    finally:
        driver.close()
        record.save()
    unfinished = [t.key for t in record.phase(phase) if not t.done]
    if unfinished or feed.remaining():
        raise StudyInterrupted(record.results_dir)  # Tune returns normally after Ctrl+C


def trial_name(trial) -> str:
    """Tune's trial name and folder: the trial's key (safe by construction)."""
    return trial.config["key"]


def _select(plan: StudyPlan, record: StudyRecord, progress: Progress) -> None:
    """Each loss's best search trial (completed or stopped early) becomes its final config."""
    best = record.best_by_loss("search", plan.metric, plan.mode)
    record.best = {loss: {"params": t.params, "value": t.value(plan.metric), "trial": t.key}
                   for loss, t in best.items()}
    for loss in plan.study.losses:
        if loss not in best:
            progress.say(f"note: every search trial of '{loss}' failed or diverged; it has no "
                         f"final phase")
    record.touch()


def _results_to_parent(plan: StudyPlan, record: StudyRecord, parent: ParentRun) -> None:
    """The summary table as artifacts and as result metrics on the parent run."""
    import tempfile
    from pathlib import Path

    from featloss.summary import parquet_ready, to_markdown

    table = study_table(record, plan.study)
    parent.log_text(to_markdown(table, with_ci=True) + "\n", "summary.md")
    parent.log_text(table.to_csv(index=False), "summary.csv")
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "summary.parquet"
        parquet_ready(table).to_parquet(path, index=False)
        parent.log_folder(folder)
    parent.log_metrics(results_metrics(table, list(plan.study.grid)))


def _end(record: StudyRecord, parent: ParentRun) -> dict[str, int]:
    """Close the record and the parent run of a study whose phases all ran; the failed trials
    per error line. The parent run is FAILED when every trial failed (its `error` tag and the
    first line of its description say so), else FINISHED: some failures among finished trials
    are results, tagged on their own runs."""
    failed: dict[str, int] = {}
    for trial in record.trials.values():
        if trial.status == "failed":
            failed[trial.error or "failed"] = failed.get(trial.error or "failed", 0) + 1
    count = sum(failed.values())
    all_failed = None
    if count and count == len(record.trials):
        all_failed = f"all {count} trials failed" if count > 1 else "its only trial failed"
    record.finish("finished", all_failed)  # finished all the same: nothing is left to resume
    record.save()
    parent.log_text(record.model_dump_json(indent=1), "featloss_state.json")
    if all_failed:
        top = max(failed, key=failed.get)
        parent.set_tags({"featloss.status": "failed", "error": f"{all_failed}: {top}"[:500]})
        parent.add_note(f"**{all_failed[0].upper()}{all_failed[1:]}.** Most often: {top[:300]} "
                        f"(each child run has its `error` tag)")
        parent.finish("FAILED")
    else:
        parent.set_tags({"featloss.status": "finished"})
        parent.finish("FINISHED")
    return failed


def _close(record: StudyRecord, parent: ParentRun | None, trials: TrialRuns | None,
           status: str, mlflow_status: str | None, error: str | None) -> None:
    """Mark the record (always), then the child runs and the parent run (when MLflow answers:
    `mlflow_status` is None when it is the reason we stop) as stopped."""
    for trial in record.trials.values():
        if trial.status == "running":
            trial.status = "pending"
    record.finish(status, error)
    try:
        record.save()
    except OSError:
        pass
    if parent is not None and parent.run_id and mlflow_status:
        try:  # the parent first: it says what happened should a second Ctrl+C come
            parent.set_tags({"featloss.status": status, **({"error": error[:500]} if error
                                                           else {})})
            parent.finish(mlflow_status)
            if trials is not None:  # the runs of unfinished trials: KILLED, until a resume
                reconcile(trials, record, stopping=True)
        except Exception:  # noqa: BLE001 - MLflow may be the reason we stop
            pass


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _cause(exc: BaseException, kind: type) -> BaseException | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
