"""Time estimates from measured throughput (issue 22): the job's arithmetic over each network's
measured figures, the idle figure a limit uses against the machine-now figure a page shows, and
the ETA that trusts the job's own pace as it goes. How close they come to the real thing is
bench/bench_estimates.py's (docs/BENCHMARKS.md), not a timed test's."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from mnist_lab.data.datasets import DataConfig
from mnist_lab.lab.experiments import SweepConfig
from mnist_lab.lab.lessons import LessonConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.service import estimate
from mnist_lab.service.jobs import JobSpec, lesson_jobs, lesson_spec
from mnist_lab.service.policy import LimitError, ServerPolicy
from mnist_lab.training import throughput
from mnist_lab.training.loop import TrainConfig
from mnist_lab.training.throughput import Throughput


@pytest.fixture
def priced(monkeypatch):
    """Every network costs 1 ms per training image in its batch, 0.1 ms per test image, 0.5 s set-up."""
    seen = []

    def fake(model_cfg, train_cfg, device, n_classes, now=False, measure_missing=True):
        seen.append((model_cfg, train_cfg.batch_size, str(device), n_classes, now))
        return Throughput(train_cfg.batch_size * 1e-3, 1e-4, 0.5, "plain", 0.0)
    monkeypatch.setattr(estimate, "throughput", fake)
    return seen


def test_a_run_costs_its_set_up_then_every_iteration_and_test_pass_of_every_epoch():
    cost = Throughput(step_s=0.01, eval_image_s=1e-4, setup_s=0.5, engine="plain", measured_at=0.0)
    assert cost.run_seconds(epochs=3, n_train=1000, n_test=500, batch_size=64) == pytest.approx(
        0.5 + 3 * (math.ceil(1000 / 64) * 0.01 + 500 * 1e-4))


def test_a_job_is_estimated_run_by_run_from_each_networks_measured_figures(priced):
    train = lesson_spec(LessonConfig("epoch-batch", seeds=2), device="cpu")
    runs = lesson_jobs(train)
    per_run = estimate.run_estimates(train, "cpu")
    images = train.data.n_train()
    assert per_run == pytest.approx([0.5 + 2 * (math.ceil(images / r.train.batch_size) * r.train.batch_size * 1e-3
                                                + 10_000 * 1e-4) for r in runs])  # in training order
    assert estimate.estimate_seconds(train, "cpu") == pytest.approx(sum(per_run))
    assert [b for _, b, *_ in priced[-6:]] == [16, 16, 64, 64, 256, 256]
    sweep = JobSpec("sweep", TrainConfig(epochs=1), DataConfig(train_limit=640, test_limit=100),
                    sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=3))
    assert len(estimate.run_estimates(sweep, "cpu")) == sweep.runs_total() == 6
    cifar = JobSpec("train", TrainConfig(), DataConfig(dataset="cifar10"), model=PRESETS["cifar-course"].model)
    estimate.estimate_seconds(cifar, "cpu")
    assert priced[-1][3] == 10 and priced[-1][0].in_channels == 3  # the network as the dataset shapes it


def test_limits_use_the_idle_figure_and_a_page_the_machine_now(monkeypatch):
    """The fastest figure measured stays the limit's, so a refusal does not flap as load comes and
    goes; the page's estimate is measured again once its figure is FRESH_S old."""
    figures = iter([0.004, 0.012, 0.020])  # idle, then the machine gets busier
    monkeypatch.setattr(throughput, "measure", lambda *a: Throughput(next(figures), 0.0, 0.0, "plain", 0.0))
    monkeypatch.setattr(throughput, "FRESH_S", -1.0)  # every figure is stale at once
    throughput.forget()
    cfg, train = PRESETS["lab5"].model, TrainConfig()
    try:
        assert throughput.throughput(cfg, train, "cpu", 10).step_s == 0.004  # measured
        assert throughput.throughput(cfg, train, "cpu", 10, now=True).step_s == 0.012  # measured again: busier
        assert throughput.throughput(cfg, train, "cpu", 10).step_s == 0.004  # the limit keeps the idle one
        assert throughput.throughput(cfg, train, "cpu", 10, now=True).step_s == 0.020
        job = JobSpec("train", replace(train, epochs=20), DataConfig(), model=cfg)  # 18,760 steps
        shared = ServerPolicy(mode="shared", max_job_seconds=100.0)
        shared.check(job, "cpu")  # 75 s at the idle figure: allowed, however busy the machine is now
        with pytest.raises(LimitError, match=r"about (\d+\.\d s|\d+ min \d\d s) here"):
            replace(shared, max_job_seconds=60.0).check(job, "cpu")
    finally:
        throughput.forget()


