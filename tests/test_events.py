"""Training events: plain data that survives JSON (tensors as safetensors bytes), decoded strictly;
the one Recorder turns them into the store's rows, so events sent from another process record
the same run as events recorded in place; the lab only emits them."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_lab import codec
from mnist_lab.data.datasets import DataConfig, prepare_data
from mnist_lab.errors import ConfigError
from mnist_lab.i18n import render_stored
from mnist_lab.lab.experiments import run_single
from mnist_lab.nets.model import ModelConfig, build_model
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore
from mnist_lab.training import events as ev
from mnist_lab.training.events import Iterations
from mnist_lab.training.loop import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
LAB5 = PRESETS["lab5"].model


def over_the_wire(event: ev.Event) -> ev.Event:
    """What another process receives: the event as JSON text, decoded."""
    return ev.from_dict(json.loads(json.dumps(ev.to_dict(event))))


def same(a: ev.Event, b: ev.Event) -> bool:
    if a != b or type(a) is not type(b):
        return False
    if isinstance(a, ev.RunEnded):
        for x, y in ((a.weights, b.weights), ({"p": a.permutation} if a.permutation is not None else None,
                                                {"p": b.permutation} if b.permutation is not None else None)):
            if (x is None) != (y is None):
                return False
            if x is not None and (x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in x)):
                return False
    return True


@pytest.fixture(scope="module")
def permuted(mnist_raw):
    return prepare_data(DataConfig(train_limit=256, test_limit=300, permute_pixels=True), "cpu", raw=mnist_raw)


def test_every_event_of_a_run_survives_json_whole(permuted):
    events = []
    result = train(LAB5, TrainConfig(epochs=2, device="cpu", progress_every_s=0), permuted,
                   on_progress=events.append, label="my run")
    assert [e.kind for e in events][:2] == ["start", "iterations"] and events[-1].kind == "end"
    for event in events:
        assert same(over_the_wire(event), event), event
    start, end = events[0], over_the_wire(events[-1])
    assert codec.from_dict(ModelConfig, start.model) == LAB5 and start.label == "my run"
    assert codec.from_dict(TrainConfig, start.train) == result.train_cfg
    assert codec.from_dict(DataConfig, start.data) == permuted.config
    assert (start.engine, start.params, start.steps_per_epoch) == (result.engine, result.params, 4)
    assert (end.status, end.epochs_done, end.final_test_acc) == ("finished", 2, result.final_test_acc)
    assert torch.equal(end.permutation, permuted.permutation)
    assert end.weights.keys() == build_model(LAB5).state_dict().keys()
    assert all(torch.equal(end.weights[k], result.state_dict[k]) for k in end.weights)


floats = st.floats(allow_nan=False, allow_infinity=False, width=32)
common = dict(run_id=st.text(min_size=1, max_size=20), epoch=st.integers(0, 1000), step=st.integers(0, 10**6),
              total_steps=st.integers(0, 10**6), elapsed_s=floats)
any_event = st.one_of(
    st.builds(ev.Iterations, **common, first_iteration=st.integers(1, 10**6),
              losses=st.lists(floats, max_size=50).map(tuple), eta_s=st.none() | floats),
    st.builds(ev.EpochEnded, **common, eta_s=st.none() | floats,
              metrics=st.builds(ev.EpochMetrics, st.integers(1, 1000), floats, floats, floats, floats)),
    st.builds(ev.RunEnded, **common, status=st.sampled_from(["finished", "stopped", "diverged", "failed"]),
              seconds=floats, epochs_done=st.none() | st.integers(0, 1000), final_test_acc=st.none() | floats,
              diverged_at=st.none() | st.integers(1, 10**6), message=st.text(max_size=50),
              weights=st.none() | st.dictionaries(st.sampled_from(["a.weight", "b.bias"]),
                                                  st.lists(floats, min_size=1, max_size=8).map(torch.tensor)),
              permutation=st.none() | st.permutations(range(16)).map(torch.tensor)),
    st.builds(ev.RunStarted, **common, model=st.just(ev.config_dict(LAB5)),
              train=st.just(ev.config_dict(TrainConfig())), data=st.just(ev.config_dict(DataConfig())),
              label=st.text(max_size=30), engine=st.text(max_size=10),
              device=st.text(max_size=10), params=st.integers(0, 10**9), steps_per_epoch=st.integers(0, 10**6),
              started_at=st.text(max_size=30), data_source=st.text(max_size=30), experiment=st.text(max_size=10),
              group_id=st.text(max_size=30)))


@settings(max_examples=150, deadline=None)
@given(any_event)
def test_any_event_round_trips_through_json(event):
    assert same(over_the_wire(event), event)


@pytest.mark.parametrize("data, field", [
    ("not an event", "kind"),
    ({"kind": "begin", "run_id": "r"}, "kind"),
    ({"kind": ["start"]}, "kind"),
    ({"kind": "iterations", "run_id": "r", "epoch": 1, "step": 1, "total_steps": 4}, "first_iteration"),
    ({"kind": "iterations", "run_id": "r", "epoch": 1, "step": 1, "total_steps": 4, "first_iteration": 1,
      "losses": "0.5"}, "event.losses"),
    ({"kind": "iterations", "run_id": "r", "epoch": "1", "step": 1, "total_steps": 4, "first_iteration": 1,
      "losses": []}, "event.epoch"),
    ({"kind": "iterations", "run_id": "r", "epoch": 1, "step": 1, "total_steps": 4, "first_iteration": 1,
      "losses": [], "loss": 2}, "event"),
    ({"kind": "epoch", "run_id": "r", "epoch": 1, "step": 1, "total_steps": 4, "metrics": [1, 2, 3, 4, 5]},
     "event.metrics"),
    ({"kind": "end", "run_id": "r", "epoch": 1, "step": 1, "total_steps": 4, "status": "finished", "seconds": 1.0,
      "weights": "not base64 safetensors"}, "event.weights"),
    ({"kind": "end", "run_id": "r", "epoch": 1, "step": 1, "total_steps": 4, "status": "finished", "seconds": 1.0,
      "permutation": 7}, "event.permutation"),
])
def test_anything_else_is_a_config_error_naming_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        ev.from_dict(data)
    assert err.value.field == field


def test_a_start_with_configs_that_are_not_objects_is_refused():
    start = ev.RunStarted(run_id="r", epoch=1, step=0, total_steps=4, model=ev.config_dict(LAB5),
                          train=ev.config_dict(TrainConfig()), data=ev.config_dict(DataConfig()), label="",
                          engine="plain", device="cpu", params=1, steps_per_epoch=4, started_at="")
    with pytest.raises(ConfigError) as err:
        ev.from_dict({**ev.to_dict(start), "train": "epochs=1"})
    assert err.value.field == "train"


def test_events_sent_from_elsewhere_record_the_same_run(tmp_path, mnist_raw, permuted):
    """Recording the events in place, or after they crossed JSON (as from a Ray worker), gives the
    same rows and the same kept weights."""
    here, there = ResultStore(tmp_path / "here.sqlite"), ResultStore(tmp_path / "there.sqlite")
    sent = []
    result = run_single(LAB5, TrainConfig(epochs=2, device="cpu"), permuted.config, record=Recorder(here),
                        on_progress=lambda e: sent.append(json.dumps(ev.to_dict(e))), data=permuted,
                        experiment="sweep", group_id="g1")
    recorder = Recorder(there)
    for text in sent:
        recorder(ev.from_dict(json.loads(text)))
    for store in (here, there):
        [row] = store.runs().itertuples()
        assert (row.run_id, row.status, row.experiment, row.group_id, row.epochs_done) == (
            result.run_id, "finished", "sweep", "g1", 2)
        assert (row.engine, row.params, row.steps_per_epoch, row.permute_pixels) == (
            result.engine, result.params, 4, 1)
        assert row.final_test_acc == pytest.approx(result.final_test_acc)
        assert store.iterations()["loss"].tolist() == pytest.approx(result.losses, rel=1e-6)
        assert store.iterations()["epoch"].tolist() == [1] * 4 + [2] * 4
        assert store.epochs()["test_acc"].tolist() == pytest.approx([m.test_acc for m in result.epochs])
        kept = store.load_weights(result.run_id)
        assert kept.model_cfg == LAB5 and kept.data_cfg == permuted.config and kept.status == "finished"
        assert torch.equal(kept.permutation, permuted.permutation)
        assert all(torch.equal(kept.state_dict[k], result.state_dict[k]) for k in result.state_dict)
    assert here.runs().drop(columns="started_at").equals(there.runs().drop(columns="started_at"))


def test_a_run_that_fails_midway_is_recorded_failed_keeping_what_it_did(tmp_path, tiny_data):
    store = ResultStore(tmp_path / "r.sqlite")

    def boom(event):
        if event.kind == "epoch":
            raise RuntimeError("the executor lost its connection")
    with pytest.raises(RuntimeError):
        run_single(LAB5, TrainConfig(epochs=2, device="cpu"), tiny_data.config, record=Recorder(store),
                   on_progress=boom, data=tiny_data)
    [row] = store.runs().itertuples()
    assert (row.status, row.epochs_done) == ("failed", 1)  # the epoch was recorded before the failure
    assert len(store.iterations()) == 8 and not store.inspectable([row.run_id])


def test_only_the_recorder_writes_runs():
    """The experiments, lessons and service hold no store for writing: only runs/recorder.py calls
    the store's run-writing methods."""
    writes = {"start_run", "add_iterations", "add_epoch", "finish_run", "save_weights"}
    writers = set()
    for path in sorted((ROOT / "mnist_lab").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in writes:
                owner = node.func.value
                if isinstance(owner, ast.Attribute) and owner.attr == "store" or \
                        isinstance(owner, ast.Name) and owner.id == "store":
                    writers.add(path.relative_to(ROOT).as_posix())
    assert writers == {"mnist_lab/runs/recorder.py"}


def test_a_diverging_run_sends_no_empty_iterations_event(mnist_raw):
    """The loss that diverges is not sent: a chunk left empty by it is no event at all."""
    data = prepare_data(DataConfig(train_limit=2000, test_limit=100), device="cpu", raw=mnist_raw)
    model = ModelConfig(kind="fc", conv_channels=(), hidden=(256, 256))
    events = []
    result = train(model, TrainConfig(lr=10.0, momentum=0.9, batch_size=16, engine="plain", progress_every_s=0),
                   data, on_progress=events.append)
    assert result.status == "diverged"
    chunks = [e.losses for e in events if isinstance(e, Iterations)]
    assert all(chunks) and sum(len(c) for c in chunks) == len(result.losses) == result.diverged_at - 1
    assert "training diverged" in result.message and render_stored(result.message_msg, "en") == result.message
