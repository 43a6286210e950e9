"""The network as a picture, as data: one box per feature block and per head layer, sized by its
output shape, with what each block does (kernel, stride, BatchNorm, pooling) as Messages and its
layers' parameter formulas (nets.model.summarize), and residual shortcuts as arcs. Pure arithmetic
(no torch modules, no weights), so the Train page redraws it on every slider change; the app
(app_lib/arch_chart.py) and the report (lab/figures.architecture_figure) both draw this data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from mnist_lab.i18n import N_, Message
from mnist_lab.nets.blocks.base import LayerRow, Walk
from mnist_lab.nets.model import ModelConfig, summarize

# Layout units (the drawings' data coordinates): boxes sit on y = 0, centred, GAP apart.
MAX_HEIGHT = 3.0  # the input's box (the largest H) is this tall; smaller maps by sqrt(H / H_in)
MIN_HEIGHT = 0.25
CHANNEL_WIDTH = 0.22  # width per doubling of the channels: log2(1 + C)
VECTOR_WIDTH = 0.18  # a flattened or fully-connected layer's (features,) bar
GAP = 1.2  # between boxes: where the arrow and its notes go

# The head's layers, by their summary row's name (nets.model writes them): what each does.
HEAD_NOTES = {"head_conv": N_("conv 1×1 to the classes"), "gap": N_("global average pooling"),
              "softmax": N_("softmax before the loss")}


@dataclass(frozen=True)
class Box:
    """One drawn box: the input, a feature block, or a head layer, after its operation."""

    kind: str  # "input", "block" (a feature block) or "head"
    label: Message  # "input", "block {i}", or a head layer's PyTorch name (Message.verbatim)
    shape: tuple[int, ...]  # its output per example: (C, H, W), or (features,)
    rows: tuple[LayerRow, ...]  # the summary rows it stands for, with their parameter formulas
    notes: tuple[Message, ...]  # what happens between the previous box and this one
    x: float  # left edge
    width: float  # log2(1 + C) for maps: the depth in channels; a thin bar for a vector
    height: float  # sqrt(H) for maps; log10(1 + features) for a vector

    @property
    def params(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def centre(self) -> float:
        return self.x + self.width / 2


@dataclass(frozen=True)
class Arc:
    """A residual shortcut: from the box before a block to the block's box, joined by a sum."""

    start: int  # index of the box the shortcut leaves (the block's input)
    end: int  # index of the block's box
    note: Message  # identity, or a 1x1 projection


@dataclass(frozen=True)
class Diagram:
    boxes: tuple[Box, ...]
    arcs: tuple[Arc, ...]
    params: int  # the whole network's, = count_params(cfg)
    width: float  # the drawing's extent in x

    @property
    def rows(self) -> list[LayerRow]:
        """Every summary row, in build order (the boxes' rows joined): = summarize(cfg)."""
        return [r for b in self.boxes for r in b.rows]


def _height(shape: tuple[int, ...], side: int, features: int) -> float:
    if len(shape) == 3:
        return max(MIN_HEIGHT, MAX_HEIGHT * math.sqrt(shape[-1] / side))
    return max(MIN_HEIGHT, MAX_HEIGHT * math.log10(1 + shape[0]) / math.log10(1 + features))


def _width(shape: tuple[int, ...]) -> float:
    return CHANNEL_WIDTH * max(1.0, math.log2(1 + shape[0])) if len(shape) == 3 else VECTOR_WIDTH


def _rows_per_block(cfg: ModelConfig, rows: list[LayerRow]) -> list[int]:
    """How many of the summary's rows each feature block yields: each block's own `layers` counted,
    walked from the shapes the summary already gives (a block's input is its predecessor's output)."""
    counts, c, h, at = [], cfg.in_channels, cfg.image_size, 0
    walk = Walk("blocks", (), not cfg.blocks, sizes=[h])  # the config is valid: nothing is refused
    for i, block in enumerate(cfg.stages(), 1):
        walk.i = i
        n = sum(1 for _ in block.layers(c, h, walk))
        counts.append(n)
        at += n
        c, h = rows[at - 1].output_shape[0], rows[at - 1].output_shape[-1]
    return counts


def build_diagram(cfg: ModelConfig) -> Diagram:
    """The diagram of `cfg` (validated by summarize: a ConfigError says what to change)."""
    rows = summarize(cfg)
    side = cfg.image_size
    largest = max((r.output_shape[0] for r in rows if len(r.output_shape) == 1), default=1)
    features = max(largest, cfg.in_channels * side * side)
    boxes: list[Box] = []
    arcs: list[Arc] = []
    x = 0.0

    def add(kind: str, label: Message, shape: tuple[int, ...], own: tuple[LayerRow, ...], notes: tuple) -> None:
        nonlocal x
        box = Box(kind, label, shape, own, notes, x, _width(shape), _height(shape, side, features))
        boxes.append(box)
        x += box.width + (GAP if kind != "head" else 1.5 * GAP)  # the head's thin bars: room for their notes

    add("input", Message(N_("input")), (cfg.in_channels, side, side), (), ())
    at, c = 0, cfg.in_channels
    for i, (block, n) in enumerate(zip(cfg.stages(), _rows_per_block(cfg, rows)), 1):
        own = tuple(rows[at:at + n])
        at += n
        shape = own[-1].output_shape
        notes, shortcut = block.drawing_notes(c)  # each block type says what it does
        if shortcut is not None:
            arcs.append(Arc(len(boxes) - 1, len(boxes), shortcut))
        add("block", Message(N_("block {i}"), dict(i=i)), shape, own, notes)
        c = shape[0]
    # The head: a box per layer that changes the shape or has weights; dropout and ReLU are notes
    # on the box they lead into or follow.
    pending: list[tuple[LayerRow, Message]] = []  # a dropout: drawn with the layer it feeds
    for row in rows[at:]:
        if row.name.startswith("drop"):
            pending.append((row, Message(N_("dropout {p}"), dict(p=f"{cfg.dropout:g}"))))
        elif row.name.startswith("fc_relu") or row.name == "softmax":
            note = Message(N_("ReLU")) if row.name != "softmax" else Message(HEAD_NOTES["softmax"])
            boxes[-1] = replace(boxes[-1], rows=(*boxes[-1].rows, row), notes=(*boxes[-1].notes, note))
        else:
            what = Message(HEAD_NOTES[row.name]) if row.name in HEAD_NOTES else Message(N_("fully connected"))
            if row.name == "flatten":
                what = Message(N_("flatten {shape} → {n}"), dict(shape="×".join(map(str, boxes[-1].shape)),
                                                                  n=f"{row.output_shape[0]:,}"))
            add("head", Message.verbatim(row.layer), row.output_shape, (*(r for r, _ in pending), row),
                (*(m for _, m in pending), what))
            pending = []
    return Diagram(tuple(boxes), tuple(arcs), sum(r.params for r in rows), boxes[-1].x + boxes[-1].width)


def shape_text(shape: tuple[int, ...]) -> str:
    """(10, 12, 12) -> '10×12×12'; (320,) -> '320'."""
    return "×".join(f"{n:,}" if len(shape) == 1 else str(n) for n in shape)
