"""Trace one unit of a run's network back to its input: the receptive field on the image, the
convolution's patch x kernel products, sum + bias (checked against the value the network itself
computed), BatchNorm's eval-mode scale and shift, a residual shortcut, ReLU and the max-pool
window; and, per convolution, the test images that excite each of its channels most (cached).
"""
from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mnist_lab.data.datasets import permute_pixels
from mnist_lab.errors import ConfigError
from mnist_lab.i18n import N_
from mnist_lab.lab.inspection import LoadedRun, unpermute
from mnist_lab.nets.blocks.residual import ResidualBlock
from mnist_lab.training.step import fast_memory_format

Geometry = tuple[int, int, int]  # (kernel, stride, top/left padding) of one spatial operation


# ------------------------------------------------------------------------ the network's convolutions

@dataclass(frozen=True)
class ConvLayer:
    """One convolution whose output units can be traced."""

    name: str  # "conv2", "res3.conv1": the feature maps' names
    block: int  # 1-based, as inspection.FeatureMap.block
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int  # zero rows/columns added above and to the left ('same' with an even kernel adds one more below/right)
    path: tuple[str, ...]  # module path of the conv in run.model: ("conv2",) or ("res3", "conv1")
    pre_path: tuple[str, ...]  # the module whose output is the pre-activation: the conv, or the BatchNorm after it
    after: tuple[str, ...]  # what follows it, in order: "bn", "shortcut", "relu", "pool"
    before: tuple[Geometry, ...] = field(repr=False)  # every spatial op from the input to the conv's input
    in_block: str = ""  # for a conv inside a block: "conv1" / "conv2" of a residual block

    @property
    def geometry(self) -> Geometry:
        return self.kernel, self.stride, self.padding


def conv_padding(conv: nn.Conv2d) -> int:
    """Zero rows (and columns) a convolution adds before the image: 'same' pads (k-1)//2 there as
    torch does (an even kernel pads the rest after), 'valid' none."""
    k, d = conv.kernel_size[0], conv.dilation[0]
    if isinstance(conv.padding, str):
        return d * (k - 1) // 2 if conv.padding == "same" else 0
    return int(conv.padding[0])


def _geometry(module: nn.Module) -> Geometry | None:
    if isinstance(module, nn.Conv2d):
        return module.kernel_size[0], module.stride[0], conv_padding(module)
    if isinstance(module, nn.MaxPool2d):
        k, s, p = (module.kernel_size, module.stride, module.padding)
        return int(k if isinstance(k, int) else k[0]), int(s if isinstance(s, int) else s[0]), \
            int(p if isinstance(p, int) else p[0])
    return None


def _layer(name: str, path: tuple[str, ...], conv: nn.Conv2d, block: int, before: list[Geometry],
           pre_path: tuple[str, ...], after: tuple[str, ...], in_block: str = "") -> ConvLayer:
    return ConvLayer(name, block, conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                     conv_padding(conv), path, pre_path, after, tuple(before), in_block)


def conv_layers(run: LoadedRun) -> list[ConvLayer]:
    """Every convolution of the run's network whose units can be traced, in forward order (a
    fully-connected net has none). What follows each one is read from the modules after it."""
    children = list(run.model.named_children())
    found: list[ConvLayer] = []
    before: list[Geometry] = []
    block = 0
    for i, (name, child) in enumerate(children):
        if any(isinstance(m, nn.Conv2d) for m in child.modules()):
            block += 1
        if isinstance(child, nn.Conv2d):
            after, pre = [], (name,)
            for next_name, nxt in children[i + 1:]:  # pointwise layers and the pool, up to the next conv
                if isinstance(nxt, nn.BatchNorm2d) and not after:
                    after.append("bn")
                    pre = (next_name,)
                elif isinstance(nxt, nn.ReLU):
                    after.append("relu")
                elif isinstance(nxt, nn.MaxPool2d):
                    after.append("pool")
                else:
                    break
            found.append(_layer(name, (name,), child, block, before, pre, tuple(after)))
        elif isinstance(child, ResidualBlock):
            found.append(_layer(f"{name}.conv1", (name, "conv1"), child.conv1, block, before, (name, "bn1"),
                                ("bn", "relu"), "conv1"))
            inner = [*before, _geometry(child.conv1)]
            found.append(_layer(f"{name}.conv2", (name, "conv2"), child.conv2, block, inner, (name, "bn2"),
                                ("bn", "shortcut", "relu") if child.use_shortcut else ("bn", "relu"), "conv2"))
            before = [*inner, _geometry(child.conv2)]
            continue
        if (geometry := _geometry(child)) is not None:
            before.append(geometry)
        elif not isinstance(child, (nn.BatchNorm2d, nn.ReLU, nn.Dropout)):
            break  # flatten or global pooling: no more feature maps
    return found


