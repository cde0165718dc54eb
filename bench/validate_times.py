"""Wall time of `featloss validate` for every shipped study, as a user runs it (a new process
each time, warm disk cache), median of `--repeats`. Target (issue 13): <= 2 s on 2 cores.

    python bench/validate_times.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "featloss", "validate"]
    subprocess.run([*command, str(REPO / "studies" / "quickstart.yaml")], env=env,
                   capture_output=True, check=False)  # the cache (repulsion targets, data) warm
    print(f"{'study':42s} {'median s':>9s} {'max s':>7s}  rc")
    worst = 0.0
    for study in sorted((REPO / "studies").glob("*.yaml")):
        times, rc = [], 0
        for _ in range(args.repeats):
            began = time.perf_counter()
            proc = subprocess.run([*command, str(study)], env=env, capture_output=True,
                                  check=False)
            times.append(time.perf_counter() - began)
            rc = rc or proc.returncode
        worst = max(worst, statistics.median(times))
        print(f"{study.name:42s} {statistics.median(times):9.2f} {max(times):7.2f}  {rc}")
    print(f"slowest median: {worst:.2f} s")


if __name__ == "__main__":
    main()
