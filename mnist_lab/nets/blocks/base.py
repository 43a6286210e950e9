"""What every block type is: the `Block` base (its layers, checks, description, parameter formula,
convolutions, BatchNorm), the one registry of block types by their `type` name, and the layer row
the summary shows. A block type is one module in this package that subclasses `Block` and is
decorated with `@register_block` (timm's model registry in miniature).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from torch import nn

from mnist_lab.errors import ConfigError, is_int
from mnist_lab.i18n import N_, Message

KERNEL_RANGE = (1, 9)
MAX_CHANNELS = 512  # per convolution


@dataclass(frozen=True)
class LayerRow:
    name: str  # module name inside the built nn.Sequential
    layer: str  # human description, e.g. "Conv2d(1→10, k5)"
    output_shape: tuple[int, ...]  # per example, (C, H, W) or (features,)
    params: int
    formula: str  # how `params` was computed
    # multiply-adds of its forward pass per example (time estimates); follows from the rest, so not compared
    macs: int = field(default=0, compare=False)


Layer = tuple[LayerRow, Callable[[], nn.Module]]  # a summary row and how to make its module


@dataclass
class Walk:
    """Where a block sits while the network is walked: its number, the layer-name counters it
    shares with the other blocks, the sizes so far, and the field a geometry refusal names."""

    field: str  # the ModelConfig field a refusal names ("kernel_size" for the sliders' family, else "blocks")
    value: Any  # that field's value
    family: bool  # the sliders' family (one-conv stages from conv_channels) rather than a block list
    sizes: list[int]  # H (= W) of the input, then after each block so far
    i: int = 0  # the block's number, from 1
    counts: Counter = field(default_factory=Counter)

    def count(self, prefix: str) -> int:
        """The number of the next layer named `prefix`: conv1, conv2, ... across the whole network."""
        self.counts[prefix] += 1
        return self.counts[prefix]

    def refuse(self, template: str, **params: Any) -> NoReturn:
        """A geometry refusal naming this block ({i}) and the sizes so far ({sizes})."""
        raise ConfigError(self.field, self.value, template, i=self.i, sizes=" -> ".join(map(str, self.sizes)),
                          **params)


class Block:
    """A feature block's config. A subclass is a frozen dataclass with a fixed
    `type: str = field(default=..., init=False, repr=False)` naming it in JSON (the codec tells
    block types apart by it), and answers the questions below about itself."""

    type: str

    def validate(self, i: int, blocks: tuple[Block, ...]) -> None:
        """Refuse settings this block cannot have: ConfigError('blocks', blocks, ...) naming it as
        block `i` (see `refuse`). Geometry (does the input fit) is checked by `layers`."""
        raise NotImplementedError

    def layers(self, c: int, h: int, walk: Walk) -> Iterator[Layer]:
        """(row, make the module) of each of its layers (at least one), for a (c, h, h) input, in
        build order; the last row's output shape is the block's. Each row's formula gives its
        parameter count. Refuses (walk.refuse) an input too small for it."""
        raise NotImplementedError

    def describe(self) -> str:
        """A short label for tables and legends, e.g. 'k3[64-64]+BN'."""
        raise NotImplementedError

    @property
    def convolutions(self) -> int:
        """Convolutions in the block (its depth, as the lab counts it)."""
        raise NotImplementedError

    @property
    def has_batch_norm(self) -> bool:
        raise NotImplementedError

    def drawing_notes(self, c_in: int) -> tuple[tuple[Message, ...], Message | None]:
        """For the network's drawing (lab/architecture.py): what the block does to a `c_in`-channel
        input, as Messages in order ('conv 3×3, same padding', 'BatchNorm', 'ReLU, then max-pool
        2×2'), and its shortcut's kind ('+ identity', '+ 1×1 projection') or None."""
        raise NotImplementedError

    @classmethod
    def examples(cls) -> tuple[Block, ...]:
        """A few valid instances covering its settings; the registry-wide tests build and check them."""
        raise NotImplementedError

    def refuse(self, i: int, blocks: tuple[Block, ...], template: str, **params: Any) -> NoReturn:
        """Refuse block `i`'s settings; `template` (marked with N_) starts 'Block {i} ({kind}): '."""
        raise ConfigError("blocks", blocks, template, i=i, kind=self.type, **params)

    def check_channels(self, i: int, blocks: tuple[Block, ...], counts: Any) -> None:
        """Output channel `counts` (a tuple: a stage's, or `(channels,)`) are whole numbers, each
        1 to MAX_CHANNELS; a refusal shows the block's `channels` setting as given."""
        if not isinstance(counts, tuple) or not counts or not all(is_int(c) for c in counts):
            self.refuse(i, blocks, N_("Block {i} ({kind}): channels must be whole numbers, such as (64, 64) for a "
                                      "stage or 64; got {c!r}."), c=getattr(self, "channels", counts))
        if not all(1 <= c <= MAX_CHANNELS for c in counts):
            self.refuse(i, blocks, N_("Block {i} ({kind}): channels {c!r} must each be 1 to {high}; choose fewer "
                                      "channels."), c=getattr(self, "channels", counts), high=MAX_CHANNELS)

    def check_flags(self, i: int, blocks: tuple[Block, ...], *names: str) -> None:
        """Yes/no settings given as True or False."""
        for name in names:
            if not isinstance(getattr(self, name), bool):
                self.refuse(i, blocks, N_("Block {i} ({kind}): {name} is a yes/no setting; got {v!r}. Use True or "
                                          "False."), name=name, v=getattr(self, name))


BLOCK_TYPES: dict[str, type[Block]] = {}  # type name -> block class; filled by @register_block

B = TypeVar("B", bound=type[Block])


def register_block(cls: B) -> B:
    """Class decorator: enter a Block dataclass in BLOCK_TYPES under its fixed `type` name."""
    fixed = {f.name: f.default for f in dataclasses.fields(cls) if not f.init}
    name = fixed.get("type")
    if not issubclass(cls, Block) or not isinstance(name, str):
        raise TypeError(f"{cls.__name__}: a block type subclasses Block and has a fixed 'type' name")
    if BLOCK_TYPES.get(name, cls) is not cls:
        raise TypeError(f"{cls.__name__}: the block type name {name!r} is taken by {BLOCK_TYPES[name].__name__}")
    BLOCK_TYPES[name] = cls
    return cls


def conv_row(name: str, c: int, out_c: int, k: int, h: int, same: bool) -> LayerRow:
    """The row of a plain k x k convolution with a bias, c -> out_c channels, h x h output."""
    n = out_c * c * k * k + out_c
    return LayerRow(name, f"Conv2d({c}→{out_c}, k{k}{', same' if same else ''})", (out_c, h, h), n,
                    f"{out_c}×({c}×{k}×{k}) + {out_c} = {n}", macs=n * h * h)


def relu_row(name: str, shape: tuple[int, ...]) -> Layer:
    return LayerRow(name, "ReLU", shape, 0, "no parameters"), nn.ReLU
