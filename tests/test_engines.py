"""The engine selector and the fast paths against the plain loop: on the CPU the cpu-native
engine gives the plain loop's losses up to float rounding and the GPU engines fall back to
'plain' and say so; on a GPU the CUDA-graph engine and `train_many` give the plain loop's losses
for the same seed. (tests/test_native.py checks the C++ kernels layer by layer.)"""
from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch

from mnist_lab.nets.model import ModelConfig, build_model
from mnist_lab.nets.presets import cnn_config, get_preset
from mnist_lab.training import cuda_graph as fast
from mnist_lab.training.engines import ENGINE_NAMES
from mnist_lab.training.loop import TrainConfig, fallback_reason, select_engine, train, train_many

LAB5 = get_preset("lab5").model
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 64, "lr": 0.01, "momentum": 0.5, "device": "cpu", **kw})


@pytest.fixture(scope="module")
def data500(tiny_data):
    """500 images: 7 batches of 64 and a short one of 52, like MNIST's 937 x 64 + 32."""
    return dataclasses.replace(tiny_data, x_train=tiny_data.x_train[:500], y_train=tiny_data.y_train[:500])


# ------------------------------------------------------------------------- selection (CPU)

@pytest.mark.parametrize("engine", [e for e in ENGINE_NAMES if e not in ("auto", "cpu-native")])
def test_the_gpu_engines_are_plain_on_the_cpu(engine):
    assert select_engine(LAB5, cfg(engine=engine), CPU) == "plain"


def test_the_selector_picks_cuda_graphs_only_where_they_can_run():
    # decided from the config alone, so it is checked without a GPU
    assert select_engine(LAB5, cfg(engine="auto"), CUDA) == "cuda-graph"
    assert select_engine(LAB5, cfg(engine="cuda-graph", optimizer="adam"), CUDA) == "cuda-graph"
    assert select_engine(cnn_config(2, 5, batch_norm=True), cfg(), CUDA) == "cuda-graph"
    assert select_engine(LAB5, cfg(engine="plain"), CUDA) == "plain"
    dropout = ModelConfig(conv_channels=(10, 20), hidden=(50,), dropout=0.5)
    assert select_engine(dropout, cfg(engine="cuda-graph"), CUDA) == "plain"


def test_a_fast_engine_asked_for_on_the_cpu_falls_back_and_says_so(data500):
    plain = train(LAB5, cfg(engine="plain"), data500)
    asked = train(LAB5, cfg(engine="cuda-graph"), data500)
    assert (plain.engine, asked.engine) == ("plain", "plain")
    assert asked.losses == plain.losses


def test_an_unknown_engine_is_refused(data500):
    with pytest.raises(ValueError,
                       match="Engine must be one of auto, plain, cuda-graph, stacked, cpu-native; got 'turbo'."):
        train(LAB5, cfg(engine="turbo"), data500)


@pytest.mark.parametrize("model_cfg", [LAB5, cnn_config(3, 7), cnn_config(2, 3, padding="valid", batch_norm=True)])
@pytest.mark.parametrize("fast_conv", ["bias", "bias+wgrad"])
def test_fast_convs_keep_the_parameters_and_the_gradients(monkeypatch, model_cfg, fast_conv):
    monkeypatch.setattr(fast, "FAST_CONV", fast_conv)
    torch.manual_seed(0)
    plain, swapped = build_model(model_cfg), build_model(model_cfg)
    swapped.load_state_dict(plain.state_dict())
    params = list(swapped.parameters())
    fast.fast_convs(swapped)
    assert list(swapped.parameters()) == params  # the very same tensors: an optimiser keeps working
    assert sum(type(m).__name__ == "_FastGradConv2d" for m in swapped.modules()) == model_cfg.conv_layers
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    for model in (plain, swapped):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    torch.testing.assert_close(swapped(x), plain(x))
    for a, b in zip(plain.parameters(), swapped.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6)  # BN makes conv bias grads ~1e-7


def test_fast_convs_leave_even_kernels_with_same_padding_alone():
    model = fast.fast_convs(build_model(cnn_config(2, 4)))  # 'same' with k=4 pads unevenly
    assert not any(type(m).__name__ == "_FastGradConv2d" for m in model.modules())


