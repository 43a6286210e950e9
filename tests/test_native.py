"""The cpu-native engine's C++ conv blocks against PyTorch's own layers (outputs and gradients,
ties in the max-pool included), how the engine is chosen on the CPU, and how it falls back when
the kernels cannot be built."""
from __future__ import annotations

import copy
import dataclasses
import os

import pytest
import torch
import torch.nn.functional as F

from mnist_lab.nets.model import ModelConfig, build_model
from mnist_lab.nets.presets import cnn_config, get_preset
from mnist_lab.training import native
from mnist_lab.training.loop import TrainConfig, select_engine, train

LAB5 = get_preset("lab5").model
CPU = torch.device("cpu")

NETS = {
    "lab5": LAB5,  # conv -> pool -> ReLU
    "tiny-cnn": get_preset("tiny-cnn").model,  # conv -> ReLU -> pool, a hidden FC layer
    "same-k7-3-blocks": cnn_config(3, 7),  # 16/32/64 channels, borders of 3, 28 -> 14 -> 7 -> 3
    "valid-k4-odd-sizes": ModelConfig(conv_channels=(3, 5), kernel_size=4),  # 25x25 and 9x9 conv outputs
    "k1": ModelConfig(conv_channels=(8, 8), kernel_size=1),
    "k9-one-block": ModelConfig(conv_channels=(13,), kernel_size=9, hidden=(20,)),
    "same-k3-4-blocks": ModelConfig(conv_channels=(3, 5, 7, 9), kernel_size=3, padding="same"),
    "rgb-32px": ModelConfig(conv_channels=(16, 32), kernel_size=5, in_channels=3, image_size=32, hidden=(120, 84)),
}


def images(n: int, model_cfg: ModelConfig, real: torch.Tensor) -> torch.Tensor:
    if model_cfg.in_channels == 1 and model_cfg.image_size == 28:
        return real[:n].clone()  # digits: flat background, so many pool windows hold equal values
    return torch.randn(n, model_cfg.in_channels, model_cfg.image_size, model_cfg.image_size,
                       generator=torch.Generator().manual_seed(n))


@pytest.mark.native
@pytest.mark.parametrize("n", [1, 7, 65])
@pytest.mark.parametrize("name", list(NETS))
def test_the_kernels_give_pytorchs_outputs_and_gradients(tiny_data, name, n):
    model_cfg = NETS[name]
    torch.manual_seed(0)
    plain = build_model(model_cfg)
    fast = native.NativeCNN(copy.deepcopy(plain), model_cfg)
    x, y = images(n, model_cfg, tiny_data.x_train), tiny_data.y_train[:n]
    outputs = []
    for model in (plain, fast):
        out = model(x)
        F.cross_entropy(out, y).backward()
        outputs.append(out)
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    named = dict(plain.named_parameters())
    for key, p in fast.model.named_parameters():
        torch.testing.assert_close(p.grad, named[key].grad, rtol=1e-4, atol=1e-6, msg=f"gradient of {key}")


@pytest.mark.native
def test_ties_go_to_the_first_maximum_as_in_pytorch():
    """A blank image: every conv output is its bias, every pool window a four-way tie."""
    torch.manual_seed(1)
    plain = build_model(LAB5)
    with torch.no_grad():
        plain.conv1.bias.fill_(0.3)  # positive, so the ReLU lets the tied maxima through
        plain.conv2.bias.abs_()
    fast = native.NativeCNN(copy.deepcopy(plain), LAB5)
    x = torch.zeros(4, 1, 28, 28)
    x[1, 0, 10:14, 10:14] = 1.0
    for model in (plain, fast):
        model(x).square().sum().backward()
    for (key, p), q in zip(fast.model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=f"gradient of {key}")


@pytest.mark.native
def test_nan_goes_through_the_pool_and_relu_as_in_pytorch(tiny_data):
    torch.manual_seed(2)
    plain = build_model(LAB5)
    fast = native.NativeCNN(copy.deepcopy(plain), LAB5)
    x = tiny_data.x_train[:4].clone()
    x[1, 0, 5, 5] = float("nan")  # a diverged run: the plain loop shows NaN, so must this
    a, b = plain(x), fast(x)
    assert torch.equal(torch.isnan(b), torch.isnan(a)) and torch.isnan(a[1]).all()
    torch.testing.assert_close(b[[0, 2, 3]], a[[0, 2, 3]], rtol=1e-5, atol=1e-5)