def find_layer(run: LoadedRun, name: str) -> ConvLayer:
    layers = {layer.name: layer for layer in conv_layers(run)}
    if name not in layers:
        raise ConfigError("layer", name, N_("{value!r} is not a convolution of this network; choose one of: "
                                            "{options}."), options=", ".join(layers) or "-")
    return layers[name]


# ------------------------------------------------------------------------ the receptive field

def receptive_box(ops: list[Geometry] | tuple[Geometry, ...], y: int, x: int) -> tuple[int, int, int, int]:
    """The input rows and columns (top, left, bottom, right; inclusive, may lie outside the image
    where padding was read) that a unit at (y, x) after `ops` depends on."""
    top, bottom, left, right = y, y, x, x
    for k, s, p in reversed(ops):
        top, bottom = top * s - p, bottom * s - p + k - 1
        left, right = left * s - p, right * s - p + k - 1
    return top, left, bottom, right


def receptive_size(ops: list[Geometry] | tuple[Geometry, ...]) -> int:
    """The analytic formula: r = 1 + sum_l (k_l - 1) * (product of the strides before l)."""
    return field_growth(ops)[-1]


def field_growth(ops: list[Geometry] | tuple[Geometry, ...]) -> list[int]:
    """The receptive field's side after each spatial op, from one pixel: how it grows layer by layer."""
    sizes, jump = [1], 1
    for k, s, _p in ops:
        sizes.append(sizes[-1] + (k - 1) * jump)
        jump *= s
    return sizes


# ------------------------------------------------------------------------ one forward pass, recorded

