"""Configs and job specs under fuzzing (issue 21): whatever a dict or a JSON document holds,
decoding and validation either accept it whole or refuse it with a ConfigError (a ValueError
naming the field), never another exception; what they accept then trains without any other
exception; and a run whose loss or accuracy is not finite is never called finished. The
1,000-case campaigns are bench/bench_fuzz_specs.py; here, at most 200 examples a property."""
from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mnist_lab import codec
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.lab.experiments import CompareConfig, SweepConfig, run_single, summarize_over_seeds
from mnist_lab.lab.lessons import LESSONS, LessonConfig
from mnist_lab.nets.model import ModelConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.jobs import JobSpec, execute, lesson_spec
from mnist_lab.training.loop import TrainConfig

CONFIGS = [ModelConfig, TrainConfig, DataConfig, SweepConfig, CompareConfig, LessonConfig]
TINY = DataConfig(train_limit=64, test_limit=64)
CPU = TrainConfig(device="cpu")

# What a hostile document puts in a field: every JSON type, the edges of numbers, odd text.
HOSTILE = st.one_of(
    st.none(), st.booleans(),
    st.sampled_from([0, 1, -1, 2, 64, 2**31, 2**63, 2**63 - 1, 2**70, -2**70, 10**30]),
    st.integers(),
    st.sampled_from([0.0, -0.0, 1e-300, 0.5, 1.5, 1e30, 1e308, math.nan, math.inf, -math.inf]),
    st.floats(),
    st.sampled_from(["", "\x00", "cnn", "fc", "gap", "same", "mnist", "cifar10", "auto", "cpu", "cuda:7", "adam",
                     "é中文", "../../etc/passwd", "a" * 5000, "NaN"]),
    st.text(max_size=20),
    st.sampled_from([[], [1], [3, 5], [-1], [2**70], [1.5], ["x"], [None], [[1]], [1] * 5000, {}, {"type": "conv"},
                     {"type": "conv", "channels": 8}, {"kind": "fc"}]),
    st.lists(st.integers(-3, 300), max_size=20),
)

# Plausible values per field name, so that many draws are accepted and the checks behind the
# type checks are reached too.
PLAUSIBLE = {
    "kind": ["cnn", "fc"], "conv_channels": [[10, 20], [8], [4, 8, 16]], "kernel_size": [1, 3, 5, 7],
    "padding": ["valid", "same"], "dropout": [0.0, 0.5, 0.99], "hidden": [[], [50], [32, 16]],
    "in_channels": [1, 3], "image_size": [28, 32], "n_classes": [10], "head": ["fc", "gap", "gap-fc"],
    "blocks": [[], [{"type": "conv", "channels": 8}]], "epochs": [1, 2], "batch_size": [16, 64],
    "optimizer": ["sgd", "adam"], "lr": [0.01, 1.0, 10.0], "momentum": [0.0, 0.9, 0.99], "seed": [0, 2**63 - 1],
    "device": ["auto", "cpu"], "eval_batch_size": [1, 1000], "progress_every_s": [0, 0.25], "engine": ["auto", "plain"],
    "dataset": ["mnist", "fashion-mnist", "cifar10"], "normalize": ["dataset", "none"],
    "train_limit": [None, 64, 60000], "test_limit": [None, 64], "permutation_seed": [0, 2**63 - 1],
    "conv_layers": [[1, 2], [3]], "kernel_sizes": [[3, 5]], "hidden_units": [[0], [0, 32]], "seeds": [1, 3],
    "base_channels": [4, 16], "name": list(LESSONS),
}


def field_value(name: str) -> st.SearchStrategy:
    plausible = st.sampled_from(PLAUSIBLE[name]) if name in PLAUSIBLE else st.booleans()
    return st.one_of(plausible, plausible, HOSTILE)


def config_dict(cls) -> st.SearchStrategy:
    """A dict for `cls`: any subset of its fields, each plausible or hostile, now and then an unknown one."""
    fields = {f.name: field_value(f.name) for f in dataclasses.fields(cls) if f.init}
    return st.fixed_dictionaries({}, optional={**fields, "surprise": HOSTILE})


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_random_config_dict_is_a_valid_config_or_a_config_error(cls, data):
    raw = data.draw(config_dict(cls))
    try:
        cfg = codec.from_dict(cls, copy.deepcopy(raw))
        cfg.validate()
    except ConfigError:  # never another ValueError (a JSONDecodeError, say)
        return
    assert codec.from_json(cls, codec.to_json(cfg)) == cfg  # what is accepted survives storing whole


