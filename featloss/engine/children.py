"""The study's child runs kept in step with its record: one run per trial, none left RUNNING.

The record is the study's state, but a crash can keep from it what MLflow already holds (a run
created just before the crash, a run closed by an earlier featloss). So every invocation matches
the parent's child runs to the record's trials by their trial key tag, before its trials start
(`reconcile(stopping=False)`) and when it stops, cleanly or not (`reconcile(stopping=True)`):

- a trial the record knows without its run (or with a run that is gone) gets its run back, with
  the epochs MLflow holds, so a resume logs the epochs after them into the same run;
- a second run of a trial is retired (see `featloss.tracking.runs`), naming the run kept;
- a run whose trial the record does not hold at all (a crash between creating the run and
  recording its trial) is retired;
- the run of a finished trial that is still RUNNING (the driver died between the record and
  MLflow) is closed with the trial's status; when the study stops, the RUNNING run of an
  unfinished trial is closed as KILLED, ``status: interrupted``, and the resume reopens it.

A trial whose checkpoint was lost (`TrialRecord.restart`) is left alone here: the driver opens
its new run when it starts and retires the old ones then (`supersede`), naming the new run.
"""

from __future__ import annotations

from featloss import storage
from featloss.engine.trainable import features_uri
from featloss.record import StudyRecord, TrialRecord
from featloss.tracking import TrialRuns

DUPLICATE = ("a second MLflow run of trial {key}: run {keep} holds the trial (the run the record "
             "names, else the one with the most epochs)")
UNRECORDED = ("trial {key} is not in the study's record (the driver stopped between creating "
              "this run and recording its trial); the trial runs again under a new run")
RESTARTED = ("trial {key} restarted from epoch 0 in run {keep}: its checkpoint could not be "
             "used, so the epochs logged here were trained again there")


def reconcile(runs: TrialRuns, record: StudyRecord, stopping: bool) -> None:
    """Match the parent's child runs to the record's trials (see the module docstring).

    Raises what `TrackingClient.call` raises (TrackingUnavailable, an MLflow error).
    """
    found: dict[str, list] = {}
    for child in runs.children():
        found.setdefault(child.key, []).append(child)
    for key, children in found.items():
        trial = record.trials.get(key)
        if trial is None:
            for child in children:
                runs.retire(child.run_id, None, UNRECORDED.format(key=key))
            continue
        if trial.new_run:
            if stopping:  # retired once the new run exists; until then, not left RUNNING
                for child in children:
                    if child.status == "RUNNING":
                        runs.interrupt(child.run_id)
            continue
        keep = next((c for c in children if c.run_id == trial.run_id), None)
        if keep is None:  # the record lost the run id: the run with the most epochs holds it
            keep = max(children, key=lambda c: (c.epoch, c.start_time))
            trial.run_id = keep.run_id
            record.touch()
        if keep.epoch > trial.logged_epoch:  # logged, but the record's save was throttled
            trial.logged_epoch = keep.epoch
            record.touch()
        for child in children:
            if child is not keep:
                runs.retire(child.run_id, keep.run_id, DUPLICATE.format(key=key,
                                                                          keep=keep.run_id))
        if keep.status == "RUNNING":
            if trial.done:
                close_run(runs, trial, record.results_dir)
            elif stopping:
                runs.interrupt(keep.run_id)
    if not stopping:
        for trial in record.trials.values():
            if trial.run_id and not trial.done and trial.key not in found:
                trial.run_id, trial.logged_epoch = None, 0  # its run was deleted: a new one
                record.touch()
    record.save()


def supersede(runs: TrialRuns, trial: TrialRecord) -> None:
    """Retire every other run of `trial`, which restarted from epoch 0 in `trial.run_id`."""
    for child in runs.children(trial.key):
        if child.run_id != trial.run_id:
            runs.retire(child.run_id, trial.run_id,
                        RESTARTED.format(key=trial.key, keep=trial.run_id))


def close_run(runs: TrialRuns, trial: TrialRecord, results_dir: str) -> None:
    """Close a finished trial's run with its status (and its 2-D features when completed)."""
    if trial.status == "completed":
        checkpoint = storage.join(results_dir, "checkpoints", f"{trial.key}.pt")
        runs.log_features(trial.run_id, storage.load_trial_state(features_uri(checkpoint)))
    runs.finish(trial.run_id, trial.status, trial.error)