def _forward(model: nn.Sequential, x: torch.Tensor, inside: str | None = None,
             stop_after: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run the top-level layers one by one (the shared model is never changed); the block named
    `inside` runs as a private copy whose submodules report their inputs and outputs (forward
    hooks). Returns (inputs, outputs) by module path "name" or "name.sub"."""
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def keep(path: str):
        def hook(_module, args, out) -> None:
            inputs[path], outputs[path] = args[0], out
        return hook

    with torch.inference_mode():
        for name, child in model.named_children():
            if name == inside:
                child = copy.deepcopy(child)  # this call's own copy (one block), hooked
                for sub_name, sub in child.named_children():
                    sub.register_forward_hook(keep(f"{name}.{sub_name}"))
            inputs[name] = x
            x = child(x)
            outputs[name] = x
            if name == stop_after or x.dim() != 4:
                break
    return inputs, outputs


# ------------------------------------------------------------------------ the trace

@dataclass
class BatchNormStep:
    mean: float  # running mean of the channel
    var: float  # running variance
    gamma: float
    beta: float
    eps: float
    scale: float  # gamma / sqrt(var + eps)
    shift: float  # beta - mean * scale
    before: float
    after: float  # before * scale + shift
    network: float  # what the network's BatchNorm computed
    kind: str = "bn"


@dataclass
class ShortcutStep:
    projection: bool  # a 1x1 convolution + BatchNorm (the shape changes), else the identity
    added: float  # the shortcut's value at this unit
    before: float
    after: float  # before + added, then ReLU (the block's output)
    kind: str = "shortcut"


@dataclass
class ReluStep:
    before: float
    after: float
    kind: str = "relu"


@dataclass
class PoolStep:
    window: np.ndarray | None  # (2, 2) the values the pool compares, None when the unit falls outside every window
    top_left: tuple[int, int]  # the window's place in the map the pool reads
    at: tuple[int, int]  # the window's output position (y, x) in the pooled map
    kept: bool  # the unit's value is the window's max (the first of equal ones, as torch keeps)
    before: float  # the unit's value entering the pool
    after: float  # the window's max
    network: float  # what the network's pool put there
    kind: str = "pool"


Step = BatchNormStep | ShortcutStep | ReluStep | PoolStep


@dataclass
class Trace:
    """One output unit (channel, y, x) of convolution `layer.name`, followed from its input."""

    layer: ConvLayer
    channel: int
    y: int
    x: int
    box: tuple[int, int, int, int]  # receptive field on the network's input (top, left, bottom, right), inclusive
    field_size: int  # rows (= columns) it spans, by the formula (the image's edge may cut the box)
    growth: list[int]  # the field's side after each conv and pool from the input to this unit: 1, 5, 6, 14
    field_mask: np.ndarray  # (H, W) bool: the input pixels in the field, in the original pixel order
    permuted: bool  # the input's pixels were shuffled: the field's box is in the shuffled image
    patch: np.ndarray  # (C_in, k, k) float32: the conv's input under the kernel; padding reads 0
    padded: np.ndarray  # (k, k) bool: cells outside the previous map (zero padding)
    patch_at: tuple[int, int]  # the patch's top-left in the previous map (may be negative)
    kernel: np.ndarray  # (C_in, k, k) float32
    products: np.ndarray  # (C_in, k, k) float32: patch * kernel
    bias: float  # 0.0 for a conv without bias (a residual block's: BatchNorm follows)
    total: float  # sum of products + bias, computed here
    network: float  # the network's own conv output at this unit (forward pass)
    steps: list[Step]  # BatchNorm, shortcut, ReLU, pool, in the network's order

    @property
    def sum(self) -> float:
        return self.total - self.bias

    @property
    def agrees(self) -> bool:
        """The sum here equals the network's value (float32 summation order aside)."""
        return abs(self.total - self.network) <= 1e-5 + 1e-4 * float(np.abs(self.products).sum() + abs(self.bias))

    @property
    def pre_activation(self) -> float:
        """The unit's own value before any ReLU or pool: the sum + bias after BatchNorm and the shortcut."""
        value = self.total
        for step in self.steps:
            if isinstance(step, (ReluStep, PoolStep)):
                return step.before
            value = step.after
        return value


def _check_unit(layer: ConvLayer, shape: tuple[int, ...], channel: int, y: int, x: int) -> None:
    c, h, w = shape
    for name, value, high in (("channel", channel, c), ("y", y, h), ("x", x, w)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 <= value < high:
            raise ConfigError(name, (channel, y, x), N_("Unit {value!r} is outside the {c}×{h}×{w} feature map of "
                                                        "{layer}: pick a channel 0 to {cm}, a row 0 to {hm} and a "
                                                        "column 0 to {wm}."),
                              layer=layer.name, c=c, h=h, w=w, cm=c - 1, hm=h - 1, wm=w - 1)


def _module(model: nn.Module, path: tuple[str, ...]) -> nn.Module:
    for part in path:
        model = getattr(model, part)
    return model


def trace(run: LoadedRun, x: torch.Tensor, layer: str, channel: int, y: int, x_: int) -> Trace:
    """Follow unit (channel, y, x_) of convolution `layer` (a name from conv_layers) for one
    network input x (1, C, H, W): receptive field, patch x kernel, sum + bias checked against the
    network's own forward pass, then each step after it."""
    if x.dim() != 4 or len(x) != 1:
        raise ValueError(f"trace takes one image (1, C, H, W); got shape {tuple(x.shape)}")
    conv_layer = find_layer(run, layer)
    top = conv_layer.path[0]
    nested = len(conv_layer.path) > 1
    names = [name for name, _ in run.model.named_children()]
    last = top if nested else names[names.index(top) + len(conv_layer.after)]  # the last layer a step reads
    inputs, outputs = _forward(run.model, x, inside=top if nested else None, stop_after=last)
    key = ".".join(conv_layer.path)
    a_in, out = inputs[key][0].float(), outputs[key][0].float()  # (C_in, H, W), (C_out, H', W')
    _check_unit(conv_layer, tuple(out.shape), channel, y, x_)
    conv: nn.Conv2d = _module(run.model, conv_layer.path)
    k, s, p = conv_layer.geometry
    _, h, w = a_in.shape
    r0, c0 = y * s - p, x_ * s - p
    rows, cols = np.arange(r0, r0 + k), np.arange(c0, c0 + k)
    inside = (rows[:, None] >= 0) & (rows[:, None] < h) & (cols[None, :] >= 0) & (cols[None, :] < w)
    a = a_in.contiguous().numpy()
    patch = np.zeros((a.shape[0], k, k), dtype=np.float32)
    rr, cc = np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1)
    patch[:] = a[:, rr][:, :, cc] * inside
    kernel = conv.weight.detach()[channel].float().contiguous().numpy().copy()
    products = patch * kernel
    bias = float(conv.bias.detach()[channel]) if conv.bias is not None else 0.0
    total = float(products.astype(np.float64).sum()) + bias
    network = float(out[channel, y, x_])

    ops = [*conv_layer.before, conv_layer.geometry]
    box = receptive_box(ops, y, x_)
    _, in_c, in_h, in_w = x.shape
    mask = np.zeros((in_h, in_w), dtype=bool)
    t, left, b, right = box
    mask[max(t, 0):min(b, in_h - 1) + 1, max(left, 0):min(right, in_w - 1) + 1] = True
    if run.permutation is not None:  # the box is in the shuffled image: where those pixels came from
        mask = unpermute(torch.from_numpy(mask)[None].float(), run.permutation)[0].numpy() > 0.5
    steps = _steps(run, conv_layer, inputs, outputs, channel, y, x_, network)
    return Trace(conv_layer, channel, y, x_, box, receptive_size(ops), field_growth(ops), mask,
                 run.permutation is not None, patch, ~inside, (int(r0), int(c0)), kernel, products, bias, total,
                 network, steps)


def _bn(bn: nn.BatchNorm2d, channel: int, before: float, network: float) -> BatchNormStep:
    mean, var = float(bn.running_mean[channel]), float(bn.running_var[channel])
    gamma = float(bn.weight.detach()[channel]) if bn.weight is not None else 1.0
    beta = float(bn.bias.detach()[channel]) if bn.bias is not None else 0.0
    scale = gamma / float(np.sqrt(var + bn.eps))
    shift = beta - mean * scale
    return BatchNormStep(mean, var, gamma, beta, bn.eps, scale, shift, before, before * scale + shift, network)


def _steps(run: LoadedRun, layer: ConvLayer, inputs: dict, outputs: dict, channel: int, y: int, x: int,
           value: float) -> list[Step]:
    """What happens to the unit's value after the convolution, each step's value checked against
    the network's where it records one (the network's own value is carried on, so a step's
    rounding never shifts the next)."""
    steps: list[Step] = []
    if len(layer.path) > 1:  # inside a residual block: its own modules (the ReLUs are F.relu)
        name, which = layer.path
        block: ResidualBlock = getattr(run.model, name)
        bn_name = "bn1" if which == "conv1" else "bn2"
        net = float(outputs[f"{name}.{bn_name}"][0, channel, y, x])
        steps.append(_bn(getattr(block, bn_name), channel, value, net))
        value = net
        if "shortcut" in layer.after:
            projection = not isinstance(block.shortcut, nn.Identity)
            if projection:
                added = float(outputs[f"{name}.shortcut"][0, channel, y, x])
            else:
                added = float(inputs[name][0, channel, y * block.stride, x * block.stride])
            out = outputs[name][0, channel, y, x]  # relu(value + added): the block's output
            steps.append(ShortcutStep(projection, added, value, value + added))
            value = value + added
            steps.append(ReluStep(value, float(out)))
        else:
            steps.append(ReluStep(value, max(value, 0.0)))
        return steps
    names = [n for n, _ in run.model.named_children()]
    i = names.index(layer.path[0])
    for kind, name in zip(layer.after, names[i + 1:]):
        module = getattr(run.model, name)
        result = outputs[name][0, channel]
        if kind == "bn":
            steps.append(_bn(module, channel, value, float(result[y, x])))
        elif kind == "relu":
            steps.append(ReluStep(value, float(result[y, x])))
        elif kind == "pool":
            m = inputs[name][0, channel].float().numpy()
            k, s, p = _geometry(module)
            py, px = (y + p) // s, (x + p) // s
            if py >= result.shape[0] or px >= result.shape[1] or y + p - py * s >= k or x + p - px * s >= k:
                steps.append(PoolStep(None, (y, x), (-1, -1), False, value, float("nan"), float("nan")))
                break  # dropped: the pool's windows leave out this row or column (odd size)
            ty, tx = py * s - p, px * s - p
            window = m[max(ty, 0):ty + k, max(tx, 0):tx + k]
            first = np.unravel_index(int(np.argmax(window)), window.shape)
            kept = (max(ty, 0) + first[0], max(tx, 0) + first[1]) == (y, x)
            steps.append(PoolStep(window.copy(), (ty, tx), (py, px), bool(kept), value, float(window.max()),
                                  float(result[py, px])))
            y, x = py, px
        value = float(result[y, x])
    return steps


# ------------------------------------------------------------------------ what each filter looks for

@dataclass
class Excitations:
    """For one convolution and every evaluated test image: each channel's largest pre-activation
    (after the conv's BatchNorm, before ReLU) and where in the map it is."""

    layer: ConvLayer
    best: np.ndarray  # (N, C) float32
    where: np.ndarray  # (N, C) int32: y * W + x of the max
    width: int  # W of the feature map


@dataclass
class TopUnit:
    index: int  # test image
    value: float  # the channel's largest pre-activation on it
    y: int
    x: int
    box: tuple[int, int, int, int]  # its receptive field on the network's input, inclusive (may pass the edge)
    patch: np.ndarray  # the input image (as the network received it, in its pixel order) cut to the field


class ExcitationCache:
    """Excitations per (run id, convolution, images), computed once, least recently used first out."""

    def __init__(self, entries: int = 8):
        self.entries, self.computed = entries, 0
        self._items: OrderedDict[tuple, Excitations] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run: LoadedRun, images: torch.Tensor, layer: str, batch_size: int = 2000) -> Excitations:
        key = (run.run_id, id(run.model), layer, len(images))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            found = excitations(run, images, layer, batch_size)
            self.computed += 1
            self._items[key] = found
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
            return found


