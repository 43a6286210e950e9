"""Look inside a trained run: reload its network from the kept weights, the confusion matrix on
its test set, per-class accuracy and the most confused pairs, the first layer's filters, every
layer's feature maps for one image, top-k probabilities, an input-gradient saliency map, and a
drawn or uploaded digit prepared the way MNIST's digits were.
"""
from __future__ import annotations

import copy
import io
import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mnist_lab.data import datasets as data_mod
from mnist_lab.data.datasets import DataConfig, RawSplits
from mnist_lab.errors import shorten
from mnist_lab.i18n import N_
from mnist_lab.nets.model import ModelConfig, build_model
from mnist_lab.runs.weights import SavedRun
from mnist_lab.training.loop import TrainConfig
from mnist_lab.training.step import fast_memory_format

MAX_UPLOAD_BYTES = 5 * 2**20  # an uploaded image file
MAX_UPLOAD_PIXELS = 4096 * 4096  # width x height after decoding: refuses decompression bombs
UPLOAD_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
DIGIT_BOX = 20  # MNIST's digits: the bounding box scaled into 20x20 ...
DIGIT_FIELD = data_mod.MNIST.image_size  # ... and centred by centre of mass in 28x28


# ------------------------------------------------------------------------ the dataset
# Only these three functions read the dataset's spec (data.DATASETS) and normalisation.

def normalization(data_cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean per channel, std per channel) applied to pixels scaled to [0, 1]."""
    return data_mod.normalization(data_cfg.normalize, data_cfg.dataset)


def class_names(data_cfg: DataConfig, lang: str = "en") -> list[str]:
    return list(data_mod.DATASETS[data_cfg.dataset].class_names(lang))


def to_network_input(images: torch.Tensor, data_cfg: DataConfig, permutation: torch.Tensor | None) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W) exactly as the run's training data
    was made: the run's normalisation, then its pixel permutation (data.prepare_data's order)."""
    x = data_mod.to_float(images, data_cfg.normalize, data_cfg.dataset)
    return data_mod.permute_pixels(x, permutation) if permutation is not None else x


# ------------------------------------------------------------------------ a reloaded run

@dataclass
class LoadedRun:
    """A stored run's network, rebuilt on the CPU in eval mode, with its configs and permutation."""

    saved: SavedRun
    model: nn.Sequential

    @property
    def run_id(self) -> str:
        return self.saved.run_id

    @property
    def model_cfg(self) -> ModelConfig:
        return self.saved.model_cfg

    @property
    def train_cfg(self) -> TrainConfig:
        return self.saved.train_cfg

    @property
    def data_cfg(self) -> DataConfig:
        return self.saved.data_cfg

    @property
    def permutation(self) -> torch.Tensor | None:
        return self.saved.permutation

    @cached_property
    def class_names(self) -> list[str]:
        return class_names(self.data_cfg)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return to_network_input(images, self.data_cfg, self.permutation)


def rebuild(saved: SavedRun) -> LoadedRun:
    """The network of `saved` with its weights (strict: every key must match), in eval mode."""
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; the global RNG stays as it was
        model = build_model(saved.model_cfg)
    model.load_state_dict(saved.state_dict, strict=True)
    # the layout training used on the CPU (channels_last for a CNN): its convolutions run ~1.5x faster
    model = model.to(memory_format=fast_memory_format(saved.model_cfg, torch.device("cpu")))
    return LoadedRun(saved, model.eval())


def load_run(store, run_id: str) -> LoadedRun:
    """A run of `store` (a ResultStore) ready to inspect; FileNotFoundError when it kept no weights."""
    return rebuild(store.load_weights(run_id))


