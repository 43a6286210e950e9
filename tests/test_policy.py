"""The server's policy: local vs shared mode from the environment or `--mode`, limits that
refuse a too-large job in shared mode only (naming the limit and the way out), and the
training-time estimate those limits use."""
from __future__ import annotations

from dataclasses import replace

import pytest

from mnist_lab.data.datasets import DataConfig
from mnist_lab.lab.experiments import CompareConfig, SweepConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.service.access import LOCAL, Asker, may
from mnist_lab.service.identity import Identity
from mnist_lab.service.jobs import JobSpec
from mnist_lab.service.policy import LimitError, ServerPolicy, estimate_seconds
from mnist_lab.training.loop import TrainConfig
from mnist_lab.training.throughput import forward_macs


def lab5(epochs: int = 1, train_limit: int | None = None) -> JobSpec:
    return JobSpec("train", TrainConfig(epochs=epochs), DataConfig(train_limit=train_limit),
                   model=PRESETS["lab5"].model)


def test_the_mode_comes_from_the_environment_or_the_script_arguments():
    assert ServerPolicy.from_env({}, []).mode == "local"
    assert ServerPolicy.from_env({"MNIST_LAB_MODE": "shared"}, []).shared
    assert ServerPolicy.from_env({}, ["--mode", "shared"]).shared
    p = ServerPolicy.from_env({"MNIST_LAB_MODE": "shared", "MNIST_LAB_MAX_EPOCHS": "3", "MNIST_LAB_CLASS_VIEW": "1",
                               "MNIST_LAB_QUEUE_LIMIT": "0", "MNIST_LAB_TEACHER_TOKEN": "t0k"}, [])
    assert (p.max_epochs, p.class_view, p.queue_limit) == (3, True, 0)
    assert p.teacher_token == "t0k"  # the teacher signs in with it (identity.Accounts.sign_in_teacher)
    # 0 workers: the app starts none (compose's worker service trains); unset: the app's own default
    assert ServerPolicy.from_env({"MNIST_LAB_WORKERS": "0"}, []).workers == 0
    assert ServerPolicy.from_env({}, []).workers is None


@pytest.mark.parametrize("env, message", [
    ({"MNIST_LAB_MODE": "public"}, "must be 'local', 'shared' or 'demo'"),
    ({"MNIST_LAB_MAX_EPOCHS": "many"}, "MNIST_LAB_MAX_EPOCHS must be a number"),
    ({"MNIST_LAB_MAX_PARAMS": "-5"}, "MNIST_LAB_MAX_PARAMS must be above 0"),
])
def test_a_bad_setting_says_which_and_why(env, message):
    with pytest.raises(ValueError, match=message):
        ServerPolicy.from_env(env, [])


def test_limits_refuse_a_big_job_in_shared_mode_only():
    shared = ServerPolicy(mode="shared", max_epochs=5, max_train_images=20000, max_params=100_000,
                          max_job_seconds=60)
    shared.check(lab5(epochs=5, train_limit=20000), "cpu")  # within every limit
    ServerPolicy().check(lab5(epochs=500), "cpu")  # local: the user's own machine, no limits
    for spec, words in ((lab5(epochs=6, train_limit=20000), "at most 5 epochs"),
                        (lab5(train_limit=None), "at most 20,000 images"),
                        (JobSpec("train", TrainConfig(), DataConfig(train_limit=1000),
                                 model=PRESETS["padded-16-32"].model), "at most 100,000 parameters")):
        with pytest.raises(LimitError, match=words) as info:
            shared.check(spec, "cpu")
        assert "make run" in str(info.value)  # and how to run it anyway
    slow = JobSpec("sweep", TrainConfig(epochs=5), DataConfig(train_limit=20000), sweep=SweepConfig(seeds=3))
    with pytest.raises(LimitError, match=r"about (\d+\.\d s|\d+ min \d\d s) here.*allows 1 min 00 s"):
        replace(shared, max_params=10**7).check(slow, "cpu")


def test_the_estimate_grows_with_the_work():
    assert forward_macs(PRESETS["lab5"].model) == 24 * 24 * 260 + 8 * 8 * 5020 + 3210  # conv1, conv2, fc
    one = estimate_seconds(lab5(epochs=1), "cpu")  # measured here (training/throughput.py)
    assert 1 < one < 10  # measured 2.2-2.6 s per Lab-5 epoch on the 2-core CPU (docs/BENCHMARKS.md)
    assert 2.5 * one < estimate_seconds(lab5(epochs=3), "cpu") <= 3 * one  # the run's set-up once
    compare = JobSpec("compare", TrainConfig(), DataConfig(), compare=CompareConfig(seeds=2))
    assert estimate_seconds(compare, "cpu") > estimate_seconds(JobSpec("train", TrainConfig(), DataConfig(),
                                                                       model=PRESETS["tiny-cnn"].model), "cpu")


