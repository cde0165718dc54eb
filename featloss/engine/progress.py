"""The study's progress line, computed from its record (so it is right after a resume too).

On a terminal: one line, cut to the terminal's width and updated in place (tqdm draws it),
saying what the study waits for while it starts ("starting Ray…"), then
``[search 12/25 done, 2 running, 1 failed | 1m32s elapsed, ~1m40s left] best val/accuracy: ...``.
Elsewhere (a log file, CI): the same text as a new line every `FEATLOSS_PROGRESS_SECONDS`
(default 10) and whenever a trial ends; a terminal's line is redrawn every second. The ETA is
the work left in mean trial times (finished trials, across resumes): one per trial not started,
and what the mean leaves of each running trial, divided by the slots running at once, so it
counts down while trials run.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TextIO

from featloss.record import StudyRecord
from featloss.summary import fmt_number


def progress_seconds() -> float:
    from featloss.errors import ConfigError

    text = os.environ.get("FEATLOSS_PROGRESS_SECONDS", "10")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ConfigError(f"FEATLOSS_PROGRESS_SECONDS={text!r} must be a number of seconds >= 0")
    return value


class Progress:
    """Prints progress lines (see the module docstring)."""

    def __init__(self, stream: TextIO | None = None, every: float | None = None,
                 tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.every = progress_seconds() if every is None else every
        self.tty = self.stream.isatty() if tty is None else tty
        if self.tty and every is None:
            self.every = min(self.every, 1.0)  # in place: cheap, and the ETA counts down
        self.started = time.monotonic()
        self.last = 0.0
        self._bar = None

    # -- output ---------------------------------------------------------------------------------
    def _draw(self, text: str) -> None:
        if not self.tty:
            print(text, file=self.stream, flush=True)
            return
        # a pseudo-terminal may report 0 columns (e.g. `script` without a size): assume 80
        size = shutil.get_terminal_size((80, 24))
        width = size.columns or 80
        text = text if len(text) < width else text[: max(width - 2, 1)] + "…"
        if self._bar is None:
            from tqdm import tqdm

            # the text is cut to the width above at every draw: tqdm must not cut it again,
            # nor hide it on a terminal reporting 0 rows
            self._bar = tqdm(total=0, bar_format="{desc}", file=self.stream, leave=True,
                             ncols=10_000, nrows=size.lines or 24)
        self._bar.set_description_str(text, refresh=True)

    def say(self, text: str) -> None:
        """A line of its own (a note, a warning), above the live line on a terminal."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def status(self, text: str) -> None:
        """What the study is waiting for while it starts."""
        self._draw(f"[{text} {_duration(time.monotonic() - self.started)}]")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    # -- the line -------------------------------------------------------------------------------
    def update(self, record: StudyRecord, phase: str, total: int, slots: int, metric: str,
               mode: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        self._draw(line(record, phase, total, slots, metric, mode, now - self.started))


def line(record: StudyRecord, phase: str, total: int, slots: int, metric: str, mode: str,
         elapsed: float, now: float | None = None) -> str:
    """The progress text of `phase` from the record (pure but for `now`, unix seconds, default
    the current time: tested on its own)."""
    counts = record.counts(phase)
    done = sum(counts[s] for s in ("completed", "diverged", "failed", "stopped"))
    parts = [f"{done}/{total} done", f"{counts['running']} running"]
    parts += [f"{counts[s]} {s}" for s in ("failed", "diverged") if counts[s]]
    timing = [f"{_duration(elapsed)} elapsed"]
    durations = [t.finished - t.started for t in record.phase(phase)
                 if t.done and t.started is not None and t.finished is not None]
    if durations and total > done:
        mean = sum(durations) / len(durations)
        now = time.time() if now is None else now
        running = [now - t.started for t in record.phase(phase)
                   if t.status == "running" and t.started is not None]
        not_started = max(total - done - len(running), 0)
        work = not_started * mean + sum(max(mean - ran, 0.0) for ran in running)
        timing.append(f"~{_duration(work / max(slots, 1))} left")
    text = f"[{phase} {', '.join(parts)} | {', '.join(timing)}]"
    best = record.best_by_loss(phase, metric, mode)
    if best:
        sign = 1 if mode == "max" else -1
        top = max(best.values(), key=lambda t: sign * t.value(metric))
        text += f" best {metric}: {fmt_number(top.value(metric))} ({top.loss})"
    return text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
