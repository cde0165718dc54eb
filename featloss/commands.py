"""The study commands of the CLI: run, validate, resume, and report (featloss.report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from featloss.errors import ConfigError

DEFAULT_STORAGE = "featloss_results"


def add_parsers(sub) -> None:
    run = sub.add_parser("run", help="run a study (Ray Tune + Optuna + MLflow)")
    run.add_argument("study", help="study YAML file")
    run.add_argument("--smoke", action="store_true",
                     help="shrink the study: 1 epoch, a data subset, 2 trials per loss, 1 seed")
    _add_run_options(run)

    validate = sub.add_parser("validate", help="expand a study and print the plan; start nothing")
    validate.add_argument("study")
    validate.add_argument("--smoke", action="store_true")

    resume = sub.add_parser("resume", help="continue an interrupted study")
    resume.add_argument("target", help="the study YAML (newest unfinished results of that study "
                                       "under --storage) or a results folder")
    _add_run_options(resume)

    from featloss import report

    report.add_parser(sub)
    from featloss import slurm

    slurm.add_parser(sub)


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or "
                                               "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--storage", help=f"results folder, shared path or s3:// URI "
                                          f"(default $FEATLOSS_STORAGE or ./{DEFAULT_STORAGE})")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS or a "
                                          "local Ray)")
    parser.add_argument("--max-concurrent", type=int, help="trials running at once")


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
    raise ConfigError(f"unknown command {args.command}")


def cmd_validate(args: argparse.Namespace) -> int:
    from featloss.study import expand, load_study

    plan = expand(load_study(args.study), smoke=args.smoke)
    print("\n".join(plan.summary_lines()))
    print(f"total: {plan.total_trials} trials")
    return 0


def _options(args: argparse.Namespace, smoke: bool, saved: dict | None = None):
    import os

    from featloss.hpo import RunOptions
    from featloss.tracking import default_tracking_uri, normalise_uri

    saved = saved or {}
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ConfigError("--max-concurrent must be >= 1")
    uri = args.tracking_uri or saved.get("tracking_uri") or default_tracking_uri()
    store = (args.storage or saved.get("storage") or os.environ.get("FEATLOSS_STORAGE")
             or DEFAULT_STORAGE)
    if "://" not in store:
        store = str(Path(store).expanduser().resolve())
    return RunOptions(tracking_uri=normalise_uri(uri), storage=store,
                      address=args.address or os.environ.get("RAY_ADDRESS"),
                      max_concurrent=args.max_concurrent, smoke=smoke)


def cmd_run(args: argparse.Namespace) -> int:
    from featloss.study import expand, load_study
    from featloss.tracking import check_reachable

    plan = expand(load_study(args.study), smoke=args.smoke)
    options = _options(args, args.smoke)
    check_reachable(options.tracking_uri)  # before Ray starts
    print("\n".join(plan.summary_lines()), flush=True)
    return _execute(plan, options, None)


def cmd_resume(args: argparse.Namespace) -> int:
    from featloss import storage
    from featloss.study import expand, parse_study
    from featloss.tracking import check_reachable
    from featloss.yamlio import load_yaml

    target = args.target
    if target.endswith((".yaml", ".yml")) and Path(target).is_file():
        from featloss.study import load_study

        import os

        name = load_study(target).name
        base = args.storage or os.environ.get("FEATLOSS_STORAGE") or DEFAULT_STORAGE
        results_dir = storage.find_results_dir(base if "://" in base else str(Path(base).resolve()),
                                               name)
    else:
        results_dir = target if "://" in target else str(Path(target).resolve())
    state = storage.read_state(results_dir)
    if state.get("status") == "finished":
        print(f"{results_dir}: the study already finished; nothing to resume")
        return 0
    study = parse_study(load_yaml(state["study_yaml"]), source=state["source"])
    plan = expand(study, smoke=state.get("smoke", False))
    options = _options(args, state.get("smoke", False), saved=state)
    check_reachable(options.tracking_uri)
    print(f"resuming {results_dir}", flush=True)
    return _execute(plan, options, results_dir)


def _execute(plan, options, results_dir: str | None) -> int:
    from featloss.hpo import StudyInterrupted, run_study

    try:
        outcome = run_study(plan, options, results_dir)
    except StudyInterrupted as stop:
        if stop.reason:  # the study stopped itself, cleanly
            print(f"featloss: study stopped: {stop.reason}; resume with: featloss resume "
                  f"{stop.results_dir}", file=sys.stderr, flush=True)
            return 75  # EX_TEMPFAIL: try again later
        print(f"featloss: interrupted; resume with: featloss resume {stop.results_dir}", flush=True)
        return 130
    print(f"\nsummary of '{plan.study.name}' (mean ± std over seeds, n finished trials):")
    print(outcome.summary_markdown)
    print(f"\nresults: {outcome.results_dir}")
    print(f"MLflow parent run: {outcome.parent_run_id}")
    print(f"browse:  mlflow ui --backend-store-uri {outcome.tracking_uri}  "
          f"(then open http://127.0.0.1:5000)")
    return 0