def evaluated_images(run: LoadedRun, raw: RawSplits | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test set the run was evaluated on (its test limit kept): uint8 images as stored,
    (N, H, W) or (N, C, H, W), and int64 labels (N,)."""
    raw = raw if raw is not None else data_mod.load_raw(run.data_cfg)
    n = run.data_cfg.test_limit or len(raw.x_test)
    return raw.x_test[:n], raw.y_test[:n]


def _ends_in_softmax(model: nn.Module) -> bool:
    last = list(model.children())[-1:] if isinstance(model, nn.Sequential) else []
    return bool(last) and isinstance(last[0], nn.Softmax)


@torch.inference_mode()
def probabilities(run: LoadedRun, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Class probabilities (N, K) for network inputs x (N, C, H, W). A network with the softmax
    mistake already outputs probabilities; others output logits."""
    out = torch.cat([run.model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    return out if _ends_in_softmax(run.model) else out.softmax(dim=1)


def top_k(probs: torch.Tensor, names: list[str], k: int = 3) -> list[tuple[int, str, float]]:
    """The k most probable classes of one image's probabilities (K,): (class, name, probability)."""
    values, classes = probs.topk(min(k, len(probs)))
    return [(int(c), names[int(c)], float(p)) for p, c in zip(values, classes)]


# ------------------------------------------------------------------------ confusion matrix

@dataclass
class Confusion:
    """Predictions on a test set. counts[t, p]: how many images of true class t were predicted p."""

    counts: np.ndarray  # (K, K) int64
    y_true: np.ndarray  # (N,) int64
    y_pred: np.ndarray  # (N,) int64
    confidence: np.ndarray  # (N,) float32, the probability of the predicted class
    class_names: list[str]

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    @property
    def accuracy(self) -> float:
        return float(np.trace(self.counts) / max(self.n, 1))

    def normalized(self) -> np.ndarray:
        """Each row divided by its total: row t is where class t's images went (rows sum to 1)."""
        totals = self.counts.sum(axis=1, keepdims=True)
        return self.counts / np.maximum(totals, 1)

    def per_class(self) -> pd.DataFrame:
        n = self.counts.sum(axis=1)
        correct = np.diag(self.counts)
        return pd.DataFrame(dict(class_id=range(len(n)), name=self.class_names, images=n, correct=correct,
                                 accuracy=correct / np.maximum(n, 1)))

    def confused_pairs(self, k: int = 5) -> pd.DataFrame:
        """The k largest off-diagonal cells: (true, predicted) pairs the network mixes up most,
        with their share of the true class's images."""
        off = self.counts.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:k]
        rows = []
        for flat in order:
            t, p = divmod(int(flat), off.shape[1])
            if off[t, p] == 0:
                break
            rows.append(dict(true=t, true_name=self.class_names[t], predicted=p, predicted_name=self.class_names[p],
                             count=int(off[t, p]), share=float(off[t, p] / max(self.counts[t].sum(), 1))))
        return pd.DataFrame(rows, columns=["true", "true_name", "predicted", "predicted_name", "count", "share"])

    def cell(self, true: int, predicted: int) -> np.ndarray:
        """Test-set indices of the images of class `true` predicted as `predicted`, most confident first."""
        idx = np.flatnonzero((self.y_true == true) & (self.y_pred == predicted))
        return idx[np.argsort(-self.confidence[idx], kind="stable")]

    def misclassified(self) -> pd.DataFrame:
        """Every wrongly predicted test image: index, true class, prediction, its probability."""
        idx = np.flatnonzero(self.y_true != self.y_pred)
        return pd.DataFrame(dict(index=idx, true=self.y_true[idx], predicted=self.y_pred[idx],
                                 probability=self.confidence[idx].astype(float)))


def confusion(run: LoadedRun, images: torch.Tensor, labels: torch.Tensor) -> Confusion:
    """The confusion matrix of the run on uint8 `images` (N, H, W) or (N, C, H, W) with `labels` (N,)."""
    x = run.inputs(images).contiguous(memory_format=fast_memory_format(run.model_cfg, torch.device("cpu")))
    probs = probabilities(run, x, run.train_cfg.eval_batch_size)
    confidence, pred = probs.max(dim=1)
    k = run.model_cfg.n_classes
    y = labels.to(torch.int64)
    counts = torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)
    return Confusion(counts.numpy(), y.numpy(), pred.numpy(), confidence.float().numpy(), run.class_names)


# ------------------------------------------------------------------------ filters and feature maps

def first_layer_filters(run: LoadedRun) -> np.ndarray:
    """The first layer's weights as images (out, C, kh, kw): a CNN's first convolution's kernels,
    or a fully-connected net's first Linear layer's rows reshaped to the input image (for a
    permuted-pixel run put back in the original pixel order, so they can be looked at)."""
    for module in run.model.modules():
        if isinstance(module, nn.Conv2d):
            return module.weight.detach().numpy().copy()
        if isinstance(module, nn.Linear):
            cfg = run.model_cfg
            w = module.weight.detach()  # (out, C*H*W)
            if w.shape[1] != cfg.in_channels * cfg.image_size**2:
                break
            w = w.reshape(-1, cfg.in_channels, cfg.image_size, cfg.image_size)
            if run.permutation is not None:
                w = unpermute(w, run.permutation)
            return w.numpy().copy()
    raise ValueError("This network has no first layer whose weights can be drawn as images.")


def unpermute(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Put pixels shuffled by `perm` (data.permute_pixels) back in their original places."""
    return data_mod.permute_pixels(x, torch.argsort(perm))


@dataclass
class FeatureMap:
    name: str  # module name, e.g. conv1, pool1 (the layer table's names); nested: block.conv
    layer: str  # the module, e.g. Conv2d(1, 10, kernel_size=(5, 5), stride=(1, 1))
    block: int  # 1-based conv block: a new block starts at each layer that is or holds a Conv2d
    maps: np.ndarray  # (C, H, W) float32 for the one image

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.maps.shape)


def feature_maps(run: LoadedRun, x: torch.Tensor) -> list[FeatureMap]:
    """Every layer's output that is still an image (C, H, W), for one input x (1, C, H, W), in
    forward order: each top-level layer, and each Conv2d inside a custom block.

    `run.model` may be shared by every session (the Inspect page caches it), so it is never
    changed here: its top-level layers run one after another, and only a private copy of a block
    that holds convolutions of its own (a residual block) carries the hooks that report them."""
    if x.dim() != 4 or len(x) != 1:
        raise ValueError(f"feature_maps takes one image (1, C, H, W); got shape {tuple(x.shape)}")
    found: list[FeatureMap] = []
    block = 0

    def keep(name: str, module: nn.Module, in_block: int) -> None:
        def hook(_module, _inputs, out) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                found.append(FeatureMap(name, repr(module), in_block, out[0].float().numpy().copy()))
        module.register_forward_hook(hook)

    layers = []  # (name, the module to run, its block): the shared layer, or a hooked copy of it
    for name, child in run.model.named_children():
        if any(isinstance(m, nn.Conv2d) for m in child.modules()):
            block += 1
        nested = [sub_name for sub_name, sub in child.named_modules()
                  if sub is not child and isinstance(sub, nn.Conv2d)]
        if nested:
            child = copy.deepcopy(child)  # this call's own copy (small: one block), hooked below
            subs = dict(child.named_modules())
            for sub_name in nested:
                keep(f"{name}.{sub_name}", subs[sub_name], block)
        layers.append((name, child, block))
    with torch.inference_mode():
        for name, layer, layer_block in layers:
            x = layer(x)
            if x.dim() == 4:
                found.append(FeatureMap(name, repr(layer), layer_block, x[0].float().numpy().copy()))
    return found


def saliency(run: LoadedRun, x: torch.Tensor, target: int, original_order: bool = True) -> np.ndarray:
    """|d output[target] / d input| for one image x (1, C, H, W), the largest over channels:
    (H, W). For a permuted-pixel run the gradient is put back in the original pixel order
    (`original_order`), so it can be laid over the digit."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = run.model(x)
        (grad,) = torch.autograd.grad(out[0, target], x)
    grad = grad.abs().amax(dim=1)  # (1, H, W)
    if original_order and run.permutation is not None:
        grad = unpermute(grad, run.permutation)
    return grad[0].numpy()


# ------------------------------------------------------------------------ your own digit

class ImageRefused(ValueError):
    """An upload (or drawing) that is not a usable image: the message says why and what to upload
    instead. `template` (an English msgid) and `params` let a page word it in its reader's
    language (i18n.render); `value` is the file's own name, shown as given."""

    def __init__(self, template: str, /, **params: Any):
        self.template, self.params = template, params
        super().__init__(template.format(**params))


def check_size(n_bytes: int, name: str = "the file", max_bytes: int = MAX_UPLOAD_BYTES) -> None:
    """Refuse (ImageRefused) a file larger than `max_bytes`, before reading it."""
    if n_bytes > max_bytes:
        raise ImageRefused(N_("{value} is {size:.1f} MiB; images up to {most} MiB are accepted. Upload a smaller "
                              "picture of one digit."), value=name, size=n_bytes / 2**20, most=max_bytes // 2**20)


def decode_image(blob: bytes, name: str = "the file", max_bytes: int = MAX_UPLOAD_BYTES,
                 max_pixels: int = MAX_UPLOAD_PIXELS):
    """A PIL image from an uploaded file, refused (ImageRefused) when it is too large, not an
    image, or decodes to more than `max_pixels` (a decompression bomb: a small file that claims
    a huge picture, found from its header before the pixels are decoded)."""
    from PIL import Image, UnidentifiedImageError

    check_size(len(blob), name, max_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(blob), formats=UPLOAD_FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageRefused(N_("{value} is {w}×{h} pixels; up to {most:,} pixels are accepted. Upload a "
                                      "smaller picture of one digit."), value=name, w=w, h=h, most=max_pixels)
            img.load()
        except ImageRefused:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # PIL's own, larger limit
            raise ImageRefused(N_("{value} declares more pixels than this lab accepts (up to {most:,}), as a "
                                  "decompression bomb does. Upload a smaller picture of one digit."),
                               value=name, most=max_pixels) from None
        except UnidentifiedImageError as exc:
            raise ImageRefused(N_("{value} is not an image this lab reads ({kind}): upload a PNG, JPEG, GIF, BMP or "
                                  "WebP picture."), value=name, kind=type(exc).__name__) from None
        except (OSError, SyntaxError, ValueError, MemoryError) as exc:
            raise ImageRefused(N_("{value} could not be decoded as an image ({kind}): upload a PNG or JPEG picture."),
                               value=name, kind=shorten(str(exc), 120, quote=False) or type(exc).__name__) from None
    return img


def grey_ink(img) -> np.ndarray:
    """A PIL image in MNIST's convention, light ink on black, uint8 (H, W). A picture with
    transparency is its opacity (ink wherever something was painted); an opaque one is its grey
    levels, inverted when its border is light (dark ink on paper)."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        alpha = np.asarray(img.convert("RGBA"))[..., 3]
        if alpha.min() < 255:
            return alpha.copy()
    grey = np.asarray(img.convert("L"), dtype=np.uint8)
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    return (255 - grey) if border.mean() > 127 else grey.copy()


def prepare_digit(ink: np.ndarray) -> np.ndarray:
    """A drawing (H, W) of light ink on black as MNIST's digits were made: its bounding box scaled
    to fit 20×20 (aspect kept, anti-aliased), placed in 28×28 with its centre of mass at the
    centre. Returns uint8 (28, 28). An empty drawing raises ValueError."""
    from PIL import Image

    ink = np.asarray(ink, dtype=np.float32)
    if ink.ndim != 2:
        raise ValueError(f"prepare_digit takes a grey image (H, W); got shape {ink.shape}")
    mask = ink > 0.1 * ink.max() if ink.max() > 0 else np.zeros_like(ink, dtype=bool)
    if not mask.any():
        raise ImageRefused(N_("The drawing is empty: draw a digit (or upload a picture of one)."))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    h, w = crop.shape
    scale = DIGIT_BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL: (width, height)
    patch = np.asarray(Image.fromarray(crop.clip(0, 255).astype(np.uint8)).resize(size, Image.LANCZOS),
                       dtype=np.float32)
    total = patch.sum()
    ys, xs = np.indices(patch.shape)
    cy, cx = (ys * patch).sum() / total, (xs * patch).sum() / total
    centre = (DIGIT_FIELD - 1) / 2  # 13.5: the middle of pixels 0..27
    top = int(np.clip(round(centre - cy), 0, DIGIT_FIELD - patch.shape[0]))
    left = int(np.clip(round(centre - cx), 0, DIGIT_FIELD - patch.shape[1]))
    out = np.zeros((DIGIT_FIELD, DIGIT_FIELD), dtype=np.float32)
    out[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    return out.round().clip(0, 255).astype(np.uint8)


def prepare_upload(img, run: LoadedRun) -> np.ndarray:
    """An uploaded image as the run's dataset's images are: MNIST's digit preparation for MNIST;
    for a grey dataset (Fashion-MNIST) light on dark, resized to its size, uint8 (S, S); for a
    colour one (CIFAR-10) resized, uint8 (3, S, S) as the dataset stores it."""
    from PIL import Image

    cfg = run.model_cfg
    if run.data_cfg.dataset == "mnist":
        return prepare_digit(grey_ink(img))
    size = (cfg.image_size, cfg.image_size)
    if cfg.in_channels == 1:
        return np.asarray(Image.fromarray(grey_ink(img)).resize(size, Image.LANCZOS), dtype=np.uint8)
    rgb = np.asarray(img.convert("RGB").resize(size, Image.LANCZOS), dtype=np.uint8)  # (S, S, 3)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


@dataclass
class Prediction:
    image: np.ndarray  # uint8 (H, W) or (C, H, W), what was prepared, in the original pixel order
    seen: np.ndarray  # float32 (C, H, W), the network's input (normalised, permuted if the run was)
    probs: np.ndarray  # (K,)
    top: list[tuple[int, str, float]]  # top-3: (class, name, probability)


def network_input(run: LoadedRun, image: np.ndarray) -> torch.Tensor:
    """One prepared uint8 image (H, W) or (C, H, W) as the network's input (1, C, H, W)."""
    return run.inputs(torch.from_numpy(np.array(image, dtype=np.uint8))[None])  # a copy: PIL arrays are read-only


def predict(run: LoadedRun, image: np.ndarray, k: int = 3) -> Prediction:
    """One prepared uint8 image through the run's network."""
    x = network_input(run, image)
    probs = probabilities(run, x)[0]
    return Prediction(image, x[0].numpy(), probs.numpy(), top_k(probs, run.class_names, k))

