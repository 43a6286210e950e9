"""Network configs as lists of typed blocks (conv stage, residual block, 1x1 convolution) plus a
head, the named presets in one dict, the one builder, and a per-layer summary whose parameter
formulas add up to exactly what PyTorch counts (timm's byobnet in miniature).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.errors import ConfigError, is_int, need_bool, need_choice, need_float, need_int, need_ints
from mnist_lab.i18n import N_

MAX_CONV_BLOCKS = 4  # conv blocks of the sliders' family (one conv each)
MAX_BLOCKS = 16  # blocks of an explicit block list (VGG16 has 5 stages, 13 convolutions)
KERNEL_RANGE = (1, 9)
MAX_CHANNELS = 512  # per convolution
MAX_HIDDEN_CNN = 2
MAX_HIDDEN_FC = 8  # hidden layers of a fully-connected net
MAX_WIDTH = 4096  # units per hidden layer
MAX_PARAMS = 50_000_000  # ~200 MB of float32 weights, before gradients and optimiser state
MAX_IN_CHANNELS = 4
MAX_IMAGE_SIZE = 256
MAX_CLASSES = 1000
HEADS = ("fc", "gap", "gap-fc")


# ------------------------------------------------------------------------------------ blocks

@dataclass(frozen=True)
class ConvStage:
    """`len(channels)` convolutions, each conv -> [BatchNorm] -> ReLU, then a 2x2 max-pool.
    `pool_before_relu` (Lab 5) puts the pool between the last conv (and its BatchNorm) and its ReLU."""

    channels: tuple[int, ...]  # output channels of each convolution in the stage
    kernel_size: int = 3  # square, the same for every convolution of the stage
    padding: str = "same"  # "valid" (shrinks H, W by k-1) or "same" (keeps them)
    batch_norm: bool = False  # BatchNorm2d after each convolution
    pool: bool = True  # a 2x2 max-pool (stride 2) ends the stage
    pool_before_relu: bool = False
    type: str = field(default="conv", init=False, repr=False)  # names the block type in JSON


@dataclass(frozen=True)
class Residual:
    """Two 3x3 convolutions (each with BatchNorm; ReLU between) added to a shortcut, then ReLU:
    out = relu(F(x) + x). The shortcut is the identity when the shape is kept, else a 1x1
    convolution (of every other pixel when the block halves H, W) with BatchNorm: the projection
    shortcut."""

    channels: int  # output channels of both convolutions
    stride: int = 1  # 2: the first convolution (and the shortcut) halves H and W
    shortcut: bool = True  # False: the same two convolutions without the shortcut (a plain block)
    type: str = field(default="residual", init=False, repr=False)  # names the block type in JSON


@dataclass(frozen=True)
class Conv1x1:
    """A 1x1 convolution: mixes channels at every position, keeps the spatial layout."""

    channels: int  # output channels
    relu: bool = True  # ReLU after it
    type: str = field(default="conv1x1", init=False, repr=False)  # names the block type in JSON


Block = ConvStage | Residual | Conv1x1
BLOCK_TYPES: dict[str, type] = {"conv": ConvStage, "residual": Residual, "conv1x1": Conv1x1}


def block_to_dict(block: Block) -> dict[str, Any]:
    """JSON-ready: {"type": "conv", "channels": (..), ...} (what `asdict` of a ModelConfig holds
    too); `block_from_dict` reads it back."""
    return asdict(block)


def block_from_dict(d: Any) -> Block:
    if not isinstance(d, dict) or d.get("type") not in BLOCK_TYPES:
        raise ConfigError("blocks", d, "A block is written as an object with a 'type' of {options}; got {value!r}.",
                          options=", ".join(BLOCK_TYPES))
    cls = BLOCK_TYPES[d["type"]]
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(d) - known - {"type"})
    if unknown:
        raise ConfigError("blocks", d, "A {kind} block has no setting {names}; leave it out (settings: {known}).",
                          kind=d["type"], names=", ".join(unknown), known=", ".join(sorted(known)))
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k != "type"}
    return cls(**args)


class ResidualBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)); with `use_shortcut` False the sum is
    left out (a plain two-conv block of the same depth). Self-contained (torch only): an exported
    script copies this class's source."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1, use_shortcut: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride, self.use_shortcut = stride, use_shortcut
        if use_shortcut and (stride != 1 or in_channels != channels):
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False), nn.BatchNorm2d(channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))  # (N, C, H', W')
        if self.use_shortcut:
            # a 1x1 convolution with stride 2 is the 1x1 convolution of every other pixel; written so
            # because torch 2.14.1's CPU backward of a strided 1x1 conv in channels_last segfaults
            x = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
            out = out + self.shortcut(x)
        return F.relu(out)


@dataclass(frozen=True)
class ModelConfig:
    """A network: its feature blocks, then a head, for `in_channels` x `image_size`^2 images.

    The feature blocks are given one of two ways. The sliders' family (the lab's networks): one
    conv stage per entry of `conv_channels`, all with `kernel_size`, `padding`, `batch_norm` and
    the Lab-5 `pool_before_relu` order. Or an explicit `blocks` list (VGG16, residual nets):
    then `conv_channels` is () and the family fields are not used. `stages()` gives the block list
    either way; the builder and the summary read only that."""

    kind: str = "cnn"  # "cnn" or "fc" (no feature blocks: the image is flattened into the head)
    conv_channels: tuple[int, ...] = (10, 20)  # the family: output channels of each conv block
    kernel_size: int = 5  # the family: square kernel, same for every block
    padding: str = "valid"  # the family: "valid" (shrinks by k-1) or "same" (keeps H, W)
    pool_before_relu: bool = False  # the family: Lab-5 order conv -> pool -> ReLU; default conv -> ReLU -> pool
    batch_norm: bool = False  # the family: BatchNorm2d after each conv
    dropout: float = 0.0  # probability, before every fully-connected layer (the first one too)
    hidden: tuple[int, ...] = ()  # widths of hidden fully-connected layers
    softmax_before_loss: bool = False  # the course notes' mistake: softmax fed to CrossEntropyLoss
    in_channels: int = 1
    image_size: int = 28  # square input, pixels per side
    n_classes: int = 10
    blocks: tuple[Block, ...] = ()  # an explicit block list instead of the family (conv_channels = ())
    # "fc": flatten -> FC layers (`hidden`, then n_classes); "gap": a 1x1 conv to n_classes maps,
    # then global average pooling gives the logits (no FC layer, `hidden` empty); "gap-fc": global
    # average pooling (one value per channel) -> FC layers
    head: str = "fc"

    @property
    def conv_layers(self) -> int:
        """Convolutions in the feature blocks (a residual block counts its two)."""
        return sum(len(b.channels) if isinstance(b, ConvStage) else 2 if isinstance(b, Residual) else 1
                   for b in self.stages())

    @property
    def has_batch_norm(self) -> bool:
        return any(isinstance(b, Residual) or (isinstance(b, ConvStage) and b.batch_norm) for b in self.stages())

    def stages(self) -> tuple[Block, ...]:
        """The feature blocks in order: `blocks`, or the family's one-conv stages."""
        if self.kind != "cnn":
            return ()
        if self.blocks:
            return self.blocks
        return tuple(ConvStage((c,), self.kernel_size, self.padding, self.batch_norm, True, self.pool_before_relu)
                     for c in self.conv_channels)

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the field, the value and what to change:
        types first, then ranges, then the geometry (which block, which size)."""
        need_choice("kind", self.kind, "Model kind", ("cnn", "fc"),
                    "Model kind must be 'cnn' or 'fc', not {value!r}. Choose one of {options}.")
        need_ints("conv_channels", self.conv_channels, "Conv channels", (10, 20))
        need_int("kernel_size", self.kernel_size, "Kernel size", 5)
        need_choice("padding", self.padding, "Padding", ("valid", "same"),
                    "Padding must be 'valid' or 'same'; got {value!r}. Choose one of {options}.")
        for name in ("pool_before_relu", "batch_norm", "softmax_before_loss"):
            need_bool(name, getattr(self, name), name.replace("_", " ").capitalize())
        need_float("dropout", self.dropout, "Dropout", 0.0)
        need_ints("hidden", self.hidden, "Hidden units", (50,))
        need_int("in_channels", self.in_channels, "Input channels", 1)
        need_int("image_size", self.image_size, "Image size", 28)
        need_int("n_classes", self.n_classes, "Number of classes", 10)
        need_choice("head", self.head, "Head", HEADS,
                    "Head must be one of {options}; got {value!r}. Use 'fc' (flatten -> fully connected).")
        if not isinstance(self.blocks, tuple) or not all(isinstance(b, tuple(BLOCK_TYPES.values()))
                                                         for b in self.blocks):
            raise ConfigError("blocks", self.blocks, "Blocks must be a tuple of ConvStage, Residual and Conv1x1 "
                              "configs; got {value!r}. Leave it () to use the conv channels.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", self.dropout, "Dropout is a probability in [0, 1); got {value!r}. "
                              "Choose 0 (none) to 0.8.")
        if not 1 <= self.in_channels <= MAX_IN_CHANNELS:
            raise ConfigError("in_channels", self.in_channels, "Input channels must be 1 to {high}; got {value!r}. "
                              "Use 1 for grey images, 3 for colour.", high=MAX_IN_CHANNELS)
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError("image_size", self.image_size, "Image size must be 1 to {high} pixels per side; got "
                              "{value!r}. Use the dataset's size (28 for MNIST).", high=MAX_IMAGE_SIZE)
        if not 2 <= self.n_classes <= MAX_CLASSES:
            raise ConfigError("n_classes", self.n_classes, "Number of classes must be 2 to {high}; got {value!r}. "
                              "Use the dataset's number of classes (10 for MNIST).", high=MAX_CLASSES)
        for i, w in enumerate(self.hidden, 1):
            if not 1 <= w <= MAX_WIDTH:
                raise ConfigError("hidden", self.hidden, "Hidden layer {i} has {w} units; choose 1 to {high}.",
                                  i=i, w=w, high=MAX_WIDTH)
        if self.kind == "fc":
            for field in ("conv_channels", "batch_norm", "blocks"):
                if getattr(self, field):
                    raise ConfigError(field, getattr(self, field), "A fully-connected net has no conv blocks: "
                                      "leave out conv channels, blocks and BatchNorm, or choose a CNN ({field} = "
                                      "{value!r}).", field=field)
            if self.head != "fc":
                raise ConfigError("head", self.head, "A fully-connected net has no feature maps to pool: use head "
                                  "'fc', or choose a CNN (head = {value!r}).")
            if len(self.hidden) > MAX_HIDDEN_FC:
                raise ConfigError("hidden", self.hidden, "A fully-connected net here has 0 to {high} hidden layers; "
                                  "got {n}. Use fewer hidden layers.", high=MAX_HIDDEN_FC, n=len(self.hidden))
            self._check_size()
            return
        if self.blocks:
            self._check_blocks()
        else:
            self._check_family()
        if len(self.hidden) > MAX_HIDDEN_CNN:
            raise ConfigError("hidden", self.hidden, "A CNN here has 0 to {high} hidden FC layers; got {n}. Use fewer "
                              "hidden layers.", high=MAX_HIDDEN_CNN, n=len(self.hidden))
        if self.head == "gap" and self.hidden:
            raise ConfigError("hidden", self.hidden, "The 'gap' head (1x1 conv to the classes, then global average "
                              "pooling) has no hidden FC layers; leave hidden empty or use head 'gap-fc' "
                              "(hidden = {value!r}).")
        for _ in _layers(self):  # the geometry: raises naming the block whose input is too small
            pass
        self._check_size()

    def _check_family(self) -> None:
        n = len(self.conv_channels)
        if not 1 <= n <= MAX_CONV_BLOCKS:
            raise ConfigError("conv_channels", self.conv_channels, "A CNN has 1 to {high} conv blocks; got {n}. "
                              "Give 1 to {high} channel counts.", high=MAX_CONV_BLOCKS, n=n)
        lo, hi = KERNEL_RANGE
        if not lo <= self.kernel_size <= hi:
            raise ConfigError("kernel_size", self.kernel_size, "Kernel size must be {lo} to {hi}; got {value!r}. "
                              "Choose an odd size such as 3 or 5.", lo=lo, hi=hi)
        for i, c in enumerate(self.conv_channels, 1):
            if not 1 <= c <= MAX_CHANNELS:
                raise ConfigError("conv_channels", self.conv_channels, "Conv block {i} has {c} channels; choose 1 "
                                  "to {high}.", i=i, c=c, high=MAX_CHANNELS)

    def _check_blocks(self) -> None:
        """Each explicit block's own settings; ConfigError('blocks', ...) names the block."""
        if self.conv_channels or self.batch_norm or self.pool_before_relu:
            field = next(f for f in ("conv_channels", "batch_norm", "pool_before_relu") if getattr(self, f))
            raise ConfigError(field, getattr(self, field), "This network is given as a block list, so {field} is "
                              "not used: leave it out (set BatchNorm and the pool order on each ConvStage), or "
                              "leave out the blocks ({field} = {value!r}).", field=field)
        if len(self.blocks) > MAX_BLOCKS:
            raise ConfigError("blocks", self.blocks, "A network here has 1 to {high} blocks; got {n}. Use fewer "
                              "blocks.", high=MAX_BLOCKS, n=len(self.blocks))

        def refuse(i: int, block: Block, template: str, **params) -> None:
            raise ConfigError("blocks", self.blocks, "Block {i} ({kind}): " + template, i=i, kind=block.type,
                              **params)

        lo, hi = KERNEL_RANGE
        for i, b in enumerate(self.blocks, 1):
            channels = b.channels if isinstance(b, ConvStage) else (b.channels,)
            if not isinstance(channels, tuple) or not channels or not all(is_int(c) for c in channels):
                refuse(i, b, "channels must be whole numbers, such as (64, 64) for a stage or 64; got {c!r}.",
                       c=b.channels)
            if not all(1 <= c <= MAX_CHANNELS for c in channels):
                refuse(i, b, "channels {c!r} must each be 1 to {high}; choose fewer channels.", c=b.channels,
                       high=MAX_CHANNELS)
            if isinstance(b, ConvStage):
                if not is_int(b.kernel_size) or not lo <= b.kernel_size <= hi:
                    refuse(i, b, "kernel size must be {lo} to {hi}; got {k!r}. Choose 3 or 5.", lo=lo, hi=hi,
                           k=b.kernel_size)
                if b.padding not in ("valid", "same"):
                    refuse(i, b, "padding must be 'valid' or 'same'; got {p!r}. Choose one of those.", p=b.padding)
                for name in ("batch_norm", "pool", "pool_before_relu"):
                    if not isinstance(getattr(b, name), bool):
                        refuse(i, b, "{name} is a yes/no setting; got {v!r}. Use True or False.", name=name,
                               v=getattr(b, name))
                if b.pool_before_relu and not b.pool:
                    refuse(i, b, "pool_before_relu needs the stage's pool; set pool=True or pool_before_relu=False.")
            elif isinstance(b, Residual):
                if b.stride not in (1, 2) or isinstance(b.stride, bool):
                    refuse(i, b, "stride must be 1 (keep H, W) or 2 (halve them); got {s!r}. Use 1 or 2.",
                           s=b.stride)
                if not isinstance(b.shortcut, bool):
                    refuse(i, b, "shortcut is a yes/no setting; got {v!r}. Use True or False.", v=b.shortcut)
            elif not isinstance(b.relu, bool):
                refuse(i, b, "relu is a yes/no setting; got {v!r}. Use True or False.", v=b.relu)

    def _check_size(self) -> None:
        """The whole network's parameter count, by arithmetic (the geometry is valid here)."""
        params = sum(row.params for row, _ in _layers(self))
        if params > MAX_PARAMS:
            field = "hidden" if self.kind == "fc" or self.hidden else "blocks" if self.blocks else "conv_channels"
            raise ConfigError(field, getattr(self, field), "This network has {params:,} parameters, more than the "
                              "{high:,} this lab trains; use fewer or narrower layers ({field} = {value!r}).",
                              params=params, high=MAX_PARAMS, field=field)


