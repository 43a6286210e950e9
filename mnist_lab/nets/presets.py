"""The named networks in one dict (the lab's four, the week-2 ones), picked by name, and the
constructors the sweeps and lessons write networks with (the sliders' family, a plain FC net)."""
from __future__ import annotations

from dataclasses import dataclass

from mnist_lab.data.datasets import DATASETS
from mnist_lab.errors import ConfigError
from mnist_lab.nets.blocks.base import Block
from mnist_lab.nets.blocks.conv import ConvStage
from mnist_lab.nets.blocks.residual import Residual
from mnist_lab.nets.model import ModelConfig


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


CIFAR = dict(in_channels=DATASETS["cifar10"].channels, image_size=DATASETS["cifar10"].image_size)
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
