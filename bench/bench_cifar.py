"""Benchmark, week 2 (issue 12), in one run on one device: the classic torchvision DataLoader loop
vs mnist_lab's engine for `cifar-course` and `lenet-cifar`, an s/epoch for `vgg16-cifar`, and
the Lab-5 epoch with its classic-loop ratio (the no-regression check of bench_train.py).

    python bench/bench_cifar.py                 # figures (the lead runs it on a quiet machine)
    python bench/bench_cifar.py --quick         # a smoke test on small subsets: NOT figures

There is no CIFAR-10 offline here, so the CIFAR rows train on RANDOM uint8 images of CIFAR-10's
exact shape (50,000 x 32 x 32 x 3 training, 10,000 test, 10 random labels): the work per epoch is
the real one, the accuracy is chance. VGG16's epoch on the CPU is extrapolated from a few
iterations (and a timed slice of the test evaluation), and says so.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_train import run_classic, run_engine, write_torchvision_layout  # noqa: E402

from mnist_lab.data.datasets import DataConfig, TensorData, normalization, prepare_data  # noqa: E402
from mnist_lab.nets.model import build_model  # noqa: E402
from mnist_lab.nets.presets import get_preset  # noqa: E402
from mnist_lab.training.loop import TrainConfig, evaluate, train  # noqa: E402
from mnist_lab.training.preflight import resolve_device  # noqa: E402

CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000  # CIFAR-10's counts (lab-spec.md)


def random_cifar(n_train: int, n_test: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """uint8 images (N, 32, 32, 3), as torchvision's CIFAR10 holds them, and int64 labels 0-9."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_train),
            rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n_test))


class ClassicCIFAR(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: a PIL image from the HWC uint8 array,
    then the transform (ToTensor + Normalize)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform):
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.x[i])), int(self.y[i])


def classic_cifar_epoch(name: str, arrays, device: torch.device, workers: int) -> float:
    """One epoch (training + test evaluation) of the pytorch/examples-style loop: DataLoader with
    shuffle=True, per-sample transforms, `loss.item()` every step. Returns wall seconds."""
    from torchvision import transforms

    preset = get_preset(name)
    mean, std = normalization(preset.normalize, "cifar10")  # per channel
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    x_train, y_train, x_test, y_test = arrays
    kw = dict(num_workers=workers, pin_memory=device.type == "cuda")
    train_loader = torch.utils.data.DataLoader(ClassicCIFAR(x_train, y_train, transform),
                                               batch_size=preset.batch_size, shuffle=True, **kw)
    test_loader = torch.utils.data.DataLoader(ClassicCIFAR(x_test, y_test, transform), batch_size=1000, **kw)
    torch.manual_seed(0)
    model = build_model(preset.model).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=preset.momentum)
    t0 = time.perf_counter()
    model.train()
    for x, y in train_loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        loss.item()
    model.eval()
    with torch.no_grad():
        for x, y in test_loader:
            (model(x.to(device)).argmax(1) == y.to(device)).sum().item()
    return time.perf_counter() - t0


