"""Block types own their behaviour: every registered type (found by the registry, not listed
here) describes itself, builds exactly the layers its rows promise with a parameter formula
PyTorch agrees with, refuses bad settings naming the block, and round-trips through the codec.
A new block type module is checked by these tests without editing them."""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from mnist_lab import codec
from mnist_lab.errors import ConfigError
from mnist_lab.nets.blocks.base import BLOCK_TYPES, Block, register_block
from mnist_lab.nets.blocks.conv import ConvStage, conv_family
from mnist_lab.nets.model import ModelConfig, build_model, count_params, describe, summarize
from mnist_lab.nets.presets import PRESETS, cnn_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = [b for cls in BLOCK_TYPES.values() for b in cls.examples()]


def alone(block: Block, **kw) -> ModelConfig:
    """A network of this one block and the GAP-FC head, on MNIST-shaped input."""
    return ModelConfig(conv_channels=(), blocks=(block,), head="gap-fc", **kw)


def test_the_registry_holds_every_block_type_by_its_type_name():
    assert {"conv", "residual", "conv1x1"} <= set(BLOCK_TYPES)
    for name, cls in BLOCK_TYPES.items():
        assert issubclass(cls, Block) and cls.examples() and all(type(b) is cls for b in cls.examples())
        assert all(b.type == name for b in cls.examples())
        assert cls.__doc__ and cls.__module__.startswith("mnist_lab.nets.blocks.")


@pytest.mark.parametrize("block", EXAMPLES, ids=repr)
def test_each_block_builds_what_its_rows_promise(block):
    cfg = alone(block)
    cfg.validate()
    rows = summarize(cfg)
    model = build_model(cfg).eval()
    assert [name for name, _ in model.named_children()] == [r.name for r in rows]
    x = torch.randn(2, 1, 28, 28)
    for row, (name, layer) in zip(rows, model.named_children()):
        x = layer(x)
        assert tuple(x.shape[1:]) == row.output_shape, name
        assert sum(p.numel() for p in layer.parameters()) == row.params, name
        if row.params:  # the formula is arithmetic that gives the count PyTorch has
            left, right = row.formula.split(" = ")
            assert eval(left.replace("×", "*")) == int(right) == row.params, row.formula
    assert count_params(cfg) == count_params(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n]
    assert block.convolutions == len(convs)  # a projection shortcut is not counted in the depth
    assert block.has_batch_norm == any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_every_block_type_describes_itself_and_its_examples_apart():
    labels = [b.describe() for b in EXAMPLES]
    assert all(isinstance(s, str) and s.strip() and "\n" not in s for s in labels)
    assert len(set(labels)) == len(labels)  # blocks that differ get different labels
    net = ModelConfig(conv_channels=(), blocks=tuple(BLOCK_TYPES["conv"].examples()[:2]), hidden=(12,))
    assert describe(net) == "CNN k3[4-6]+BN k5[8]+FC 12"


@pytest.mark.parametrize("block", EXAMPLES, ids=repr)
def test_each_block_round_trips_through_the_codec(block):
    assert codec.from_json(Block, codec.to_json(block)) == block
    cfg = alone(block)
    assert codec.from_json(ModelConfig, codec.to_json(cfg)) == cfg
    assert codec.from_row(ModelConfig, codec.to_row(cfg)) == cfg


@pytest.mark.parametrize("data,fragment", [
    ({"type": "nope", "channels": 4}, "must name its block type as one of "),
    ({"channels": 4}, "must name its block type"),
    ({"type": "residual", "channels": 4, "colour": 1}, "no setting colour"),
    ({"type": "residual", "channels": "4"}, "channels must be a whole number"),
    ({"type": "conv", "channels": 4}, "channels must be a list"),
    ("conv", "must be an object of settings"),
])
def test_the_codec_refuses_a_wrong_block_with_a_config_error(data, fragment):
    with pytest.raises(ConfigError) as info:
        codec.from_dict(ModelConfig, {"conv_channels": [], "blocks": [data]})
    assert info.value.field.startswith("ModelConfig.blocks[0]") and fragment in str(info.value)


@pytest.mark.parametrize("block,fragment", [
    (ConvStage((4,), kernel_size=0), "Block 1 (conv): kernel size must be 1 to 9"),
    (ConvStage((4,), padding="full"), "Block 1 (conv): padding must be 'valid' or 'same'"),
    (ConvStage([4]), "Block 1 (conv): channels must be whole numbers"),
    (ConvStage((4,), batch_norm=1), "Block 1 (conv): batch_norm is a yes/no setting"),
    (BLOCK_TYPES["residual"](4, stride=True), "Block 1 (residual): stride must be 1"),
    (BLOCK_TYPES["residual"]((4,)), "Block 1 (residual): channels must be whole numbers"),
    (BLOCK_TYPES["residual"](4, shortcut="yes"), "Block 1 (residual): shortcut is a yes/no setting"),
    (BLOCK_TYPES["conv1x1"](600), "Block 1 (conv1x1): channels 600 must each be 1 to 512"),
    (BLOCK_TYPES["conv1x1"](4, relu=None), "Block 1 (conv1x1): relu is a yes/no setting"),
])
def test_each_block_refuses_its_own_bad_settings_naming_itself(block, fragment):
    cfg = alone(block)
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    assert info.value.field == "blocks" and info.value.value is cfg.blocks and fragment in str(info.value)
    assert info.value.template.startswith("Block {i} ({kind}): ")  # one msgid the catalogs translate whole


