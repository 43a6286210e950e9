"""Validation, driven by random configs (hypothesis): every field of every config either passes
and trains, or is refused with a ConfigError naming the field, the value given and what to
change; nothing else escapes, and a run that reports 'finished' never holds a NaN."""
from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mnist_lab.data import datasets as data
from mnist_lab.errors import ConfigError
from mnist_lab.lab.experiments import CompareConfig, SweepConfig
from mnist_lab.nets.model import ModelConfig
from mnist_lab.training.engines import ENGINE_NAMES
from mnist_lab.training.loop import TrainConfig, train

FIX = re.compile(r"\b(use|choose|give|set|lower|leave|pick|write|put|try)\b", re.IGNORECASE)
NAN = float("nan")


# What a link, a form or a careless caller might put in a field, whatever its type.
JUNK = (None, True, False, NAN, float("inf"), -1, 0, 1.5, 2**70, "", "8", [8], (), ("8",))

# field -> (usable values, wrong ones besides JUNK). "Usable" values may still be refused
# together (a kernel that does not fit, conv channels on an FC net, a batch larger than the data).
MODEL_FIELDS = dict(
    kind=(st.sampled_from(["cnn", "fc"]), "rnn"),
    conv_channels=(st.lists(st.integers(1, 6), min_size=0, max_size=3).map(tuple), (0,), (600,), (4,) * 5, (True,), 10),
    kernel_size=(st.integers(1, 7), 10, 4.5),
    padding=(st.sampled_from(["valid", "same"]), "full"),
    pool_before_relu=(st.booleans(),),
    batch_norm=(st.booleans(),),
    dropout=(st.floats(0.0, 0.5), 1.0, -0.5),
    hidden=(st.lists(st.integers(1, 16), max_size=3).map(tuple), (0,), (5000,), (8,) * 9),
    softmax_before_loss=(st.booleans(),),
    in_channels=(st.just(1), 3),
    image_size=(st.just(28), 32, 300),
    n_classes=(st.just(10), 5, 2000),
)
TRAIN_FIELDS = dict(
    epochs=(st.just(1), 1001),
    batch_size=(st.sampled_from([16, 32, 64]), 65),  # 65: more than the 64 images
    optimizer=(st.sampled_from(["sgd", "adam"]), "rmsprop"),
    lr=(st.one_of(st.floats(1e-4, 0.1), st.floats(5.0, 10.0)), 11.0),  # 5 to 10: often diverges
    momentum=(st.floats(0.0, 0.99), 1.0),
    seed=(st.integers(0, 2**63 - 1), 2**63),
    device=(st.just("cpu"), "cpu:1", "tpu", "cuda:99"),
    shuffle=(st.booleans(),),
    eval_batch_size=(st.integers(1, 100), 10**6),
    progress_every_s=(st.floats(0.0, 1.0),),
    # the engines that run a lone CPU run on the plain loop (the fast paths are checked against it
    # in test_engines.py; here they would only add their start-up cost to a thousand runs)
    engine=(st.sampled_from(["plain", "cuda-graph", "stacked"]), "turbo", *[e for e in ENGINE_NAMES if e != "plain"]),
)
DATA_FIELDS = dict(
    dataset=(st.just("mnist"), "emnist"),
    normalize=(st.sampled_from(list(data.NORMALIZATIONS)), "zscore"),
    train_limit=(st.one_of(st.none(), st.integers(16, 64)),),
    test_limit=(st.integers(16, 32),),
    permute_pixels=(st.booleans(),),
    permutation_seed=(st.integers(0, 2**63 - 1), 2**63, -5),
    data_dir=(st.none(), 3, b"/data"),
)


@st.composite
def configs(draw) -> tuple[ModelConfig, TrainConfig, data.DataConfig]:
    """A usable value in every field but up to three, which get a wrong or junk value."""
    everything = {**MODEL_FIELDS, **TRAIN_FIELDS, **DATA_FIELDS}
    broken = draw(st.sets(st.sampled_from(sorted(everything)), max_size=3))

    def fields(spec: dict) -> dict:
        return {name: draw(st.sampled_from([*wrong, *JUNK])) if name in broken else draw(usable)
                for name, (usable, *wrong) in spec.items()}
    model = fields(MODEL_FIELDS)
    if model["kind"] == "fc":  # an FC net's usable conv settings are none
        model.update({k: v for k, v in (("conv_channels", ()), ("batch_norm", False)) if k not in broken})
    elif model["kind"] == "cnn" and model["conv_channels"] == () and "conv_channels" not in broken:
        model["conv_channels"] = (4,)
    return ModelConfig(**model), TrainConfig(**fields(TRAIN_FIELDS)), data.DataConfig(**fields(DATA_FIELDS))


