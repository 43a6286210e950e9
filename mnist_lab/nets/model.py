"""A network's config (feature blocks, then a head), its one builder, and the per-layer summary
whose parameter formulas add up to exactly what PyTorch counts (timm's byobnet in miniature).
Each block type brings its own layers and formula (nets.blocks); this module only walks them.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

from torch import nn

from mnist_lab.data.datasets import DATASETS
from mnist_lab.errors import ConfigError, is_int, need_bool, need_choice, need_float, need_int, need_ints
from mnist_lab.nets.blocks.base import (
    BLOCK_TYPES,
    KERNEL_RANGE,
    MAX_CHANNELS,
    Block,
    Layer,
    LayerRow,
    Walk,
    conv_row,
    relu_row,
)
from mnist_lab.nets.blocks.conv import conv_family

MAX_CONV_BLOCKS = 4  # conv blocks of the sliders' family (one conv each)
MAX_BLOCKS = 16  # blocks of an explicit block list (VGG16 has 5 stages, 13 convolutions)
MAX_HIDDEN_CNN = 2
MAX_HIDDEN_FC = 8  # hidden layers of a fully-connected net
MAX_WIDTH = 4096  # units per hidden layer
MAX_PARAMS = 50_000_000  # ~200 MB of float32 weights, before gradients and optimiser state
MAX_IN_CHANNELS = 4
MAX_IMAGE_SIZE = 256
MAX_CLASSES = 1000
HEADS = ("fc", "gap", "gap-fc")
DEFAULT_DATASET = DATASETS["mnist"]  # the input shape a ModelConfig has unless told otherwise


@dataclass(frozen=True)
class ModelConfig:
    """A network: its feature blocks, then a head, for `in_channels` x `image_size`^2 images.

    The feature blocks are given one of two ways. The sliders' family (the lab's networks): one
    conv stage per entry of `conv_channels`, all with `kernel_size`, `padding`, `batch_norm` and
    the Lab-5 `pool_before_relu` order (blocks.conv.conv_family). Or an explicit `blocks` list
    (VGG16, residual nets): then `conv_channels` is () and the family fields are not used.
    `stages()` gives the block list either way; the builder and the summary read only that."""

    kind: str = "cnn"  # "cnn" or "fc" (no feature blocks: the image is flattened into the head)
    conv_channels: tuple[int, ...] = (10, 20)  # the family: output channels of each conv block
    kernel_size: int = 5  # the family: square kernel, same for every block
    padding: str = "valid"  # the family: "valid" (shrinks by k-1) or "same" (keeps H, W)
    pool_before_relu: bool = False  # the family: Lab-5 order conv -> pool -> ReLU; default conv -> ReLU -> pool
    batch_norm: bool = False  # the family: BatchNorm2d after each conv
    dropout: float = 0.0  # probability, before every fully-connected layer (the first one too)
    hidden: tuple[int, ...] = ()  # widths of hidden fully-connected layers
    softmax_before_loss: bool = False  # the course notes' mistake: softmax fed to CrossEntropyLoss
    in_channels: int = DEFAULT_DATASET.channels
    image_size: int = DEFAULT_DATASET.image_size  # square input, pixels per side
    n_classes: int = DEFAULT_DATASET.n_classes
    blocks: tuple[Block, ...] = ()  # an explicit block list instead of the family (conv_channels = ())
    # "fc": flatten -> FC layers (`hidden`, then n_classes); "gap": a 1x1 conv to n_classes maps,
    # then global average pooling gives the logits (no FC layer, `hidden` empty); "gap-fc": global
    # average pooling (one value per channel) -> FC layers
    head: str = "fc"

    @property
    def conv_layers(self) -> int:
        """Convolutions in the feature blocks (a residual block counts its two)."""
        return sum(b.convolutions for b in self.stages())

    @property
    def has_batch_norm(self) -> bool:
        return any(b.has_batch_norm for b in self.stages())

    def stages(self) -> tuple[Block, ...]:
        """The feature blocks in order: `blocks`, or the family's one-conv stages."""
        if self.kind != "cnn":
            return ()
        if self.blocks:
            return self.blocks
        return conv_family(self.conv_channels, self.kernel_size, self.padding, self.batch_norm, self.pool_before_relu)

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
        need_int("in_channels", self.in_channels, "Input channels", DEFAULT_DATASET.channels)
        need_int("image_size", self.image_size, "Image size", DEFAULT_DATASET.image_size)
        need_int("n_classes", self.n_classes, "Number of classes", DEFAULT_DATASET.n_classes)
        need_choice("head", self.head, "Head", HEADS,
                    "Head must be one of {options}; got {value!r}. Use 'fc' (flatten -> fully connected).")
        if not isinstance(self.blocks, tuple) or not all(isinstance(b, Block) for b in self.blocks):
            raise ConfigError("blocks", self.blocks, "Blocks must be a tuple of {options} configs; got {value!r}. "
                              "Leave it () to use the conv channels.",
                              options=", ".join(cls.__name__ for cls in BLOCK_TYPES.values()))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dropout", self.dropout, "Dropout is a probability in [0, 1); got {value!r}. "
                              "Choose 0 (none) to 0.8.")
        if not 1 <= self.in_channels <= MAX_IN_CHANNELS:
            raise ConfigError("in_channels", self.in_channels, "Input channels must be 1 to {high}; got {value!r}. "
                              "Use 1 for grey images, 3 for colour.", high=MAX_IN_CHANNELS)
        if not 1 <= self.image_size <= MAX_IMAGE_SIZE:
            raise ConfigError("image_size", self.image_size, "Image size must be 1 to {high} pixels per side; got "
                              "{value!r}. Use the dataset's size ({size} for {title}).", high=MAX_IMAGE_SIZE,
                              size=DEFAULT_DATASET.image_size, title=DEFAULT_DATASET.title)
        if not 2 <= self.n_classes <= MAX_CLASSES:
            raise ConfigError("n_classes", self.n_classes, "Number of classes must be 2 to {high}; got {value!r}. "
                              "Use the dataset's number of classes ({n} for {title}).", high=MAX_CLASSES,
                              n=DEFAULT_DATASET.n_classes, title=DEFAULT_DATASET.title)
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
        """Each explicit block's own settings (each block type checks its own); the refusal names the block."""
        if self.conv_channels or self.batch_norm or self.pool_before_relu:
            field = next(f for f in ("conv_channels", "batch_norm", "pool_before_relu") if getattr(self, f))
            raise ConfigError(field, getattr(self, field), "This network is given as a block list, so {field} is "
                              "not used: leave it out (set BatchNorm and the pool order on each ConvStage), or "
                              "leave out the blocks ({field} = {value!r}).", field=field)
        if len(self.blocks) > MAX_BLOCKS:
            raise ConfigError("blocks", self.blocks, "A network here has 1 to {high} blocks; got {n}. Use fewer "
                              "blocks.", high=MAX_BLOCKS, n=len(self.blocks))
        for i, block in enumerate(self.blocks, 1):
            block.validate(i, self.blocks)

    def _check_size(self) -> None:
        """The whole network's parameter count, by arithmetic (the geometry is valid here)."""
        params = sum(row.params for row, _ in _layers(self))
        if params > MAX_PARAMS:
            field = "hidden" if self.kind == "fc" or self.hidden else "blocks" if self.blocks else "conv_channels"
            raise ConfigError(field, getattr(self, field), "This network has {params:,} parameters, more than the "
                              "{high:,} this lab trains; use fewer or narrower layers ({field} = {value!r}).",
                              params=params, high=MAX_PARAMS, field=field)


