"""What a phase runs next: planned trials (grid, final) or per-loss Optuna asks (search).

A feed hands out `TrialSpec`s one at a time and registers each in the study's record before it
starts. `SpecFeed` serves a fixed list (the grid's cells x seeds, the final phase's best
configs) minus what the record shows finished. `OptunaFeed` runs one Optuna study per loss in an
Optuna journal storage (``optuna.journal`` beside the results, for ``optuna-dashboard``) through
Optuna's ask/tell API, with exact budgets: a loss gets exactly its `SearchPlan.trials` trials,
the config's own values first; with the grid sampler each point of the space is enqueued once.
Trials a resume finds unfinished are served again under their key (they continue from their
checkpoints) and told to Optuna when they end.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from featloss import storage
from featloss.errors import ConfigError
from featloss.names import safe_name
from featloss.plan import SearchPlan, StudyPlan, TrialSpec
from featloss.record import StudyRecord, TrialRecord
from featloss.spaces import Distribution

OPTUNA_FILE = "optuna.journal"
MIN_TRIALS_FOR_IMPORTANCE = 10


def trial_record(spec: TrialSpec) -> TrialRecord:
    return TrialRecord(key=spec.key, phase=spec.phase, loss=spec.loss, seed=spec.seed,
                       config=spec.config.to_dict(), params=copy.deepcopy(spec.params))


def spec_of(trial: TrialRecord) -> TrialSpec:
    from featloss.config import Config

    return TrialSpec(key=trial.key, phase=trial.phase, loss=trial.loss, seed=trial.seed,
                     config=Config.from_dict(trial.config, where=f"record of {trial.key}"),
                     params=dict(trial.params))


class SpecFeed:
    """A fixed list of trials; the finished ones are skipped."""

    def __init__(self, specs: list[TrialSpec], record: StudyRecord) -> None:
        for spec in specs:
            record.add(trial_record(spec))
        self.pending = [s for s in specs if not record.trials[s.key].done]

    def next(self) -> TrialSpec | None:
        return self.pending.pop(0) if self.pending else None

    def remaining(self) -> int:
        return len(self.pending)

    def finished(self, trial: TrialRecord) -> None:
        """Nothing to tell: a fixed list learns nothing from results."""


class OptunaFeed:
    """Per-loss Optuna studies over ask/tell, with exact budgets (see the module docstring)."""

    def __init__(self, plan: StudyPlan, record: StudyRecord, journal: str, seed: int) -> None:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.record = record
        self.seed = seed
        self.plans = {s.loss: s for s in plan.searches}
        self.order = [s.loss for s in plan.searches]
        self.journal = journal
        Path(journal).parent.mkdir(parents=True, exist_ok=True)
        fresh = not Path(journal).exists()
        self.storage = JournalStorage(JournalFileBackend(journal))
        direction = "maximize" if plan.mode == "max" else "minimize"
        self.metric = plan.metric
        self.studies = {
            s.loss: optuna.create_study(study_name=s.loss, storage=self.storage,
                                        direction=direction, sampler=_sampler(s),
                                        load_if_exists=True)
            for s in plan.searches if s.space}
        if fresh:
            self._rebuild_from_record()
        for loss, study in self.studies.items():  # a resume: the sampler draws on, not again
            if study.trials:
                study.sampler = _sampler(self.plans[loss], len(study.trials))
        self.retry = sorted((t for t in record.phase("search") if not t.done),
                            key=lambda t: t.key)
        for trial in record.phase("search"):  # the driver died between recording and telling
            if trial.done:
                self.finished(trial)

    def remaining(self) -> int:
        used = {loss: 0 for loss in self.order}
        for trial in self.record.phase("search"):
            used[trial.loss] = used.get(trial.loss, 0) + 1
        return len(self.retry) + sum(max(self.plans[x].trials - used[x], 0) for x in self.order)

    def next(self) -> TrialSpec | None:
        if self.retry:
            return spec_of(self.retry.pop(0))
        used = {loss: 0 for loss in self.order}
        for trial in self.record.phase("search"):
            used[trial.loss] += 1
        open_losses = [x for x in self.order if used[x] < self.plans[x].trials]
        if not open_losses:
            return None
        loss = min(open_losses, key=lambda x: (used[x], self.order.index(x)))
        search = self.plans[loss]
        index = used[loss] + 1
        params, number = self._ask(search, index)
        key = search.key(index)
        trial = TrialRecord(key=key, phase="search", loss=loss, seed=self.seed, config={},
                            params=params, optuna_number=number)
        try:
            config = _validated(search, params, self.seed)
        except ConfigError as exc:  # e.g. a corner of the space the loss rejects
            trial.status, trial.error = "failed", str(exc)
            self.record.add(trial)
            self.finished(trial)
            return self.next()
        trial.config = config.to_dict()
        self.record.add(trial)
        return TrialSpec(key=key, phase="search", loss=loss, seed=self.seed, config=config,
                         params=params)

    def _ask(self, search: SearchPlan, index: int) -> tuple[dict[str, Any], int | None]:
        study = self.studies.get(search.loss)
        if study is None:  # nothing to search: the config's own values
            return {}, None
        if search.points is not None:
            study.enqueue_trial(search.points[index - 1])
        elif index == 1 and search.start:
            study.enqueue_trial(search.start)
        trial = study.ask(distributions(search.space))
        return dict(trial.params), trial.number

    def finished(self, trial: TrialRecord) -> None:
        """Tell Optuna how a search trial ended (completed or stopped: its value; else FAIL)."""
        from optuna.trial import TrialState

        study = self.studies.get(trial.loss)
        if study is None or trial.optuna_number is None:
            return
        value = trial.value(self.metric)
        if trial.status in ("completed", "stopped") and value is not None:
            study.tell(trial.optuna_number, value, skip_if_finished=True)
        else:
            study.tell(trial.optuna_number, state=TrialState.FAIL, skip_if_finished=True)

    def _rebuild_from_record(self) -> None:
        """A journal lost (or never local): re-enter the record's search trials into Optuna."""
        import optuna
        from optuna.trial import TrialState

        for trial in sorted(self.record.phase("search"), key=lambda t: t.key):
            study = self.studies.get(trial.loss)
            if study is None:
                continue
            space = distributions(self.plans[trial.loss].space)
            value = trial.value(self.metric)
            if trial.done:
                ok = trial.status in ("completed", "stopped") and value is not None
                study.add_trial(optuna.trial.create_trial(
                    state=TrialState.COMPLETE if ok else TrialState.FAIL,
                    value=value if ok else None, params=trial.params, distributions=space))
                trial.optuna_number = len(study.trials) - 1
            else:
                study.enqueue_trial(trial.params)
                trial.optuna_number = study.ask(space).number
            self.record.touch()

    def summaries(self) -> dict[str, dict[str, str]]:
        """Per loss: the Optuna trial table (CSV) and, with >= MIN_TRIALS_FOR_IMPORTANCE
        finished trials, fANOVA importances (JSON), for the parent run."""
        import json

        import optuna
        from optuna.trial import TrialState

        out: dict[str, dict[str, str]] = {}
        for loss, study in self.studies.items():
            files = {f"optuna/{loss}_trials.csv": study.trials_dataframe().to_csv(index=False)}
            done = [t for t in study.trials if t.state == TrialState.COMPLETE]
            if len(done) >= MIN_TRIALS_FOR_IMPORTANCE and len({t.value for t in done}) > 1:
                importance = optuna.importance.get_param_importances(study)
                files[f"optuna/{loss}_importance.json"] = json.dumps(importance, indent=1)
            out[loss] = files
        return out