def maybe(valid: st.SearchStrategy, *wrong) -> st.SearchStrategy:
    """A usable value, or one of `wrong`."""
    return st.one_of(valid, st.sampled_from(wrong))


@pytest.fixture(scope="module")
def small_raw(mnist_raw) -> data.RawSplits:
    """64 training and 64 test images: the runs that pass validation train in milliseconds (on
    one thread: a pool of threads costs more than it saves on such tiny nets, more so on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield data.RawSplits(mnist_raw.x_train[:64], mnist_raw.y_train[:64], mnist_raw.x_test[:64],
                         mnist_raw.y_test[:64], mnist_raw.source)
    torch.set_num_threads(threads)


def assert_explains(exc: ConfigError, *configs) -> None:
    """The refusal names a real field of one of `configs`, carries the very value given there,
    and says what to change."""
    owners = [c for c in configs if exc.field in {f.name for f in dataclasses.fields(c)}]
    assert owners, f"{exc.field!r} is no config field: {exc}"
    assert any(getattr(c, exc.field) is exc.value for c in owners), (exc.field, exc.value)
    assert exc.template.format(**exc.params) == str(exc)  # a catalog can render it from its parts
    assert FIX.search(str(exc)), f"no fix in: {exc}"


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfgs=configs())
def test_random_configs_train_or_are_refused_with_field_value_and_fix(small_raw, cfgs):
    model_cfg, train_cfg, data_cfg = cfgs
    try:
        data_cfg.validate()
        prepared = data.prepare_data(data_cfg, device="cpu", raw=small_raw)
        result = train(model_cfg, train_cfg, prepared)
    except ValueError as exc:
        assert isinstance(exc, ConfigError), f"{type(exc).__name__}: {exc}"
        assert_explains(exc, model_cfg, train_cfg, data_cfg)
        event(f"refused: {exc.field}")
        return
    event(f"trained: {result.status}")
    assert result.status in ("finished", "diverged")
    assert all(math.isfinite(loss) for loss in result.losses)  # a NaN is never kept as a loss
    metrics = [v for m in result.epochs for v in (m.train_loss, m.test_loss, m.test_acc)]
    assert all(math.isfinite(v) for v in metrics)
    if result.status == "finished":
        assert len(result.losses) == result.steps_per_epoch * train_cfg.epochs and len(result.epochs) == 1
    else:
        # the first non-finite loss is not kept; a test loss that went bad names the last iteration trained
        after = result.message.startswith("The test loss")
        assert result.diverged_at == len(result.losses) + (0 if after else 1)
        assert f"iteration {result.diverged_at}" in result.message


@settings(max_examples=300, deadline=None)
@given(sweep=st.builds(SweepConfig, conv_layers=maybe(st.just((1, 2)), (5,), [1], *JUNK),
                       kernel_sizes=maybe(st.just((3,)), (0,), (11,), *JUNK),
                       hidden_units=maybe(st.just((0,)), (-1,), *JUNK), seeds=maybe(st.integers(1, 5), 1000, *JUNK),
                       base_channels=maybe(st.just(4), 1000, *JUNK), padding=maybe(st.just("same"), "full", *JUNK),
                       pool_before_relu=maybe(st.booleans(), *JUNK)),
       compare=st.builds(CompareConfig, seeds=maybe(st.integers(1, 5), *JUNK),
                         permutation_seed=maybe(st.integers(0, 2**63 - 1), 2**63, *JUNK),
                         fc=maybe(st.none(), ModelConfig(), *JUNK[1:]), cnn=maybe(st.just(ModelConfig()), None, 3)))
def test_sweep_and_compare_configs_are_refused_with_field_value_and_fix(sweep, compare):
    for cfg, check in ((sweep, sweep.cells), (compare, compare.models)):
        try:
            check()
        except ValueError as exc:
            assert isinstance(exc, ConfigError), f"{type(exc).__name__}: {exc}"
            assert_explains(exc, cfg)


def test_importing_the_core_never_imports_streamlit():
    """`mnist_lab` is the core: every module of it imports without Streamlit (STYLE.md)."""
    root = Path(__file__).resolve().parents[1]
    modules = sorted(".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
                     for p in (root / "mnist_lab").rglob("*.py") if p.stem != "__main__")
    code = (f"import importlib, sys\nfor m in {modules!r}:\n    importlib.import_module(m)\n"
            "print(sorted(k for k in sys.modules if k.split('.')[0] == 'streamlit'))")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]" and len(modules) >= 12
