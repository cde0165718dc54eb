"""What makes a run traceable: the git commit of featloss and the package versions."""

from __future__ import annotations

import subprocess
from pathlib import Path

PACKAGES = ("featloss", "torch", "torchvision", "ray", "optuna", "mlflow", "pyarrow", "pandas")


def versions() -> dict[str, str]:
    """Python and package versions ("not installed" for a missing one)."""
    import importlib.metadata as md
    import platform

    out = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = md.version(package)
        except md.PackageNotFoundError:
            out[package] = "not installed"
    return out


def git_commit() -> str:
    """HEAD of the featloss checkout (``-dirty`` with uncommitted changes to tracked files other
    than the shipped results, which are outputs, not code), or "unknown"."""
    root = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)studies/results"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = out.stdout.strip()
    return (commit + ("-dirty" if dirty else "")) if out.returncode == 0 and commit else "unknown"