@pytest.mark.native
def test_train_many_on_the_cpu_is_each_run_alone(data500):
    jobs = [(LAB5, cfg(seed=0)), (cnn_config(1, 3), cfg(seed=1, batch_size=100)), (LAB5, cfg(seed=2))]
    events = []
    many = train_many(jobs, data500, on_progress=events.append, run_ids=["a", "b", "c"])
    assert [r.run_id for r in many] == ["a", "b", "c"]
    for (model_cfg, train_cfg), result in zip(jobs, many):
        alone = train(model_cfg, train_cfg, data500)
        assert (result.engine, result.status) == ("cpu-native", "finished")
        assert result.losses == alone.losses and result.model_cfg == model_cfg
    assert [e.run_id for e in events if e.kind == "end"] == ["a", "b", "c"]


def test_train_many_cancelled_before_the_start_trains_nothing(data500):
    cancel = threading.Event()
    cancel.set()
    many = train_many([(LAB5, cfg()), (LAB5, cfg(seed=1))], data500, cancel=cancel)
    assert [(r.status, r.losses) for r in many] == [("stopped", []), ("stopped", [])]


# ------------------------------------------------------------------------- cpu-native

def assert_same_run(fast, plain, rtol=2e-4, atol=2e-5):
    """Same losses up to float rounding: the fast paths sum some gradients in another order
    (fast.fast_convs, the C++ kernels), which moves losses by ~1e-5 relative within a few epochs."""
    assert len(fast.losses) == len(plain.losses)
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(plain.losses), rtol=rtol, atol=atol)
    assert [m.epoch for m in fast.epochs] == [m.epoch for m in plain.epochs]
    for f, p in zip(fast.epochs, plain.epochs):
        assert f.test_acc == pytest.approx(p.test_acc, abs=0.003)
        assert f.test_loss == pytest.approx(p.test_loss, rel=1e-3)


@pytest.mark.parametrize("model_cfg,extra", [
    (LAB5, {}),
    (ModelConfig(conv_channels=(6, 6), hidden=(50,), dropout=0.3), {}),  # dropout masks follow the seed
    (cnn_config(2, 3, hidden=(32,)), {"optimizer": "adam", "lr": 0.003, "shuffle": False}),
])
@pytest.mark.native
def test_cpu_native_gives_the_plain_losses(data500, model_cfg, extra):
    plain = train(model_cfg, cfg(epochs=3, engine="plain", **extra), data500)
    fast = train(model_cfg, cfg(epochs=3, engine="cpu-native", **extra), data500)
    assert (plain.engine, fast.engine) == ("plain", "cpu-native")
    assert_same_run(fast, plain)


@pytest.mark.native
def test_cpu_native_gives_the_same_losses_for_the_same_seed(data500):
    runs = [train(LAB5, cfg(epochs=2, seed=7), data500) for _ in range(2)]
    assert runs[0].engine == "cpu-native" and runs[0].losses == runs[1].losses


@pytest.mark.native
def test_a_stopped_cpu_native_run_keeps_its_finished_iterations(data500):
    cancel = threading.Event()

    def on_progress(event):
        if event.kind == "iterations" and event.step >= 10:
            cancel.set()

    result = train(LAB5, cfg(epochs=3, progress_every_s=0), data500, on_progress=on_progress, cancel=cancel)
    plain = train(LAB5, cfg(epochs=2, engine="plain"), data500)
    assert (result.engine, result.status, len(result.epochs)) == ("cpu-native", "stopped", 1)
    assert 10 <= len(result.losses) < 16
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(plain.losses[:len(result.losses)]),
                               rtol=2e-4, atol=2e-5)


# ------------------------------------------------------------------------- stacked seeds

