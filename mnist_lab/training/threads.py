"""How many threads CPU training uses while other programs share the cores (a server's pages, a
browser, a second run): chosen as it trains, from how long its steps take and how many cores
stand idle. For engines whose results do not depend on the thread count (cpu-native).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import psutil
import torch

WINDOW_S = 0.2  # seconds of steps measured together before the count may change
SLOWER = 1.5  # a window this much slower than the best at its count: someone else took a core
IDLE_SHARE = 0.6  # of each core another thread would need, that stood idle over the window
RETRY_S = (1.0, 16.0)  # wait before trying more threads again: first, and at most (doubling)


def idle_cores() -> float:
    """Seconds all cores together have been idle (psutil: Linux, macOS, Windows)."""
    return psutil.cpu_times().idle


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """PyTorch's own ops on one thread for a while (cheap to switch: well under a microsecond)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class ThreadGovernor:
    """Steps the thread count down when steps slow down and up when cores stand idle.

    With every thread of a step's parallel loops busy, one thread that the OS pauses for another
    program holds up all the others: on 2 cores beside one busy process, a Lab-5 epoch took 4.7 s on
    2 threads and 1.85 s on 1 (1.2 s on 2 threads alone). So, after each window of WINDOW_S seconds
    of steps: the first time, try the next smaller count for one window and keep the faster; later,
    if the steps were slower than the last ones at the next smaller count, or SLOWER times this
    count's best, use that count; if the cores another thread would take stood idle, try the next
    larger count for a window, and wait longer (doubling) before the next try when it was slower.
    `set_threads(n)` applies a count; `after_step(seconds)` is told each step's duration.
    """

    def __init__(self, set_threads: Callable[[int], None], most: int, clock: Callable[[], float] = time.monotonic,
                 idle: Callable[[], float] = idle_cores):
        self.set_threads, self.clock, self.idle = set_threads, clock, idle
        self.ladder = sorted({max(1, most >> k) for k in range(max(most, 1).bit_length())})  # 1, 2, 4, ..., most
        self.n = self.ladder[-1]
        self.last: dict[int, float] = {}  # seconds per step of the latest window at each count
        self.best: dict[int, float] = {}
        self.retry_s, self.retry_at = RETRY_S[0], 0.0
        self.trial: int | None = None  # during a one-window trial: the count it is compared with
        self.changes = 0  # how many times the count changed (for tests and benchmarks)
        self._start_window()

    def _start_window(self) -> None:
        self.busy, self.steps = 0.0, 0
        self.t0, self.idle0 = self.clock(), self.idle()

    def after_step(self, seconds: float) -> None:
        self.busy += seconds
        self.steps += 1
        if self.busy >= WINDOW_S and len(self.ladder) > 1:
            self._decide()
            self._start_window()

    def _use(self, n: int, trial: bool = False) -> None:
        self.trial = self.n if trial else None
        self.n = n
        self.changes += 1
        self.set_threads(n)

    def _decide(self) -> None:
        now, n = self.clock(), self.n
        per_step = self.busy / self.steps
        idle = (self.idle() - self.idle0) / max(now - self.t0, 1e-9)  # cores idle over the window
        self.last[n] = per_step
        self.best[n] = min(self.best.get(n, per_step), per_step)
        k = self.ladder.index(n)
        smaller = self.ladder[k - 1] if k > 0 else None
        larger = self.ladder[k + 1] if k + 1 < len(self.ladder) else None
        if self.trial is not None:  # a trial window ended: keep the faster count
            other, self.trial = self.trial, None
            if self.last[other] < per_step:
                if other < n:  # more threads did not pay: wait longer before trying again
                    self.retry_s = min(2 * self.retry_s, RETRY_S[1])
                    self.retry_at = now + self.retry_s
                self._use(other)
            elif other < n:
                self.retry_s = RETRY_S[0]
            return
        if smaller is not None and smaller not in self.last:  # the first window: measure the smaller count too
            self._use(smaller, trial=True)
        elif smaller is not None and per_step > min(self.last[smaller], SLOWER * self.best[n]):
            self.retry_at = now + self.retry_s
            self._use(smaller)
        elif larger is not None and now >= self.retry_at and idle >= IDLE_SHARE * (larger - n):
            self._use(larger, trial=True)
