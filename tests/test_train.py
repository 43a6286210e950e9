"""The training engine on a tiny real-MNIST subset: one loss per iteration, determinism,
progress events, cancellation that keeps what was done, refusals, and one real epoch."""
from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch
import torch.nn.functional as F

from mnist_lab.data import datasets as data
from mnist_lab.nets.model import ModelConfig
from mnist_lab.nets.presets import get_preset
from mnist_lab.training.loop import TrainConfig, evaluate, train, warm_up
from mnist_lab.training.preflight import resolve_device
from mnist_lab.training.step import init_model, make_optimizer

LAB5 = get_preset("lab5").model


def cfg(**kw) -> TrainConfig:
    """Lab-5 settings (SGD lr 0.01, momentum 0.5, batch 64) on the CPU."""
    return TrainConfig(**{"epochs": 1, "batch_size": 64, "lr": 0.01, "momentum": 0.5, "device": "cpu", **kw})


def metrics_without_time(result):
    return [(m.epoch, m.train_loss, m.test_loss, m.test_acc) for m in result.epochs]


@pytest.fixture(scope="module")
def reference(tiny_data):
    """An uncancelled 3-epoch run that the cancelled runs must be a prefix of."""
    return train(LAB5, cfg(epochs=3), tiny_data)


# ------------------------------------------------------------------------- what a run returns

@pytest.mark.native
def test_one_loss_per_iteration_including_a_short_last_batch(tiny_data):
    sub = dataclasses.replace(tiny_data, x_train=tiny_data.x_train[:500], y_train=tiny_data.y_train[:500])
    result = train(LAB5, cfg(epochs=2), sub)
    steps = math.ceil(500 / 64)  # 7 full batches and one of 52
    assert steps == 8 and result.steps_per_epoch == steps
    assert len(result.losses) == 2 * steps
    assert all(math.isfinite(loss) for loss in result.losses)
    assert [m.epoch for m in result.epochs] == [1, 2]
    for m in result.epochs:
        epoch_losses = result.losses[(m.epoch - 1) * steps:m.epoch * steps]
        assert m.train_loss == pytest.approx(sum(epoch_losses) / steps)
        assert 0.0 <= m.test_acc <= 1.0 and m.test_loss > 0
    assert result.final_test_acc == result.epochs[-1].test_acc
    assert (result.status, result.engine, result.device, result.params) == ("finished", "cpu-native", "cpu", 8490)
    assert result.data_cfg == tiny_data.config and result.data_source == tiny_data.source


def test_first_loss_is_near_chance(reference):
    assert reference.losses[0] == pytest.approx(math.log(10), abs=0.25)  # untrained: ~uniform over 10 digits


def test_same_seed_same_losses_different_seed_different(tiny_data, reference):
    again = train(LAB5, cfg(epochs=3), tiny_data)
    assert again.losses == reference.losses  # exactly, not approximately
    assert metrics_without_time(again) == metrics_without_time(reference)
    other = train(LAB5, cfg(epochs=1, seed=1), tiny_data)
    assert other.losses != reference.losses[:len(other.losses)]


