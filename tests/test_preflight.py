"""The one pre-flight check (training/preflight.py): every config, the network against the
dataset spec, the batch against the training images, the device and its memory, refused with
a ConfigError before any data loads, whichever way a run is asked for (the experiments, a
lesson, the CLI, the job runner's submit); and the loop's own check is the same function."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mnist_lab.cli.main import main
from mnist_lab.data import datasets
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.lab import experiments
from mnist_lab.lab.experiments import CompareConfig, SweepConfig, run_compare, run_single, run_sweep
from mnist_lab.lab.lessons import LessonConfig, run_lesson
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.jobs import JobSpec, StoreRunner, lesson_spec
from mnist_lab.service.queue import JobQueue
from mnist_lab.training import loop
from mnist_lab.training.loop import TrainConfig
from mnist_lab.training.preflight import check_fits, preflight

LAB5 = PRESETS["lab5"].model
CIFAR_NET = PRESETS["cifar-course"].model  # 3×32×32 images


@pytest.fixture
def no_data(monkeypatch):
    """Loading any data fails the test: every refusal here must come first."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("data was loaded before the pre-flight check refused the run")
    monkeypatch.setattr(experiments, "get_data", refuse)
    monkeypatch.setattr(datasets, "load_raw", refuse)


def test_a_good_run_passes_and_names_its_device():
    assert preflight(LAB5, TrainConfig(device="cpu"), DataConfig(train_limit=500)) == torch.device("cpu")
    assert preflight(CIFAR_NET, TrainConfig(device="cpu"), DataConfig(dataset="cifar10")) == torch.device("cpu")


@pytest.mark.parametrize("model_cfg, train_cfg, data_cfg, field, words", [
    (replace(LAB5, kernel_size=99), TrainConfig(), DataConfig(), "kernel_size", None),  # the network's own check
    (LAB5, TrainConfig(epochs=0), DataConfig(), "epochs", "Epochs must be 1 to 1000"),
    (LAB5, TrainConfig(), DataConfig(dataset="emnist"), "dataset", "Unknown dataset 'emnist'"),
    (LAB5, TrainConfig(), DataConfig(dataset="cifar10"), "in_channels", "in_channels = 1 but CIFAR-10 needs 3"),
    (CIFAR_NET, TrainConfig(), DataConfig(), "in_channels", "in_channels = 3 but MNIST needs 1"),
    (replace(LAB5, n_classes=7), TrainConfig(), DataConfig(dataset="fashion-mnist"), "n_classes",
     "n_classes = 7 but Fashion-MNIST needs 10"),
    (LAB5, TrainConfig(batch_size=600), DataConfig(train_limit=500), "batch_size",
     "Batch size 600 is larger than the 500 training images"),
    (LAB5, TrainConfig(device="cuda:99"), DataConfig(), "device", "cuda:99"),
    (LAB5, TrainConfig(device="tpu"), DataConfig(), "device", "Unknown device 'tpu'"),
])
def test_each_refusal_names_its_field(model_cfg, train_cfg, data_cfg, field, words):
    with pytest.raises(ConfigError) as info:
        preflight(model_cfg, train_cfg, data_cfg)
    assert info.value.field == field
    if words:
        assert words in str(info.value)


def test_the_batch_is_checked_against_the_dataset_specs_count_or_the_data_in_hand():
    full_cifar = DataConfig(dataset="cifar10")
    preflight(CIFAR_NET, TrainConfig(batch_size=50_000), full_cifar)  # all of CIFAR-10's 50,000 images ...
    with pytest.raises(ConfigError, match="larger than the 50000 training images"):  # ... and no more
        preflight(CIFAR_NET, TrainConfig(batch_size=50_001), full_cifar)
    with pytest.raises(ConfigError, match="larger than the 64 training images"):  # the loop passes what it holds
        preflight(LAB5, TrainConfig(batch_size=65), DataConfig(), n_train=64)