# ------------------------------------------------------------------------------------ job specs

def real_specs() -> list[JobSpec]:
    specs = [JobSpec("train", CPU, TINY, model=PRESETS[name].model) for name in ("lab5", "tiny-fc", "resnet-small")]
    specs.append(JobSpec("sweep", CPU, TINY, sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=1)))
    specs.append(JobSpec("compare", CPU, TINY, compare=CompareConfig(seeds=1)))
    specs += [lesson_spec(LessonConfig(name=name, seeds=1, epochs=1, train_limit=64, test_limit=64), device="cpu")
              for name in LESSONS]
    return specs


BASES = [json.loads(s.to_json()) for s in real_specs()]


def places(node, path=()):
    """The path of every value inside a JSON value, the value itself first."""
    yield path
    if isinstance(node, dict):
        for k, v in node.items():
            yield from places(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from places(v, path + (i,))


def put(doc, path, value):
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        node = node[key]
    if value is _DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


_DELETE = object()


@st.composite
def fuzzed_spec(draw) -> str:
    """A real spec's JSON with 1 to 3 mutations: a value deleted, replaced, retyped, nested, made huge or repeated."""
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(places(doc))))
        node = doc
        for key in path:
            node = node[key]
        how = draw(st.sampled_from(["delete", "replace", "replace", "nest", "huge", "repeat", "retype"]))
        if how == "delete" and path:
            value = _DELETE
        elif how == "nest":
            value = node
            for _ in range(draw(st.sampled_from([1, 30]))):
                value = [value]
        elif how == "huge":
            value = draw(st.sampled_from([2**64, -2**64, 10**300, 1e308, -1e308]))
        elif how == "repeat":
            value = [node] * draw(st.sampled_from([2, 17, 300]))
        elif how == "retype":
            value = json.dumps(node) if not isinstance(node, str) else {"text": node}
        else:
            value = copy.deepcopy(draw(HOSTILE))  # a shared example ([1] * 5000): a later mutation must not change it
        doc = put(doc, path, value)
    return json.dumps(doc)


def accept(spec: JobSpec) -> None:
    """What the app (submit) and a worker do with a spec before any data loads."""
    spec.validate()
    spec.preflight()
    assert spec.runs_total() >= 1
    assert isinstance(spec.title, str)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=fuzzed_spec())
def test_a_fuzzed_job_spec_is_accepted_whole_or_refused_with_a_config_error(text):
    try:
        spec = JobSpec.from_json(text)
        accept(spec)
    except ConfigError:  # never another ValueError (a JSONDecodeError, say)
        return
    assert JobSpec.from_json(spec.to_json()) == spec


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_any_text_is_a_spec_or_a_config_error(text):
    try:
        accept(JobSpec.from_json(text))
    except ConfigError:
        pass


# ------------------------------------------------------------------------------------ the issue's examples

def spec_text(**changes) -> str:
    """The JSON of a small 'train' spec with `changes` ({'data.train_limit': {}}) made to it."""
    doc = json.loads(JobSpec("train", CPU, TINY, model=PRESETS["lab5"].model).to_json())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = doc
        for key in parents:
            node = node[key]
        node[last] = value
    return json.dumps(doc)


