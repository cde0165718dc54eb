"""`featloss report STUDY`: tables and plots of one invocation of a study.

The report reads the study's record (`featloss.record`): from the results folder named on the
parent run when it is reachable from here (live, for a study still running), else the copy the
run logged to its parent run. It writes to a folder and, under ``report/``, to the parent run:
the study's table (``summary.{md,csv,parquet}``), every trial's values (``trials.csv``), PNG plots
(`featloss.report.plots`) and ``report.md``. The work is in `featloss.report.build`; this module
only declares the command, so building the CLI imports neither torch nor pandas.
"""

from __future__ import annotations

import argparse
from typing import Any

def add_parser(sub) -> argparse.ArgumentParser:
    parser = sub.add_parser("report", help="tables and plots of a study's runs")
    parser.add_argument("study", help="study name (its MLflow experiment) or study YAML file")
    parser.add_argument("--out", help="output folder (default ./featloss_report/<study>)")
    parser.add_argument("--tracking-uri", help="MLflow URI (default $MLFLOW_TRACKING_URI or "
                                               "sqlite:///<cwd>/mlflow.db)")
    parser.add_argument("--parent", metavar="RUN_ID",
                        help="the study invocation's parent run (default: the newest)")
    return parser


def __getattr__(name: str) -> Any:
    """`build_report`, `cmd_report`, `load_record`, ... from `featloss.report.build`, lazily."""
    import importlib

    build = importlib.import_module("featloss.report.build")
    try:
        return getattr(build, name)
    except AttributeError:
        raise AttributeError(f"module 'featloss.report' has no attribute '{name}'") from None
