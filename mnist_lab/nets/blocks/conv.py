"""The conv stage: convolutions with optional BatchNorm, ReLU and a closing 2x2 max-pool; and the
sliders' family (the lab's networks), which is a list of one-conv stages."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from functools import partial

from torch import nn

from mnist_lab.errors import is_int
from mnist_lab.i18n import N_, Message
from mnist_lab.nets.blocks.base import KERNEL_RANGE, Block, Layer, LayerRow, Walk, conv_row, register_block, relu_row

# The geometry refusals, by whether the network is the sliders' family (True) or a block list.
NO_FIT = {True: N_("Conv block {i}: a {k}x{k} kernel does not fit the {size}x{size} input left by block {prev} "
                   "(sizes so far: {sizes}). Use 'same' padding, a smaller kernel, or fewer conv layers."),
          False: N_("Block {i} ({kind}): a {k}x{k} kernel does not fit the {size}x{size} input left by block {prev} "
                    "(sizes so far: {sizes}). Use 'same' padding, a smaller kernel, or fewer blocks.")}
NO_POOL = {True: N_("Conv block {i}: its {out}x{out} output is too small for the 2x2 max-pool (sizes so far: "
                    "{sizes} -> {out}). Use 'same' padding, a smaller kernel, or fewer conv layers."),
           False: N_("Block {i} ({kind}): its {out}x{out} output is too small for the 2x2 max-pool (sizes so far: "
                     "{sizes} -> {out}). Use 'same' padding, a smaller kernel, or fewer blocks.")}


@register_block
@dataclass(frozen=True)
class ConvStage(Block):
    """`len(channels)` convolutions, each conv -> [BatchNorm] -> ReLU, then a 2x2 max-pool.
    `pool_before_relu` (Lab 5) puts the pool between the last conv (and its BatchNorm) and its ReLU."""

    channels: tuple[int, ...]  # output channels of each convolution in the stage
    kernel_size: int = 3  # square, the same for every convolution of the stage
    padding: str = "same"  # "valid" (shrinks H, W by k-1) or "same" (keeps them)
    batch_norm: bool = False  # BatchNorm2d after each convolution
    pool: bool = True  # a 2x2 max-pool (stride 2) ends the stage
    pool_before_relu: bool = False
    type: str = field(default="conv", init=False, repr=False)  # names the block type in JSON

    def validate(self, i: int, blocks: tuple[Block, ...]) -> None:
        self.check_channels(i, blocks, self.channels)
        lo, hi = KERNEL_RANGE
        if not is_int(self.kernel_size) or not lo <= self.kernel_size <= hi:
            self.refuse(i, blocks, N_("Block {i} ({kind}): kernel size must be {lo} to {hi}; got {k!r}. Choose 3 "
                                      "or 5."), lo=lo, hi=hi, k=self.kernel_size)
        if self.padding not in ("valid", "same"):
            self.refuse(i, blocks, N_("Block {i} ({kind}): padding must be 'valid' or 'same'; got {p!r}. Choose one "
                                      "of those."), p=self.padding)
        self.check_flags(i, blocks, "batch_norm", "pool", "pool_before_relu")
        if self.pool_before_relu and not self.pool:
            self.refuse(i, blocks, N_("Block {i} ({kind}): pool_before_relu needs the stage's pool; set pool=True "
                                      "or pool_before_relu=False."))

    def layers(self, c: int, h: int, walk: Walk) -> Iterator[Layer]:
        k, same = self.kernel_size, self.padding == "same"
        for j, out_c in enumerate(self.channels):
            last = j == len(self.channels) - 1
            n = walk.count("conv")
            after = h if same else h - k + 1
            if after < 1:
                walk.refuse(NO_FIT[walk.family], kind=self.type, k=k, size=h, prev=walk.i - 1)
            if last and self.pool and after < 2:
                walk.refuse(NO_POOL[walk.family], kind=self.type, out=after)
            h = after
            yield conv_row(f"conv{n}", c, out_c, k, h, same), partial(nn.Conv2d, c, out_c, k, padding=self.padding)
            c = out_c
            if self.batch_norm:
                yield LayerRow(f"bn{n}", f"BatchNorm2d({c})", (c, h, h), 2 * c, f"2×{c} = {2 * c}"), \
                    partial(nn.BatchNorm2d, c)
            relu = relu_row(f"relu{n}", (c, h, h))
            if not (last and self.pool):
                yield relu
                continue
            h //= 2
            pool = (LayerRow(f"pool{walk.count('pool')}", "MaxPool2d(2)", (c, h, h), 0, "no parameters"),
                    partial(nn.MaxPool2d, 2))
            if self.pool_before_relu:
                yield from (pool, (replace(relu[0], output_shape=(c, h, h)), relu[1]))
            else:
                yield from (relu, pool)

    def describe(self) -> str:
        extras = ("+BN" if self.batch_norm else "") + ("" if self.pool else " no pool")
        return f"k{self.kernel_size}[{'-'.join(map(str, self.channels))}]{extras}"

    @property
    def convolutions(self) -> int:
        return len(self.channels)

    @property
    def has_batch_norm(self) -> bool:
        return self.batch_norm

    def drawing_notes(self, c_in: int) -> tuple[tuple[Message, ...], Message | None]:
        notes = [Message(N_("conv {k}×{k}, {padding} padding"), dict(k=self.kernel_size, padding=self.padding))]
        if len(self.channels) > 1:
            notes.append(Message.ngettext("{n} convolution", "{n} convolutions", len(self.channels)))
        if self.batch_norm:
            notes.append(Message(N_("BatchNorm")))
        if self.pool:
            order = N_("max-pool 2×2, then ReLU") if self.pool_before_relu else N_("ReLU, then max-pool 2×2")
            notes.append(Message(order))
        else:
            notes.append(Message(N_("ReLU")))
        return tuple(notes), None

    @classmethod
    def examples(cls) -> tuple[Block, ...]:
        return (cls((4, 6), 3, "valid", batch_norm=True), cls((8,), 5, pool_before_relu=True),
                cls((8,), 3, pool=False), cls((2, 3, 4), 1, "valid"))


def conv_family(channels: tuple[int, ...], kernel_size: int, padding: str, batch_norm: bool = False,
                pool_before_relu: bool = False) -> tuple[ConvStage, ...]:
    """The sliders' family as blocks: one one-conv stage (with its max-pool) per channel count,
    all with the same kernel, padding, BatchNorm and Lab-5 pool order."""
    return tuple(ConvStage((c,), kernel_size, padding, batch_norm, True, pool_before_relu) for c in channels)
