"""Network configs, the four lab presets, the model builder, and a per-layer summary whose
parameter formulas add up to exactly what PyTorch counts.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

from torch import nn

from .errors import ConfigError, is_int, need_bool, need_choice, need_float, need_int, need_ints

MAX_CONV_BLOCKS = 4
KERNEL_RANGE = (1, 9)
MAX_CHANNELS = 512  # per conv block
MAX_HIDDEN_CNN = 2
MAX_HIDDEN_FC = 8  # hidden layers of a fully-connected net
MAX_WIDTH = 4096  # units per hidden layer
MAX_PARAMS = 50_000_000  # ~200 MB of float32 weights, before gradients and optimiser state
MAX_IN_CHANNELS = 4
MAX_IMAGE_SIZE = 256
MAX_CLASSES = 1000


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "cnn"  # "cnn" or "fc"
    conv_channels: tuple[int, ...] = (10, 20)  # output channels of each conv block (CNN only)
    kernel_size: int = 5  # square kernel, same for every block
    padding: str = "valid"  # "valid" (shrinks by k-1) or "same" (keeps H, W)
    pool_before_relu: bool = False  # Lab-5 order conv -> pool -> ReLU; default conv -> ReLU -> pool
    batch_norm: bool = False  # BatchNorm2d after each conv
    dropout: float = 0.0  # probability, before every fully-connected layer (the first one too)
    hidden: tuple[int, ...] = ()  # widths of hidden fully-connected layers
    softmax_before_loss: bool = False  # the course notes' mistake: softmax fed to CrossEntropyLoss
    in_channels: int = 1
    image_size: int = 28  # square input, pixels per side
    n_classes: int = 10

    @property
    def conv_layers(self) -> int:
        return len(self.conv_channels) if self.kind == "cnn" else 0

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the field, the value and what to change:
        types first, then ranges, then the geometry (which layer, which size)."""
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
            if self.conv_channels or self.batch_norm:
                field = "conv_channels" if self.conv_channels else "batch_norm"
                raise ConfigError(field, getattr(self, field), "A fully-connected net has no conv blocks: leave out "
                                  "conv channels and BatchNorm, or choose a CNN ({field} = {value!r}).", field=field)
            if len(self.hidden) > MAX_HIDDEN_FC:
                raise ConfigError("hidden", self.hidden, "A fully-connected net here has 0 to {high} hidden layers; "
                                  "got {n}. Use fewer hidden layers.", high=MAX_HIDDEN_FC, n=len(self.hidden))
            self._check_size()
            return
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
        if len(self.hidden) > MAX_HIDDEN_CNN:
            raise ConfigError("hidden", self.hidden, "A CNN here has 0 to {high} hidden FC layers; got {n}. Use fewer "
                              "hidden layers.", high=MAX_HIDDEN_CNN, n=len(self.hidden))
        sizes = [self.image_size]
        for i in range(1, n + 1):
            size = sizes[-1]
            after_conv = size if self.padding == "same" else size - self.kernel_size + 1
            if after_conv < 1:
                raise ConfigError(
                    "kernel_size", self.kernel_size,
                    "Conv block {i}: a {k}x{k} kernel does not fit the {size}x{size} input left by block {prev} "
                    "(sizes so far: {sizes}). Use 'same' padding, a smaller kernel, or fewer conv layers.",
                    i=i, k=self.kernel_size, size=size, prev=i - 1, sizes=_arrow(sizes))
            if after_conv < 2:
                raise ConfigError(
                    "kernel_size", self.kernel_size,
                    "Conv block {i}: its {out}x{out} output is too small for the 2x2 max-pool (sizes so far: "
                    "{sizes} -> {out}). Use 'same' padding, a smaller kernel, or fewer conv layers.",
                    i=i, out=after_conv, sizes=_arrow(sizes))
            sizes.append(after_conv // 2)
        self._check_size()

    def _check_size(self) -> None:
        """The whole network's parameter count, by arithmetic (the geometry is valid here)."""
        params = sum(r.params for r in _rows(self))
        if params > MAX_PARAMS:
            field = "hidden" if self.kind == "fc" or self.hidden else "conv_channels"
            raise ConfigError(field, getattr(self, field), "This network has {params:,} parameters, more than the "
                              "{high:,} this lab trains; use fewer or narrower layers ({field} = {value!r}).",
                              params=params, high=MAX_PARAMS, field=field)


def _arrow(sizes: list[int]) -> str:
    return " -> ".join(str(s) for s in sizes)


def cnn_config(conv_layers: int, kernel_size: int, base_channels: int = 16, padding: str = "same",
               hidden: tuple[int, ...] = (), **kw) -> ModelConfig:
    """A CNN whose channels start at `base_channels` and double every block (the sweep's family)."""
    channels = tuple(base_channels * 2**i for i in range(conv_layers))
    return ModelConfig(kind="cnn", conv_channels=channels, kernel_size=kernel_size, padding=padding,
                       hidden=tuple(hidden), **kw)


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


PRESETS: dict[str, Preset] = {
    p.name: p for p in (
        Preset("lab5", "Lab-5 net: Conv(1→10,k5) → MaxPool2 → ReLU → Conv(10→20,k5) → MaxPool2 → ReLU → Linear(320→10)",
               ModelConfig(conv_channels=(10, 20), kernel_size=5, pool_before_relu=True),
               published="96.88% after epoch 1, 98.91% after epoch 10"),
        Preset("padded-16-32", "Padded 16/32 CNN: two same-padded k5 blocks (16, 32 channels), Linear(1568→256) → Linear(256→10)",
               ModelConfig(conv_channels=(16, 32), kernel_size=5, padding="same", hidden=(256,)),
               lr=0.001, momentum=0.9, batch_size=128, normalize="half",
               published="10 epochs; loss printed every 100 steps"),
        Preset("tiny-fc", "Tiny FC (FC2Layer): Linear(784→8) → ReLU → Linear(8→8) → ReLU → Linear(8→10)",
               ModelConfig(kind="fc", conv_channels=(), hidden=(8, 8)),
               published="88% after 1 epoch (85% on permuted pixels)"),
        Preset("tiny-cnn", "Tiny CNN: two k5 blocks of 6 feature maps, Linear(96→50) → Linear(50→10)",
               ModelConfig(conv_channels=(6, 6), kernel_size=5, hidden=(50,)),
               published="96% after 1 epoch (80% on permuted pixels)"),
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
    return _rows(cfg)


def _rows(cfg: ModelConfig) -> list[LayerRow]:
    rows: list[LayerRow] = []
    c, h = cfg.in_channels, cfg.image_size
    if cfg.kind == "cnn":
        k = cfg.kernel_size
        for i, out_c in enumerate(cfg.conv_channels, 1):
            h = h if cfg.padding == "same" else h - k + 1
            pad = ", same" if cfg.padding == "same" else ""
            n = out_c * c * k * k + out_c
            rows.append(LayerRow(f"conv{i}", f"Conv2d({c}→{out_c}, k{k}{pad})", (out_c, h, h), n,
                                 f"{out_c}×({c}×{k}×{k}) + {out_c} = {n}"))
            c = out_c
            if cfg.batch_norm:
                rows.append(LayerRow(f"bn{i}", f"BatchNorm2d({c})", (c, h, h), 2 * c, f"2×{c} = {2 * c}"))
            act = LayerRow(f"relu{i}", "ReLU", (c, h, h), 0, "no parameters")
            pool = LayerRow(f"pool{i}", "MaxPool2d(2)", (c, h // 2, h // 2), 0, "no parameters")
            if cfg.pool_before_relu:
                rows += [pool, replace(act, output_shape=pool.output_shape)]
            else:
                rows += [act, pool]
            h //= 2
    features = c * h * h
    rows.append(LayerRow("flatten", "Flatten", (features,), 0, f"{c}×{h}×{h} = {features} features"))
    widths = [*cfg.hidden, cfg.n_classes]
    for j, width in enumerate(widths, 1):
        if cfg.dropout > 0:
            rows.append(LayerRow(f"drop{j}", f"Dropout({cfg.dropout:g})", (features,), 0, "no parameters"))
        n = features * width + width
        last = j == len(widths)
        rows.append(LayerRow(f"fc{j}", f"Linear({features}→{width})", (width,), n,
                             f"{features}×{width} + {width} = {n}"))
        if not last:
            rows.append(LayerRow(f"fc_relu{j}", "ReLU", (width,), 0, "no parameters"))
        features = width
    if cfg.softmax_before_loss:
        rows.append(LayerRow("softmax", "Softmax (before the loss!)", (cfg.n_classes,), 0, "no parameters"))
    return rows


def count_params(model_or_cfg: nn.Module | ModelConfig) -> int:
    """Trainable parameters of a built model, or of a config (by arithmetic, without building)."""
    if isinstance(model_or_cfg, ModelConfig):
        return sum(r.params for r in summarize(model_or_cfg))
    return sum(p.numel() for p in model_or_cfg.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------ builder

def build_model(cfg: ModelConfig) -> nn.Sequential:
    """The network described by `cfg`, module names matching `summarize(cfg)`.
    Outputs logits, or probabilities when `softmax_before_loss` is on."""
    rows = summarize(cfg)  # validates
    layers: dict[str, nn.Module] = {}
    c = cfg.in_channels
    features = None
    for row in rows:
        name = row.name
        if name.startswith("conv"):
            out_c = row.output_shape[0]
            layers[name] = nn.Conv2d(c, out_c, cfg.kernel_size, padding=cfg.padding)
            c = out_c
        elif name.startswith("bn"):
            layers[name] = nn.BatchNorm2d(c)
        elif name.startswith("relu") or name.startswith("fc_relu"):
            layers[name] = nn.ReLU()
        elif name.startswith("pool"):
            layers[name] = nn.MaxPool2d(2)
        elif name == "flatten":
            layers[name] = nn.Flatten()
            features = row.output_shape[0]
        elif name.startswith("drop"):
            layers[name] = nn.Dropout(cfg.dropout)
        elif name.startswith("fc"):
            layers[name] = nn.Linear(features, row.output_shape[0])
            features = row.output_shape[0]
        elif name == "softmax":
            layers[name] = nn.Softmax(dim=1)
    return nn.Sequential(OrderedDict(layers))


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


def describe(cfg: ModelConfig) -> str:
    """One-line architecture label for tables and legends: two networks that train differently
    get different labels (BatchNorm, dropout and the softmax mistake included)."""
    extras = ([" +BN"] if cfg.batch_norm else []) + ([f" dropout {cfg.dropout:g}"] if cfg.dropout else []) \
        + ([" +softmax before loss"] if cfg.softmax_before_loss else [])
    if cfg.kind == "fc":
        return "FC " + "-".join(str(w) for w in (*cfg.hidden, cfg.n_classes)) + "".join(extras)
    conv = "-".join(str(c) for c in cfg.conv_channels)
    hid = ("+FC " + "-".join(str(w) for w in cfg.hidden)) if cfg.hidden else ""
    return f"CNN {len(cfg.conv_channels)}×k{cfg.kernel_size} {cfg.padding} [{conv}]{hid}" + "".join(extras)