@pytest.mark.native
def test_buffers_first_made_while_evaluating_serve_a_larger_then_a_training_batch(tiny_data):
    torch.manual_seed(3)
    plain = build_model(LAB5)
    fast = native.NativeCNN(copy.deepcopy(plain), LAB5)
    with torch.inference_mode():
        fast(tiny_data.x_train[:8])  # buffers for 8 images, made under inference mode
    x, y = tiny_data.x_train[:100], tiny_data.y_train[:100]  # more images: the buffers grow
    for model in (plain, fast):
        F.cross_entropy(model(x), y).backward()
    for p, q in zip(fast.parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.native
def test_images_of_another_shape_are_refused_with_the_expected_shape():
    fast = native.NativeCNN(build_model(LAB5), LAB5)
    with pytest.raises(ValueError, match=r"takes images of shape \(1, 28, 28\); got \(3, 28, 28\)"):
        fast(torch.zeros(2, 3, 28, 28))


@pytest.mark.native
def test_weights_changed_between_forward_and_backward_are_refused():
    fast = native.NativeCNN(build_model(LAB5), LAB5)
    loss = fast(torch.randn(4, 1, 28, 28)).sum()
    with torch.no_grad():
        fast.model.conv1.weight.mul_(2)  # as an optimiser step would
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.native
def test_the_wrapper_keeps_the_very_same_parameters():
    model = build_model(LAB5)
    params = list(model.parameters())
    fast = native.NativeCNN(model, LAB5)
    assert list(fast.parameters()) == params  # an optimiser made from either trains both
    assert [k.removeprefix("model.") for k in fast.state_dict()] == list(model.state_dict())


@pytest.mark.native
def test_a_backward_pass_must_follow_its_own_forward():
    fast = native.NativeCNN(build_model(LAB5), LAB5)
    first = fast(torch.randn(8, 1, 28, 28)).sum()
    fast(torch.randn(8, 1, 28, 28))  # overwrites what the first pass kept
    with pytest.raises(RuntimeError, match="must follow its own forward"):
        first.backward()


# ------------------------------------------------------------------------- selection

def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 64, "lr": 0.01, "momentum": 0.5, "device": "cpu", **kw})


@pytest.mark.native
def test_on_the_cpu_auto_means_cpu_native_for_the_nets_it_runs():
    for engine in ("auto", "cpu-native"):
        assert select_engine(LAB5, cfg(engine=engine), CPU) == "cpu-native"
        assert select_engine(cnn_config(3, 7, dropout=0.5, hidden=(32,)), cfg(engine=engine), CPU) == "cpu-native"
    for engine in ("plain", "cuda-graph", "stacked"):
        assert select_engine(LAB5, cfg(engine=engine), CPU) == "plain"
    assert select_engine(LAB5, cfg(engine="cpu-native"), torch.device("cuda")) == "plain"