@pytest.mark.parametrize("text, field", [
    ("[]", "job"), ("{}", "job"), ("[" * 100_000, "job"), ('{"a":' * 100_000, "job"), ("", "job"),
    ("1" * 10_000, "job"), ("null", "job"), ('"train"', "job"),
    (spec_text(**{"data.train_limit": {}}), "job.data.train_limit"),
    (spec_text(**{"data.dataset": 5}), "job.data.dataset"),
    (spec_text(**{"data.train_limit": 2**70}), "train_limit"),
    (spec_text(**{"data.train_limit": 64.0}), "job.data.train_limit"),  # a float where a whole number belongs
    (spec_text(**{"data.train_limit": True}), "job.data.train_limit"),  # a bool is not a number
    (spec_text(**{"train.epochs": 2**70}), "epochs"),
    (spec_text(**{"train.batch_size": -1}), "batch_size"),
    (spec_text(**{"train.seed": -1}), "seed"),
    (spec_text(**{"train.seed": 2**64}), "seed"),
    (spec_text(**{"train.lr": 1e308}), "lr"),
    (spec_text(**{"train.lr": -0.0}), "lr"),
    (spec_text(**{"train.device": "cpu\x00"}), "device"),
    (spec_text(**{"model.blocks": [{"type": "conv"}]}), "job.model.blocks[0]"),  # a block without channels
    (spec_text(**{"model.hidden": [50] * 100_000}), "hidden"),
    (spec_text(**{"model.conv_channels": [8] * 10_000}), "conv_channels"),
    (spec_text(**{"kind": 5}), "job.kind"),
    (spec_text(**{"kind": "sweep"}), "sweep"),  # a sweep job without its sweep
    (spec_text(**{"kind": "lesson", "lesson": {}}), "model"),  # a lesson job that also carries a network
    (spec_text(**{"label": "x" * 10_000}), "label"),
    (spec_text(**{"label": "a\x00b"}), "label"),
    (spec_text(**{"data.data_dir": "a" * 5000}), "data_dir"),  # was OSError (name too long) when loading
    (spec_text(**{"data.data_dir": "d/" + "a" * 300}), "data_dir"),
    (spec_text(**{"data.data_dir": "a\x00b"}), "data_dir"),
])
def test_each_hostile_spec_of_the_issue_is_one_config_error(text, field):
    with pytest.raises(ConfigError) as caught:
        accept(JobSpec.from_json(text))
    assert caught.value.field == field
    assert str(caught.value)  # one sentence, rendered


def test_a_document_over_the_size_cap_is_refused_before_it_is_parsed():
    text = spec_text(**{"model.hidden": [50] * 400_000})
    with pytest.raises(ConfigError, match="characters of JSON") as caught:
        JobSpec.from_json(text)
    assert caught.value.field == "job" and len(repr(caught.value.value)) < 100  # the refusal does not carry it all
    assert len(JobSpec("train", CPU, TINY, model=PRESETS["vgg16-cifar"].model).to_json()) < 10_000


def test_sweep_seeds_and_values_are_capped():
    for sweep in (SweepConfig(seeds=10**6), SweepConfig(conv_layers=(1,) * 1000), SweepConfig(kernel_sizes=(3,) * 17)):
        with pytest.raises(ConfigError):
            accept(JobSpec("sweep", CPU, TINY, sweep=sweep))
    with pytest.raises(ConfigError) as caught:
        accept(JobSpec("compare", CPU, TINY, compare=CompareConfig(seeds=2**70)))
    assert caught.value.field == "seeds"


def test_a_lesson_spec_whose_dataset_is_unknown_is_a_config_error_not_a_key_error():
    spec = lesson_spec(LessonConfig(name="shuffle", seeds=1), device="cpu")
    for dataset in ("", "imagenet", 5):
        broken = dataclasses.replace(spec, data=dataclasses.replace(spec.data, dataset=dataset))
        with pytest.raises(ConfigError) as caught:
            accept(JobSpec.from_json(json.dumps(json.loads(broken.to_json()))))
        assert caught.value.field in ("dataset", "job.data.dataset")


def test_a_lesson_spec_whose_data_is_another_dataset_than_its_lesson_is_refused():
    spec = lesson_spec(LessonConfig(name="shuffle", dataset="fashion-mnist", seeds=1), device="cpu")
    accept(spec)
    with pytest.raises(ConfigError) as caught:
        accept(dataclasses.replace(spec, data=dataclasses.replace(spec.data, dataset="mnist")))
    assert caught.value.field == "data.dataset"


def test_a_spec_built_in_code_with_wrong_parts_is_refused_by_validate():
    model = PRESETS["tiny-fc"].model
    for spec in (JobSpec("train", None, TINY, model=model), JobSpec("train", CPU, {"dataset": "mnist"}, model=model),
                 JobSpec("train", CPU, TINY, model={"kind": "fc"}), JobSpec(["train"], CPU, TINY, model=model),
                 JobSpec("train", CPU, TINY, model=model, label=None),
                 JobSpec("train", CPU, TINY, model=model, sweep=SweepConfig())):
        with pytest.raises(ConfigError):
            spec.validate()


