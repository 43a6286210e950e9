"""Widget values <-> the core's configs, for the pages. Plain dicts of what the widgets show
(numbers, strings, booleans), so they also fit in a URL. No streamlit here."""
from __future__ import annotations

from mnist_lab.data.datasets import DATASETS, DataConfig
from mnist_lab.errors import ConfigError
from mnist_lab.i18n import N_
from mnist_lab.lab.experiments import CompareConfig, SweepConfig
from mnist_lab.lab.lessons import fit
from mnist_lab.nets.model import ModelConfig
from mnist_lab.nets.presets import PRESETS, Preset
from mnist_lab.training.loop import TrainConfig

SUBSETS = [256, 500, 1000, 2000, 5000, 10000, 20000, 30000, DATASETS["mnist"].train_count]  # last: all images
BATCH_SIZES = [16, 32, 64, 128, 256, 512]


def subsets(dataset: str) -> list[int]:
    """The training-image counts offered for `dataset`: SUBSETS below its training set, then all of it."""
    total = DATASETS[dataset].train_count
    return [n for n in SUBSETS if n < total] + [total]


ALL_SUBSETS = sorted({n for d in DATASETS for n in subsets(d)})  # what a link may name, whatever its dataset
# How a menu names each dataset (msgids): a dataset missing here shows its own title.
DATASET_WORDS = {name: spec.title for name, spec in DATASETS.items()} | {
    "mnist": N_("MNIST: handwritten digits"),
    "fashion-mnist": N_("Fashion-MNIST: clothes, shoes and bags"),
    "cifar10": N_("CIFAR-10: colour photos of animals and vehicles"),
}


# The presets' words as msgids (the core's PRESETS describe them in English): title, layers in
# words where they are words, the published result. A preset missing here shows its own English.
PRESET_WORDS = {
    "lab5": (N_("Lab-5 net"), None, N_("96.88% after epoch 1, 98.91% after epoch 10")),
    "padded-16-32": (N_("Padded 16/32 CNN"),
                     N_("two same-padded k5 blocks (16, 32 channels), Linear(1568→256) → Linear(256→10)"),
                     N_("10 epochs; loss printed every 100 steps")),
    "tiny-fc": (N_("Tiny FC (FC2Layer)"), None, N_("88% after 1 epoch (85% on permuted pixels)")),
    "tiny-cnn": (N_("Tiny CNN"), N_("two k5 blocks of 6 feature maps, Linear(96→50) → Linear(50→10)"),
                 N_("96% after 1 epoch (80% on permuted pixels)")),
    "cifar-course": (N_("The course's CIFAR-10 net"), None, N_("62% after 10 epochs, loss about 0.775")),
    "lenet-cifar": (N_("LeNet as the notes write it"), None, N_("no result given")),
    "vgg16-cifar": (N_("VGG16 for 32×32"),
                    N_("13 same-padded 3×3 convs with BatchNorm in stages of 64, 128, 256, 512, 512 channels, a 2×2 "
                       "max-pool after each stage, Linear(512→10)"),
                    N_("'clearly better' than 62% (no number given)")),
    "resnet-small": (N_("A small residual net"),
                     N_("a 3×3 stem, six residual blocks (16, 32, 64 channels), global average pooling → "
                        "Linear(64→10); in_channels=3, image_size=32 for CIFAR-10"),
                     N_("no result given")),
    "plain-small": (N_("resnet-small without its shortcuts"), N_("the same 13 convolutions as a plain stack"),
                    N_("no result given")),
}
# Experiment 5's networks; every other preset is one of the course notes' week-2 networks.
LAB_PRESETS = ("lab5", "padded-16-32", "tiny-fc", "tiny-cnn")


def preset_words(name: str, _=str) -> tuple[str, str, str]:
    """(title, layers, published result) of a preset through the page's gettext `_`."""
    title, layers = PRESETS[name].description.split(": ", 1)
    words = PRESET_WORDS.get(name)
    if words is None:
        return title, layers, PRESETS[name].published
    return _(words[0]), _(words[1]) if words[1] else layers, _(words[2])


def preset_title(name: str, _=str) -> str:
    """'Lab-5 net' from the preset's description (through the page's gettext `_`)."""
    return preset_words(name, _)[0]


def preset_option(name: str, _=str) -> str:
    """A preset as the menu shows it: whose network it is (Lab 5 or Week 2), then its title."""
    group = N_("Lab 5 · {title}") if name in LAB_PRESETS else N_("Week 2 · {title}")
    return _(group).format(title=preset_title(name, _))


