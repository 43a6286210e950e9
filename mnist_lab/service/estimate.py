"""How long a job will train: each run from its network's measured throughput
(training/throughput.py), in the order the job trains its runs; and, while it trains, how long it
has left (`eta_seconds`): the estimate of what is left, scaled by how much slower (or faster) the
job has been than its estimate so far, trusted more as more of it is done.

Limits use the idle-machine figures (a refusal does not flap with load). What a page or the CLI
shows before a job starts is the machine now: the job's costliest network is measured again (at
most once a minute) and its slowdown against its idle figure applies to every run.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from mnist_lab.data.datasets import DATASETS
from mnist_lab.lab.lessons import plan
from mnist_lab.training.throughput import throughput

TRUST_AFTER = 0.15  # the job's own pace counts fully once this share of its estimate is done ...
TRUST_AFTER_S = 3.0  # ... and at least this many estimated seconds


def _runs(spec) -> list[tuple]:
    """(network, training, data) of every run of the job, in the order it trains them: a lesson's
    variants seed by seed, a sweep's cells seed by seed, the comparison's networks on normal then
    permuted pixels."""
    if spec.kind == "lesson":  # its variants differ in network, batch size, data and epochs
        variants, _ = plan(spec.lesson, spec.train, spec.data)
        return [(v.model, replace(v.train, seed=s), v.data) for v in variants for s in range(spec.lesson.n_seeds())]
    configs = spec.run_configs()
    if spec.kind == "compare":
        half = spec.runs_per_config() // 2
        return [c for _ in range(2) for c in configs for _ in range(half)]
    return [c for c in configs for _ in range(spec.runs_per_config())]


def run_estimates(spec, device_type: str = "cpu", now: bool = False,
                  measure_missing: bool = True) -> list[float] | None:
    """Seconds of every run of the job (set-up, iterations, evaluations) in training order: the
    idle-machine figures, or with `now` the machine now. With `measure_missing` False, None when a
    network has no figure yet in this process (nothing is measured)."""
    device = torch.device(device_type)
    runs = _runs(spec)
    costs = [throughput(m, t, device, DATASETS[d.dataset].n_classes, measure_missing=measure_missing)
             for m, t, d in runs]
    if any(c is None for c in costs):
        return None
    seconds = [c.run_seconds(t.epochs, d.n_train(), d.n_test(), t.batch_size) for c, (_, t, d) in zip(costs, runs)]
    if now and runs:
        i = max(range(len(runs)), key=seconds.__getitem__)  # the costliest network, measured again when stale
        m, t, d = runs[i]
        fresh = throughput(m, t, device, DATASETS[d.dataset].n_classes, now=True)
        slowdown = fresh.step_s / costs[i].step_s if costs[i].step_s > 0 else 1.0
        seconds = [s * slowdown for s in seconds]
    return seconds


def estimate_seconds(spec, device_type: str = "cpu", now: bool = False) -> float:
    """Expected training time of the whole job on a device of this type: the idle-machine figure
    (what a limit uses), or with `now` the machine as it is now (what a page shows before it starts)."""
    return sum(run_estimates(spec, device_type, now))


def eta_seconds(estimates: list[float], progress: list[float], elapsed_s: float) -> float:
    """Seconds left of a job whose runs are estimated at `estimates` (in training order), with
    `progress[i]` of run i done (1 for a run that ended; several may be part-done where runs train
    side by side) and `elapsed_s` since its first run started: the estimate of what is left, times
    the job's pace so far (elapsed over the estimate of what is done), trusted fully once
    TRUST_AFTER of the job (and TRUST_AFTER_S estimated seconds) is done."""
    total = sum(estimates)
    done = sum(e * min(max(p, 0.0), 1.0) for e, p in zip(estimates, progress))
    left = max(total - done, 0.0)
    if done <= 0 or elapsed_s <= 0:
        return left  # nothing done yet: the whole estimate
    trust = min(1.0, done / max(TRUST_AFTER * total, TRUST_AFTER_S))
    pace = elapsed_s / done
    return max(left * ((1 - trust) + trust * pace), 0.0)