@pytest.mark.parametrize("model_cfg,reason", [
    (get_preset("tiny-fc").model, "no conv blocks"),
    (cnn_config(2, 5, batch_norm=True), "no BatchNorm"),
    (cnn_config(2, 4), "even kernel"),  # 'same' with k=4 pads one side more
    pytest.param(ModelConfig(conv_channels=(512, 512, 512), kernel_size=9, padding="same"),
                 "too big for the CPU kernels", marks=pytest.mark.native),  # the kernels say how big
])
def test_nets_the_kernels_do_not_run_train_on_the_plain_loop(model_cfg, reason):
    assert reason in native.native_unsupported(model_cfg)
    assert select_engine(model_cfg, cfg(engine="cpu-native"), CPU) == "plain"


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """Forget the process's built kernels and build into an empty cache, as on a new machine."""
    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_error", None)
    monkeypatch.setenv("MNIST_LAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_without_a_compiler_training_falls_back_to_the_plain_loop(fresh_build, monkeypatch, tiny_data):
    monkeypatch.setenv("CXX", str(fresh_build / "no-such-g++"))
    assert "no C++ compiler found" in native.native_unsupported(LAB5)
    small = dataclasses.replace(tiny_data, x_train=tiny_data.x_train[:128], y_train=tiny_data.y_train[:128])
    result = train(LAB5, cfg(), small)
    assert (result.engine, result.status) == ("plain", "finished")


def test_a_failed_build_says_what_the_compiler_said(fresh_build, monkeypatch):
    fake = fresh_build / "g++"
    fake.write_text("#!/bin/sh\necho 'error: omp.h: No such file or directory' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    reason = native.native_unsupported(LAB5)
    assert "could not build the CPU kernels: error: omp.h: No such file or directory" in reason
    assert not list((fresh_build / "cache").rglob("*.so"))  # nothing half-built is left to load


@pytest.mark.native
def test_a_fresh_build_is_cached_for_the_next_process(fresh_build):
    assert native.native_unsupported(LAB5) is None
    built = list((fresh_build / "cache" / "native").glob("conv_blocks-*.so"))
    assert len(built) == 1 and built[0] == native.library_path(os.environ.get("CXX") or native.shutil.which("g++")
                                                               or native.shutil.which("c++"))


def test_the_cli_says_why_the_plain_loop_ran(fresh_build, monkeypatch, capsys):
    from mnist_lab.cli.main import main

    monkeypatch.setenv("CXX", str(fresh_build / "no-such-g++"))
    argv = ["train", "--preset", "lab5", "--train-limit", "256", "--quiet", "--db", str(fresh_build / "runs.db")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(plain engine)" in out
    assert "note: the plain loop ran because cpu-native: no C++ compiler found" in out


@pytest.mark.native  # a compiler that is there, and a cache it cannot write into
def test_a_cache_that_cannot_be_written_falls_back_too(fresh_build, monkeypatch):
    blocker = fresh_build / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("MNIST_LAB_CACHE_DIR", str(blocker / "cache"))
    assert "could not build the CPU kernels" in native.native_unsupported(LAB5)


# ------------------------------------------------------------------------- the first test

@pytest.mark.native
def test_the_first_test_refuses_kernels_that_compute_wrong_results():
    lib = native.load_library()
    native.first_test(lib)  # the real kernels agree with PyTorch
    torch.manual_seed(1)
    other = build_model(native.FIRST_TEST_NET)  # other weights, so other outputs than the kernels compute
    with pytest.raises(native.NativeUnavailable, match="compute something other than PyTorch's layers"):
        native.first_test(lib, reference=other)


@pytest.mark.native
@pytest.mark.parametrize("command, why", [
    ("import os, signal; os.kill(os.getpid(), signal.SIGILL)", "crashed in their first test (SIGILL)"),
    ("import sys; sys.exit('the outputs differ')", "failed their first test: the outputs differ"),
])
def test_a_library_that_fails_its_first_test_is_never_loaded(fresh_build, monkeypatch, command, why):
    """The first test runs in a subprocess: an illegal instruction kills it, not this process."""
    import sys

    monkeypatch.setattr(native, "PROVE_COMMAND", [sys.executable, "-c", command])
    bound = []
    monkeypatch.setattr(native, "_bind", lambda lib: bound.append(lib) or lib)
    assert why in native.native_unsupported(LAB5)
    assert bound == []  # this process never loaded it
    assert not list((fresh_build / "cache").rglob("conv_blocks-*"))  # nor will the next one: it builds afresh
    assert select_engine(LAB5, cfg(engine="cpu-native"), CPU) == "plain"


def test_the_cache_key_holds_the_cpu_and_the_compiler(monkeypatch):
    import platform

    identity = native.cpu_identity()
    assert platform.machine() in identity
    if os.path.exists("/proc/cpuinfo"):
        assert any(line.startswith(("model name", "flags", "Features")) for line in identity.splitlines())
    here = native.library_path("g++")
    monkeypatch.setattr(native, "compiler_identity", lambda compiler: "g++ (another version) 99.0")
    other_compiler = native.library_path("g++")
    monkeypatch.setattr(native, "cpu_identity", lambda: "another CPU")
    assert len({here, other_compiler, native.library_path("g++")}) == 3


@pytest.mark.native
@pytest.mark.parametrize("name", ["lab5", "same-k7-3-blocks"])
def test_the_gradients_are_the_same_for_any_thread_count(tiny_data, name):
    """Fixed runs of images are summed apart and added in order, whoever computes them: the
    trainer may change the kernels' thread count between steps without changing a result."""
    model_cfg = NETS[name]
    torch.manual_seed(0)
    fast = native.NativeCNN(build_model(model_cfg), model_cfg)
    x, y = images(65, model_cfg, tiny_data.x_train), tiny_data.y_train[:65]
    grads = {}
    for n in (1, 2, 3, 5):
        fast.blocks.set_threads(n)
        fast.zero_grad()
        F.cross_entropy(fast(x), y).backward()
        grads[n] = [p.grad.clone() for p in fast.parameters()]
    for n in (2, 3, 5):
        assert all(torch.equal(a, b) for a, b in zip(grads[1], grads[n])), f"{n} threads"


@pytest.mark.native
def test_a_run_trains_the_same_whatever_the_threads_do(tiny_data, monkeypatch):
    """Losses bit for bit: with PyTorch on 1 or 2 threads, and with the governor changing the
    kernels' count every few steps."""
    from mnist_lab.training import threads

    cfg = TrainConfig(epochs=1, batch_size=32, device="cpu", engine="cpu-native")
    threads_before = torch.get_num_threads()
    try:
        runs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            runs.append(train(LAB5, cfg, tiny_data).losses)
        changes = []
        monkeypatch.setattr(threads, "WINDOW_S", 0.0)  # decide after every step
        monkeypatch.setattr(threads.ThreadGovernor, "_decide",
                            lambda self: (changes.append(self.n), self._use(1 + self.n % 2)))
        runs.append(train(LAB5, cfg, tiny_data).losses)
    finally:
        torch.set_num_threads(threads_before)
    assert len(changes) >= 10
    assert runs[0] == runs[1] == runs[2]
    assert len(runs[0]) == -(-len(tiny_data.x_train) // 32)
