"""The study commands of the CLI: run, validate, resume (and report, slurm, schema).

Everything a command can check is checked before any compute starts: the study file (parsed and
expanded), the tracking store (opened, created under a file lock), the storage folder
(writable), the resources a local run can offer. Bad input is one ConfigError line, exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from featloss.errors import ConfigError
from featloss.preflight import (
    DEFAULT_STORAGE,
    check_devices,
    check_environment,
    check_plan_data,
    check_storage,
    plan_warnings,
    storage_uri,
    tracking_uri,
)
from featloss.study import RUNTIME_KEYS  # what a resume (and resume --set) may change

EXIT_TRIALS_FAILED = 1
EXIT_INTERRUPTED = 130
EXIT_TRACKING_DOWN = 75  # EX_TEMPFAIL: try again later


def add_parsers(sub) -> None:
    run = sub.add_parser("run", help="run a study (Ray Tune + Optuna + MLflow)")
    run.add_argument("study", help="study YAML file")
    run.add_argument("--smoke", action="store_true",
                     help="shrink the study: 1 epoch, a data subset, 2 trials per loss, 1 seed")
    _add_set(run)
    _add_run_options(run)

    validate = sub.add_parser("validate", help="expand a study and print the plan; start nothing")
    validate.add_argument("study")
    validate.add_argument("--smoke", action="store_true")
    _add_set(validate)

    resume = sub.add_parser("resume", help="continue an interrupted study")
    resume.add_argument("target", help="the study YAML (newest unfinished results of that study "
                                       "under --storage) or a results folder")
    resume.add_argument("--accept-changes", action="store_true",
                        help="the study file changed since the study started: go on with the "
                             "recorded plan anyway")
    resume.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"change how the recorded study runs: only {', '.join(RUNTIME_KEYS)}"
                             f" (e.g. --set resources.cpu=2 --set max_concurrent=4); recorded, "
                             f"so a later resume keeps it. Anything else would change the "
                             f"plan: that is a new study (featloss run STUDY --set KEY=VALUE)")
    _add_run_options(resume)

    from featloss import report

    report.add_parser(sub)
    from featloss import reproduce, schema, slurm

    slurm.add_parser(sub)
    schema.add_parser(sub)
    reproduce.add_parser(sub)


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a study key with a YAML value, applied after _base_: "
                             "--set train.epochs=5 --set seeds=[0,1] --set losses=[softmax,pod]. "
                             "Grid and search-space keys contain dots and are written as they "
                             "are: --set grid.model.feature_dim=[8,16] --set "
                             "'search.space.pod.loss.lam={type: float, low: 0, high: 1}'. "
                             "Recorded with the study, so a resume runs the same plan")


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or "
                                               "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--storage", help=f"results folder, shared path or s3:// URI "
                                          f"(default $FEATLOSS_STORAGE or ./{DEFAULT_STORAGE})")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a "
                                          "local Ray)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once")
    parser.add_argument("--wait-for-nodes", type=float, default=0, metavar="SECONDS",
                        help="with --address: when no node can hold one trial yet, ask Ray's "
                             "autoscaler for one and wait up to SECONDS (default 0: fail at "
                             "once)")


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "validate":
        return cmd_validate(args)
    if args.command == "run":
        return cmd_run(args)
    if args.command == "resume":
        return cmd_resume(args)
    if args.command == "slurm":
        from featloss.slurm import cmd_slurm

        return cmd_slurm(args)
    if args.command == "report":
        from featloss.report import cmd_report

        return cmd_report(args)
    if args.command == "schema":
        from featloss.schema import cmd_schema

        return cmd_schema()
    if args.command == "reproduce":
        from featloss.reproduce import cmd_reproduce

        return cmd_reproduce(args)
    raise ConfigError(f"unknown command {args.command}")


# -- validate --------------------------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    from featloss.config import parse_overrides
    from featloss.plan import expand
    from featloss.study import load_study

    plan = expand(load_study(args.study, parse_overrides(args.set)), smoke=args.smoke)
    check_devices(plan, local=True, strict=False)
    data_note = check_plan_data(plan, strict=False)
    print("\n".join(plan.summary_lines()))
    for line in plan_warnings(plan) + ([data_note] if data_note else []):
        print(f"warning: {line}" if not line.startswith("note:") else line)
    print(f"total: {plan.total_trials} trials")
    return 0


# -- run -------------------------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace) -> int:
    from featloss.config import parse_overrides
    from featloss.plan import expand
    from featloss.record import StudyRecord
    from featloss.study import load_study
    from featloss.tracking import check_store

    check_environment()
    overrides = parse_overrides(args.set)
    plan = expand(load_study(args.study, overrides), smoke=args.smoke)
    address = _address(args)
    check_devices(plan, local=address is None, strict=True)
    _check_options(args, address)
    if address is None:  # the trials run here: their data must be here and usable
        check_plan_data(plan, strict=True)
    storage = storage_uri(args.storage)
    check_storage(storage, args.storage)  # before the store: a refused run leaves no mlflow.db
    uri = tracking_uri(args.tracking_uri)
    check_store(uri)
    record = StudyRecord.new(plan, uri, storage, str(Path(args.study).resolve()), overrides)
    _create(record)
    print("\n".join(plan.summary_lines()), flush=True)
    for line in plan_warnings(plan):
        print(f"featloss: warning: {line}", file=sys.stderr, flush=True)
    try:
        return _execute(plan, record, address, args)
    except ConfigError:  # refused on joining the cluster (e.g. resources no node offers)
        if not record.started():
            with contextlib.suppress(OSError):  # the error line matters more than the tidy-up
                record.discard()
        raise


def _check_options(args: argparse.Namespace, address: str | None) -> None:
    """The run options that need no study: concurrency, the Ray address (ConfigError)."""
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError(f"--max-concurrent {args.max_concurrent}: must be >= 1")
    if not 0 <= args.wait_for_nodes <= 86400:
        raise ConfigError(f"--wait-for-nodes {args.wait_for_nodes:g}: must be between 0 and "
                          f"86400 seconds")
    if args.wait_for_nodes and not address:
        raise ConfigError("--wait-for-nodes needs --address (a local Ray has no autoscaler)")
    if address:
        from featloss.engine.ray_setup import check_address

        check_address(address)


def _address(args: argparse.Namespace) -> str | None:
    return args.address or os.environ.get("RAY_ADDRESS") or None


def _create(record) -> None:
    """Write the record (creating the results folder): one line when the storage refuses."""
    try:
        record.save()
    except OSError as exc:
        raise ConfigError(f"--storage {record.storage}: cannot create "
                          f"{record.results_dir} ({exc.strerror or exc}); pass a writable "
                          f"folder") from None


def _execute(plan, record, address: str | None, args: argparse.Namespace) -> int:
    from featloss.engine.run import RunOptions, StudyInterrupted, run_study

    try:
        outcome = run_study(plan, record,
                            RunOptions(address, args.max_concurrent, args.wait_for_nodes))
    except StudyInterrupted as stop:
        if stop.reason:  # the study stopped itself, cleanly
            print(f"featloss: study stopped: {stop.reason}; resume with: featloss resume "
                  f"{stop.results_dir}", file=sys.stderr, flush=True)
            return EXIT_TRACKING_DOWN
        print(f"featloss: interrupted; resume with: featloss resume {stop.results_dir}",
              file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return _finished(plan, record, outcome)


def _finished(plan, record, outcome) -> int:
    from featloss.results import study_table
    from featloss.summary import to_markdown

    print(f"\nsummary of '{plan.study.name}' (mean ± std over seeds; n completed trials):")
    print(to_markdown(study_table(record, plan.study)))
    report_dir = _report(record, outcome)
    print(f"\nresults: {outcome.results_dir}")
    if report_dir:
        print(f"report:  {report_dir}/report.md (also on the parent run)")
    print(f"MLflow:  {ui_hint(record.tracking_uri, outcome.experiment_id, outcome.parent_run_id)}")
    if outcome.optuna_journal:
        print(f"Optuna:  {optuna_hint(outcome.optuna_journal)}")
    if outcome.failed:
        for error, count in sorted(outcome.failed.items(), key=lambda kv: -kv[1]):
            print(f"featloss: {count} trial{'s' if count > 1 else ''} failed: {error}",
                  file=sys.stderr)
        return EXIT_TRIALS_FAILED
    return 0


def _report(record, outcome) -> str | None:
    """The study's report, written under the results and logged to the parent run."""
    from featloss.report import build_report
    from featloss.storage import is_remote, join

    if is_remote(record.results_dir):
        return None
    folder = join(record.results_dir, "report")
    try:
        build_report(record.tracking_uri, record.study, folder, outcome.parent_run_id)
    except Exception as exc:  # noqa: BLE001 - the study is done; a report problem is a note
        print(f"featloss: note: the report could not be built ({type(exc).__name__}: {exc}); "
              f"run `featloss report {record.study}`", file=sys.stderr)
        return None
    return folder


