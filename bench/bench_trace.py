"""Issue 28's trace targets on the CPU: one unit's trace (target <= 100 ms server-side) and the
top-k excitations of one convolution over the evaluated test images (once per run and layer,
cached; target <= 5 s on 2 cores), for the Lab-5 net, and for resnet-small and VGG16, whose search
goes through the first test images that fit trace.SEARCH_BUDGET_FLOPS.

    python bench/bench_trace.py            # Lab-5: conv1 and conv2
    python bench/bench_trace.py --all      # and resnet-small's and VGG16's deepest convolutions

Each trace timing is repeated (median and best printed: on a shared machine the best is the least
disturbed); top-k is timed once uncached, then the cached call. The weights do not change the
cost, so the networks are freshly initialised.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from bench_inspect import timed  # noqa: E402  (this folder: the benches' one timing helper)

from mnist_lab.data.datasets import DataConfig, load_raw  # noqa: E402
from mnist_lab.lab import inspection as ir  # noqa: E402
from mnist_lab.lab import trace as tr  # noqa: E402
from mnist_lab.nets.model import build_model  # noqa: E402
from mnist_lab.nets.presets import get_preset  # noqa: E402
from mnist_lab.runs.weights import SavedRun  # noqa: E402
from mnist_lab.training.loop import TrainConfig  # noqa: E402


def once(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(preset: str, layers: list[str], raw, repeats: int) -> None:
    """`raw`: the dataset's raw tensors; None: 10,000 random CIFAR-10-sized test images (no CIFAR-10
    copy is needed: the cost does not depend on the pixels)."""
    cfg = get_preset(preset).model
    data = DataConfig() if raw is not None else DataConfig(dataset="cifar10")
    torch.manual_seed(0)
    run = ir.rebuild(SavedRun(f"bench-{preset}", cfg, TrainConfig(), data, build_model(cfg).state_dict(),
                              None, "finished", None))
    if raw is not None:
        x_test, _ = ir.evaluated_images(run, raw)
    else:
        x_test = torch.randint(0, 256, (10_000, cfg.in_channels, cfg.image_size, cfg.image_size), dtype=torch.uint8)
    x = ir.network_input(run, x_test[0].numpy())
    for name in layers or [tr.conv_layers(run)[-1].name]:
        bench_layer(run, x, x_test, preset, name, repeats)


def bench_layer(run: ir.LoadedRun, x: torch.Tensor, x_test: torch.Tensor, preset: str, name: str,
                repeats: int) -> None:
    layer = tr.find_layer(run, name)
    c, h = layer.out_channels // 2, min(3, tr.pre_activations(run, x, layer).shape[-1] - 1)  # a unit inside the map
    median, best = timed(lambda: tr.trace(run, x, name, c, h, h), repeats)
    print(f"{preset:13s} {name:11s} trace of one unit      median {median * 1000:7.1f} ms  best "
          f"{best * 1000:7.1f} ms  (target 100 ms)")
    cache = tr.ExcitationCache()
    searched = tr.searched_images(run, name, len(x_test))  # as the page searches: the first images that fit
    first = once(lambda: tr.top_units(run, x_test, name, 0, cache=cache, searched=searched))
    again = once(lambda: tr.top_units(run, x_test, name, 1, cache=cache, searched=searched))
    print(f"{preset:13s} {name:11s} top-9, {searched:,} of {len(x_test):,} images "
          f"({tr.flops_to(run, name) / 1e6:.1f} MFLOP each)  first {first:7.2f} s   cached "
          f"{again * 1000:7.1f} ms  (target 5 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--all", action="store_true",
                        help="also resnet-small's and VGG16's deepest convolutions (the searches the budget cuts)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    raw = load_raw(DataConfig())
    bench("lab5", ["conv1", "conv2"], raw, args.repeats)
    if args.all:
        bench("resnet-small", ["res6.conv2"], raw, args.repeats)
        bench("vgg16-cifar", [], None, args.repeats)  # its deepest convolution


if __name__ == "__main__":
    main()
