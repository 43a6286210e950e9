"""The residual block: two 3x3 convolutions with BatchNorm added to a shortcut (ResNet's basic block)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.i18n import N_, Message
from mnist_lab.nets.blocks.base import Block, Layer, LayerRow, Walk, register_block


@register_block
@dataclass(frozen=True)
class Residual(Block):
    """Two 3x3 convolutions (each with BatchNorm; ReLU between) added to a shortcut, then ReLU:
    out = relu(F(x) + x). The shortcut is the identity when the shape is kept, else a 1x1
    convolution (of every other pixel when the block halves H, W) with BatchNorm: the projection
    shortcut."""

    channels: int  # output channels of both convolutions
    stride: int = 1  # 2: the first convolution (and the shortcut) halves H and W
    shortcut: bool = True  # False: the same two convolutions without the shortcut (a plain block)
    type: str = field(default="residual", init=False, repr=False)  # names the block type in JSON

    def validate(self, i: int, blocks: tuple[Block, ...]) -> None:
        self.check_channels(i, blocks, (self.channels,))
        if self.stride not in (1, 2) or isinstance(self.stride, bool):
            self.refuse(i, blocks, N_("Block {i} ({kind}): stride must be 1 (keep H, W) or 2 (halve them); got "
                                      "{s!r}. Use 1 or 2."), s=self.stride)
        self.check_flags(i, blocks, "shortcut")

    def layers(self, c: int, h: int, walk: Walk) -> Iterator[Layer]:
        out, h_out = self.channels, (h - 1) // self.stride + 1  # 3x3, padding 1
        project = self.shortcut and (self.stride != 1 or c != out)
        terms = [f"{out}×{c}×3×3", f"2×{out}", f"{out}×{out}×3×3", f"2×{out}"] + \
            ([f"{out}×{c}", f"2×{out}"] if project else [])
        n = 9 * out * c + 9 * out * out + 4 * out + ((out * c + 2 * out) if project else 0)
        shortcut = ("1x1 projection" if project else "identity") if self.shortcut else "no shortcut"
        stride = ", stride 2" if self.stride == 2 else ""
        row = LayerRow(f"res{walk.count('res')}", f"Residual({c}→{out}, 2×conv3×3+BN{stride}, {shortcut})",
                       (out, h_out, h_out), n, " + ".join(terms) + f" = {n}", macs=n * h_out * h_out)
        yield row, partial(ResidualBlock, c, out, self.stride, self.shortcut)

    def describe(self) -> str:
        return f"res{self.channels}" + ("/2" if self.stride == 2 else "") + ("" if self.shortcut else " plain")

    @property
    def convolutions(self) -> int:
        return 2

    @property
    def has_batch_norm(self) -> bool:
        return True

    def drawing_notes(self, c_in: int) -> tuple[tuple[Message, ...], Message | None]:
        notes = [Message(N_("2 × conv 3×3")), Message(N_("BatchNorm"))]
        if self.stride == 2:
            notes.append(Message(N_("stride 2")))
        notes.append(Message(N_("ReLU")))
        if not self.shortcut:
            return (*notes, Message(N_("no shortcut"))), None
        project = self.stride != 1 or c_in != self.channels
        return tuple(notes), Message(N_("+ 1×1 projection") if project else N_("+ identity"))

    @classmethod
    def examples(cls) -> tuple[Block, ...]:
        return cls(4), cls(8, stride=2), cls(8), cls(6, shortcut=False), cls(4, stride=2, shortcut=False)


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