def _validated(search: SearchPlan, params: dict[str, Any], seed: int):
    from featloss.train import validate_config

    return validate_config(search.config(params, seed))


def distributions(space: dict[str, Distribution]) -> dict[str, Any]:
    import optuna.distributions as od

    out = {}
    for key, d in space.items():
        if d.type == "categorical":
            out[key] = od.CategoricalDistribution(list(d.choices))
        elif d.type == "int":
            out[key] = od.IntDistribution(int(d.low), int(d.high), log=d.log, step=d.step or 1)
        else:
            out[key] = od.FloatDistribution(float(d.low), float(d.high), log=d.log, step=d.step)
    return out


def _sampler(search: SearchPlan, asked: int = 0):
    """The loss's sampler, seeded by its `sampler_seed` and the number of trials its study
    already holds: Optuna keeps no sampler state in the journal, so a resumed study given the
    first seed again would draw the points it drew before the interruption once more."""
    import optuna

    seed = search.sampler_seed if asked == 0 else (search.sampler_seed * 1_000_003 + asked) % 2**32
    if search.sampler in ("random", "grid"):  # grid: every point is enqueued, nothing drawn
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def journal_path(results_dir: str) -> str:
    """The Optuna journal: beside the results when they are local, else in a local folder."""
    if not storage.is_remote(results_dir):
        return storage.join(results_dir, OPTUNA_FILE)
    name = safe_name(results_dir.rstrip("/").rsplit("/", 1)[-1])
    return str(Path(tempfile.gettempdir()) / "featloss-optuna" / f"{name}.journal")
