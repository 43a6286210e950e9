"""The direction rule: one rule for every comparison of two groups of runs (A then B), used by
the report's findings and the week-2 lessons alike:
  diff = mean(B) - mean(A); spread = sd(A) + sd(B), sample standard deviations over seeds.
  1. A group with fewer than 2 runs has no spread: "not distinguishable" (reason `one_seed`).
  2. |diff| <= spread: the seeds overlap, "not distinguishable" (reason `within_spread`).
  3. Distinguishable and |diff| < the flat threshold (0.1 accuracy points; 0.01 in loss): "flat".
  4. Otherwise "up" or "down" by the sign of diff.
sd(A) + sd(B) is a deliberately cautious bar (two ±1 sd bands that do not touch); with the 3
seeds a lab can afford, a t-test's p-value would pretend to more precision than there is.
"""
from __future__ import annotations

from dataclasses import dataclass

FLAT_ACC = 0.001  # 0.1 accuracy points, as a fraction
FLAT_LOSS = 0.01  # cross-entropy, nats
UP, DOWN, FLAT, UNCLEAR = "up", "down", "flat", "not distinguishable"


@dataclass(frozen=True)
class Group:
    """Finished runs at one level of a factor (same settings otherwise)."""
    level: str  # e.g. "2" conv layers, "k5", "CNN / permuted"
    n: int
    mean: float  # test accuracy, fraction
    sd: float  # sample sd over seeds; 0 with one run
    params: int
    seconds: float  # mean wall time per run
    seeds: list[int]
    run_ids: list[str]
    values: list[float]  # each run's test accuracy


@dataclass(frozen=True)
class Comparison:
    a: str  # level names
    b: str
    diff: float  # mean(b) - mean(a)
    spread: float  # sd(a) + sd(b)
    n_min: int
    direction: str
    reason: str  # "one_seed", "within_spread", "below_flat", "beyond_spread"


def compare_groups(a: Group, b: Group, flat: float = FLAT_ACC) -> Comparison:
    return judge(a.level, b.level, b.mean - a.mean, a.sd + b.sd, min(a.n, b.n), flat)


def judge(a: str, b: str, diff: float, spread: float, n_min: int, flat: float) -> Comparison:
    """The module's direction rule, for any difference with its spread."""
    if n_min < 2:
        direction, reason = UNCLEAR, "one_seed"
    elif abs(diff) <= spread:
        direction, reason = UNCLEAR, "within_spread"
    elif abs(diff) < flat:
        direction, reason = FLAT, "below_flat"
    else:
        direction, reason = (UP if diff > 0 else DOWN), "beyond_spread"
    return Comparison(a, b, float(diff), float(spread), int(n_min), direction, reason)
