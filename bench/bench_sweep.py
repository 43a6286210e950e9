"""The lab sweep as one timed command (issue 4, target P2): conv layers {1,2,3} x kernel
{3,5,7} x 3 seeds x 5 epochs, width 16 doubling per block, same padding, batch 64, Lab-5
optimiser (SGD lr 0.01, momentum 0.5), by the fastest path this machine has.

    python bench/bench_sweep.py                     # the whole sweep (135 model-epochs)
    python bench/bench_sweep.py --quick             # a CPU smoke run: 2 x 2 cells, 1 seed, 2,000 images
    python bench/bench_sweep.py --mode sequential   # one run after another through train()
    python bench/bench_sweep.py --engine stacked    # each cell's seeds as one stacked network

Prints a table of every run's final test accuracy, then `sweep wall: X.XX s`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnist_lab.data.datasets import DataConfig, prepare_data  # noqa: E402
from mnist_lab.nets.presets import cnn_config, get_preset  # noqa: E402
from mnist_lab.training.loop import TrainConfig, train, train_many  # noqa: E402
from mnist_lab.training.preflight import resolve_device  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=None, help="runs per cell (default 3; 1 with --quick)")
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--kernels", type=int, nargs="+", default=[3, 5, 7])
    parser.add_argument("--train-limit", type=int, default=None, help="first N training images only")
    parser.add_argument("--mode", choices=["many", "sequential"], default="many",
                        help="many: train_many (side by side on a GPU); sequential: train() per run")
    parser.add_argument("--engine", default="auto", help="TrainConfig.engine for every run")
    parser.add_argument("--repeat", type=int, default=1,
                        help="run the sweep N times in one process (later runs find cuDNN's plans warm)")
    parser.add_argument("--quick", action="store_true",
                        help="CPU smoke: 1-2 layers x k3/k5, 1 seed, 1 epoch, 2,000 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.kernels, args.epochs = [1, 2], [3, 5], 1
        args.seeds = args.seeds or 1
        args.train_limit = args.train_limit or 2000
    args.seeds = args.seeds or 3

    device = resolve_device(args.device)
    preset = get_preset("lab5")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    base = TrainConfig(epochs=args.epochs, batch_size=preset.batch_size, optimizer=preset.optimizer, lr=preset.lr,
                       momentum=preset.momentum, device=str(device), engine=args.engine)
    jobs = [(cnn_config(layers, kernel, base_channels=16, padding="same"), replace(base, seed=seed))
            for layers in args.layers for kernel in args.kernels for seed in range(args.seeds)]
    print(f"# sweep: {len(jobs)} runs x {args.epochs} epochs = {len(jobs) * args.epochs} model-epochs | "
          f"device {device} ({name}) | torch {torch.__version__} | mode {args.mode} | "
          f"{time.strftime('%Y-%m-%d %H:%M')}")

    data = prepare_data(DataConfig(normalize=preset.normalize, train_limit=args.train_limit), device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    for repeat in range(1, args.repeat + 1):
        first_event: list[float] = []
        t0 = time.perf_counter()

        def on_progress(event, first_event=first_event, t0=t0) -> None:
            if not first_event:
                first_event.append(time.perf_counter() - t0)

        if args.mode == "many":
            results = train_many(jobs, data, on_progress=on_progress)
        else:
            results = [train(m, t, data, on_progress=on_progress) for m, t in jobs]
        wall = time.perf_counter() - t0
        print(f"run {repeat}: wall {wall:.2f} s, first progress event after {first_event[0]:.2f} s", flush=True)

    print(f"\n{'layers':>6s} {'kernel':>6s} {'params':>8s} {'engine':>10s} {'test acc (per seed)':>30s}")
    for layers in args.layers:
        for kernel in args.kernels:
            cell = [r for r in results if r.model_cfg.conv_layers == layers and r.model_cfg.kernel_size == kernel]
            accs = " ".join(f"{100 * r.final_test_acc:.2f}" for r in cell)
            print(f"{layers:6d} {kernel:6d} {cell[0].params:8d} {cell[0].engine:>10s} {accs:>30s}")
    steps = sum(len(r.losses) for r in results)
    print(f"mean final accuracy {100 * statistics.mean(r.final_test_acc for r in results):.2f}% | "
          f"{steps} iterations, every loss kept | engines: {sorted({r.engine for r in results})}")
    print(f"sweep wall: {wall:.2f} s" + (f" (run {args.repeat} of {args.repeat})" if args.repeat > 1 else ""))


if __name__ == "__main__":
    main()
