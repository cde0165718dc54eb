"""`featloss reproduce`: run (or read back) the CPU claim studies and write the claims table.

For every study in `featloss.claims.CLAIM_STUDIES` (shipped under ``studies/``) it runs the study
with one local Ray for all of them, or with ``--from-mlflow`` reads the newest invocation of each
from the tracking store, then writes per study the report (`featloss report`, with ``trials.csv``:
every trial's values) under ``--out``/<study>/, and ``claims.md`` / ``claims.csv`` under
``--out``: each claim, its source, the groups' mean ± std (n), the contrast's 95 % CI and
p-value, the rule stated in advance (`featloss.claims`) and the verdict. ``--smoke`` runs every
study shrunk (1 epoch, a data subset, 1 seed): a check of the pipeline, whose verdicts are
inconclusive by design (n = 1 gives no interval).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from featloss.errors import ConfigError

STUDIES_DIR = Path(__file__).resolve().parent.parent / "studies"


def add_parser(sub) -> None:
    parser = sub.add_parser("reproduce", help="run the CPU claim studies and write the claims "
                                              "table (supported / contradicted / inconclusive)")
    parser.add_argument("--smoke", action="store_true",
                        help="every study shrunk (1 epoch, 1 seed): checks the pipeline only")
    parser.add_argument("--from-mlflow", action="store_true",
                        help="read the newest run of each study instead of running it")
    parser.add_argument("--out", help="where reports and claims.md go (default "
                                      "studies/results, or featloss_results/claims-smoke)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or "
                                               "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--storage", help="results folder (default $FEATLOSS_STORAGE or "
                                          "./featloss_results)")
    parser.add_argument("--only", nargs="+", metavar="STUDY",
                        help="only these claim studies (names)")


def cmd_reproduce(args: argparse.Namespace) -> int:
    from featloss.claims import CLAIM_STUDIES
    from featloss.preflight import check_environment, storage_uri, tracking_uri
    from featloss.report import check_out
    from featloss.tracking import check_store

    check_environment()
    studies = dict(CLAIM_STUDIES)
    if args.only:
        unknown = sorted(set(args.only) - set(studies))
        if unknown:
            raise ConfigError(f"--only {unknown[0]}: not a claim study (known: "
                              f"{', '.join(studies)})")
        studies = {k: v for k, v in studies.items() if k in args.only}
    out = Path(args.out or ("featloss_results/claims-smoke" if args.smoke
                            else str(STUDIES_DIR / "results")))
    check_out(str(out))
    uri = tracking_uri(args.tracking_uri)
    check_store(uri)
    if args.from_mlflow:
        records = _read(studies, uri)
    else:
        records = _run(studies, uri, storage_uri(args.storage), args.smoke)
    _reports(records, uri, out)
    return _claims(records, out, args.smoke)


def _plans(studies: dict[str, str], smoke: bool):
    from featloss.plan import expand
    from featloss.study import load_study

    plans = {}
    for name, file in studies.items():
        path = STUDIES_DIR / file
        if not path.is_file():
            raise ConfigError(f"claim study {path} is missing (featloss reproduce runs from a "
                              f"featloss checkout)")
        plans[name] = expand(load_study(path), smoke=smoke)
    return plans


def _run(studies: dict[str, str], uri: str, storage: str, smoke: bool) -> dict:
    from featloss.preflight import check_plan_data
    from featloss.engine import ray_setup
    from featloss.engine.run import StudyInterrupted, run_new_study

    plans = _plans(studies, smoke)  # every study checked before any runs
    for plan in plans.values():
        check_plan_data(plan, strict=True)
    records = {}
    owns = ray_setup.start_ray(None)
    try:
        for name, plan in plans.items():
            began = time.time()
            print(f"== {name}: {plan.total_trials} trials", flush=True)
            try:
                record, _ = run_new_study(plan, uri, storage, str(STUDIES_DIR / studies[name]))
            except StudyInterrupted as stop:
                print(f"featloss: {name} stopped ({stop.reason or 'interrupted'}); resume with "
                      f"featloss resume {stop.results_dir}, then featloss reproduce "
                      f"--from-mlflow", file=sys.stderr)
                raise SystemExit(130) from None
            print(f"== {name}: {time.time() - began:.0f} s", flush=True)
            records[name] = record
    finally:
        if owns:
            ray_setup.stop_ray()
    return records


def _read(studies: dict[str, str], uri: str) -> dict:
    import tempfile

    from featloss.report import load_record
    from featloss.tracking import TrackingClient
    from featloss.tracking.read import parent_runs

    client = TrackingClient(uri)
    records = {}
    for name in studies:
        parents = parent_runs(client, name)
        if not parents:
            raise ConfigError(f"study '{name}' has no runs at {uri}; run featloss reproduce "
                              f"without --from-mlflow")
        with tempfile.TemporaryDirectory() as scratch:
            records[name] = load_record(client, parents[0], scratch)
    return records


def _reports(records: dict, uri: str, out: Path) -> None:
    from featloss.report import build_report

    for name, record in records.items():
        build_report(uri, name, str(out / name), parent_run_id=record.parent_run_id)


def _claims(records: dict, out: Path, smoke: bool) -> int:
    from featloss.claims import claims_table
    from featloss.provenance import git_commit

    table = claims_table(records)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "claims.csv", index=False)
    shown = table.drop(columns=["note", "id", "study", "metric"])
    commits = ", ".join(f"{name} at `{record.commit or 'unknown'}`"
                        for name, record in records.items())
    header = [f"# featloss claims{' (SMOKE RUN: not results)' if smoke else ''}", "",
              f"Table written at commit `{git_commit()}`; the studies ran at: {commits}. Each "
              f"row's data: `<study>/trials.csv` beside this file; the rules and statistics: "
              f"`featloss/claims.py` (Welch 95 % CIs, α = 0.05).", ""]
    (out / "claims.md").write_text("\n".join(header) + shown.to_markdown(index=False) + "\n")
    counts = table["verdict"].value_counts().to_dict()
    print(shown[["claim", "Δ [95 % CI]", "verdict"]].to_markdown(index=False))
    print(f"\nclaims: {len(table)} ({', '.join(f'{n} {v}' for v, n in counts.items())}); "
          f"table: {out / 'claims.md'}")
    return 0
