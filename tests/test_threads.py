"""The thread governor of CPU training, on a simulated machine: step times that depend on the
thread count and on whether another program takes a core; idle cores as the OS would report them."""
from __future__ import annotations

import pytest

from mnist_lab.training import threads
from mnist_lab.training.threads import ThreadGovernor


class Machine:
    """2 cores. Alone: a step takes 3 ms on 2 threads, 5 ms on 1. With a busy program beside it:
    13 ms on 2 threads (one paused thread holds the other up), 5.5 ms on 1; no core idle."""

    def __init__(self):
        self.t = 0.0
        self.idle_s = 0.0  # seconds all cores together were idle
        self.busy_other = False
        self.counts = []  # the thread count of every step

    def step_time(self, n: int) -> float:
        if self.busy_other:
            return 0.013 if n == 2 else 0.0055
        return 0.003 if n == 2 else 0.005

    def run(self, governor: ThreadGovernor, steps: int) -> None:
        for _ in range(steps):
            n = governor.n
            dt = self.step_time(n)
            self.t += dt
            if not self.busy_other:
                self.idle_s += dt * (2 - n)  # the cores this run leaves free
            self.counts.append(n)
            governor.after_step(dt)


@pytest.fixture
def machine():
    return Machine()


def governor_on(machine: Machine, most: int = 2) -> tuple[ThreadGovernor, list[int]]:
    applied = []
    gov = ThreadGovernor(applied.append, most, clock=lambda: machine.t, idle=lambda: machine.idle_s)
    return gov, applied


def test_alone_it_measures_one_thread_once_and_keeps_both(machine):
    gov, applied = governor_on(machine)
    machine.run(gov, 2000)  # 6 s of steps
    assert applied[:2] == [1, 2]  # the first window's probe of one thread, then back: it was slower
    assert gov.n == 2
    assert machine.counts[-1500:] == [2] * 1500
    assert gov.last[1] == pytest.approx(0.005) and gov.best[2] == pytest.approx(0.003)


def test_a_busy_program_beside_it_moves_it_to_one_thread_within_a_window(machine):
    gov, _ = governor_on(machine)
    machine.run(gov, 1000)
    machine.busy_other = True
    at = len(machine.counts)
    machine.run(gov, 400)
    first_single = machine.counts.index(1, at)
    assert (first_single - at) * 0.013 < 2 * threads.WINDOW_S  # slowed steps for at most ~one window
    assert machine.counts[-300:] == [1] * 300  # no core idle: it does not try two again


def test_when_the_other_program_ends_it_goes_back_to_two_threads(machine):
    gov, _ = governor_on(machine)
    machine.busy_other = True
    machine.run(gov, 400)
    assert gov.n == 1
    machine.busy_other = False
    machine.run(gov, 1000)  # 5 ms steps: about 5 s
    assert gov.n == 2
    assert machine.counts[-500:] == [2] * 500


def test_a_larger_count_that_does_not_pay_is_tried_less_and_less_often(machine):
    """Idle cores, yet two threads are slower (say the other core is slow): each failed try
    doubles the wait before the next, up to RETRY_S[1]."""
    gov, _ = governor_on(machine)
    slow_pair = lambda n: 0.009 if n == 2 else 0.005  # noqa: E731
    machine.step_time = slow_pair
    machine.run(gov, 6000)  # about 30 s
    tries = sum(1 for a, b in zip(machine.counts, machine.counts[1:]) if a == 1 and b == 2)
    assert 2 <= tries <= 6  # 1, 2, 4, 8, 16 s apart: not one try per second
    assert gov.retry_s == threads.RETRY_S[1]
    assert machine.counts.count(2) < 0.1 * len(machine.counts)


def test_a_slowdown_at_the_same_count_is_noticed_against_its_best(machine):
    """Once one thread's figure is old, a step 1.5x slower than the best at two still moves it."""
    gov, _ = governor_on(machine)
    machine.run(gov, 1000)
    gov.last[1] = 1.0  # an old, very slow figure for one thread
    machine.step_time = lambda n: 0.006 if n == 2 else 0.005
    machine.run(gov, 200)
    assert 1 in machine.counts[1000:]


def test_the_ladder_halves_down_to_one_and_one_thread_never_changes():
    assert ThreadGovernor(lambda n: None, 8).ladder == [1, 2, 4, 8]
    assert ThreadGovernor(lambda n: None, 6).ladder == [1, 3, 6]
    one = ThreadGovernor(lambda n: pytest.fail("one thread has nothing to choose"), 1)
    for _ in range(1000):
        one.after_step(0.01)
    assert one.n == 1 and one.changes == 0
