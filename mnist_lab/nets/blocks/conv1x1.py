"""The 1x1 convolution block: mixes channels at every position, keeps the spatial layout."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

from torch import nn

from mnist_lab.i18n import N_, Message
from mnist_lab.nets.blocks.base import Block, Layer, Walk, conv_row, register_block, relu_row


@register_block
@dataclass(frozen=True)
class Conv1x1(Block):
    """A 1x1 convolution: mixes channels at every position, keeps the spatial layout."""

    channels: int  # output channels
    relu: bool = True  # ReLU after it
    type: str = field(default="conv1x1", init=False, repr=False)  # names the block type in JSON

    def validate(self, i: int, blocks: tuple[Block, ...]) -> None:
        self.check_channels(i, blocks, (self.channels,))
        self.check_flags(i, blocks, "relu")

    def layers(self, c: int, h: int, walk: Walk) -> Iterator[Layer]:
        n, out = walk.count("pw"), self.channels
        yield conv_row(f"pw{n}", c, out, 1, h, False), partial(nn.Conv2d, c, out, 1)
        if self.relu:
            yield relu_row(f"pw_relu{n}", (out, h, h))

    def describe(self) -> str:
        return f"1x1[{self.channels}]"

    @property
    def convolutions(self) -> int:
        return 1

    @property
    def has_batch_norm(self) -> bool:
        return False

    def drawing_notes(self, c_in: int) -> tuple[tuple[Message, ...], Message | None]:
        return (Message(N_("conv 1×1")), *([Message(N_("ReLU"))] if self.relu else [])), None

    @classmethod
    def examples(cls) -> tuple[Block, ...]:
        return cls(4), cls(6, relu=False)
