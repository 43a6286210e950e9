"""Benchmark: the Lab-5 net trained by the classic torchvision loop and by mnist_lab's engine
(every engine path this machine can run), same hyper-parameters, side by side in one run.

    python bench/bench_train.py --device cpu --epochs 1
    python bench/bench_train.py --device cuda --epochs 10 --seeds 3

Prints seconds per epoch, setup seconds, test accuracy and ratios; the last line is
`speedup: X.XX` = classic s/epoch / engine s/epoch (the engine as `train()` runs it by default).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mnist_lab.data.datasets import DataConfig, encode_idx, load_mnist, normalization, prepare_data  # noqa: E402
from mnist_lab.nets.model import build_model  # noqa: E402
from mnist_lab.nets.presets import get_preset  # noqa: E402
from mnist_lab.training.engines import ENGINE_NAMES  # noqa: E402
from mnist_lab.training.loop import TrainConfig, select_engine, train  # noqa: E402
from mnist_lab.training.preflight import resolve_device  # noqa: E402


@dataclass
class Row:
    path: str
    seed: int
    setup_s: float  # from the call until the first epoch starts (datasets, loaders, capture)
    epoch_s: list[float]  # wall seconds of each epoch, training and test evaluation
    total_s: float  # the whole call, setup included
    test_acc: float
    first_losses: list[float]


def write_torchvision_layout(root: Path) -> None:
    """The cached uint8 tensors as the four uncompressed IDX files torchvision's MNIST reads
    (ROOT/MNIST/raw/*-ubyte), so the classic loop runs offline on the same bytes."""
    raw = load_mnist()
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    for name, t in (("train-images-idx3-ubyte", raw.x_train), ("train-labels-idx1-ubyte", raw.y_train),
                    ("t10k-images-idx3-ubyte", raw.x_test), ("t10k-labels-idx1-ubyte", raw.y_test)):
        (folder / name).write_bytes(encode_idx(t.numpy().astype("uint8")))


def run_classic(root: Path, epochs: int, seed: int, device: torch.device, workers: int) -> Row:
    """pytorch/examples mnist/main.py style: torchvision dataset, DataLoader(shuffle=True),
    per-sample ToTensor + Normalize, and `loss.item()` after every step."""
    from torchvision import datasets, transforms

    preset = get_preset("lab5")
    (mean,), (std,) = normalization(preset.normalize)  # MNIST: one channel
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    train_set = datasets.MNIST(str(root), train=True, download=False, transform=transform)
    test_set = datasets.MNIST(str(root), train=False, download=False, transform=transform)
    cuda = device.type == "cuda"
    loader_kw = dict(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=preset.batch_size, shuffle=True, **loader_kw)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=1000, **loader_kw)
    model = build_model(preset.model).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=preset.momentum)
    setup = time.perf_counter() - t0

    losses: list[float] = []
    epoch_s = []
    acc = 0.0
    for _ in range(epochs):
        e0 = time.perf_counter()
        model.train()
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        correct = 0
        with torch.no_grad():
            for x, y in test_loader:
                x, y = x.to(device), y.to(device)
                correct += (model(x).argmax(1) == y).sum().item()
        acc = correct / len(test_set)
        epoch_s.append(time.perf_counter() - e0)
    return Row("classic", seed, setup, epoch_s, time.perf_counter() - t0, acc, losses[:3])


def run_engine(engine: str, data, epochs: int, seed: int, device: str) -> Row:
    preset = get_preset("lab5")
    cfg = TrainConfig(epochs=epochs, batch_size=preset.batch_size, optimizer=preset.optimizer, lr=preset.lr,
                      momentum=preset.momentum, seed=seed, device=device, engine=engine)
    t0 = time.perf_counter()
    result = train(preset.model, cfg, data)
    total = time.perf_counter() - t0
    epoch_s = [m.seconds for m in result.epochs]
    return Row(f"engine:{result.engine}" + ("" if engine != "auto" else " (auto)"), seed,
               total - sum(epoch_s), epoch_s, total, result.final_test_acc, result.losses[:3])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1, help="runs per path, seeds 0..N-1")
    parser.add_argument("--skip-classic", action="store_true", help="engine paths only (no speedup line)")
    parser.add_argument("--classic-epochs", type=int, default=None,
                        help="epochs of the classic loop (default --epochs; fewer saves time on slow machines)")
    parser.add_argument("--classic-workers", type=int, default=None,
                        help="DataLoader workers of the classic loop "
                             "(default: 0 on CPU, 1 on CUDA as in pytorch/examples)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for every path")
    parser.add_argument("--engines", nargs="*", default=None,
                        help="engine paths to time (default: plain and every fast path this device runs)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.classic_workers if args.classic_workers is not None else (1 if device.type == "cuda" else 0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    print(f"# Lab-5 net, batch 64, SGD lr 0.01 momentum 0.5 | device {device} ({name}) | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | cpus {os.cpu_count()} | {time.strftime('%Y-%m-%d %H:%M')}")

    t0 = time.perf_counter()
    data = prepare_data(DataConfig(normalize=get_preset("lab5").normalize), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print(f"engine data: load + normalise + copy to {device}: {time.perf_counter() - t0:.2f} s "
          "(once, outside the timings)")

    lab5 = get_preset("lab5").model
    engines = ["plain", *[e for e in ENGINE_NAMES if e not in ("auto", "plain")
                          and select_engine(lab5, TrainConfig(engine=e), device) == e]]
    auto = select_engine(lab5, TrainConfig(engine="auto"), device)
    if args.engines is not None:
        engines = [e for e in engines if e in args.engines]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_classic:
            write_torchvision_layout(Path(tmp))
        for seed in range(args.seeds):
            if not args.skip_classic:
                rows.append(run_classic(Path(tmp), args.classic_epochs or args.epochs, seed, device, workers))
            for engine in engines:
                rows.append(run_engine(engine, data, args.epochs, seed, str(device)))

    print(f"\n{'path':28s} {'s/epoch':>8s} {'first':>7s} {'setup s':>8s} {'total s':>8s} {'test acc':>9s} "
          f"{'vs classic':>10s}")
    by_path: dict[str, list[Row]] = {}
    for r in rows:
        by_path.setdefault(r.path.replace(" (auto)", ""), []).append(r)

    def per_epoch(rs: list[Row]) -> float:
        # steady-state: epochs after the first when there are several (the first pays warm-up)
        vals = [s for r in rs for s in (r.epoch_s[1:] if len(r.epoch_s) > 1 else r.epoch_s)]
        return statistics.median(vals)

    classic = per_epoch(by_path["classic"]) if "classic" in by_path else None
    for path, rs in by_path.items():
        spe = per_epoch(rs)
        ratio = f"{classic / spe:9.2f}x" if classic else "-"
        accs = [r.test_acc for r in rs]
        acc = f"{100 * statistics.mean(accs):.2f}%" + (f"±{100 * statistics.stdev(accs):.2f}" if len(accs) > 1 else "")
        print(f"{path:28s} {spe:8.3f} {statistics.median(r.epoch_s[0] for r in rs):7.3f} "
              f"{statistics.median(r.setup_s for r in rs):8.3f} {statistics.median(r.total_s for r in rs):8.3f} "
              f"{acc:>9s} {ratio:>10s}")
    print("\nper run: " + "; ".join(f"{r.path} seed {r.seed}: setup {r.setup_s:.3f} s, total {r.total_s:.3f} s, "
                                    f"acc {100 * r.test_acc:.2f}%" for r in rows))
    print("(s/epoch: median epoch wall time, training + test evaluation, epochs after the first when "
          "--epochs > 1; first: the first epoch; total: the whole call, setup included)")
    if classic and f"engine:{auto}" in by_path:
        engine_spe = per_epoch(by_path[f"engine:{auto}"])
        print(f"engine (auto = {auto}) vs classic")
        print(f"speedup: {classic / engine_spe:.2f}")


if __name__ == "__main__":
    main()