def _arrow(sizes: list[int]) -> str:
    return " -> ".join(str(s) for s in sizes)


def cnn_config(conv_layers: int, kernel_size: int, base_channels: int = 16, padding: str = "same",
               hidden: tuple[int, ...] = (), **kw) -> ModelConfig:
    """A CNN of the sliders' family: `conv_layers` conv blocks whose channels start at
    `base_channels` and double every block. Keywords set any other ModelConfig field, e.g.
    `batch_norm=True`, `pool_before_relu=True`, `dropout=0.2`, or `head="gap"`: instead of
    flatten -> FC, a 1x1 convolution to n_classes maps and global average pooling give the logits
    (Network-in-Network's head; `hidden` must then be empty); `head="gap-fc"`: global average
    pooling, then the FC layers."""
    channels = tuple(base_channels * 2**i for i in range(conv_layers))
    return ModelConfig(kind="cnn", conv_channels=channels, kernel_size=kernel_size, padding=padding,
                       hidden=tuple(hidden), **kw)


def fc_config(hidden: tuple[int, ...], **kw) -> ModelConfig:
    """A fully-connected net: the flattened image -> hidden layers of these widths -> n_classes."""
    return ModelConfig(kind="fc", conv_channels=(), hidden=tuple(hidden), **kw)