def test_a_run_too_big_for_the_memory_is_refused_before_its_data_loads(no_data):
    vgg = PRESETS["vgg16-cifar"].model
    huge = TrainConfig(batch_size=50_000, eval_batch_size=100_000, device="cpu")  # ~1 TB of activations
    with pytest.raises(ConfigError, match=r"needs about [\d,]+ MiB, but cpu has") as info:
        run_single(vgg, huge, DataConfig(dataset="cifar10"))
    assert info.value.field == "batch_size"


def test_there_is_one_fit_check():
    assert not hasattr(datasets, "check_model_fits") and not hasattr(loop, "check_fits")
    with pytest.raises(ConfigError, match="image_size = 28 but CIFAR-10 needs 32"):
        check_fits(replace(LAB5, in_channels=3), datasets.CIFAR10)


def test_the_loop_refuses_data_of_another_dataset_with_the_same_check(mnist_raw):
    data = datasets.prepare_data(DataConfig(train_limit=64, test_limit=64), raw=mnist_raw)
    with pytest.raises(ConfigError, match="in_channels = 3 but MNIST needs 1"):
        loop.train(CIFAR_NET, TrainConfig(device="cpu"), data)


def test_every_experiment_refuses_before_any_data_loads(no_data, tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    cifar = DataConfig(dataset="cifar10")
    with pytest.raises(ConfigError, match="in_channels = 1 but CIFAR-10 needs 3"):
        run_single(LAB5, TrainConfig(), cifar, record=Recorder(store))
    with pytest.raises(ConfigError, match="in_channels = 1 but CIFAR-10 needs 3"):
        run_sweep(SweepConfig(conv_layers=(1,), kernel_sizes=(3,), seeds=1), TrainConfig(), cifar,
                  record=Recorder(store))
    with pytest.raises(ConfigError, match="in_channels = 1 but CIFAR-10 needs 3"):
        run_compare(CompareConfig(seeds=1), TrainConfig(), cifar, record=Recorder(store))
    with pytest.raises(ConfigError, match="larger than the 100 training images"):
        spec = lesson_spec(LessonConfig("epoch-batch", seeds=1, train_limit=100), device="cpu")
        # batch 256 of 100 images, before batch 16 trains
        run_lesson(spec.lesson, spec.train, spec.data, record=Recorder(store))
    assert len(store.runs()) == 0


def test_the_job_runner_refuses_at_submit_and_queues_nothing(no_data, tmp_path):
    store = ResultStore(tmp_path / "r.sqlite")
    runner = StoreRunner(store)
    bad = [JobSpec("train", TrainConfig(), DataConfig(dataset="cifar10"), model=LAB5),
           JobSpec("train", TrainConfig(batch_size=600), DataConfig(train_limit=500), model=LAB5),
           JobSpec("sweep", TrainConfig(device="cuda:99"), DataConfig(), sweep=SweepConfig(seeds=1)),
           JobSpec("compare", TrainConfig(), DataConfig(dataset="cifar10"), compare=CompareConfig(seeds=1)),
           lesson_spec(LessonConfig("epoch-batch", seeds=1, train_limit=100), device="cpu")]
    for spec in bad:
        with pytest.raises(ConfigError):
            runner.submit(spec)
    assert JobQueue(store).jobs(workspace=None, limit=100) == []
    good = JobSpec("train", TrainConfig(), DataConfig(train_limit=500), model=LAB5)
    assert good.run_configs() == [(LAB5, TrainConfig(), DataConfig(train_limit=500))]
    assert len(JobSpec("sweep", TrainConfig(), DataConfig(), sweep=SweepConfig(seeds=1)).run_configs()) == 9
    assert runner.submit(good)


def test_the_cli_refuses_before_any_data_loads(no_data, tmp_path, capsys):
    code = main(["train", "--preset", "lab5", "--dataset", "cifar10", "--db", str(tmp_path / "r.sqlite")])
    assert code != 0
    assert "in_channels = 1 but CIFAR-10 needs 3" in capsys.readouterr().err
