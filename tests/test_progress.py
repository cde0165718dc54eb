"""The live progress line on a real pseudo-terminal (80 columns), before and after a resume."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time

import pytest

from conftest import tiny_study
from featloss.yamlio import dump_yaml

pytestmark = pytest.mark.slow
WIDTH = 80
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_pty(args: list[str], cwd, stop_when=None, width: int = WIDTH) -> tuple[int, str]:
    """Run `featloss ARGS` with its stdout and stderr on a `width`x24 terminal; (rc, output).
    `stop_when()` returning True sends SIGINT once."""
    master, slave = pty.openpty()
    rows = 24 if width else 0
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, width, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen([sys.executable, "-m", "featloss", *args], cwd=cwd, stdin=slave,
                            stdout=slave, stderr=slave, env={**env, "TERM": "xterm"},
                            close_fds=True)
    os.close(slave)
    chunks, stopped, deadline = [], False, time.monotonic() + 600
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the terminal closed: the process ended
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
        if stop_when is not None and not stopped and stop_when():
            proc.send_signal(signal.SIGINT)
            stopped = True
        assert time.monotonic() < deadline, b"".join(chunks).decode(errors="replace")[-3000:]
    os.close(master)
    return proc.wait(timeout=120), b"".join(chunks).decode(errors="replace")


def screens(output: str) -> list[str]:
    """Everything the terminal showed, one entry per redraw or line."""
    return [s for s in re.split(r"[\r\n]", ANSI.sub("", output)) if s.strip()]


def completed(db) -> int:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from tags where key = 'status' and "
                               "value = 'completed'").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_one_live_line_within_80_columns_and_right_after_a_resume(tmp_path):
    study = tmp_path / "study.yaml"
    study.write_text(dump_yaml(tiny_study("tty", seeds=[0, 1, 2, 3], max_concurrent=1,
                                          data={"max_train_samples": 256,
                                                "max_eval_samples": 64},
                                          train={"epochs": 2})))
    db = tmp_path / "mlflow.db"
    args = ["run", str(study), "--storage", str(tmp_path / "r"), "--tracking-uri",
            f"sqlite:///{db}"]
    rc, out = run_in_pty(args, tmp_path, stop_when=lambda: completed(db) >= 2)
    assert rc == 130, out[-2000:]
    shown = screens(out)
    progress = [s for s in shown if s.startswith("[")]
    assert any(s.startswith("[starting Ray…") for s in progress), shown
    assert any(s.startswith("[grid ") for s in progress), shown
    assert all(len(s.rstrip()) <= WIDTH for s in shown if s.startswith("[")), \
        [s for s in shown if len(s) > WIDTH]
    assert "\r" in out  # updated in place, not one line per update
    (results,) = (tmp_path / "r").iterdir()
    rc, out = run_in_pty(["resume", str(results)], tmp_path)
    assert rc == 0, out[-2000:]
    grid = [s for s in screens(out) if s.startswith("[grid ")]
    assert grid and all(len(s.rstrip()) <= WIDTH for s in grid)
    counts = [int(re.match(r"\[grid (\d+)/4 done", s).group(1)) for s in grid]
    assert counts[0] >= 2 and counts[-1] == 4  # the trials finished before the resume count
    noise = ("Token authentication", "Tuner.restore", "Creating initial MLflow",
             "mlflow.store.db.utils")
    assert not [s for s in screens(out) if any(n in s for n in noise)]


def test_a_terminal_reporting_no_width_still_shows_the_line(tmp_path):
    """`script` without a size gives a pty of 0x0: the line is drawn for 80 columns."""
    study = tmp_path / "study.yaml"
    study.write_text(dump_yaml(tiny_study("tty0", train={"epochs": 1},
                                          data={"max_train_samples": 128,
                                                "max_eval_samples": 64})))
    rc, out = run_in_pty(["run", str(study), "--storage", str(tmp_path / "r"), "--tracking-uri",
                          f"sqlite:///{tmp_path / 'mlflow.db'}"], tmp_path, width=0)
    assert rc == 0, out[-2000:]
    assert any(s.startswith("[grid 1/1 done") for s in screens(out)), screens(out)