# ------------------------------------------------------------------------------------ presets

@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: ModelConfig
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.5
    batch_size: int = 64
    normalize: str = "mnist"  # key of data.NORMALIZATIONS
    published: str = ""  # the lab's published single-run result
    dataset: str = "mnist"  # the data.DATASETS entry the network is meant for (its input shape)


def _vgg16_blocks() -> tuple[Block, ...]:
    """VGG16's 13 same-padded 3x3 convolutions with BatchNorm, a 2x2 max-pool after each stage."""
    return tuple(ConvStage((c,) * n, 3, "same", batch_norm=True)
                 for c, n in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3)))


def _small_resnet_blocks(shortcut: bool) -> tuple[Block, ...]:
    """A 3x3 stem (16 channels, BatchNorm, no pool), then three stages of two residual blocks
    (16, 32, 64 channels; the 2nd and 3rd stages halve H, W): 13 convolutions deep."""
    stages = ((16, 1), (16, 1), (32, 2), (32, 1), (64, 2), (64, 1))
    return (ConvStage((16,), 3, "same", batch_norm=True, pool=False),
            *(Residual(c, stride=s, shortcut=shortcut) for c, s in stages))


CIFAR = dict(in_channels=3, image_size=32)
PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        Preset("lab5", "Lab-5 net: Conv(1→10,k5) → MaxPool2 → ReLU → Conv(10→20,k5) → MaxPool2 → ReLU → Linear(320→10)",
               ModelConfig(conv_channels=(10, 20), kernel_size=5, pool_before_relu=True),
               published="96.88% after epoch 1, 98.91% after epoch 10"),
        Preset("padded-16-32",
               "Padded 16/32 CNN: two same-padded k5 blocks (16, 32 channels), Linear(1568→256) → Linear(256→10)",
               ModelConfig(conv_channels=(16, 32), kernel_size=5, padding="same", hidden=(256,)),
               lr=0.001, momentum=0.9, batch_size=128, normalize="half",
               published="10 epochs; loss printed every 100 steps"),
        Preset("tiny-fc", "Tiny FC (FC2Layer): Linear(784→8) → ReLU → Linear(8→8) → ReLU → Linear(8→10)",
               ModelConfig(kind="fc", conv_channels=(), hidden=(8, 8)),
               published="88% after 1 epoch (85% on permuted pixels)"),
        Preset("tiny-cnn", "Tiny CNN: two k5 blocks of 6 feature maps, Linear(96→50) → Linear(50→10)",
               ModelConfig(conv_channels=(6, 6), kernel_size=5, hidden=(50,)),
               published="96% after 1 epoch (80% on permuted pixels)"),
        # The week-2 notes give no optimiser or batch for these: SGD with momentum 0.9 is the common choice.
        Preset("cifar-course", "The course's CIFAR-10 net: Conv(3→6,k5) → ReLU → MaxPool2 → Conv(6→16,k5) → ReLU → "
               "MaxPool2 → Linear(400→120) → Linear(120→84) → Linear(84→10)",
               ModelConfig(conv_channels=(6, 16), kernel_size=5, hidden=(120, 84), **CIFAR),
               momentum=0.9, normalize="half", dataset="cifar10",
               published="62% after 10 epochs, loss about 0.775"),
        Preset("lenet-cifar", "LeNet as the notes write it: Conv(3→16,k5) → MaxPool2 → Conv(16→32,k5) → MaxPool2 → "
               "Linear(800→120) → Linear(120→84) → Linear(84→10)",
               ModelConfig(conv_channels=(16, 32), kernel_size=5, pool_before_relu=True, hidden=(120, 84), **CIFAR),
               momentum=0.9, normalize="half", dataset="cifar10", published="no result given"),
        Preset("vgg16-cifar", "VGG16 for 32×32: 13 same-padded 3×3 convs with BatchNorm in stages of 64, 128, 256, "
               "512, 512 channels, a 2×2 max-pool after each stage, Linear(512→10)",
               ModelConfig(conv_channels=(), blocks=_vgg16_blocks(), **CIFAR),
               momentum=0.9, batch_size=128, normalize="half", dataset="cifar10",
               published="'clearly better' than 62% (no number given)"),
        Preset("resnet-small", "A small residual net: a 3×3 stem, six residual blocks (16, 32, 64 channels), global "
               "average pooling → Linear(64→10); in_channels=3, image_size=32 for CIFAR-10",
               ModelConfig(conv_channels=(), blocks=_small_resnet_blocks(True), head="gap-fc"),
               lr=0.05, momentum=0.9, batch_size=128),
        Preset("plain-small", "resnet-small without its shortcuts: the same 13 convolutions as a plain stack",
               ModelConfig(conv_channels=(), blocks=_small_resnet_blocks(False), head="gap-fc"),
               lr=0.05, momentum=0.9, batch_size=128),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError("preset", name, "Unknown preset {value!r}. Choose one of: {options}.",
                          options=", ".join(PRESETS))
    return PRESETS[name]