CACHE = ExcitationCache()


def pre_activations(run: LoadedRun, x: torch.Tensor, layer: ConvLayer) -> torch.Tensor:
    """(N, C, H, W): the convolution's output after its BatchNorm (if any), before ReLU."""
    nested = len(layer.pre_path) > 1
    _, outputs = _forward(run.model, x, inside=layer.pre_path[0] if nested else None, stop_after=layer.pre_path[0])
    return outputs[".".join(layer.pre_path)]


def excitations(run: LoadedRun, images: torch.Tensor, layer: str, batch_size: int = 2000) -> Excitations:
    """Uncached: every image of uint8 `images` (N, H, W) or (N, C, H, W) through the network up to
    the convolution `layer`, each channel's max over the map kept."""
    conv_layer = find_layer(run, layer)
    layout = fast_memory_format(run.model_cfg, torch.device("cpu"))  # as the confusion matrix runs it
    best, where, width = [], [], 1
    for i in range(0, len(images), batch_size):
        x = run.inputs(images[i:i + batch_size]).contiguous(memory_format=layout)
        maps = pre_activations(run, x, conv_layer).float()
        width = maps.shape[-1]
        values, idx = maps.flatten(2).max(dim=2)  # (B, C)
        best.append(values.numpy())
        where.append(idx.to(torch.int32).numpy())
    return Excitations(conv_layer, np.concatenate(best), np.concatenate(where), width)


