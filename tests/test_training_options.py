"""Week-2 training options through the one loop (augmentation, label-sorted order), the engine
registry's answers for them, and the final weights every engine hands back (RunResult.state_dict)."""
from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from mnist_lab.errors import ConfigError
from mnist_lab.nets.model import build_model
from mnist_lab.nets.presets import cnn_config, get_preset
from mnist_lab.training import engines
from mnist_lab.training.loop import TrainConfig, evaluate, fallback_reason, select_engine, train, train_many
from mnist_lab.training.step import Augment

LAB5 = get_preset("lab5").model
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 64, "lr": 0.01, "momentum": 0.5, "device": "cpu",
                          "engine": "plain", **kw})


@pytest.fixture(scope="module")
def data256(tiny_data):
    return dataclasses.replace(tiny_data, x_train=tiny_data.x_train[:256], y_train=tiny_data.y_train[:256],
                               x_test=tiny_data.x_test[:200], y_test=tiny_data.y_test[:200])


# ------------------------------------------------------------------------- augmentation

def shifted(x: torch.Tensor, dy: int, dx: int, fill: torch.Tensor) -> torch.Tensor:
    """x (C, H, W) moved by (dy, dx) pixels, the uncovered border filled with `fill` (C,)."""
    c, h, w = x.shape
    p = max(abs(dy), abs(dx), 1)
    padded = fill.view(c, 1, 1).expand(c, h + 2 * p, w + 2 * p).clone()
    padded[:, p:p + h, p:p + w] = x
    return padded[:, p - dy:p - dy + h, p - dx:p - dx + w]


@pytest.mark.parametrize("channels,size,pad,flips", [(1, 28, 2, False), (3, 32, 4, True)])
def test_augmentation_is_a_small_shift_and_for_colour_a_flip(channels, size, pad, flips):
    x = torch.rand(16, channels, size, size)
    aug = Augment(x, seed=3)
    out = aug(x)
    assert out.shape == x.shape
    fill = x.amin(dim=(0, 2, 3))
    seen_flip = seen_shift = False
    for image, got in zip(x, out):
        matches = [(dy, dx, flip) for dy, dx in itertools.product(range(-pad, pad + 1), repeat=2)
                   for flip in ((False, True) if flips else (False,))
                   if torch.equal(shifted(image.flip(2) if flip else image, dy, dx, fill), got)]
        assert matches, "not a shift of at most the padding (and a flip)"
        seen_flip |= any(m[2] for m in matches)
        seen_shift |= any(m[:2] != (0, 0) for m in matches)
    assert seen_shift and seen_flip == flips
    assert torch.equal(Augment(x, seed=3)(x), out) and not torch.equal(Augment(x, seed=4)(x), out)  # seeded


def test_augmented_training_is_seeded_and_differs_from_plain(data256):
    a, b = (train(LAB5, cfg(augment=True, seed=1), data256) for _ in range(2))
    plain = train(LAB5, cfg(seed=1), data256)
    assert a.losses == b.losses  # the same seed draws the same crops
    assert all(x != y for x, y in zip(a.losses, plain.losses))  # every batch's images moved


def test_the_graph_and_stacked_engines_refuse_augmentation_and_say_why():
    assert select_engine(LAB5, cfg(engine="auto", augment=True), CUDA) == "plain"
    assert "augmentation" in fallback_reason(LAB5, cfg(engine="auto", augment=True), CUDA)
    assert "augmentation" in engines.REGISTRY["stacked"].can_run(LAB5, cfg(augment=True), CPU, alone=False)
    assert engines.REGISTRY["stacked"].can_run(LAB5, cfg(), CPU, alone=False) is None
    assert select_engine(LAB5, cfg(engine="auto", sort_by_label=True), CUDA) == "cuda-graph"  # the order is data


@pytest.mark.native
def test_cpu_native_runs_augmentation_as_the_plain_step_does(data256):
    plain = train(LAB5, cfg(augment=True), data256)
    fast = train(LAB5, cfg(augment=True, engine="cpu-native"), data256)
    assert fast.engine == "cpu-native"
    torch.testing.assert_close(torch.tensor(fast.losses), torch.tensor(plain.losses), rtol=2e-4, atol=2e-5)


# ------------------------------------------------------------------------- label-sorted order