def assert_alone(result, alone, rtol=1e-4, atol=2e-6):
    """A stacked run against the same run trained alone: the grouped convolution sums in another
    order, so the losses agree to float rounding, and every epoch's test metrics with them."""
    assert (result.status, len(result.losses)) == (alone.status, len(alone.losses))
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(alone.losses), rtol=rtol, atol=atol)
    for f, p in zip(result.epochs, alone.epochs, strict=True):
        assert (f.epoch, f.test_acc) == (p.epoch, pytest.approx(p.test_acc, abs=0.003))
        assert f.test_loss == pytest.approx(p.test_loss, rel=1e-4)


@pytest.mark.parametrize("model_cfg,extra", [
    (LAB5, {}),
    (cnn_config(2, 3, hidden=(32,), padding="same"), {"optimizer": "adam", "lr": 0.003}),
    (dataclasses.replace(get_preset("tiny-fc").model, softmax_before_loss=True), {"shuffle": False}),
])
def test_stacked_seeds_train_as_if_each_were_alone(data500, model_cfg, extra):
    jobs = [(model_cfg, cfg(epochs=2, seed=seed, engine="stacked", **extra)) for seed in (3, 1, 4)]
    events = []
    many = train_many(jobs, data500, on_progress=events.append, run_ids=["a", "b", "c"])
    assert [(r.run_id, r.engine) for r in many] == [("a", "stacked"), ("b", "stacked"), ("c", "stacked")]
    assert len({tuple(r.losses) for r in many}) == 3  # three different runs, not one run three times
    for (m, t), result in zip(jobs, many):
        alone = train(m, dataclasses.replace(t, engine="plain"), data500)
        assert result.train_cfg == t and result.model_cfg == m
        assert_alone(result, alone)
        mine = [e for e in events if e.run_id == result.run_id]
        assert [loss for e in mine if e.kind == "iterations" for loss in e.losses] == result.losses
        assert [e.metrics for e in mine if e.kind == "epoch"] == result.epochs
        assert mine[-1].kind == "end" and mine[-1].status == "finished"


@pytest.mark.native
def test_only_runs_that_differ_in_the_seed_alone_are_stacked(data500):
    dropout = ModelConfig(conv_channels=(10, 20), hidden=(50,), dropout=0.5)
    jobs = [(LAB5, cfg(seed=0, engine="stacked")), (LAB5, cfg(seed=1, engine="stacked")),
            (LAB5, cfg(seed=5, engine="stacked", eval_batch_size=250, progress_every_s=1)),  # no effect on results
            (LAB5, cfg(seed=2, engine="stacked", lr=0.05)),  # another learning rate: trains alone
            (dropout, cfg(seed=0, engine="stacked")), (dropout, cfg(seed=1, engine="stacked")),  # dropout: alone
            (LAB5, cfg(seed=3))]  # did not ask
    many = train_many(jobs, data500)
    assert [r.engine for r in many] == ["stacked"] * 3 + ["plain"] * 3 + ["cpu-native"]
    for (m, t), result in zip(jobs[3:], many[3:]):
        assert result.losses == train(m, t, data500).losses  # each as if trained alone, bit for bit


def test_on_the_cpu_one_stack_trains_after_the_other(data500):
    jobs = [(model_cfg, cfg(seed=seed, engine="stacked")) for model_cfg in (LAB5, cnn_config(1, 3)) for seed in (0, 1)]
    events = []
    many = train_many(jobs, data500, on_progress=events.append, run_ids=["a0", "a1", "b0", "b1"])
    assert [r.engine for r in many] == ["stacked"] * 4
    runs_in_order = [e.run_id[0] for e in events]
    assert runs_in_order == sorted(runs_in_order)  # every event of stack a before any of stack b


def test_a_stopped_stack_keeps_every_finished_iteration_of_every_member(data500):
    jobs = [(LAB5, cfg(epochs=3, seed=seed, engine="stacked", progress_every_s=0)) for seed in (0, 1)]
    cancel = threading.Event()

    def on_progress(event):
        if event.kind == "iterations" and event.step >= 11:
            cancel.set()

    many = train_many(jobs, data500, on_progress=on_progress, cancel=cancel)
    assert [r.status for r in many] == ["stopped", "stopped"]
    n = len(many[0].losses)
    assert 11 <= n < 16 and len(many[1].losses) == n
    assert [len(r.epochs) for r in many] == [1, 1]  # epoch 2 never finished
    for (m, t), result in zip(jobs, many):
        alone = train(m, dataclasses.replace(t, engine="plain", epochs=1), data500)
        torch.testing.assert_close(torch.tensor(result.losses[:8]), torch.tensor(alone.losses), rtol=1e-4, atol=2e-6)