def test_training_does_not_touch_the_global_rng(tiny_data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(get_preset("tiny-fc").model, cfg(), tiny_data)
    assert torch.equal(torch.rand(3), expected)


def test_warm_up_builds_the_cpu_kernels_and_leaves_the_global_rng_alone(monkeypatch):
    from mnist_lab.training import native

    built = []
    monkeypatch.setattr(native, "load_library", lambda: built.append("kernels"))
    before = torch.get_rng_state()
    warm_up("cpu")
    assert built == ["kernels"]  # the one-time cost is paid here, not in the first run
    assert torch.equal(torch.get_rng_state(), before)


def test_adam_runs_and_learns(tiny_data):
    model = init_model(LAB5, 0, torch.device("cpu"))
    assert isinstance(make_optimizer(model, cfg(optimizer="adam", lr=0.01)), torch.optim.Adam)
    assert isinstance(make_optimizer(model, cfg()), torch.optim.SGD)
    result = train(LAB5, cfg(optimizer="adam", lr=0.01, epochs=3), tiny_data)
    assert result.status == "finished" and len(result.losses) == 24
    assert result.epochs[-1].train_loss < result.epochs[0].train_loss
    assert result.final_test_acc > 0.5  # 3 epochs on 512 images; chance is 0.1


def test_batch_order_without_and_with_shuffle(tiny_data):
    """With lr ~0 the weights stay at their initial values, so each loss names its batch."""
    def initial_losses_in_order():
        model = init_model(LAB5, 0, torch.device("cpu"))
        with torch.no_grad():
            return [F.cross_entropy(model(tiny_data.x_train[i:i + 64]), tiny_data.y_train[i:i + 64]).item()
                    for i in range(0, 512, 64)]

    in_order = torch.tensor(initial_losses_in_order())
    fixed = torch.tensor(train(LAB5, cfg(epochs=2, lr=1e-9, shuffle=False), tiny_data).losses).reshape(2, 8)
    torch.testing.assert_close(fixed[0], in_order, rtol=1e-4, atol=1e-5)  # batches 0..7 in order
    torch.testing.assert_close(fixed[1], in_order, rtol=1e-4, atol=1e-5)  # and the same again

    shuffled = torch.tensor(train(LAB5, cfg(epochs=2, lr=1e-9), tiny_data).losses).reshape(2, 8)
    assert not torch.allclose(shuffled[0], in_order, rtol=1e-3)
    assert not torch.allclose(shuffled[1], shuffled[0], rtol=1e-3)  # a new order every epoch


def test_evaluate_is_independent_of_its_chunk_size(tiny_data):
    model = init_model(LAB5, 0, torch.device("cpu"))
    model.train()
    whole = evaluate(model, tiny_data.x_test, tiny_data.y_test, batch_size=2000)
    chunked = evaluate(model, tiny_data.x_test, tiny_data.y_test, batch_size=37)
    assert whole[0] == pytest.approx(chunked[0], rel=1e-5) and whole[1] == chunked[1]
    assert model.training  # evaluation leaves the mode as it found it


# ------------------------------------------------------------------------- progress events

@pytest.mark.parametrize("every_s", [0.0, 0.25])
def test_progress_events_carry_every_loss_once(tiny_data, every_s):
    events = []
    result = train(LAB5, cfg(epochs=2, progress_every_s=every_s), tiny_data, on_progress=events.append)
    assert {e.kind for e in events} <= {"start", "iterations", "epoch", "end"}
    assert events[0].kind == "start" and events[0].engine == result.engine and events[0].step == 0
    assert events[-1].kind == "end" and events[-1].status == "finished"
    assert [e.kind for e in events].count("end") == 1
    assert {e.run_id for e in events} == {result.run_id}
    assert {e.total_steps for e in events} == {16}

    chunks = [e for e in events if e.kind == "iterations"]
    assert [loss for e in chunks for loss in e.losses] == result.losses
    expected_first = 1
    for e in chunks:  # contiguous, 1-based, and `step` counts what is done
        assert e.losses and e.first_iteration == expected_first
        expected_first += len(e.losses)
        assert e.step == expected_first - 1
    if every_s == 0.0:
        assert len(chunks) == 16  # one event per iteration

    epochs = [e for e in events if e.kind == "epoch"]
    assert [e.metrics for e in epochs] == result.epochs
    assert [e.step for e in epochs] == [8, 16]
    for e in epochs:  # an epoch event follows all of that epoch's losses
        before = events[:events.index(e)]
        assert sum(len(c.losses) for c in before if c.kind == "iterations") == e.step


# ------------------------------------------------------------------------- cancellation

def test_cancel_after_the_first_epoch_keeps_that_epoch(tiny_data, reference):
    cancel = threading.Event()
    events = []

    def on_progress(event):
        events.append(event)
        if event.kind == "epoch":
            cancel.set()

    result = train(LAB5, cfg(epochs=3), tiny_data, on_progress=on_progress, cancel=cancel)
    assert result.status == "stopped"
    assert result.losses == reference.losses[:8]
    assert metrics_without_time(result) == metrics_without_time(reference)[:1]
    assert events[-1].kind == "end" and events[-1].status == "stopped"


def test_cancel_mid_epoch_keeps_the_finished_iterations(tiny_data, reference):
    cancel = threading.Event()

    def on_progress(event):
        if event.kind == "iterations" and event.step >= 11:
            cancel.set()

    result = train(LAB5, cfg(epochs=3, progress_every_s=0), tiny_data, on_progress=on_progress, cancel=cancel)
    assert result.status == "stopped"
    assert result.losses == reference.losses[:11]  # stops before iteration 12
    assert metrics_without_time(result) == metrics_without_time(reference)[:1]  # epoch 2 never finished


def test_cancel_during_the_test_evaluation_drops_only_that_epoch(tiny_data, reference):
    """Stop lands after an epoch's last iteration, before its evaluation ends: the iterations
    are kept, the unfinished epoch's metrics are not."""
    cancel = threading.Event()

    def on_progress(event):
        if event.kind == "iterations" and event.step == 8:  # epoch 1's last step
            cancel.set()

    result = train(LAB5, cfg(epochs=3, progress_every_s=0), tiny_data, on_progress=on_progress, cancel=cancel)
    assert result.status == "stopped"
    assert result.losses == reference.losses[:8] and result.epochs == []


def test_cancel_before_the_start(tiny_data):
    cancel = threading.Event()
    cancel.set()
    events = []
    result = train(LAB5, cfg(), tiny_data, on_progress=events.append, cancel=cancel)
    assert (result.status, result.losses, result.epochs) == ("stopped", [], [])
    assert [e.kind for e in events] == ["start", "end"]


# ------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("bad,message", [
    (dict(batch_size=1000), "Batch size 1000 is larger than the 512 training images"),
    (dict(batch_size=0), "Batch size must be at least 1; got 0."),
    (dict(lr=0.0), "Learning rate must be above 0 and at most 10; got 0.0."),
    (dict(lr=float("nan")), "Learning rate must be a finite number; got nan."),
    (dict(optimizer="rmsprop"), "Optimizer must be one of sgd, adam; got 'rmsprop'."),
    (dict(epochs=0), "Epochs must be 1 to 1000; got 0."),
    (dict(momentum=1.0), "Momentum must be in [0, 1); got 1.0."),
    (dict(device="tpu"), "Unknown device 'tpu'; use auto, cpu or cuda."),
    (dict(device="mps"), "Device 'mps' is not supported; use auto, cpu or cuda."),
])
def test_bad_training_settings_are_refused(tiny_data, bad, message):
    with pytest.raises(ValueError) as info:
        train(LAB5, cfg(**bad), tiny_data)
    assert message in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused(tiny_data):
    with pytest.raises(ValueError, match="no CUDA GPU; use --device cpu or auto"):
        train(LAB5, cfg(device="cuda"), tiny_data)
    assert resolve_device("auto") == torch.device("cpu")