# ------------------------------------------------------------------------------------ summary

@dataclass(frozen=True)
class LayerRow:
    name: str  # module name inside the built nn.Sequential
    layer: str  # human description, e.g. "Conv2d(1→10, k5)"
    output_shape: tuple[int, ...]  # per example, (C, H, W) or (features,)
    params: int
    formula: str  # how `params` was computed


def summarize(cfg: ModelConfig) -> list[LayerRow]:
    """Every layer in build order with its output shape, parameter count and formula.
    Pure arithmetic (no torch), so the UI can show it as sliders move."""
    cfg.validate()
    return [row for row, _ in _layers(cfg)]


def _conv_row(name: str, c: int, out_c: int, k: int, h: int, same: bool) -> LayerRow:
    n = out_c * c * k * k + out_c
    return LayerRow(name, f"Conv2d({c}→{out_c}, k{k}{', same' if same else ''})", (out_c, h, h), n,
                    f"{out_c}×({c}×{k}×{k}) + {out_c} = {n}")


def _residual_row(name: str, c: int, b: Residual, h: int) -> LayerRow:
    out, h_out = b.channels, (h - 1) // b.stride + 1  # 3x3, padding 1
    project = b.shortcut and (b.stride != 1 or c != out)
    terms = [f"{out}×{c}×3×3", f"2×{out}", f"{out}×{out}×3×3", f"2×{out}"] + \
        ([f"{out}×{c}", f"2×{out}"] if project else [])
    n = 9 * out * c + 9 * out * out + 4 * out + ((out * c + 2 * out) if project else 0)
    shortcut = ("1x1 projection" if project else "identity") if b.shortcut else "no shortcut"
    stride = ", stride 2" if b.stride == 2 else ""
    return LayerRow(name, f"Residual({c}→{out}, 2×conv3×3+BN{stride}, {shortcut})", (out, h_out, h_out), n,
                    " + ".join(terms) + f" = {n}")


