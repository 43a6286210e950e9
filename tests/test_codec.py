"""The one config codec: every config dataclass round-trips through dict, JSON and a store row
(hypothesis, over the field types themselves), and anything else decodes to a ConfigError that
names the field, never another exception."""
from __future__ import annotations

import dataclasses
import json
import types
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mnist_lab import codec
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.lab.experiments import CompareConfig, SweepConfig
from mnist_lab.lab.lessons import LessonConfig
from mnist_lab.nets.blocks.base import BLOCK_TYPES, Block
from mnist_lab.nets.blocks.conv import ConvStage
from mnist_lab.nets.model import ModelConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import RENAMED
from mnist_lab.service.jobs import JobSpec
from mnist_lab.training.loop import TrainConfig

CONFIGS = [ModelConfig, TrainConfig, DataConfig, SweepConfig, CompareConfig, LessonConfig, JobSpec]
ROW_CONFIGS = [ModelConfig, TrainConfig, DataConfig]  # the ones the runs table holds


def strategy(hint, row: bool = False) -> st.SearchStrategy:
    """Values of a field type (`row`: the values a results-store row can hold exactly: no empty
    text, which is a blank cell there, and no negative numbers in an 'a-b' list)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        values = st.one_of([strategy(a, row) for a in rest])
        return st.none() | values if len(rest) < len(args) else values
    if typing.get_origin(hint) is tuple:
        item = strategy(args[0], row) if not (row and args[0] is int) else st.integers(0, 10**6)
        return st.lists(item, max_size=4).map(tuple)
    if hint is Block:  # the base of the block types: any registered one
        return st.one_of([strategy(cls, row) for cls in BLOCK_TYPES.values()])
    if dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return st.builds(hint, **{f.name: strategy(hints[f.name], row) for f in dataclasses.fields(hint) if f.init})
    return {bool: st.booleans(), int: st.integers(-2**63, 2**63 - 1),
            float: st.floats(allow_nan=False, allow_infinity=False),
            str: st.text(min_size=1 if row else 0, max_size=12)}[hint]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_config_round_trips_through_dict_and_json(cls, data):
    cfg = data.draw(strategy(cls))
    assert codec.from_dict(cls, codec.to_dict(cfg)) == cfg
    assert codec.from_json(cls, codec.to_json(cfg)) == cfg
    assert codec.from_json(cls, json.dumps(json.loads(codec.to_json(cfg)))) == cfg  # lists, not tuples


@pytest.mark.parametrize("cls", ROW_CONFIGS, ids=lambda c: c.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_run_configs_round_trip_through_a_store_row(cls, data):
    cfg = data.draw(strategy(cls, row=True))
    assert codec.from_row(cls, codec.to_row(cfg, RENAMED), RENAMED) == cfg


def test_every_preset_round_trips_and_a_row_keeps_the_lab_form():
    for preset in PRESETS.values():
        assert codec.from_json(ModelConfig, codec.to_json(preset.model)) == preset.model
        assert codec.from_row(ModelConfig, codec.to_row(preset.model)) == preset.model
    row = codec.to_row(PRESETS["lab5"].model)
    assert row["conv_channels"] == "10-20" and row["hidden"] == "" and row["blocks"] == ""


def test_a_blank_cell_is_the_default_an_empty_one_an_empty_tuple():
    cfg = codec.from_row(ModelConfig, {"kind": "fc", "conv_channels": "", "hidden": "8-8", "kernel_size": 5.0,
                                       "batch_norm": 0, "dropout": 0, "head": float("nan")})
    assert cfg == ModelConfig(kind="fc", conv_channels=(), hidden=(8, 8))
    assert isinstance(cfg.kernel_size, int) and cfg.batch_norm is False and isinstance(cfg.dropout, float)


@pytest.mark.parametrize("text, field, words", [
    ('{"kind": "cnn", "colour": 1}', "ModelConfig", "no setting colour"),
    ('{"kernel_size": "5"}', "ModelConfig.kernel_size", "must be a whole number"),
    ('{"kernel_size": true}', "ModelConfig.kernel_size", "must be a whole number"),
    ('{"dropout": "0.5"}', "ModelConfig.dropout", "must be a number"),
    ('{"conv_channels": 10}', "ModelConfig.conv_channels", "must be a list"),
    ('{"conv_channels": [10, "x"]}', "ModelConfig.conv_channels[1]", "must be a whole number"),
    ('{"blocks": [{"channels": [8]}]}', "ModelConfig.blocks[0]", "block type"),
    ('{"blocks": [{"type": "lstm"}]}', "ModelConfig.blocks[0]", "block type"),
    ('{"blocks": [{"type": "conv", "channels": [8], "stride": 2}]}', "ModelConfig.blocks[0]", "no setting stride"),
    ('{"kind": null}', "ModelConfig.kind", "must be text"),
    ('[1, 2]', "ModelConfig", "object of settings"),
    ('{"kind": ', "ModelConfig", "not JSON"),
])
def test_decoding_refuses_with_a_config_error_naming_the_field(text, field, words):
    with pytest.raises(ConfigError) as caught:
        codec.from_json(ModelConfig, text)
    assert caught.value.field == field and words in str(caught.value)


def test_a_job_spec_names_the_nested_field():
    spec = json.loads(codec.to_json(JobSpec("compare", TrainConfig(), DataConfig(), compare=CompareConfig())))
    spec["compare"]["cnn"]["hidden"] = ["wide"]
    with pytest.raises(ConfigError) as caught:
        JobSpec.from_json(json.dumps(spec))
    assert caught.value.field == "job.compare.cnn.hidden[0]"


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20))
def test_any_json_value_decodes_or_is_a_config_error(value):
    for cls in (JobSpec, ModelConfig):
        try:
            codec.from_dict(cls, value)
        except ConfigError:
            pass
    for key in ("train", "model", "blocks"):  # the same values where nested configs are expected
        try:
            codec.from_dict(JobSpec, {"kind": "train", key: value})
        except ConfigError:
            pass


def test_a_block_type_field_must_match_its_class():
    data = codec.to_dict(ModelConfig(conv_channels=(), blocks=(ConvStage((8,)),)))
    data["blocks"][0]["type"] = "residual"
    with pytest.raises(ConfigError):  # a residual block has no 'kernel_size': refused, not half-built
        codec.from_dict(ModelConfig, data)
