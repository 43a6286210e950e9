"""Benchmark: a CNN's conv blocks, forward + backward for one batch, in the cpu-native engine's
C++ kernels against PyTorch's layers as the plain engine runs them on the CPU (channels_last,
oneDNN), side by side in one process.

    python bench/bench_native.py [--batch 64] [--threads 2] [--rounds 7]

Prints ms per batch (median of the rounds) and the ratio per network, and the largest
difference between the two paths' outputs and weight gradients.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnist_lab.nets.model import ModelConfig, build_model  # noqa: E402
from mnist_lab.nets.presets import cnn_config, get_preset  # noqa: E402
from mnist_lab.training.native import NativeCNN, load_library  # noqa: E402

NETS = {
    "Lab-5 (1-10-20, k5)": get_preset("lab5").model,
    "tiny CNN (6-6, k5)": get_preset("tiny-cnn").model,
    "sweep 1 block k5 (16)": cnn_config(1, 5),
    "sweep 2 blocks k3 (16-32)": cnn_config(2, 3),
    "sweep 3 blocks k7 (16-32-64)": cnn_config(3, 7),
}


def conv_part(model: torch.nn.Module) -> torch.nn.Sequential:
    children = list(model.named_children())
    cut = next(i for i, (name, _) in enumerate(children) if name == "flatten")
    return torch.nn.Sequential(*[m for _, m in children[:cut]])


def time_ms(fn, rounds: int, reps: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t0) / reps * 1e3)
    return statistics.median(times)


def bench(name: str, model_cfg: ModelConfig, batch: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = build_model(model_cfg)
    fast = NativeCNN(copy.deepcopy(model), model_cfg)
    plain = conv_part(model).to(memory_format=torch.channels_last)
    x = torch.randn(batch, 1, 28, 28)
    x_last = x.contiguous(memory_format=torch.channels_last)
    out = plain(x_last)
    grad = torch.randn_like(out)

    def run_plain():
        plain.zero_grad(set_to_none=True)
        plain(x_last).backward(grad)

    def run_fast():
        fast.zero_grad(set_to_none=True)
        fast_blocks_forward(fast, x).backward(grad)

    run_plain()
    run_fast()
    errors = [(a.grad - b.grad).abs().max().item() / b.grad.abs().max().item()
              for a, b in zip(fast.model.parameters(), model.parameters()) if a.grad is not None and b.grad is not None]
    reps = max(1, int(200 / max(1.0, time_ms(run_plain, 1, 3))))
    plain_ms, fast_ms = time_ms(run_plain, rounds, reps), time_ms(run_fast, rounds, reps)
    fwd_ms = time_ms(lambda: fast.blocks.forward(x), rounds, reps)
    return dict(net=name, plain_ms=plain_ms, native_ms=fast_ms, native_fwd_ms=fwd_ms, ratio=plain_ms / fast_ms,
                max_grad_err=max(errors), out_err=(fast_blocks_forward(fast, x) - out).abs().max().item())


def fast_blocks_forward(fast: NativeCNN, x: torch.Tensor) -> torch.Tensor:
    from mnist_lab.training.native import ConvBlocksFn

    params = [t for conv in fast.blocks.convs for t in (conv.weight, conv.bias)]
    return ConvBlocksFn.apply(x, fast.blocks, *params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_library()
    print(f"# conv blocks forward + backward, batch {args.batch} | {platform.machine()} | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | {datetime.now():%Y-%m-%d %H:%M} | kernels ready in "
          f"{time.perf_counter() - t0:.2f} s")
    print(f"{'net':30s} {'plain ms':>9s} {'native ms':>10s} {'(fwd)':>7s} {'ratio':>6s} {'grad err':>9s} "
          f"{'out err':>8s}")
    for name, model_cfg in NETS.items():
        r = bench(name, model_cfg, args.batch, args.rounds)
        print(f"{r['net']:30s} {r['plain_ms']:9.3f} {r['native_ms']:10.3f} {r['native_fwd_ms']:7.3f} "
              f"{r['ratio']:5.2f}x {r['max_grad_err']:9.1e} {r['out_err']:8.1e}")
    print("(plain: PyTorch's conv/pool/ReLU layers in channels_last, as the plain engine runs them; native: the "
          "C++ kernels of the cpu-native engine; ms per batch, median of the rounds; grad err: largest weight "
          "gradient difference relative to the largest gradient)")


if __name__ == "__main__":
    main()