def test_a_cifar10_job_is_limited_and_estimated_on_its_50000_images():
    whole = JobSpec("train", TrainConfig(), DataConfig(dataset="cifar10"), model=PRESETS["cifar-course"].model)
    assert (whole.data.n_train(), whole.data.n_test()) == (50_000, 10_000)  # the spec's counts, not MNIST's
    counted = replace(whole, data=replace(whole.data, train_limit=50_000, test_limit=10_000))
    assert estimate_seconds(whole, "cpu") == pytest.approx(estimate_seconds(counted, "cpu"))
    mnist_sized = replace(whole, data=replace(whole.data, dataset="mnist"))  # the same net on 60,000 images
    assert estimate_seconds(whole, "cpu") < estimate_seconds(mnist_sized, "cpu")
    shared = ServerPolicy(mode="shared", max_train_images=50_000, max_params=10**8, max_job_seconds=10**9)
    shared.check(whole, "cpu")  # all 50,000 CIFAR-10 images are within a 50,000-image limit
    with pytest.raises(LimitError, match="at most 49,999 images"):
        replace(shared, max_train_images=49_999).check(whole, "cpu")
    assert ServerPolicy().max_train_images == 60_000  # by default every image of the largest dataset


def test_the_demo_mode_keeps_every_shared_protection_without_sign_in_and_with_its_own_smaller_defaults():
    local, shared, demo = (ServerPolicy.from_env({"MNIST_LAB_MODE": m}, []) for m in ("local", "shared", "demo"))
    assert [(p.shared, p.demo, p.signin) for p in (local, shared, demo)] == [
        (False, False, False), (True, False, True), (True, True, False)]
    assert (shared.max_runs, shared.max_mb, shared.max_total_gb, shared.max_client_jobs) == (500, 500.0, 30.0, None)
    assert (demo.queue_limit, demo.max_client_jobs, demo.max_runs, demo.max_mb, demo.max_total_gb,
            demo.keep_hours) == (0, 1, 20, 20.0, 2.0, 24.0)
    assert demo.max_job_seconds < shared.max_job_seconds and demo.max_epochs < shared.max_epochs
    tuned = ServerPolicy.from_env({"MNIST_LAB_MODE": "demo", "MNIST_LAB_MAX_RUNS": "5", "MNIST_LAB_MAX_MB": "2.5",
                                   "MNIST_LAB_MAX_TOTAL_GB": "0.5", "MNIST_LAB_MAX_CLIENT_JOBS": "3",
                                   "MNIST_LAB_DEMO_KEEP_HOURS": "2", "MNIST_LAB_QUEUE_LIMIT": "1"}, [])
    assert (tuned.max_runs, tuned.max_mb, tuned.max_total_gb, tuned.max_client_jobs, tuned.keep_hours,
            tuned.queue_limit) == (5, 2.5, 0.5, 3, 2.0, 1)  # each variable still overrides a demo default


@pytest.mark.parametrize("env, message", [
    ({"MNIST_LAB_MAX_RUNS": "lots"}, "MNIST_LAB_MAX_RUNS must be a number without decimals; got 'lots'"),
    ({"MNIST_LAB_MAX_RUNS": "2.5"}, "MNIST_LAB_MAX_RUNS must be a number without decimals"),
    ({"MNIST_LAB_MAX_MB": "0"}, "MNIST_LAB_MAX_MB must be above 0; got '0'"),
    ({"MNIST_LAB_MAX_TOTAL_GB": "-1"}, "MNIST_LAB_MAX_TOTAL_GB must be above 0"),
    ({"MNIST_LAB_MAX_TOTAL_GB": "nan"}, "MNIST_LAB_MAX_TOTAL_GB must be a number; got 'nan'"),
    ({"MNIST_LAB_MAX_TOTAL_GB": "inf"}, "MNIST_LAB_MAX_TOTAL_GB must be a number; got 'inf'"),
    ({"MNIST_LAB_MAX_CLIENT_JOBS": "0"}, "MNIST_LAB_MAX_CLIENT_JOBS must be above 0"),
    ({"MNIST_LAB_DEMO_KEEP_HOURS": "soon", "MNIST_LAB_MODE": "demo"}, "MNIST_LAB_DEMO_KEEP_HOURS must be a number"),
    ({"MNIST_LAB_QUEUE_LIMIT": "-1"}, r"MNIST_LAB_QUEUE_LIMIT must be above 0 \(or 0\)"),
])
def test_a_bad_quota_setting_names_its_variable(env, message):
    with pytest.raises(ValueError, match=message):
        ServerPolicy.from_env(env, [])


def test_the_asker_is_the_signed_in_person_and_no_one_signed_in_sees_nothing():
    shared, demo = ServerPolicy(mode="shared", class_view=True), ServerPolicy(mode="demo")
    student = Identity("student", "student:s01", "s01", "Li Lei")
    alice = shared.asker(student)
    assert alice == Asker("student:s01", shared=True, class_view=True, student_id="s01", name="Li Lei")
    assert shared.asker(Identity("teacher", "teacher")).teacher and not alice.teacher
    nobody = shared.asker(None)
    assert (nobody.workspace, nobody.scope, nobody.class_view) == ("", (), False)  # the class view needs a sign-in
    assert not may(nobody, "see", "student:s01") and not may(nobody, "see", {"workspace": ""})
    visitor = demo.asker(Identity("visitor", "visitor:abc"))
    assert visitor.demo and visitor.scope == ("visitor:abc", "local")  # its own runs and the examples
    assert ServerPolicy().asker(None) == LOCAL == ServerPolicy().asker(student)  # a local install: its one user