def model_values(m: ModelConfig) -> dict:
    channels = m.conv_channels or (16,)
    return dict(kind=m.kind, layers=max(len(m.conv_channels), 1), kernel=m.kernel_size, padding=m.padding,
                channels=channels[0], double=len(channels) > 1 and channels[1] == 2 * channels[0],
                hidden=", ".join(str(h) for h in m.hidden), pool_first=m.pool_before_relu,
                batch_norm=m.batch_norm, dropout=m.dropout, softmax=m.softmax_before_loss)


def preset_values(p: Preset) -> dict:
    """Every Train widget that a preset decides."""
    return dict(model_values(p.model), optimizer=p.optimizer, lr=p.lr, momentum=p.momentum,
                batch_size=p.batch_size, normalize=p.normalize)


def parse_widths(text: str) -> tuple[int, ...]:
    """'50' or '8, 8' -> widths of the hidden fully-connected layers; '' -> none."""
    parts = [t for t in text.replace(";", ",").replace(" ", ",").split(",") if t]
    try:
        return tuple(int(t) for t in parts)
    except ValueError:
        raise ConfigError("hidden", text, "Hidden units must be whole numbers separated by commas; got {value!r}. "
                          "Write them like '50' or '8, 8'.") from None


def build_model_cfg(v: dict) -> ModelConfig:
    """The network the widgets describe, for the images of `v["dataset"]` (MNIST without one);
    `validate()` it for the core's message."""
    if v["kind"] == "fc":
        model = ModelConfig(kind="fc", conv_channels=(), hidden=parse_widths(v["hidden"]), dropout=v["dropout"],
                            softmax_before_loss=v["softmax"])
    else:
        channels = tuple(v["channels"] * (2**i if v["double"] else 1) for i in range(v["layers"]))
        model = ModelConfig(kind="cnn", conv_channels=channels, kernel_size=v["kernel"], padding=v["padding"],
                            pool_before_relu=v["pool_first"], batch_norm=v["batch_norm"], dropout=v["dropout"],
                            hidden=parse_widths(v["hidden"]), softmax_before_loss=v["softmax"])
    return fit(model, v.get("dataset", "mnist"))


# The presets the Train form's widgets can show whole (the sliders' family, on the images each is
# made for); the others (block lists: VGG16, the residual nets; the course's 6/16-channel net) are
# trained as they are, their input fitted to the chosen dataset (`preset_model`).
SLIDER_PRESETS = [name for name, p in PRESETS.items()
                  if build_model_cfg(dict(model_values(p.model), dataset=p.dataset)) == p.model]


def preset_model(name: str, dataset: str) -> ModelConfig:
    """A preset's network for `dataset`'s images: its channels, size and classes (lessons.fit)."""
    return fit(PRESETS[name].model, dataset)


def build_train_cfg(v: dict) -> TrainConfig:
    return TrainConfig(epochs=v["epochs"], batch_size=v["batch_size"], optimizer=v["optimizer"], lr=v["lr"],
                       momentum=v["momentum"], seed=v["seed"], shuffle=v.get("shuffle", True))


def data_limit(images: int, dataset: str = "mnist") -> int | None:
    """The train_limit for a subset size: None (every image) at or above the dataset's training count."""
    return None if images >= DATASETS[dataset].train_count else images


def build_data_cfg(v: dict) -> DataConfig:
    dataset = v.get("dataset", "mnist")
    return DataConfig(dataset=dataset, normalize=v["normalize"], train_limit=data_limit(v["train_limit"], dataset),
                      permute_pixels=v["permute"])


def matching_preset(v: dict) -> str | None:
    """The preset the widgets currently equal, if any."""
    for name, p in ((n, PRESETS[n]) for n in SLIDER_PRESETS):
        if all(v.get(k) == val for k, val in preset_values(p).items()):
            return name
    return None


def build_sweep_cfg(v: dict) -> SweepConfig:
    hidden = int(v["hidden"])
    return SweepConfig(conv_layers=tuple(sorted(v["layers"])), kernel_sizes=tuple(sorted(v["kernels"])),
                       hidden_units=(hidden,), seeds=v["seeds"], base_channels=v["channels"], padding=v["padding"])


def build_compare_cfg(v: dict) -> CompareConfig:
    cnn = build_model_cfg(dict(model_values(PRESETS["tiny-cnn"].model), layers=v["layers"], kernel=v["kernel"],
                               channels=v["channels"], double=v["double"], hidden=v["hidden"]))
    return CompareConfig(cnn=cnn, seeds=v["seeds"], permutation_seed=v["perm_seed"])
