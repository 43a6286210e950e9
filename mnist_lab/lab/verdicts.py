"""The direction rule: one rule for every comparison of two groups of runs (A then B), used by
the report's findings and the week-2 lessons alike:
  diff = mean(B) - mean(A); spread = sd(A) + sd(B), sample standard deviations over seeds.
  1. A group with fewer than 2 runs has no spread: "not distinguishable" (reason `one_seed`).
  2. |diff| <= spread: the seeds overlap, "not distinguishable" (reason `within_spread`).
  3. Distinguishable and |diff| < the flat threshold (0.1 accuracy points; 0.01 in loss): "flat".
  4. Otherwise "up" or "down" by the sign of diff.
sd(A) + sd(B) is a deliberately cautious bar (two ±1 sd bands that do not touch); with the 3
seeds a lab can afford, a t-test's p-value would pretend to more precision than there is.
And the one rule for a single run, `did_learn`: at least chance + 10 points of test accuracy and a
final training loss below 0.9 × ln(classes). Readers compare a group that did not learn *as* such;
"not distinguishable" is said only between groups that both learned.
"""
from __future__ import annotations

import math
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
    learned: bool = True  # most of its finished runs learned (did_learn); True where unknown


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


# ------------------------------------------------------------------------------ did it learn?

CHANCE_MARGIN = 0.10  # a run that learned beats chance (1 / classes) by at least 10 accuracy points
LOSS_FRACTION = 0.9  # ... and its final training loss is below 0.9 × ln(classes), the loss of a uniform guess
LEARNED, NOT_LEARNED, DIVERGED = "learned", "did not learn", "diverged"


def chance(n_classes: int) -> float:
    """Test accuracy of a uniform guess over `n_classes` classes, as a fraction."""
    return 1.0 / n_classes


def loss_bar(n_classes: int) -> float:
    """The final training loss a run that learned is below: LOSS_FRACTION × ln(n_classes) nats
    (ln(n_classes) is the cross-entropy of predicting every class equally)."""
    return LOSS_FRACTION * math.log(n_classes)


def did_learn(test_acc: float | None, train_loss: float | None, n_classes: int) -> bool:
    """The one rule: a run learned when its test accuracy is at least chance + CHANCE_MARGIN
    (1/n_classes + 0.10) and its final training loss is below LOSS_FRACTION × ln(n_classes).
    A missing or NaN accuracy or loss fails it; `n_classes` comes from the dataset's spec."""
    if test_acc is None or train_loss is None:
        return False
    acc, loss = float(test_acc), float(train_loss)
    if not (math.isfinite(acc) and math.isfinite(loss)):
        return False
    return acc >= chance(n_classes) + CHANCE_MARGIN - 1e-12 and loss < loss_bar(n_classes)


def learning_verdict(status: str, test_acc: float | None, train_loss: float | None, n_classes: int) -> str | None:
    """A run's verdict: DIVERGED (its own verdict, kept apart), LEARNED or NOT_LEARNED for a
    finished run, None for a run that is stopped, failed or still running."""
    if status == "diverged":
        return DIVERGED
    if status != "finished":
        return None
    return LEARNED if did_learn(test_acc, train_loss, n_classes) else NOT_LEARNED
