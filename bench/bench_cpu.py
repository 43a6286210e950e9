"""CPU ablation for the Lab-5 training step: which memory layout, thread count, optimiser
implementation and per-step bookkeeping make an epoch fastest (issue 4, target P3 <= 3.5 s).

    python bench/bench_cpu.py                # every variant, interleaved rounds
    python bench/bench_cpu.py engine nchw    # some of them

Each variant trains `--steps` iterations from the same start, in several interleaved rounds;
the best round is reported as seconds per 938-step epoch (training only, no evaluation), since
on a shared machine the best round is the one least disturbed by other processes.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnist_lab.data.datasets import DataConfig, prepare_data  # noqa: E402
from mnist_lab.nets.model import build_model  # noqa: E402
from mnist_lab.nets.presets import get_preset  # noqa: E402
from mnist_lab.training.step import PlainStep  # noqa: E402

VARIANTS = {  # name -> options of `run`; "engine" is what train() does on the CPU (step.PlainStep)
    "engine": {},  # channels_last, default (for-loop) SGD, randperm slice gathered per step, loss into a buffer
    "nchw": dict(channels_last=False),
    "fused-sgd": dict(opt=dict(fused=True)),
    "foreach-sgd": dict(opt=dict(foreach=True)),
    "pre-permuted": dict(prepermute=True),  # gather the whole epoch once, then contiguous slices
    "no-mkldnn": dict(mkldnn=False),
    "1-thread": dict(threads=1),
    "compile": dict(compile=True),  # torch.compile(model); compile time not included
}


def run(data, steps: int, channels_last: bool = True, opt: dict | None = None, prepermute: bool = False,
        mkldnn: bool = True, threads: int | None = None, compile: bool = False) -> float:
    """Seconds per 938 steps for one variant (after 10 warm-up steps), each step the engine's own
    (step.PlainStep): only the set-up around it varies."""
    preset = get_preset("lab5")
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    try:
        torch.manual_seed(0)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(preset.model).to(memory_format=layout)
        optimizer = torch.optim.SGD(model.parameters(), lr=preset.lr, momentum=preset.momentum,
                                    **(opt or {}))
        x_train, y_train = data.x_train.contiguous(memory_format=layout), data.y_train
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))
        if prepermute:  # the epoch's images gathered once: each batch is then a contiguous slice
            x_train, y_train, order = x_train[order], y_train[order], torch.arange(len(x_train))
        step = PlainStep(torch.compile(model) if compile else model, optimizer, x_train, y_train,
                         preset.batch_size, torch.zeros(steps + 10))
        step.start_epoch(order)
        for i in range(steps + 10):
            if i == 10:
                t0 = time.perf_counter()
            step.step(i)
        return (time.perf_counter() - t0) / steps * 938
    finally:
        torch.set_num_threads(threads_before)
        torch.backends.mkldnn.enabled = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("variants", nargs="*", default=[v for v in VARIANTS if v not in ("compile", "no-mkldnn")],
                        help=f"some of: {', '.join(VARIANTS)} (compile and no-mkldnn are opt-in)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads before everything")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps x {args.rounds} "
          f"rounds per variant, {time.strftime('%Y-%m-%d %H:%M')}")
    data = prepare_data(DataConfig())
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for v in args.variants:
            times[v].append(run(data, args.steps, **VARIANTS[v]))
    base = min(times["engine"]) if "engine" in times else None
    print(f"{'variant':16s} {'best s/epoch':>12s} {'median':>8s} {'vs engine':>9s}")
    for v, ts in times.items():
        ts = sorted(ts)
        rel = f"{min(ts) / base:7.2f}x" if base else "-"
        print(f"{v:16s} {ts[0]:12.2f} {ts[len(ts) // 2]:8.2f} {rel:>9s}")


if __name__ == "__main__":
    main()