def optuna_hint(journal: str) -> str:
    """The optuna-dashboard command for the study's journal; where the dashboard is not
    installed (it is the `dashboard` extra), how to get it first."""
    import importlib.util
    import shlex

    command = f"optuna-dashboard {shlex.quote(str(journal))}"
    if importlib.util.find_spec("optuna_dashboard") is not None:
        return command
    return f"pip install 'featloss[dashboard]', then {command}"


def ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """The direct MLflow UI address of a run (and how to start the UI for a SQLite store)."""
    # MLflow 3.17's UI picks its GenAI or model-training view from this parameter
    path = f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    if uri.startswith(("http://", "https://")):
        return f"{uri.rstrip('/')}/{path}"
    return (f"mlflow ui --backend-store-uri {uri}  then open http://127.0.0.1:5000/{path}")


# -- resume ----------------------------------------------------------------------------------------

def cmd_resume(args: argparse.Namespace) -> int:
    from featloss.config import parse_overrides, set_path
    from featloss.plan import expand
    from featloss.record import StudyRecord, find_results_dir
    from featloss.study import DOTTED_KEY_PARENTS, load_study, parse_study
    from featloss.tracking import check_store
    from featloss.yamlio import load_yaml

    check_environment()
    target = args.target
    new_overrides = parse_overrides(args.set)
    _check_resume_overrides(args.set)
    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        name = load_study(target, new_overrides).name
        results_dir = find_results_dir(storage_uri(args.storage), name)
        source = target
    else:
        if not Path(target).exists() and "://" not in target:
            raise ConfigError(f"{target}: no such results folder or study file")
        results_dir = target if "://" in target else str(Path(target).resolve())
        source = None
    record = StudyRecord.load(results_dir)
    if record.status == "finished":
        print(f"{results_dir}: the study already finished; nothing to resume")
        return 0
    recorded = load_yaml(record.study_yaml)
    overrides = {**record.overrides, **new_overrides}
    current = _current_study(source or record.source, overrides)
    if current is not None:
        _check_changes(recorded, current, source or record.source, args.accept_changes)
        for key in RUNTIME_KEYS:  # where and how fast it runs may change; what it computes not
            if key in current:
                recorded[key] = current[key]
            else:
                recorded.pop(key, None)
    else:  # the study file is gone: the runtime overrides of every invocation still apply
        for key, value in overrides.items():
            if key.split(".")[0] in RUNTIME_KEYS:
                set_path(recorded, key, value, f"--set {key}", DOTTED_KEY_PARENTS)
    study = parse_study(recorded, source=record.source)
    record.overrides = overrides  # saved with the record when the resumed study starts
    plan = expand(study, smoke=record.smoke)
    address = _address(args)
    check_devices(plan, local=address is None, strict=True)
    _check_options(args, address)
    if address is None:
        check_plan_data(plan, strict=True)
    if args.tracking_uri:
        record.tracking_uri = tracking_uri(args.tracking_uri)
    check_store(record.tracking_uri)
    _check_checkpoints(record)
    print(f"resuming {results_dir}", flush=True)
    return _execute(plan, record, address, args)