def test_sort_by_label_trains_on_the_images_in_label_order(data256):
    result = train(LAB5, cfg(sort_by_label=True, shuffle=False), data256)
    order = torch.sort(data256.y_train, stable=True).indices
    by_hand = dataclasses.replace(data256, x_train=data256.x_train[order], y_train=data256.y_train[order])
    assert result.losses == train(LAB5, cfg(shuffle=False), by_hand).losses
    assert result.losses != train(LAB5, cfg(shuffle=False), data256).losses


@pytest.mark.parametrize("field", ["augment", "sort_by_label"])
def test_the_new_options_are_validated(field):
    with pytest.raises(ConfigError) as info:
        cfg(**{field: "yes"}).validate()
    assert info.value.field == field and "True or False" in str(info.value)


# ------------------------------------------------------------------------- final weights

def assert_weights_give_the_run(result, model_cfg, data):
    net = build_model(model_cfg)
    assert list(result.state_dict) == list(net.state_dict())
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    net.load_state_dict(result.state_dict)
    _, acc = evaluate(net, data.x_test, data.y_test, 1000)
    assert acc == result.final_test_acc


@pytest.mark.parametrize("engine", ["plain", pytest.param("cpu-native", marks=pytest.mark.native)])
def test_the_final_weights_reproduce_the_final_accuracy(engine, data256):
    result = train(LAB5, cfg(engine=engine, epochs=2), data256)
    assert result.engine == engine and result.status == "finished"
    assert_weights_give_the_run(result, LAB5, data256)


def test_a_stack_hands_back_each_members_own_weights(data256):
    model_cfg = cnn_config(2, 5, base_channels=4)
    jobs = [(model_cfg, cfg(engine="stacked", seed=seed)) for seed in (0, 1)]
    results = train_many(jobs, data256)
    assert [r.engine for r in results] == ["stacked"] * 2
    for result in results:
        assert_weights_give_the_run(result, model_cfg, data256)
    assert not torch.equal(results[0].state_dict["conv1.weight"], results[1].state_dict["conv1.weight"])


def test_stopped_and_diverged_runs_keep_their_weights(data256):
    import threading

    cancel = threading.Event()
    stopped = train(LAB5, cfg(progress_every_s=0), data256, cancel=cancel,
                    on_progress=lambda e: e.kind == "iterations" and e.step >= 2 and cancel.set())
    assert stopped.status == "stopped" and set(stopped.state_dict) == set(build_model(LAB5).state_dict())
    x = data256.x_train.clone()
    x[70, 0, 14, 14] = float("nan")  # batch 2's loss is NaN
    diverged = train(LAB5, cfg(shuffle=False), dataclasses.replace(data256, x_train=x))
    assert diverged.status == "diverged" and set(diverged.state_dict) == set(stopped.state_dict)


def test_the_start_event_carries_the_label_and_epoch_length(data256):
    events = []
    train(LAB5, cfg(), data256, on_progress=events.append, label="my run")
    start = events[0]
    assert (start.kind, start.label, start.steps_per_epoch) == ("start", "my run", 4)


def test_the_registry_knows_every_engine_and_which_one_no_benchmark_backs():
    assert set(engines.REGISTRY) == set(engines.ENGINE_NAMES) - {"auto"}
    defaults = [(device, e.name) for e in engines.REGISTRY.values() for device in e.default_on]
    assert sorted(defaults) == [("cpu", "cpu-native"), ("cuda", "cuda-graph")]  # one per device type
    # 'stacked' is neither a default nor measured faster anywhere yet (docs/BENCHMARKS.md): a cost
    assert [name for name, e in engines.REGISTRY.items() if not e.measured] == ["stacked"]
    assert engines.REGISTRY["cuda-graph"].can_run(LAB5, cfg(), CPU) == "needs a CUDA device"
    assert engines.REGISTRY["plain"].can_run(get_preset("vgg16-cifar").model, cfg(augment=True), CPU) is None


def test_a_residual_net_trains_and_its_weights_include_batchnorm_statistics(data256):
    from mnist_lab.nets.blocks.conv import ConvStage
    from mnist_lab.nets.blocks.residual import Residual
    from mnist_lab.nets.model import ModelConfig

    model_cfg = ModelConfig(conv_channels=(), blocks=(ConvStage((4,), batch_norm=True, pool=False), Residual(4),
                                                      Residual(8, stride=2)), head="gap-fc")
    result = train(model_cfg, cfg(engine="auto", augment=True, epochs=2), data256)
    assert (result.engine, result.status) == ("plain", "finished")  # cpu-native does not run BatchNorm
    assert "res1.bn1.running_mean" in result.state_dict
    assert_weights_give_the_run(result, model_cfg, data256)