# The search's cost, as floating-point operations through the network up to the convolution: about
# 4 s on a 2-core CPU (bench/bench_trace.py). The Lab-5 net and the other MNIST presets without
# shortcuts search all 10,000 test images within it; resnet-small, plain-small and VGG16 search the
# first images that fit (never fewer than SEARCH_MIN_IMAGES), and the page says how many.
SEARCH_BUDGET_FLOPS = 8e10
SEARCH_MIN_IMAGES, SEARCH_STEP = 250, 500


_FLOPS: OrderedDict[tuple, int] = OrderedDict()  # flops_to's answers by (network, layer): a page asks every rerun


def flops_to(run: LoadedRun, layer: str) -> int:
    """Floating-point operations (2 per multiply-add, torch's FlopCounterMode) one image costs from
    the network's input through the convolution `layer`, its BatchNorm included. Counted once per
    network and layer (a one-image forward pass: up to ~30 ms for VGG16), then kept: the weights do
    not change it."""
    key = (run.model_cfg, layer)
    if key not in _FLOPS:
        conv_layer = find_layer(run, layer)
        size = run.model_cfg.image_size
        x = torch.zeros(1, run.model_cfg.in_channels, size, size)
        with FlopCounterMode(display=False) as counter:
            pre_activations(run, x, conv_layer)
        _FLOPS[key] = int(counter.get_total_flops())
        while len(_FLOPS) > 256:
            _FLOPS.popitem(last=False)
    return _FLOPS[key]