def test_the_sliders_family_is_a_constructor_of_conv_stages():
    stages = conv_family((10, 20), 5, "valid", pool_before_relu=True)
    assert stages == (ConvStage((10,), 5, "valid", pool_before_relu=True),
                      ConvStage((20,), 5, "valid", pool_before_relu=True))
    lab5 = PRESETS["lab5"].model
    assert lab5.stages() == stages
    as_blocks = replace(lab5, conv_channels=(), pool_before_relu=False, blocks=stages)
    assert summarize(as_blocks) == summarize(lab5)  # the same layers, names and formulas
    torch.manual_seed(0)
    a = build_model(lab5).state_dict()
    torch.manual_seed(0)
    b = build_model(as_blocks).state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert cnn_config(3, 3, batch_norm=True).stages() == conv_family((16, 32, 64), 3, "same", batch_norm=True)
    assert ModelConfig(kind="fc", conv_channels=(), hidden=(8,)).stages() == ()


def test_conv_layers_and_batch_norm_are_asked_of_the_blocks():
    assert PRESETS["resnet-small"].model.conv_layers == 13 and PRESETS["vgg16-cifar"].model.conv_layers == 13
    assert PRESETS["lab5"].model.conv_layers == 2 and not PRESETS["lab5"].model.has_batch_norm
    assert PRESETS["plain-small"].model.has_batch_norm and PRESETS["vgg16-cifar"].model.has_batch_norm


@settings(max_examples=40, deadline=None)
@given(blocks=st.lists(st.sampled_from(EXAMPLES), min_size=1, max_size=4).map(tuple),
       head=st.sampled_from(["fc", "gap", "gap-fc"]))
def test_any_block_list_is_counted_as_pytorch_counts_or_refused(blocks, head):
    cfg = ModelConfig(conv_channels=(), blocks=blocks, head=head)
    try:
        rows = summarize(cfg)
    except ConfigError as exc:  # an input left too small for a later block
        assert exc.field == "blocks" and "Block " in str(exc)
        return
    assert count_params(build_model(cfg)) == sum(r.params for r in rows) == count_params(cfg)
    assert codec.from_json(ModelConfig, codec.to_json(cfg)) == cfg


def test_register_block_refuses_a_taken_name_or_no_type_name():
    with pytest.raises(TypeError, match="taken"):
        @register_block
        @dataclass(frozen=True)
        class Other(Block):
            type: str = field(default="conv", init=False, repr=False)
    with pytest.raises(TypeError, match="fixed 'type' name"):
        @register_block
        @dataclass(frozen=True)
        class Nameless(Block):
            channels: int = 1
    assert BLOCK_TYPES["conv"] is ConvStage and "Nameless" not in {c.__name__ for c in BLOCK_TYPES.values()}


def _block_class_names() -> set[str]:
    return {cls.__name__ for cls in BLOCK_TYPES.values()}


def test_no_code_dispatches_on_block_types_by_isinstance():
    """Blocks answer for themselves: no `isinstance(x, ConvStage)` chains anywhere."""
    names, found = _block_class_names(), []
    for folder in ("mnist_lab", "app_lib", "app_pages"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" \
                        and len(node.args) == 2:
                    used = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)} | \
                        {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                    if used & (names | {"BLOCK_TYPES"}):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_a_block_list_field_is_typed_by_the_base_so_new_types_need_no_codec_change():
    assert {f.name: f.type for f in fields(ModelConfig)}["blocks"] == "tuple[Block, ...]"


@pytest.mark.parametrize("name", PRESETS)
def test_multiply_adds_are_counted_by_each_row_as_the_time_estimate_did(name):
    """throughput.forward_macs sums the rows' own `macs`; before, it sniffed the layer names (a conv or
    residual row: its parameters at every output position; a linear row: its parameters)."""
    from mnist_lab.training.throughput import forward_macs

    rows = summarize(PRESETS[name].model)
    sniffed = sum(r.params * math.prod(r.output_shape[1:]) if r.layer.startswith(("Conv2d", "Residual"))
                  else r.params if r.layer.startswith("Linear") else 0 for r in rows)
    assert forward_macs(PRESETS[name].model) == sum(r.macs for r in rows) == sniffed > 0