# ------------------------------------------------------------------------------------ summary

def summarize(cfg: ModelConfig) -> list[LayerRow]:
    """Every layer in build order with its output shape, parameter count and formula.
    Pure arithmetic (no torch), so the UI can show it as sliders move."""
    cfg.validate()
    return [row for row, _ in _layers(cfg)]


def _layers(cfg: ModelConfig) -> Iterator[Layer]:
    """(row, make the module) for every layer in build order: the one walk that the summary, the
    parameter count, the geometry checks and the builder share. Each block yields its own layers
    (and refuses an input too small for it); the head is written here. Expects validated field types."""
    c, h = cfg.in_channels, cfg.image_size
    family = not cfg.blocks
    field = "kernel_size" if family else "blocks"
    walk = Walk(field, getattr(cfg, field), family, sizes=[h])
    for i, block in enumerate(cfg.stages(), 1):
        walk.i = i
        for row, make in block.layers(c, h, walk):
            yield row, make
        c, h = row.output_shape[0], row.output_shape[-1]  # the block's last layer: (C, H, W)
        walk.sizes.append(h)
    if cfg.head == "gap":  # logits = the spatial mean of one 1x1-conv map per class
        yield conv_row("head_conv", c, cfg.n_classes, 1, h, False), partial(nn.Conv2d, c, cfg.n_classes, 1)
        c = cfg.n_classes
    if cfg.head in ("gap", "gap-fc"):
        yield LayerRow("gap", "AdaptiveAvgPool2d(1)", (c, 1, 1), 0, "no parameters"), partial(nn.AdaptiveAvgPool2d, 1)
        h = 1
    features = c * h * h
    yield LayerRow("flatten", "Flatten", (features,), 0, f"{c}×{h}×{h} = {features} features"), nn.Flatten
    widths = [*cfg.hidden, cfg.n_classes] if cfg.head != "gap" else []
    for j, width in enumerate(widths, 1):
        if cfg.dropout > 0:
            yield LayerRow(f"drop{j}", f"Dropout({cfg.dropout:g})", (features,), 0, "no parameters"), \
                partial(nn.Dropout, cfg.dropout)
        n = features * width + width
        yield LayerRow(f"fc{j}", f"Linear({features}→{width})", (width,), n, f"{features}×{width} + {width} = {n}",
                       macs=n), partial(nn.Linear, features, width)
        if j < len(widths):
            yield relu_row(f"fc_relu{j}", (width,))
        features = width
    if cfg.softmax_before_loss:
        yield LayerRow("softmax", "Softmax (before the loss!)", (cfg.n_classes,), 0, "no parameters"), \
            partial(nn.Softmax, dim=1)


