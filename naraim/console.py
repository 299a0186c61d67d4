"""What a run prints for a person: one-line status messages and progress on stderr, from process 0.

Progress shows elapsed time and an ETA from the average rate since it started: created after compilation,
that is the run's own throughput. On a terminal it is a tqdm bar; off one (a log file, CI) it prints a
plain line per update, at most every `min_interval` seconds (the first after `min_interval`), and the last
state on close.
"""

import sys
import time

import jax
from tqdm import tqdm


def say(line: str) -> None:
    """Prints `line` to stderr (process 0), above any progress bar."""
    if jax.process_index() == 0:
        tqdm.write(line, file=sys.stderr)
        sys.stderr.flush()


class Progress:
    """update(done, postfix='') advances to `done` units; close() ends the bar (or prints the last line)."""

    def __init__(
        self, total: int | None, desc: str, unit: str, initial: int, enabled: bool, min_interval: float
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.enabled = enabled and jax.process_index() == 0
        self.start_done, self.done, self.start = initial, initial, time.time()
        # off a terminal the first line waits min_interval too: a rate from the first unit alone (start-up
        # included) gives a wild ETA
        self.min_interval, self._printed, self._postfix, self._pending = min_interval, self.start, "", False
        self._bar = None
        if self.enabled and sys.stderr.isatty():
            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                file=sys.stderr,
                smoothing=0.0,
                dynamic_ncols=True,
            )

    @property
    def elapsed(self) -> float:
        return time.time() - self.start

    def update(self, done: int, postfix: str = "") -> None:
        self.done, self._postfix = done, postfix
        if self._bar is not None:
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(done - self._bar.n)
        elif self.enabled:
            self._pending = True
            if time.time() - self._printed >= self.min_interval:
                self._print()

    def _print(self) -> None:
        self._printed, self._pending = time.time(), False
        rate = (self.done - self.start_done) / max(self.elapsed, 1e-9)
        of = f"/{self.total}" if self.total else ""
        eta = f", ETA {duration((self.total - self.done) / rate)}" if self.total and rate > 0 else ""
        tail = f" {self._postfix}" if self._postfix else ""
        units = self.unit + ("es" if self.unit.endswith(("s", "ch", "sh", "x")) else "s")
        print(
            f"{self.desc}: {self.done}{of} {units},{tail} elapsed {duration(self.elapsed)}{eta}",
            file=sys.stderr,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled and self._pending:
            self._print()
        self.enabled = False


def progress(
    total: int | None,
    desc: str,
    unit: str = "step",
    initial: int = 0,
    enabled: bool = True,
    min_interval: float = 0.0,
) -> Progress:
    """Progress of `total` units (None: a counter) on stderr; silent off process 0 or if not `enabled`.
    Off a terminal a line is printed per update, at most every `min_interval` seconds."""
    return Progress(total, desc, unit, initial, enabled, min_interval)


def duration(seconds: float) -> str:
    """'1:02:03' or '02:03'."""
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
