"""Console and log-file output, and progress reporting for long steps.

The library code never prints directly: it writes through a `Reporter`, which the CLI
creates. Everything goes to the full log file; the console gets step headers, progress
lines and, on failure, the relevant lines only.
"""

from __future__ import annotations

import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def new_log_path(directory: Path, stem: str) -> Path:
    """A log file of its own for one run: DIR/STEM-YYYYmmdd-HHMMSS.log, created here
    (O_EXCL), with -2, -3, ... added when a run started in the same second already took
    that name: two builds of one stack started together must not write one file."""
    directory.mkdir(parents=True, exist_ok=True)
    base = f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    for number in range(1, 10_000):
        path = directory / (f"{base}.log" if number == 1 else f"{base}-{number}.log")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"{directory / base}.log and 9998 numbered variants exist")


class Reporter:
    """Writes to the console (stderr) and to an optional full log file."""

    def __init__(self, log_path: Path | None = None, *, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.log_path = log_path
        self._log: TextIO | None = None
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("a", encoding="utf-8", errors="replace")
        self._step_started = time.monotonic()
        self._steps_total = 0
        self._steps_done = 0

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log(self, text: str) -> None:
        """Full-log only."""
        if self._log is not None:
            self._log.write(text if text.endswith("\n") else text + "\n")
            self._log.flush()

    def console(self, text: str) -> None:
        """Console only (a line the full log already has)."""
        print(text, file=self.stream, flush=True)

    def say(self, text: str) -> None:
        """Console and full log."""
        self.console(text)
        self.log(text)

    def plan_steps(self, total: int, *, done: int = 0) -> None:
        """How many steps this command has (`done` of them already announced elsewhere):
        `step` numbers the rest itself, done+1..total."""
        self._steps_total = total
        self._steps_done = done

    def step(self, title: str) -> None:
        """The next step of those announced by `plan_steps`: `==> [N/M] title`."""
        self._steps_done = self._steps_done + 1
        self.step_at(self._steps_done, self._steps_total or self._steps_done, title)

    def step_at(self, index: int, total: int, title: str) -> None:
        """A step numbered by the caller (a command that resumes or skips steps)."""
        self._step_started = time.monotonic()
        self.say(f"==> [{index}/{total}] {title}")

    def result(self, text: str) -> None:
        """The command's own output (e.g. the plan of a dry run) on stdout, where a script
        reads it, and in the full log (if still open)."""
        print(text, flush=True)
        self.log(text)

    def step_done(self, detail: str = "") -> float:
        elapsed = time.monotonic() - self._step_started
        self.say(f"    done in {format_duration(elapsed)}" + (f" ({detail})" if detail else ""))
        return elapsed

    def warn(self, text: str) -> None:
        self.say(f"WARNING: {text}")


_NINJA_LINE = re.compile(r"^\[(\d+)/(\d+)\]\s*(.*)$")


@dataclass
class NinjaProgress:
    """Turns ninja's `[N/M] description` lines into done/total, rate and ETA.

    Several ninja runs can happen inside one package build (vLLM builds its main
    extension and vllm-flash-attn in one graph, FlashInfer AOT runs one graph per
    batch), so the counter is per graph: a line whose total differs from the last one
    starts a new graph.
    """

    reporter: Reporter
    label: str
    min_interval_s: float = 5.0
    clock: object = field(default=time.monotonic)
    done: int = 0
    total: int = 0
    _started: float | None = None
    _last_print: float = -1e9

    def _now(self) -> float:
        return self.clock()  # type: ignore[operator,no-any-return]

    def feed(self, line: str) -> bool:
        """Returns True when the line was a ninja progress line."""
        match = _NINJA_LINE.match(line.strip())
        if not match:
            return False
        done, total = int(match.group(1)), int(match.group(2))
        now = self._now()
        if total != self.total or self._started is None or done < self.done:
            # Rate is measured from the first line seen, so a resumed graph (most steps
            # already up to date) does not report an absurd rate.
            self._started = now
            self._first_done = done
        self.done, self.total = done, total
        if now - self._last_print >= self.min_interval_s or done == total:
            self._last_print = now
            self.reporter.say("    " + self.status(now, match.group(3)))
        return True

    def rate_and_eta(self, now: float | None = None) -> tuple[float, float | None]:
        now = self._now() if now is None else now
        started = self._started if self._started is not None else now
        elapsed = max(now - started, 1e-9)
        finished = self.done - getattr(self, "_first_done", 0)
        rate = finished / elapsed if finished > 0 else 0.0
        remaining = self.total - self.done
        eta = remaining / rate if rate > 0 else None
        return rate, eta

    def status(self, now: float | None = None, what: str = "") -> str:
        rate, eta = self.rate_and_eta(now)
        pct = 100.0 * self.done / self.total if self.total else 0.0
        eta_text = format_duration(eta) if eta is not None else "?"
        per_min = rate * 60
        short = what if len(what) <= 70 else "..." + what[-67:]
        return (
            f"{self.label}: {self.done}/{self.total} ({pct:.0f}%), "
            f"{per_min:.1f} steps/min, ETA {eta_text}  {short}"
        ).rstrip()
