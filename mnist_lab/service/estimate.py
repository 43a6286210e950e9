"""How long a job will train: each run from its network's measured throughput
(training/throughput.py), in the order the job trains its runs; and, while it trains, how long it
has left (`eta_seconds`): the estimate of what is left, scaled by how much slower (or faster) the
job has been than its estimate so far, trusted more as more of it is done. Limits use the
idle-machine figures (a refusal does not flap with load); what a page shows before a job starts
uses the machine as it is now.
"""
from __future__ import annotations

from dataclasses import replace

from mnist_lab.data.datasets import DATASETS
from mnist_lab.lab.lessons import plan
from mnist_lab.training.throughput import throughput

TRUST_AFTER = 0.15  # the job's own pace counts fully once this share of its estimate is done ...
TRUST_AFTER_S = 3.0  # ... and at least this many estimated seconds


def run_estimates(spec, device_type: str = "cpu", now: bool = False) -> list[float]:
    """Seconds of every run of the job (set-up, iterations, evaluations), in the order it trains
    them: a lesson's variants seed by seed, a sweep's cells seed by seed, the comparison's networks
    on normal then permuted pixels."""
    def one(model_cfg, train_cfg, data_cfg) -> float:
        cost = throughput(model_cfg, train_cfg, device_type, DATASETS[data_cfg.dataset].n_classes, now=now)
        return cost.run_seconds(train_cfg.epochs, data_cfg.n_train(), data_cfg.n_test(), train_cfg.batch_size)

    if spec.kind == "lesson":  # its variants differ in network, batch size, data and epochs
        variants, _ = plan(spec.lesson, spec.train, spec.data)
        return [one(v.model, replace(v.train, seed=s), v.data) for v in variants for s in range(spec.lesson.n_seeds())]
    configs = spec.run_configs()
    if spec.kind == "compare":  # both networks on normal pixels, then both on permuted ones
        half = spec.runs_per_config() // 2
        return [one(*c) for _ in range(2) for c in configs for _ in range(half)]
    return [one(*c) for c in configs for _ in range(spec.runs_per_config())]


def estimate_seconds(spec, device_type: str = "cpu", now: bool = False) -> float:
    """Expected training time of the whole job on a device of this type: the idle-machine figure
    (what a limit uses), or with `now` the machine as it is now (what a page shows before it starts)."""
    return sum(run_estimates(spec, device_type, now))


def eta_seconds(estimates: list[float], runs_done: int, part: float, elapsed_s: float) -> float:
    """Seconds left of a job whose runs are estimated at `estimates` (in training order), with
    `runs_done` runs ended, `part` of the next one done, and `elapsed_s` since it left the queue:
    the estimate of what is left, times the job's pace so far (elapsed over the estimate of what is
    done), trusted fully once TRUST_AFTER of the job (and TRUST_AFTER_S estimated seconds) is done."""
    total = sum(estimates)
    done = sum(estimates[:runs_done]) + (part * estimates[runs_done] if runs_done < len(estimates) else 0.0)
    left = max(total - done, 0.0)
    if done <= 0:
        return left  # still preparing its data: the whole estimate
    trust = min(1.0, done / max(TRUST_AFTER * total, TRUST_AFTER_S))
    pace = elapsed_s / done
    return left * ((1 - trust) + trust * pace)