# ------------------------------------------------------------------------- GPU

def gpu_cfg(**kw) -> TrainConfig:
    return cfg(device="cuda", **kw)


@pytest.mark.gpu
@pytest.mark.parametrize("model_cfg,extra", [
    (LAB5, {}),
    (cnn_config(2, 3, batch_norm=True, hidden=(32,)), {}),
    (get_preset("tiny-fc").model, {"shuffle": False}),
])
def test_cuda_graph_gives_the_plain_losses(data500, model_cfg, extra):
    plain = train(model_cfg, gpu_cfg(epochs=3, engine="plain", **extra), data500)
    fast = train(model_cfg, gpu_cfg(epochs=3, engine="cuda-graph", **extra), data500)
    assert (plain.engine, fast.engine) == ("plain", "cuda-graph")
    assert len(fast.losses) == 3 * math.ceil(500 / 64)  # the short last batch of each epoch included
    assert_same_run(fast, plain)


@pytest.mark.gpu
def test_cuda_graph_with_adam_is_close_to_plain(data500):
    plain = train(LAB5, gpu_cfg(epochs=2, engine="plain", optimizer="adam", lr=0.003), data500)
    fast = train(LAB5, gpu_cfg(epochs=2, engine="cuda-graph", optimizer="adam", lr=0.003), data500)
    # capturable Adam computes its bias corrections on the device: the same maths, other rounding
    assert_same_run(fast, plain, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
def test_auto_takes_cuda_graphs_and_repeats_itself(data500):
    first = train(LAB5, gpu_cfg(epochs=2), data500)
    again = train(LAB5, gpu_cfg(epochs=2), data500)
    assert first.engine == "cuda-graph"
    # cuDNN's default backward kernels add with atomics (so does the plain CUDA path): equal up to rounding
    assert_same_run(again, first, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cuda_graph_cancel_and_progress_keep_every_finished_iteration(data500):
    reference = train(LAB5, gpu_cfg(epochs=3, engine="cuda-graph"), data500)
    cancel = threading.Event()
    events = []

    def on_progress(event):
        events.append(event)
        if event.kind == "iterations" and event.step >= 11:
            cancel.set()

    result = train(LAB5, gpu_cfg(epochs=3, engine="cuda-graph", progress_every_s=0), data500,
                   on_progress=on_progress, cancel=cancel)
    assert result.status == "stopped" and result.engine == "cuda-graph"
    n = len(result.losses)
    assert 11 <= n < 24
    torch.testing.assert_close(torch.tensor(result.losses), torch.tensor(reference.losses[:n]), rtol=1e-4, atol=1e-5)
    assert [loss for e in events if e.kind == "iterations" for loss in e.losses] == result.losses
    assert len(result.epochs) == 1  # epoch 2 never finished


@pytest.mark.gpu
def test_train_many_on_a_gpu_is_each_run_alone(data500):
    dropout = ModelConfig(conv_channels=(10, 20), hidden=(50,), dropout=0.5)  # falls back to plain
    jobs = [(LAB5, gpu_cfg(epochs=2, seed=0)), (LAB5, gpu_cfg(epochs=2, seed=1)),
            (cnn_config(3, 7), gpu_cfg(epochs=2, seed=0)), (cnn_config(1, 3), gpu_cfg(epochs=1, batch_size=100)),
            (dropout, gpu_cfg(epochs=1))]
    events = []
    many = train_many(jobs, data500, on_progress=events.append)
    assert [r.engine for r in many] == ["cuda-graph"] * 4 + ["plain"]
    for (model_cfg, train_cfg), result in zip(jobs, many):
        alone = train(model_cfg, train_cfg, data500)
        assert result.status == "finished" and result.model_cfg == model_cfg
        assert_same_run(result, alone, rtol=1e-4, atol=1e-5)  # the same graphs; cuDNN's atomics aside
        mine = [e for e in events if e.run_id == result.run_id]
        assert [loss for e in mine if e.kind == "iterations" for loss in e.losses] == result.losses
        assert [e.metrics for e in mine if e.kind == "epoch"] == result.epochs
        assert mine[-1].kind == "end"


@pytest.mark.gpu
def test_stacked_seeds_on_a_gpu_replay_one_graph_per_stack(data500):
    jobs = [(cnn_config(layers, 5, base_channels=16, padding="same"), gpu_cfg(epochs=2, seed=seed, engine="stacked"))
            for layers in (1, 2) for seed in range(3)] + [(LAB5, gpu_cfg(epochs=2))]  # plus one lone graph
    many = train_many(jobs, data500)
    assert [r.engine for r in many] == ["stacked"] * 6 + ["cuda-graph"]
    for (model_cfg, train_cfg), result in zip(jobs, many):
        alone = train(model_cfg, dataclasses.replace(train_cfg, engine="plain"), data500)
        assert_same_run(result, alone)


@pytest.mark.parametrize("engine,device,why", [
    ("plain", CPU, None),
    pytest.param("auto", CPU, None, marks=pytest.mark.native),  # cpu-native runs
    ("cuda-graph", CPU, "cuda-graph: needs a CUDA device"),
    ("stacked", CPU, "stacked: trains two or more seeds of one config together"),
    ("cpu-native", CUDA, "cpu-native: runs on the CPU only"),
    ("auto", CUDA, None),  # cuda-graph runs
])
def test_the_fallback_reason_names_what_to_change(engine, device, why):
    reason = fallback_reason(LAB5, cfg(engine=engine), device)
    assert reason == why if why is None else why in reason
    dropout = ModelConfig(conv_channels=(10, 20), hidden=(50,), dropout=0.5)
    assert "dropout inside a graph" in fallback_reason(dropout, cfg(engine="auto"), CUDA)


# ------------------------------------------------------------------------- divergence

def poisoned(data500, image: int):
    """data500 with one NaN pixel in training image `image`: its batch's loss is NaN."""
    x = data500.x_train.clone()
    x[image, 0, 14, 14] = float("nan")
    return dataclasses.replace(data500, x_train=x)


def assert_diverged_at(result, iteration: int) -> None:
    assert (result.status, result.diverged_at, result.epochs) == ("diverged", iteration, [])
    assert len(result.losses) == iteration - 1 and all(math.isfinite(v) for v in result.losses)
    assert f"at iteration {iteration}" in result.message and "learning rate" in result.message


@pytest.mark.parametrize("engine", ["plain", pytest.param("cpu-native", marks=pytest.mark.native)])
def test_a_nan_loss_ends_the_run_at_once_as_diverged(data500, engine):
    events = []
    result = train(LAB5, cfg(epochs=3, shuffle=False, engine=engine), poisoned(data500, 3 * 64 + 5),
                   on_progress=events.append)
    assert result.engine == engine
    assert_diverged_at(result, 4)  # the fourth batch holds image 197; no later step ran
    assert [e.status for e in events if e.kind == "end"] == ["diverged"]
    assert sum(len(e.losses) for e in events if e.kind == "iterations") == 3


def test_every_member_of_a_stack_reports_its_own_divergence(data500):
    """The members share the data, so both meet the NaN batch; each ends as a lone run would."""
    jobs = [(LAB5, cfg(seed=s, shuffle=False, engine="stacked")) for s in (0, 1)]
    results = train_many(jobs, poisoned(data500, 2 * 64))
    assert [r.engine for r in results] == ["stacked", "stacked"]
    for result in results:
        assert_diverged_at(result, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["plain", "cuda-graph"])
def test_a_nan_loss_on_the_gpu_is_caught_when_the_losses_are_read(data500, engine):
    result = train(LAB5, cfg(epochs=2, shuffle=False, engine=engine, device="cuda"), poisoned(data500, 3 * 64))
    assert result.engine == engine
    assert_diverged_at(result, 4)