def engine_data(arrays, normalize: str, device: torch.device) -> TensorData:
    """The same random images as the engine holds them: (N, 3, 32, 32) float32, normalised, on the device."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization(normalize, "cifar10"))

    def floats(x: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - mean) / std).contiguous().to(device)

    x_train, y_train, x_test, y_test = arrays
    dataset = "cifar10"
    return TensorData(floats(x_train), torch.from_numpy(y_train).to(device), floats(x_test),
                      torch.from_numpy(y_test).to(device), "random uint8, CIFAR-10's shape",
                      config=DataConfig(dataset=dataset, normalize=normalize))


def preset_train_cfg(name: str, device: torch.device, **kw) -> TrainConfig:
    p = get_preset(name)
    return TrainConfig(**{"epochs": 1, "batch_size": p.batch_size, "optimizer": p.optimizer, "lr": p.lr,
                          "momentum": p.momentum, "device": str(device), **kw})


def vgg_epoch_estimate(data: TensorData, device: torch.device, iterations: int, n_train: int,
                       n_test: int) -> tuple[float, str]:
    """VGG16's s/epoch on the full set, from `iterations` timed steps (after one warm-up) and the
    test evaluation of one slice, scaled to `n_train` / `n_test` images."""
    cfg = preset_train_cfg("vgg16-cifar", device, progress_every_s=0.0)  # an event per iteration
    bs = cfg.batch_size
    sub = TensorData(data.x_train[:bs * (iterations + 1)], data.y_train[:bs * (iterations + 1)],
                     data.x_test[:bs], data.y_test[:bs], data.source, config=data.config)
    times: list[float] = []
    last = [time.perf_counter()]

    def on_progress(event) -> None:
        if event.kind == "iterations":
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now
    result = train(get_preset("vgg16-cifar").model, cfg, sub, on_progress=on_progress)
    per_step = statistics.median(times[1:]) if len(times) > 1 else times[0]
    model = build_model(get_preset("vgg16-cifar").model)
    model.load_state_dict(result.state_dict)
    model = model.to(device, memory_format=torch.channels_last if device.type == "cpu" else torch.contiguous_format)
    t0 = time.perf_counter()
    evaluate(model, sub.x_test, sub.y_test, bs)
    eval_s = (time.perf_counter() - t0) / len(sub.x_test) * n_test
    steps = -(-n_train // bs)
    return per_step * steps + eval_s, (f"extrapolated: {per_step:.2f} s/iteration x {steps} iterations (median of "
                                       f"{len(times) - 1} after a warm-up) + evaluation {eval_s:.1f} s "
                                       f"(from {len(sub.x_test)} images); engine {result.engine}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu (the issue's target), cuda or auto")
    parser.add_argument("--quick", action="store_true", help="small subsets, a smoke test only: not figures")
    parser.add_argument("--vgg-iterations", type=int, default=5)
    parser.add_argument("--classic-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    n_train, n_test = (1024, 256) if args.quick else (CIFAR_TRAIN, CIFAR_TEST)
    mnist_limit = 2048 if args.quick else None
    vgg_iterations = 2 if args.quick else args.vgg_iterations
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# bench_cifar | device {device} ({name}) | torch {torch.__version__} | threads {torch.get_num_threads()} "
          f"| cpus {os.cpu_count()} | {time.strftime('%Y-%m-%d %H:%M')}"
          + (" | QUICK: not figures" if args.quick else ""))
    print(f"# CIFAR rows: RANDOM uint8 images of CIFAR-10's shape ({n_train:,} x 32 x 32 x 3 train, {n_test:,} "
          "test); no CIFAR-10 offline here. s/epoch = training + test evaluation.")
    rows = []
    arrays = random_cifar(n_train, n_test)
    for preset in ("cifar-course", "lenet-cifar"):
        classic = classic_cifar_epoch(preset, arrays, device, args.classic_workers)
        data = engine_data(arrays, get_preset(preset).normalize, device)
        result = train(get_preset(preset).model, preset_train_cfg(preset, device), data)
        engine = result.epochs[0].seconds
        rows.append((preset, f"engine:{result.engine}", engine, f"classic {classic:.2f} s", classic / engine))
    data = engine_data(arrays, get_preset("vgg16-cifar").normalize, device)
    vgg_s, how = vgg_epoch_estimate(data, device, vgg_iterations, n_train, n_test)
    rows.append(("vgg16-cifar", "engine", vgg_s, how, None))
    del data

    # Lab-5 on MNIST, as bench_train.py measures it: the no-regression row
    mnist = prepare_data(DataConfig(normalize=get_preset("lab5").normalize, train_limit=mnist_limit), device=device)
    with tempfile.TemporaryDirectory() as tmp:
        write_torchvision_layout(Path(tmp))
        classic_row = run_classic(Path(tmp), 1, 0, device, args.classic_workers) if mnist_limit is None else None
    engine_row = run_engine("auto", mnist, 1, 0, str(device))
    lab5_classic = classic_row.epoch_s[0] if classic_row else None
    rows.append(("lab5 (MNIST)", engine_row.path, engine_row.epoch_s[0],
                 f"classic {lab5_classic:.2f} s" if lab5_classic else "classic skipped in --quick",
                 lab5_classic / engine_row.epoch_s[0] if lab5_classic else None))

    print(f"\n{'network':14s} {'path':24s} {'s/epoch':>9s} {'classic/engine':>15s}  notes")
    for net, path, seconds, note, ratio in rows:
        print(f"{net:14s} {path:24s} {seconds:9.2f} {f'{ratio:.2f}x' if ratio else '-':>15s}  {note}")


if __name__ == "__main__":
    main()