def test_the_api_refuses_a_huge_limit_before_any_data_loads():
    with pytest.raises(ConfigError, match="train_limit"):
        run_single(PRESETS["tiny-fc"].model, CPU, DataConfig(train_limit=2**70))
    with pytest.raises(ConfigError, match="test_limit"):
        run_single(PRESETS["tiny-fc"].model, CPU, DataConfig(test_limit=10**30))


# ------------------------------------------------------------------------------------ what is accepted, runs

@pytest.mark.parametrize("spec", [
    JobSpec("train", TrainConfig(device="cpu", seed=2**63 - 1, batch_size=1, eval_batch_size=1, progress_every_s=0),
            DataConfig(train_limit=8, test_limit=8, permute_pixels=True, permutation_seed=2**63 - 1),
            model=PRESETS["tiny-fc"].model),
    JobSpec("train", TrainConfig(device="cpu", batch_size=64, optimizer="adam", lr=10), TINY,
            model=dataclasses.replace(PRESETS["tiny-fc"].model, dropout=0.99, hidden=(4096,))),
    JobSpec("train", TrainConfig(device="cpu", shuffle=False, sort_by_label=True, augment=True), TINY,
            model=PRESETS["lab5"].model),
    JobSpec("sweep", TrainConfig(device="cpu"), TINY,
            sweep=SweepConfig(conv_layers=(1, 4), kernel_sizes=(1, 7), hidden_units=(0,), seeds=1, base_channels=1)),
], ids=["edges", "adam-lr-10", "sorted-augmented", "sweep-edges"])
def test_a_spec_at_the_edges_that_validates_also_trains(tmp_path, mnist_raw, spec):
    spec = JobSpec.from_json(spec.to_json())
    accept(spec)
    store = ResultStore(tmp_path / "r.sqlite")
    result = execute(spec, store)
    store.close()
    runs = [result] if hasattr(result, "run_id") else result.results
    assert runs and all(r.status in ("finished", "diverged") for r in runs)
    for r in runs:
        if r.status == "finished":
            assert all(math.isfinite(x) for e in r.epochs for x in (e.train_loss, e.test_loss, e.test_acc))


def test_a_run_that_blows_up_ends_diverged_never_finished(tmp_path, mnist_raw):
    """A learning rate validate() accepts (10) that blows a wide FC net up: its runs end
    'diverged', and the comparison neither averages them nor reads anything into a NaN."""
    fc = ModelConfig(kind="fc", conv_channels=(), hidden=(256, 256))
    train = TrainConfig(device="cpu", lr=10, momentum=0.9, batch_size=16, engine="plain")
    spec = JobSpec("compare", train, DataConfig(train_limit=2000, test_limit=64),
                   compare=CompareConfig(fc=fc, seeds=1))
    accept(JobSpec.from_json(spec.to_json()))
    store = ResultStore(tmp_path / "r.sqlite")
    result = execute(spec, store)
    rows = store.runs()
    store.close()
    by_model = {(r.model_cfg.kind, r.data_cfg.permute_pixels): r.status for r in result.results}
    assert by_model[("fc", False)] == by_model[("fc", True)] == "diverged"
    assert all(math.isfinite(x) for r in result.results for x in r.losses)  # those before it, kept and finite
    assert sorted(rows["status"]) == ["diverged", "diverged", "finished", "finished"]
    assert set(result.summary["model"]) == {"CNN"} and result.summary["mean"].map(math.isfinite).all()
    assert "nan" not in result.reading.lower()


def test_a_finished_run_with_a_nan_accuracy_is_not_averaged():
    import pandas as pd

    table = pd.DataFrame({"cell": ["a", "a", "a"], "test_acc": [0.9, math.nan, 0.8],
                          "status": ["finished", "finished", "diverged"]})
    summary = summarize_over_seeds(table, ["cell"])
    assert summary["n"].tolist() == [1] and summary["mean"].tolist() == [0.9]
    assert summary["diverged"].tolist() == [1]
