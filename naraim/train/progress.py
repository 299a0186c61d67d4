"""A one-line progress bar on stderr: step, loss, lr, images/s and ETA (process 0 only)."""

import sys
import time

import jax


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressBar:
    """update(step, loss, lr, images_per_sec) redraws the bar; ETA from the measured images/s."""

    def __init__(self, total_steps: int, batch_size: int, enabled: bool = True, width: int = 24):
        self.total, self.batch, self.width = total_steps, batch_size, width
        self.enabled = enabled and jax.process_index() == 0
        self.tty = sys.stderr.isatty()
        self.start = time.time()

    def update(self, step: int, loss: float, lr: float, images_per_sec: float) -> None:
        if not self.enabled:
            return
        frac = step / max(self.total, 1)
        filled = int(frac * self.width)
        eta = (self.total - step) * self.batch / images_per_sec if images_per_sec > 0 else 0.0
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] step {step}/{self.total} "
            f"loss {loss:.4f} lr {lr:.2e} "
            f"{images_per_sec:.1f} img/s ETA {_duration(eta)}"
        )
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)