def searched_images(run: LoadedRun, layer: str, available: int) -> int:
    """How many of the `available` test images (the first ones) the top-k search of `layer` goes
    through: all of them when that fits SEARCH_BUDGET_FLOPS, else the most whole SEARCH_STEPs that
    fit, at least SEARCH_MIN_IMAGES (or all, when there are fewer)."""
    per_image = max(flops_to(run, layer), 1)
    if per_image * available <= SEARCH_BUDGET_FLOPS:
        return available
    fit = int(SEARCH_BUDGET_FLOPS // per_image) // SEARCH_STEP * SEARCH_STEP
    return min(available, max(fit, SEARCH_MIN_IMAGES))


def top_units(run: LoadedRun, images: torch.Tensor, layer: str, channel: int, k: int = 9,
              cache: ExcitationCache | None = CACHE, searched: int | None = None) -> list[TopUnit]:
    """The k test images whose channel `channel` of `layer` reaches the highest pre-activation,
    highest first, each with the unit where it does and the input cut to that unit's field. Only the
    first `searched` images are gone through (searched_images() gives the page's count; None: all)."""
    images = images if searched is None else images[:searched]
    found = cache.get(run, images, layer) if cache is not None else excitations(run, images, layer)
    n_channels = found.best.shape[1]
    if not isinstance(channel, (int, np.integer)) or not 0 <= channel < n_channels:
        raise ConfigError("channel", channel, N_("Channel must be 0 to {high} for {layer}; got {value!r}."),
                          high=n_channels - 1, layer=layer)
    order = np.argsort(-found.best[:, channel], kind="stable")[:k]
    ops = [*found.layer.before, found.layer.geometry]
    units = []
    for i in order:
        y, x = divmod(int(found.where[i, channel]), found.width)
        box = receptive_box(ops, y, x)
        raw = images[int(i)]
        raw = raw[None] if raw.dim() == 2 else raw  # (C, H, W) uint8
        if run.permutation is not None:  # the shuffled image the network received: the field is a box in it
            raw = permute_pixels(raw, run.permutation)
        raw = raw.numpy()
        t, left, b, right = box
        patch = raw[:, max(t, 0):b + 1, max(left, 0):right + 1]
        units.append(TopUnit(int(i), float(found.best[i, channel]), y, x, box, patch.copy()))
    return units