def _check_resume_overrides(items: list[str]) -> None:
    """resume --set may change only how the recorded study runs (RUNTIME_KEYS); ConfigError."""
    for item in items:
        key = item.partition("=")[0].strip()
        if key.split(".")[0] not in RUNTIME_KEYS:
            raise ConfigError(f"--set {item}: a resume continues the recorded plan, so --set may "
                              f"change only {', '.join(RUNTIME_KEYS)}; a different plan is a new "
                              f"study: featloss run STUDY.yaml --set {item}")


def _current_study(path: str, overrides: dict) -> dict | None:
    from featloss.study import resolve_file

    if not path or path.startswith("<") or not Path(path).is_file():
        return None
    return resolve_file(path, overrides)


def _check_changes(recorded: dict, current: dict, source: str, accept: bool) -> None:
    from featloss.study import changed_keys

    changed = changed_keys(recorded, current)
    if not changed:
        return
    listed = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    if not accept:
        raise ConfigError(f"{source} changed since the study started: {listed}; resume continues "
                          f"the recorded plan: pass --accept-changes to go on with it, or start "
                          f"a new study with featloss run")
    print(f"featloss: note: {source} changed since the study started ({listed}); going on with "
          f"the recorded plan (--accept-changes)", flush=True)


def _check_checkpoints(record) -> None:
    """One line per checkpoint a resume cannot use (the trial then starts over)."""
    from featloss import storage

    for trial in record.trials.values():
        uri = storage.join(record.results_dir, "checkpoints", f"{trial.key}.pt")
        state, problem = storage.read_trial_state(uri)
        if problem is None:
            continue
        if trial.done:
            print(f"featloss: note: checkpoint {uri} is unreadable ({problem}); trial "
                  f"{trial.key} had finished: its results stand, its saved weights are lost",
                  file=sys.stderr)
        else:  # MLflow cannot delete a run's epochs: the restart gets a run of its own
            print(f"featloss: warning: checkpoint {uri} is unreadable ({problem}); trial "
                  f"{trial.key} restarts from epoch 0 in a new MLflow run (its old run is "
                  f"closed as KILLED and moved to MLflow's deleted runs, restorable)",
                  file=sys.stderr)
            trial.restart()