def count_params(model_or_cfg: nn.Module | ModelConfig) -> int:
    """Trainable parameters of a built model, or of a config (by arithmetic, without building)."""
    if isinstance(model_or_cfg, ModelConfig):
        return sum(r.params for r in summarize(model_or_cfg))
    return sum(p.numel() for p in model_or_cfg.parameters() if p.requires_grad)


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
        return "CNN " + " ".join(b.describe() for b in cfg.blocks) + head + hid + "".join(extras)
    conv = "-".join(str(c) for c in cfg.conv_channels)
    return f"CNN {len(cfg.conv_channels)}×k{cfg.kernel_size} {cfg.padding} [{conv}]{head}{hid}" + "".join(extras)


# ------------------------------------------------------------------------------------ builder

def build_model(cfg: ModelConfig) -> nn.Sequential:
    """The network described by `cfg`, module names matching `summarize(cfg)`: an nn.Sequential of
    standard torch layers (and the blocks' own modules, such as ResidualBlock). Outputs logits, or
    probabilities when `softmax_before_loss` is on. Modules are made in row order, so the weights a
    seed draws follow the layer order."""
    cfg.validate()
    return nn.Sequential(OrderedDict((row.name, make()) for row, make in _layers(cfg)))


def plain_conv_padding(conv: nn.Conv2d) -> int | None:
    """The zero padding on every side of `conv` when it is a plain convolution (stride 1, no
    dilation or groups, square kernel, with a bias, the same padding on all four sides), else
    None. 'same' with an even kernel pads one side more, so it is None too. The fast paths
    (cuda_graph.py, native.py) rewrite only such convolutions."""
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

def fc_params(widths: tuple[int, ...], n_inputs: int = DEFAULT_DATASET.channels * DEFAULT_DATASET.n_pixels,
              n_classes: int = DEFAULT_DATASET.n_classes) -> int:
    sizes = [n_inputs, *widths, n_classes]
    return sum(a * b + b for a, b in zip(sizes, sizes[1:]))


def match_fc_width(target: ModelConfig | int, n_hidden: int = 2) -> ModelConfig:
    """The FC net with `n_hidden` equal-width hidden layers whose parameter count is closest
    to `target` (a CNN config, or a count for the default dataset's input): the equal-parameter
    experiment's opponent."""
    if not isinstance(target, ModelConfig):
        target_params, target = int(target), ModelConfig()
    else:
        target_params = count_params(target)
    if not is_int(n_hidden) or n_hidden < 1:
        raise ConfigError("n_hidden", n_hidden, "The matched FC net needs at least one hidden layer; got {value!r}.")
    n_inputs = target.in_channels * target.image_size**2
    best = min(range(1, MAX_WIDTH + 1),
               key=lambda w: (abs(fc_params((w,) * n_hidden, n_inputs, target.n_classes) - target_params), w))
    return ModelConfig(kind="fc", conv_channels=(), hidden=(best,) * n_hidden, in_channels=target.in_channels,
                       image_size=target.image_size, n_classes=target.n_classes)