# The geometry refusals, by whether the network is the sliders' family (True) or a block list.
_NO_FIT = {True: N_("Conv block {i}: a {k}x{k} kernel does not fit the {size}x{size} input left by block {prev} "
                    "(sizes so far: {sizes}). Use 'same' padding, a smaller kernel, or fewer conv layers."),
           False: N_("Block {i} ({kind}): a {k}x{k} kernel does not fit the {size}x{size} input left by block {prev} "
                     "(sizes so far: {sizes}). Use 'same' padding, a smaller kernel, or fewer blocks.")}
_NO_POOL = {True: N_("Conv block {i}: its {out}x{out} output is too small for the 2x2 max-pool (sizes so far: "
                     "{sizes} -> {out}). Use 'same' padding, a smaller kernel, or fewer conv layers."),
            False: N_("Block {i} ({kind}): its {out}x{out} output is too small for the 2x2 max-pool (sizes so far: "
                      "{sizes} -> {out}). Use 'same' padding, a smaller kernel, or fewer blocks.")}


def _layers(cfg: ModelConfig) -> Iterator[tuple[LayerRow, Callable[[], nn.Module]]]:
    """(row, make the module) for every layer in build order: the one walk that the summary, the
    parameter count, the geometry checks and the builder share. Raises ConfigError naming the
    block whose input is too small. Expects validated field types."""
    c, h = cfg.in_channels, cfg.image_size
    family = not cfg.blocks
    sizes = [h]  # H (= W) after each block, for the error messages
    n_conv = n_pool = n_res = n_pw = 0
    for i, block in enumerate(cfg.stages(), 1):
        field = "kernel_size" if family else "blocks"
        if isinstance(block, ConvStage):
            k, same = block.kernel_size, block.padding == "same"
            for j, out_c in enumerate(block.channels):
                last = j == len(block.channels) - 1
                n_conv += 1
                after = h if same else h - k + 1
                if after < 1:
                    raise ConfigError(field, getattr(cfg, field), _NO_FIT[family], i=i, kind=block.type, k=k,
                                      size=h, prev=i - 1, sizes=_arrow(sizes))
                if last and block.pool and after < 2:
                    raise ConfigError(field, getattr(cfg, field), _NO_POOL[family], i=i, kind=block.type,
                                      out=after, sizes=_arrow(sizes))
                h = after
                yield _conv_row(f"conv{n_conv}", c, out_c, k, h, same), \
                    lambda c=c, out_c=out_c, k=k, p=block.padding: nn.Conv2d(c, out_c, k, padding=p)
                c = out_c
                if block.batch_norm:
                    yield LayerRow(f"bn{n_conv}", f"BatchNorm2d({c})", (c, h, h), 2 * c, f"2×{c} = {2 * c}"), \
                        lambda c=c: nn.BatchNorm2d(c)
                relu = (LayerRow(f"relu{n_conv}", "ReLU", (c, h, h), 0, "no parameters"), nn.ReLU)
                if last and block.pool:
                    n_pool += 1
                    pool = (LayerRow(f"pool{n_pool}", "MaxPool2d(2)", (c, h // 2, h // 2), 0, "no parameters"),
                            lambda: nn.MaxPool2d(2))
                    h //= 2
                    if block.pool_before_relu:
                        relu = (replace(relu[0], output_shape=(c, h, h)), relu[1])
                        yield from (pool, relu)
                    else:
                        yield from (relu, pool)
                else:
                    yield relu
        elif isinstance(block, Residual):
            n_res += 1
            row = _residual_row(f"res{n_res}", c, block, h)
            yield row, lambda c=c, b=block: ResidualBlock(c, b.channels, b.stride, b.shortcut)
            c, h = row.output_shape[0], row.output_shape[1]
        else:
            n_pw += 1
            out = block.channels
            yield _conv_row(f"pw{n_pw}", c, out, 1, h, False), lambda c=c, out=out: nn.Conv2d(c, out, 1)
            c = out
            if block.relu:
                yield LayerRow(f"pw_relu{n_pw}", "ReLU", (c, h, h), 0, "no parameters"), nn.ReLU
        sizes.append(h)
    if cfg.head == "gap":  # logits = the spatial mean of one 1x1-conv map per class
        yield _conv_row("head_conv", c, cfg.n_classes, 1, h, False), \
            lambda c=c: nn.Conv2d(c, cfg.n_classes, 1)
        c = cfg.n_classes
    if cfg.head in ("gap", "gap-fc"):
        yield LayerRow("gap", "AdaptiveAvgPool2d(1)", (c, 1, 1), 0, "no parameters"), lambda: nn.AdaptiveAvgPool2d(1)
        h = 1
    features = c * h * h
    yield LayerRow("flatten", "Flatten", (features,), 0, f"{c}×{h}×{h} = {features} features"), nn.Flatten
    widths = [*cfg.hidden, cfg.n_classes] if cfg.head != "gap" else []
    for j, width in enumerate(widths, 1):
        if cfg.dropout > 0:
            yield LayerRow(f"drop{j}", f"Dropout({cfg.dropout:g})", (features,), 0, "no parameters"), \
                lambda: nn.Dropout(cfg.dropout)
        n = features * width + width
        yield LayerRow(f"fc{j}", f"Linear({features}→{width})", (width,), n, f"{features}×{width} + {width} = {n}"), \
            lambda a=features, b=width: nn.Linear(a, b)
        if j < len(widths):
            yield LayerRow(f"fc_relu{j}", "ReLU", (width,), 0, "no parameters"), nn.ReLU
        features = width
    if cfg.softmax_before_loss:
        yield LayerRow("softmax", "Softmax (before the loss!)", (cfg.n_classes,), 0, "no parameters"), \
            lambda: nn.Softmax(dim=1)


def count_params(model_or_cfg: nn.Module | ModelConfig) -> int:
    """Trainable parameters of a built model, or of a config (by arithmetic, without building)."""
    if isinstance(model_or_cfg, ModelConfig):
        return sum(r.params for r in summarize(model_or_cfg))
    return sum(p.numel() for p in model_or_cfg.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------ builder

def build_model(cfg: ModelConfig) -> nn.Sequential:
    """The network described by `cfg`, module names matching `summarize(cfg)`: an nn.Sequential of
    standard torch layers (and ResidualBlock). Outputs logits, or probabilities when
    `softmax_before_loss` is on. Modules are made in row order, so the weights a seed draws
    follow the layer order."""
    cfg.validate()
    return nn.Sequential(OrderedDict((row.name, make()) for row, make in _layers(cfg)))


def plain_conv_padding(conv: nn.Conv2d) -> int | None:
    """The zero padding on every side of `conv` when it is a plain convolution (stride 1, no
    dilation or groups, square kernel, with a bias, the same padding on all four sides), else
    None. 'same' with an even kernel pads one side more, so it is None too. The fast paths
    (fast.py, native.py) rewrite only such convolutions."""
    k = conv.kernel_size[0]
    if isinstance(conv.padding, str):
        padding = {"same": k // 2 if k % 2 else None, "valid": 0}[conv.padding]
    else:
        padding = conv.padding[0] if conv.padding[0] == conv.padding[1] else None
    if (padding is None or conv.bias is None or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1
            or conv.padding_mode != "zeros" or conv.kernel_size != (k, k)):
        return None
    return padding


# ------------------------------------------------------------------------------------ matching

def fc_params(widths: tuple[int, ...], n_inputs: int = 784, n_classes: int = 10) -> int:
    sizes = [n_inputs, *widths, n_classes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def match_fc_width(target: ModelConfig | int, n_hidden: int = 2) -> ModelConfig:
    """The FC net with `n_hidden` equal-width hidden layers whose parameter count is closest
    to `target` (a CNN config or a count): the equal-parameter experiment's opponent."""
    if isinstance(target, ModelConfig):
        n_inputs = target.in_channels * target.image_size**2
        n_classes = target.n_classes
        target_params = count_params(target)
    else:
        n_inputs, n_classes, target_params = 784, 10, int(target)
    if not is_int(n_hidden) or n_hidden < 1:
        raise ConfigError("n_hidden", n_hidden, "The matched FC net needs at least one hidden layer; got {value!r}.")
    best = min(range(1, MAX_WIDTH + 1),
               key=lambda w: (abs(fc_params((w,) * n_hidden, n_inputs, n_classes) - target_params), w))
    image_size = int(math.isqrt(n_inputs // (target.in_channels if isinstance(target, ModelConfig) else 1)))
    in_channels = target.in_channels if isinstance(target, ModelConfig) else 1
    return ModelConfig(kind="fc", conv_channels=(), hidden=(best,) * n_hidden, in_channels=in_channels,
                       image_size=image_size, n_classes=n_classes)


def _describe_block(b: Block) -> str:
    if isinstance(b, ConvStage):
        extras = ("+BN" if b.batch_norm else "") + ("" if b.pool else " no pool")
        return f"k{b.kernel_size}[{'-'.join(map(str, b.channels))}]{extras}"
    if isinstance(b, Residual):
        return f"res{b.channels}" + ("/2" if b.stride == 2 else "") + ("" if b.shortcut else " plain")
    return f"1x1[{b.channels}]"


def describe(cfg: ModelConfig) -> str:
    """One-line architecture label for tables and legends: two networks that train differently
    get different labels (BatchNorm, dropout, the head and the softmax mistake included)."""
    extras = ([" +BN"] if cfg.batch_norm else []) + ([f" dropout {cfg.dropout:g}"] if cfg.dropout else []) \
        + ([" +softmax before loss"] if cfg.softmax_before_loss else [])
    if cfg.kind == "fc":
        return "FC " + "-".join(str(w) for w in (*cfg.hidden, cfg.n_classes)) + "".join(extras)
    hid = ("+FC " + "-".join(str(w) for w in cfg.hidden)) if cfg.hidden else ""
    head = {"fc": "", "gap": " 1x1+GAP head", "gap-fc": " GAP"}[cfg.head]
    if cfg.blocks:
        return "CNN " + " ".join(_describe_block(b) for b in cfg.blocks) + head + hid + "".join(extras)
    conv = "-".join(str(c) for c in cfg.conv_channels)
    return f"CNN {len(cfg.conv_channels)}×k{cfg.kernel_size} {cfg.padding} [{conv}]{head}{hid}" + "".join(extras)