def test_bad_model_is_refused_before_training(tiny_data):
    with pytest.raises(ValueError, match="Kernel size must be 1 to 9"):
        train(ModelConfig(kernel_size=11), cfg(), tiny_data)


# ------------------------------------------------------------------------- GPU and real runs

@pytest.mark.gpu
def test_cuda_training_agrees_with_cpu(tiny_data):
    cpu = train(LAB5, cfg(epochs=3), tiny_data)
    gpu = train(LAB5, cfg(epochs=3, device="cuda"), tiny_data)  # train() moves the data to the GPU
    assert gpu.device.startswith("cuda") and gpu.status == "finished"
    assert len(gpu.losses) == len(cpu.losses) == 24
    # Same initial weights and batch order; only summation order (and cuDNN's TF32) differ.
    # Measured on an H100: at most 2e-5 relative, so 1e-3 leaves room.
    torch.testing.assert_close(torch.tensor(gpu.losses[:20]), torch.tensor(cpu.losses[:20]), rtol=1e-3, atol=0)
    assert gpu.final_test_acc == pytest.approx(cpu.final_test_acc, abs=0.01)


@pytest.mark.slow
def test_lab5_one_real_epoch(mnist_raw):
    preset = get_preset("lab5")
    full = data.prepare_data(data.DataConfig(normalize=preset.normalize), raw=mnist_raw)
    result = train(preset.model, cfg(lr=preset.lr, momentum=preset.momentum, batch_size=preset.batch_size), full)
    assert len(result.losses) == 938 == math.ceil(60000 / 64)
    assert result.final_test_acc >= 0.955  # the lab reports 96.88% after epoch 1
    assert sum(result.losses[-100:]) / 100 < 0.5 < result.losses[0]


def test_weights_that_blow_up_between_two_losses_end_the_run_as_diverged(tiny_data, monkeypatch):
    """Every training loss finite, but the test loss is not: still 'diverged', never 'finished'."""
    import mnist_lab.training.loop as train_module

    monkeypatch.setattr(train_module, "_read_sums", lambda loss_sum, correct, n: (float("inf"), 0.1))
    result = train(LAB5, cfg(epochs=2), tiny_data)
    assert (result.status, result.epochs, result.diverged_at) == ("diverged", [], len(result.losses))
    assert result.message.startswith(f"The test loss became inf after iteration {len(result.losses)}")
