"""Model configs: the four presets' exact parameter counts, the per-layer summary against the
built network, geometry refusals a student can act on, and the equal-parameter FC match."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from mnist_lab.nets.blocks.base import LayerRow
from mnist_lab.nets.blocks.conv import ConvStage
from mnist_lab.nets.blocks.conv1x1 import Conv1x1
from mnist_lab.nets.blocks.residual import Residual
from mnist_lab.nets.model import ModelConfig, build_model, count_params, describe, fc_params, match_fc_width, summarize
from mnist_lab.nets.presets import PRESETS, cnn_config, fc_config, get_preset

PINNED_PARAMS = {"lab5": 8490, "padded-16-32": 417482, "tiny-fc": 6442, "tiny-cnn": 6422,  # lab-spec.md
                 "cifar-course": 62006, "lenet-cifar": 121182, "vgg16-cifar": 14728266,  # lab-spec.md, week 2
                 # ours: 3x3 stem (16) + six residual blocks (16, 16, 32/2, 32, 64/2, 64) + Linear(64->10);
                 # plain-small is the same without the two 1x1 projection shortcuts (16->32, 32->64, with BN)
                 "resnet-small": 174986, "plain-small": 174986 - (32 * 16 + 64) - (64 * 32 + 128)}

# Configs whose summary is checked layer by layer against the built network.
SHAPE_CASES = {
    **{name: p.model for name, p in PRESETS.items()},
    "lab5+bn": ModelConfig(conv_channels=(10, 20), pool_before_relu=True, batch_norm=True),
    "tiny-cnn+dropout": ModelConfig(conv_channels=(6, 6), hidden=(50,), dropout=0.5),
    "3x k3 valid": cnn_config(3, 3, base_channels=4, padding="valid", hidden=(32, 16)),
    "4x k9 same": cnn_config(4, 9, padding="same"),
    "1x k1": cnn_config(1, 1, base_channels=2),
    "softmax": ModelConfig(softmax_before_loss=True),
    "fc+dropout": ModelConfig(kind="fc", conv_channels=(), hidden=(32, 16), dropout=0.2),
    # every block type and head of a block list
    "stages": ModelConfig(conv_channels=(), blocks=(ConvStage((4, 6), 3, "valid", batch_norm=True),
                                                    ConvStage((8,), 5, pool_before_relu=True),
                                                    ConvStage((8,), 3, pool=False)), hidden=(12,)),
    "residual": ModelConfig(conv_channels=(), blocks=(Residual(4), Residual(8, stride=2), Residual(8),
                                                      Residual(6, shortcut=False)), head="gap-fc", dropout=0.1),
    "1x1": ModelConfig(conv_channels=(), blocks=(ConvStage((8,)), Conv1x1(4), Conv1x1(6, relu=False))),
    "gap head": cnn_config(2, 3, base_channels=4, head="gap", batch_norm=True),
    "gap-fc head rgb": cnn_config(2, 3, base_channels=4, head="gap-fc", hidden=(8,), in_channels=3, image_size=32),
}


def layer_outputs(model: nn.Sequential, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """Per-example output shape of each named layer of a Sequential."""
    shapes = {}
    for name, layer in model.named_children():
        x = layer(x)
        shapes[name] = tuple(x.shape[1:])
    return shapes


# ------------------------------------------------------------------------- presets

def test_presets_are_the_four_lab_networks_then_week_two():
    assert list(PRESETS) == ["lab5", "padded-16-32", "tiny-fc", "tiny-cnn", "cifar-course", "lenet-cifar",
                             "vgg16-cifar", "resnet-small", "plain-small"]
    assert {p.dataset for p in PRESETS.values() if p.model.in_channels == 3} == {"cifar10"}
    assert all(p.dataset == "mnist" for p in PRESETS.values() if p.model.in_channels == 1)


@pytest.mark.parametrize("name", PINNED_PARAMS)
def test_preset_parameter_counts(name):
    cfg = get_preset(name).model
    model = build_model(cfg)
    assert count_params(cfg) == PINNED_PARAMS[name]  # by arithmetic, without building
    assert sum(p.numel() for p in model.parameters()) == PINNED_PARAMS[name]  # what PyTorch counts
    assert count_params(model) == PINNED_PARAMS[name]


@pytest.mark.parametrize("name,optimizer,lr,momentum,batch,normalize", [
    ("lab5", "sgd", 0.01, 0.5, 64, "mnist"),
    ("padded-16-32", "sgd", 0.001, 0.9, 128, "half"),
    ("tiny-fc", "sgd", 0.01, 0.5, 64, "mnist"),
    ("tiny-cnn", "sgd", 0.01, 0.5, 64, "mnist"),
    ("cifar-course", "sgd", 0.01, 0.9, 64, "half"),
])
def test_preset_training_settings(name, optimizer, lr, momentum, batch, normalize):
    p = get_preset(name)
    assert (p.optimizer, p.lr, p.momentum, p.batch_size, p.normalize) == (optimizer, lr, momentum, batch, normalize)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ValueError, match="Unknown preset 'lenet'. Choose one of: lab5, padded-16-32, tiny-fc, "
                                         "tiny-cnn, cifar-course"):
        get_preset("lenet")


def test_lab5_summary_rows():
    assert summarize(get_preset("lab5").model) == [
        LayerRow("conv1", "Conv2d(1→10, k5)", (10, 24, 24), 260, "10×(1×5×5) + 10 = 260"),
        LayerRow("pool1", "MaxPool2d(2)", (10, 12, 12), 0, "no parameters"),
        LayerRow("relu1", "ReLU", (10, 12, 12), 0, "no parameters"),
        LayerRow("conv2", "Conv2d(10→20, k5)", (20, 8, 8), 5020, "20×(10×5×5) + 20 = 5020"),
        LayerRow("pool2", "MaxPool2d(2)", (20, 4, 4), 0, "no parameters"),
        LayerRow("relu2", "ReLU", (20, 4, 4), 0, "no parameters"),
        LayerRow("flatten", "Flatten", (320,), 0, "20×4×4 = 320 features"),
        LayerRow("fc1", "Linear(320→10)", (10,), 3210, "320×10 + 10 = 3210"),
    ]


def test_lab5_order_is_conv_pool_relu():
    model = build_model(get_preset("lab5").model)
    kinds = [type(m) for m in model]
    assert kinds == [nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Conv2d, nn.MaxPool2d, nn.ReLU, nn.Flatten, nn.Linear]
    # the other CNNs use conv -> ReLU -> pool
    assert [type(m) for m in build_model(get_preset("tiny-cnn").model)][:3] == [nn.Conv2d, nn.ReLU, nn.MaxPool2d]


@pytest.mark.parametrize("name,flatten,fc_rows", [
    ("padded-16-32", 1568, [("fc1", "Linear(1568→256)", "1568×256 + 256 = 401664"),
                            ("fc2", "Linear(256→10)", "256×10 + 10 = 2570")]),
    ("tiny-cnn", 96, [("fc1", "Linear(96→50)", "96×50 + 50 = 4850"), ("fc2", "Linear(50→10)", "50×10 + 10 = 510")]),
    ("tiny-fc", 784, [("fc1", "Linear(784→8)", "784×8 + 8 = 6280"), ("fc2", "Linear(8→8)", "8×8 + 8 = 72"),
                      ("fc3", "Linear(8→10)", "8×10 + 10 = 90")]),
])
def test_fully_connected_rows(name, flatten, fc_rows):
    rows = {r.name: r for r in summarize(get_preset(name).model)}
    assert rows["flatten"].output_shape == (flatten,)
    for row_name, layer, formula in fc_rows:
        assert (rows[row_name].layer, rows[row_name].formula) == (layer, formula)


@pytest.mark.parametrize("case", SHAPE_CASES)
def test_summary_matches_the_built_network(case):
    cfg = SHAPE_CASES[case]
    rows = summarize(cfg)
    model = build_model(cfg).eval()
    assert [name for name, _ in model.named_children()] == [r.name for r in rows]
    x = torch.randn(3, cfg.in_channels, cfg.image_size, cfg.image_size)
    shapes = layer_outputs(model, x)
    for row, (name, layer) in zip(rows, model.named_children()):
        assert shapes[name] == row.output_shape, name
        assert sum(p.numel() for p in layer.parameters()) == row.params, name
        if row.params:  # the formula shown to the student is arithmetic that gives the count
            left, right = row.formula.split(" = ")
            assert eval(left.replace("×", "*")) == int(right) == row.params, row.formula
    assert tuple(model(x).shape) == (3, cfg.n_classes)
    assert count_params(cfg) == count_params(model) == sum(r.params for r in rows)


def test_same_padding_keeps_four_k9_blocks_possible():
    cfg = cnn_config(4, 9, padding="same")
    assert cfg.conv_channels == (16, 32, 64, 128)
    rows = {r.name: r for r in summarize(cfg)}
    assert [rows[f"pool{i}"].output_shape[1] for i in range(1, 5)] == [14, 7, 3, 1]
    assert rows["flatten"].output_shape == (128,)
    assert count_params(cfg) == 873738


# ------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("cfg,fragments", [
    (cnn_config(4, 7, padding="valid"),
     ["Conv block 3", "7x7 kernel does not fit the 2x2 input", "28 -> 11 -> 2", "'same' padding"]),
    (ModelConfig(image_size=5, conv_channels=(4,), kernel_size=5),
     ["Conv block 1", "1x1 output is too small for the 2x2 max-pool", "'same' padding"]),
    (ModelConfig(kernel_size=10), ["Kernel size must be 1 to 9; got 10."]),
    (ModelConfig(kernel_size=0), ["Kernel size must be 1 to 9; got 0."]),
    (cnn_config(5, 3), ["A CNN has 1 to 4 conv blocks; got 5."]),
    (ModelConfig(conv_channels=()), ["A CNN has 1 to 4 conv blocks; got 0."]),
    (ModelConfig(conv_channels=(10, 0)), ["Conv block 2 has 0 channels; choose 1 to 512."]),
    (ModelConfig(hidden=(50, 50, 50)), ["A CNN here has 0 to 2 hidden FC layers; got 3."]),
    (ModelConfig(hidden=(0,)), ["Hidden layer 1 has 0 units; choose 1 to 4096."]),
    (ModelConfig(padding="full"), ["Padding must be 'valid' or 'same'; got 'full'."]),
    (ModelConfig(dropout=1.0), ["Dropout is a probability in [0, 1); got 1.0."]),
    (ModelConfig(kind="rnn"), ["Model kind must be 'cnn' or 'fc', not 'rnn'."]),
])
def test_impossible_networks_are_refused_with_a_useful_message(cfg, fragments):
    for step in (cfg.validate, lambda: summarize(cfg), lambda: build_model(cfg)):
        with pytest.raises(ValueError) as info:
            step()
        for fragment in fragments:
            assert fragment in str(info.value)


def test_fc_nets_may_have_more_hidden_layers():
    cfg = ModelConfig(kind="fc", conv_channels=(), hidden=(8, 8, 8))
    assert count_params(cfg) == fc_params((8, 8, 8)) == 784 * 8 + 8 + 2 * (8 * 8 + 8) + 8 * 10 + 10


# ------------------------------------------------------------------------- extras

def test_softmax_before_loss_outputs_probabilities():
    cfg = ModelConfig(softmax_before_loss=True)
    model = build_model(cfg).eval()
    assert isinstance(list(model)[-1], nn.Softmax)
    assert summarize(cfg)[-1].name == "softmax"
    assert count_params(cfg) == 8490  # adds no parameters
    out = model(torch.randn(4, 1, 28, 28))
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(4))
    assert not isinstance(list(build_model(ModelConfig()))[-1], nn.Softmax)


def test_batch_norm_adds_two_parameters_per_channel():
    cfg = ModelConfig(conv_channels=(10, 20), pool_before_relu=True, batch_norm=True)
    assert count_params(cfg) == 8490 + 2 * 10 + 2 * 20
    rows = {r.name: r for r in summarize(cfg)}
    assert (rows["bn1"].params, rows["bn1"].formula) == (20, "2×10 = 20")
    model = build_model(cfg)
    assert [name for name, _ in model.named_children()][:4] == ["conv1", "bn1", "pool1", "relu1"]
    assert count_params(model) == 8550  # running mean/var are buffers, not parameters


def test_dropout_sits_before_every_fc_layer_and_adds_no_parameters():
    cfg = ModelConfig(conv_channels=(6, 6), hidden=(50,), dropout=0.5)
    names = [r.name for r in summarize(cfg)]
    assert names[-6:] == ["flatten", "drop1", "fc1", "fc_relu1", "drop2", "fc2"]
    assert count_params(cfg) == 6422
    drop = dict(build_model(cfg).named_children())["drop2"]
    assert isinstance(drop, nn.Dropout) and drop.p == 0.5


def test_describe():
    assert describe(get_preset("lab5").model) == "CNN 2×k5 valid [10-20]"
    assert describe(get_preset("tiny-cnn").model) == "CNN 2×k5 valid [6-6]+FC 50"
    assert describe(get_preset("tiny-fc").model) == "FC 8-8-10"


# ------------------------------------------------------------------------- equal-parameter match

def test_match_for_the_tiny_cnn_is_the_tiny_fc():
    fc = match_fc_width(get_preset("tiny-cnn").model)
    assert fc.kind == "fc" and fc.hidden == (8, 8)
    assert count_params(fc) == 6442 == PINNED_PARAMS["tiny-fc"]


@pytest.mark.parametrize("target,n_hidden", [
    (cnn_config(3, 5), 2), (cnn_config(2, 3), 2), (get_preset("lab5").model, 2),
    (get_preset("padded-16-32").model, 2), (get_preset("tiny-cnn").model, 1), (100_000, 2), (50_000, 3),
])
def test_match_is_the_closest_width(target, n_hidden):
    goal = target if isinstance(target, int) else count_params(target)
    fc = match_fc_width(target, n_hidden=n_hidden)
    [w] = set(fc.hidden)
    assert len(fc.hidden) == n_hidden
    def torch_count(width: int) -> int:  # counted by PyTorch on the built net, not by the formula minimised
        model = build_model(ModelConfig(kind="fc", conv_channels=(), hidden=(width,) * n_hidden))
        return sum(p.numel() for p in model.parameters())

    gap = abs(torch_count(w) - goal)
    for neighbour in (w - 1, w + 1):
        if neighbour >= 1:
            assert abs(torch_count(neighbour) - goal) >= gap


def test_match_needs_a_hidden_layer():
    with pytest.raises(ValueError, match="at least one hidden layer"):
        match_fc_width(6422, n_hidden=0)


def test_dropout_acts_on_a_single_fc_layer_too():
    cfg = replace(get_preset("lab5").model, dropout=0.5)
    assert [n for n, m in build_model(cfg).named_children() if isinstance(m, nn.Dropout)] == ["drop1"]


@pytest.mark.parametrize("extra", [dict(conv_channels=(10, 20)), dict(batch_norm=True)])
def test_fc_refuses_cnn_only_settings(extra):
    with pytest.raises(ValueError, match="no conv blocks"):
        ModelConfig(kind="fc", **{"conv_channels": (), "hidden": (8,), **extra}).validate()


def test_plain_conv_padding_names_the_convolutions_the_fast_paths_rewrite():
    from torch import nn

    from mnist_lab.nets.model import plain_conv_padding

    assert plain_conv_padding(nn.Conv2d(1, 4, 5, padding="same")) == 2
    assert plain_conv_padding(nn.Conv2d(1, 4, 5, padding="valid")) == 0
    assert plain_conv_padding(nn.Conv2d(1, 4, 3, padding=1)) == 1
    for odd_one in (nn.Conv2d(1, 4, 4, padding="same"), nn.Conv2d(1, 4, 3, padding=(1, 0)),
                    nn.Conv2d(1, 4, 3, stride=2), nn.Conv2d(1, 4, 3, bias=False), nn.Conv2d(1, 4, (3, 5)),
                    nn.Conv2d(2, 4, 3, groups=2), nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect")):
        assert plain_conv_padding(odd_one) is None


def test_networks_that_train_differently_get_different_labels():
    from mnist_lab.data.datasets import DataConfig
    from mnist_lab.training.loop import run_label

    base = get_preset("lab5").model
    variants = [base, replace(base, batch_norm=True), replace(base, softmax_before_loss=True),
                replace(base, dropout=0.25), replace(base, kernel_size=3)]
    assert len({describe(m) for m in variants}) == len(variants)
    assert describe(replace(base, batch_norm=True)) == "CNN 2×k5 valid [10-20] +BN"
    labels = {run_label(base, DataConfig(normalize=n)) for n in ("mnist", "half", "none")}
    assert len(labels) == 3 and run_label(base, DataConfig()) == "CNN 2×k5 valid [10-20]"
    assert run_label(base, DataConfig(permute_pixels=True, train_limit=1000)).endswith("permuted pixels · 1,000 images")


# ------------------------------------------------------------------------- week 2: block lists

def test_week_two_layer_lists():
    kinds = lambda name: [type(m).__name__ for m in build_model(get_preset(name).model)]  # noqa: E731
    assert kinds("cifar-course") == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                                     "Linear", "ReLU", "Linear", "ReLU", "Linear"]
    assert kinds("lenet-cifar")[:6] == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU"]
    vgg = build_model(get_preset("vgg16-cifar").model)
    convs = [m for m in vgg.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert all(c.kernel_size == (3, 3) for c in convs) and sum(isinstance(m, nn.BatchNorm2d) for m in vgg) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg) == 5
    assert {r.name: r for r in summarize(get_preset("vgg16-cifar").model)}["flatten"].output_shape == (512,)


def test_residual_net_takes_grey_or_colour_images():
    for cfg in (get_preset("resnet-small").model, replace(get_preset("resnet-small").model, in_channels=3,
                                                          image_size=32)):
        model = build_model(cfg).eval()
        assert tuple(model(torch.randn(2, cfg.in_channels, cfg.image_size, cfg.image_size)).shape) == (2, 10)
    plain = build_model(get_preset("plain-small").model)
    assert sum(isinstance(m, nn.Conv2d) for m in plain.modules()) == 13  # the same depth, no projections


def test_residual_block_adds_its_shortcut():
    from mnist_lab.nets.blocks.residual import ResidualBlock

    torch.manual_seed(0)
    block = ResidualBlock(4, 4).eval()
    x = torch.randn(2, 4, 6, 6)
    body = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(body + x))
    block.use_shortcut = False
    torch.testing.assert_close(block(x), torch.relu(body))


def test_gap_head_is_a_1x1_conv_and_global_average():
    cfg = cnn_config(2, 3, base_channels=4, head="gap")
    names = [r.name for r in summarize(cfg)]
    assert names[-3:] == ["head_conv", "gap", "flatten"] and not any(n.startswith("fc") for n in names)
    assert count_params(cfg) == (4 * 9 + 4) + (8 * 4 * 9 + 8) + (10 * 8 + 10)
    assert describe(cfg) == "CNN 2×k3 same [4-8] 1x1+GAP head"


@pytest.mark.parametrize("cfg,field,fragments", [
    (ModelConfig(conv_channels=(), blocks=(ConvStage((4,), 5, "valid"),) * 3), "blocks",
     ["Block 3 (conv)", "5x5 kernel does not fit the 4x4 input", "28 -> 12 -> 4)"]),
    (ModelConfig(conv_channels=(), blocks=(ConvStage((4,), 9), Residual(8, stride=3))), "blocks",
     ["Block 2 (residual)", "stride must be 1"]),
    (ModelConfig(conv_channels=(), blocks=(Conv1x1(0),)), "blocks", ["Block 1 (conv1x1)", "1 to 512"]),
    (ModelConfig(conv_channels=(), blocks=(ConvStage((4,), pool=False, pool_before_relu=True),)), "blocks",
     ["Block 1 (conv)", "needs the stage's pool"]),
    (ModelConfig(blocks=(ConvStage((4,)),)), "conv_channels", ["given as a block list", "conv_channels"]),
    (ModelConfig(blocks=("conv",), conv_channels=()), "blocks", ["tuple of ConvStage"]),
    (cnn_config(2, 3, head="gap", hidden=(8,)), "hidden", ["'gap' head", "gap-fc"]),
    (fc_config((8,), head="gap"), "head", ["use head 'fc'"]),
    (ModelConfig(head="mean"), "head", ["Head must be one of fc, gap, gap-fc"]),
])
def test_block_lists_are_refused_naming_the_block(cfg, field, fragments):
    with pytest.raises(ValueError) as info:
        cfg.validate()
    assert info.value.field == field and info.value.value is getattr(cfg, field)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_block_lists_round_trip_through_json():
    from mnist_lab import codec
    from mnist_lab.nets.blocks.base import Block

    for name in ("vgg16-cifar", "resnet-small"):
        blocks = get_preset(name).model.blocks
        assert tuple(codec.from_json(Block, codec.to_json(b)) for b in blocks) == blocks
    with pytest.raises(ValueError, match="no setting colour"):
        codec.from_dict(Block, {"type": "conv", "channels": [4], "colour": 1})


def test_a_halving_residual_block_projects_every_other_pixel():
    """The projection shortcut equals a 1x1 convolution with stride 2 (what ResNet writes)."""
    from mnist_lab.nets.blocks.residual import ResidualBlock

    torch.manual_seed(0)
    block = ResidualBlock(4, 8, stride=2).eval()
    x = torch.randn(2, 4, 7, 7)
    conv, bn = block.shortcut
    strided = bn(nn.functional.conv2d(x, conv.weight, stride=2))
    body = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    torch.testing.assert_close(block(x), torch.relu(body + strided))