def test_a_real_measurement_times_the_engine_a_lone_run_uses_and_leaves_the_rng_alone():
    throughput.forget()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    try:
        fc = throughput.throughput(PRESETS["tiny-fc"].model, TrainConfig(), "cpu", 10)
        cnn = throughput.throughput(PRESETS["padded-16-32"].model, TrainConfig(batch_size=128), "cpu", 10)
    finally:
        throughput.forget()
    assert torch.equal(torch.rand(3), expected)  # the runs' seeds draw from the global RNG
    assert fc.engine == "plain" and 0 < fc.step_s < 0.05 and 0 < fc.eval_image_s < 1e-3 and fc.setup_s >= 0
    assert cnn.step_s > 5 * fc.step_s  # 1.3 M multiply-adds an image at batch 128, against 6,442 at 64


def test_the_eta_trusts_the_jobs_own_pace_as_more_of_it_is_done():
    runs = [10.0, 10.0, 30.0, 30.0]  # seconds each, in training order (total 80)
    assert estimate.eta_seconds(runs, [], 0.0) == 80.0  # nothing started: the whole estimate
    assert estimate.eta_seconds(runs, [1, 1], 20.0) == pytest.approx(60.0)  # on pace
    assert estimate.eta_seconds(runs, [1, 1], 40.0) == pytest.approx(120.0)  # twice as slow as estimated
    assert estimate.eta_seconds(runs, [1, 1, 0.5], 70.0) == pytest.approx(45.0 * 2)  # 35 s done in 70
    early = estimate.eta_seconds(runs, [0.1], 3.0)  # 1 s of 80 done, three times slower: not trusted yet
    assert 79.0 < early < 79.0 * 1.5
    assert estimate.eta_seconds(runs, [1, 1, 1, 1], 90.0) == 0.0


def test_runs_side_by_side_count_each_ones_progress():
    """On a GPU several runs train at once: four runs half done after 10 s leave about 10 s."""
    assert estimate.eta_seconds([10.0] * 4, [0.5] * 4, 10.0) == pytest.approx(10.0)


def test_the_measurement_restarts_its_batches_for_an_engine_that_keeps_its_own_position(monkeypatch):
    """The CUDA-graph step ignores `i` and moves through the epoch's order itself: the measurement
    starts a new 'epoch' of its 4 batches every 4 steps (before, step 5 read past the order; on a
    GPU a device-side assert). Driven on the CPU, where the same step runs without capture."""
    from mnist_lab.training import engines

    monkeypatch.setattr(engines, "select", lambda *a: engines.Choice(engines.REGISTRY["cuda-graph"], None))
    monkeypatch.setattr(throughput, "MEASURE_S", 0.05)
    cost = throughput.measure(PRESETS["tiny-cnn"].model, TrainConfig(batch_size=16), torch.device("cpu"), 10)
    assert cost.engine == "cuda-graph" and cost.step_s > 0


def test_what_is_not_measured_gets_the_formulas_figure(monkeypatch):
    """A network the formula puts above MAX_MEASURED_STEP_S per step is never run (a visitor's huge
    design must not hold the server), nor is one whose measurement fails; nothing is raised."""
    from mnist_lab.nets.presets import cnn_config

    throughput.forget()
    huge = cnn_config(conv_layers=2, kernel_size=9, base_channels=256)  # billions of multiply-adds an image
    monkeypatch.setattr(throughput, "measure", lambda *a: pytest.fail("measured"))
    try:
        cost = throughput.throughput(huge, TrainConfig(batch_size=512), "cpu", 10)
        assert cost.engine == "formula" and cost.step_s > throughput.MAX_MEASURED_STEP_S

        def out_of_memory(*a):
            raise RuntimeError("CUDA out of memory")
        monkeypatch.setattr(throughput, "measure", out_of_memory)
        cost = throughput.throughput(PRESETS["lab5"].model, TrainConfig(), "cpu", 10)
        assert cost.engine == "formula" and 0 < cost.step_s < 0.1
    finally:
        throughput.forget()


def test_a_poll_never_measures_and_says_when_it_has_no_figures(monkeypatch):
    throughput.forget()
    job = JobSpec("train", TrainConfig(epochs=1), DataConfig(train_limit=640), model=PRESETS["tiny-fc"].model)
    try:
        assert estimate.run_estimates(job, "cpu", measure_missing=False) is None  # nothing known yet
        assert len(estimate.run_estimates(job, "cpu")) == 1  # measured (what a page does before it starts)
        monkeypatch.setattr(throughput, "measure", lambda *a: pytest.fail("measured again"))
        assert len(estimate.run_estimates(job, "cpu", measure_missing=False)) == 1
    finally:
        throughput.forget()
