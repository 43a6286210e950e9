"""GPU ablation of one training step (issue 4): eager step vs the captured CUDA-graph step, with
each `fast.FAST_CONV` setting (cuDNN's conv gradients, or the faster bias / weight gradients),
optionally in channels_last and with cuDNN's autotuner; for the Lab-5 net and sweep networks;
then how many graphs side by side on CUDA streams buy; and the top kernels of the Lab-5 graph.
Times are medians of CUDA-event-timed blocks of steps.

    python bench/bench_gpu_step.py [--profile] [--streams 1 3 9 27] [--layouts] [--autotune]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mnist_lab.data.datasets import DataConfig, prepare_data  # noqa: E402
from mnist_lab.nets.presets import cnn_config, get_preset  # noqa: E402
from mnist_lab.training import cuda_graph as fast  # noqa: E402
from mnist_lab.training.cuda_graph import GraphStep, fast_convs  # noqa: E402
from mnist_lab.training.loop import TrainConfig  # noqa: E402
from mnist_lab.training.step import init_model, make_optimizer  # noqa: E402

MODELS = {"lab5": get_preset("lab5").model, "sweep 1xk3": cnn_config(1, 3), "sweep 3xk7": cnn_config(3, 7),
          "sweep 2xk5": cnn_config(2, 5)}
BS = 64
FAST_CONVS = ("", "bias", "bias+wgrad")
default_fast_conv = fast.FAST_CONV


def timed(fn, steps: int, blocks: int = 5) -> float:
    """Median milliseconds per call of fn() over `blocks` blocks of `steps` calls."""
    fn()
    torch.cuda.synchronize()
    out = []
    for _ in range(blocks):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end) / steps)
    return statistics.median(out)


def setup(model_cfg, data, layout, seed=0, fast_conv=None):
    model = init_model(model_cfg, seed, data.device).to(memory_format=layout)
    if fast_conv is not None:
        fast.FAST_CONV = fast_conv
        model = fast_convs(model)
    optimizer = make_optimizer(model, TrainConfig(lr=0.01, momentum=0.5), capturable=True)
    x_train = data.x_train.contiguous(memory_format=layout)
    return model, optimizer, x_train


def eager_step_fn(model, optimizer, x_train, y_train):
    order = torch.randperm(len(x_train), device=x_train.device)
    losses = torch.zeros(1000, device=x_train.device)
    state = {"i": 0}

    def step():
        i = state["i"] % 900
        idx = order[i * BS:(i + 1) * BS]
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
        loss.backward()
        optimizer.step()
        losses[i] = loss.detach()
        state["i"] += 1
    return step


def graph_step_fn(model, optimizer, x_train, y_train):
    losses = torch.zeros(100000, device=x_train.device)
    t0 = time.perf_counter()
    g = GraphStep(model, optimizer, x_train, y_train, BS, losses)
    torch.cuda.synchronize()
    capture_s = time.perf_counter() - t0
    g.start_epoch(torch.randperm(len(x_train)))
    state = {"i": 0}

    def step():
        if state["i"] == g.full_steps:
            g.start_epoch(torch.randperm(len(x_train)))
            state["i"] = 0
        g.graph.replay()
        state["i"] += 1
    return step, capture_s


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--streams", type=int, nargs="*", default=[1, 3, 9, 27])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--layouts", action="store_true", help="channels_last too")
    parser.add_argument("--autotune", action="store_true", help="cudnn.benchmark on too")
    args = parser.parse_args(argv)
    dev = torch.device("cuda")
    print(f"# {torch.cuda.get_device_name(dev)} | torch {torch.__version__} | cudnn {torch.backends.cudnn.version()} | "
          f"{time.strftime('%Y-%m-%d %H:%M')} | ms per step, median of 5 blocks of {args.steps}")
    data = prepare_data(DataConfig(), device=dev)
    print(f"{'model':12s} {'layout':14s} {'cudnn.bench':>11s} {'fast conv':>10s} {'eager ms':>9s} {'graph ms':>9s} "
          f"{'capture s':>9s} {'epoch s (graph)':>15s}")
    layouts = (torch.contiguous_format, torch.channels_last) if args.layouts else (torch.contiguous_format,)
    for name in args.models:
        for layout in layouts:
            for bench in ((False, True) if args.autotune else (False,)):
                for fc in FAST_CONVS:
                    torch.backends.cudnn.benchmark = bench
                    eager = float("nan")
                    if fc == "":
                        model, opt, x = setup(MODELS[name], data, layout, fast_conv=fc)
                        eager = timed(eager_step_fn(model, opt, x, data.y_train), args.steps)
                    model, opt, x = setup(MODELS[name], data, layout, fast_conv=fc)
                    fn, cap = graph_step_fn(model, opt, x, data.y_train)
                    graph = timed(fn, args.steps)
                    print(f"{name:12s} {str(layout).split('.')[-1]:14s} {str(bench):>11s} {fc or '-':>10s} "
                          f"{eager:9.3f} {graph:9.3f} {cap:9.3f} {graph * 938 / 1000:15.3f}", flush=True)
    torch.backends.cudnn.benchmark = False
    fast.FAST_CONV = default_fast_conv

    # Side by side: k copies of the sweep's 9 shapes (so 9, 27, ...) or k lab5 nets, one stream each.
    for group, k, fc in [("lab5", k, default_fast_conv) for k in args.streams] + \
            [("sweep9", k, fc) for k in args.streams if k >= 9 for fc in FAST_CONVS]:
        cfgs = [MODELS["lab5"]] * k if group == "lab5" else \
            [cnn_config(layers, kernel) for layers in (1, 2, 3) for kernel in (3, 5, 7)] * max(1, k // 9)
        streams, fns = [], []
        for seed, mc in enumerate(cfgs):
            s = torch.cuda.Stream()
            with torch.cuda.stream(s):
                model, opt, x = setup(mc, data, torch.contiguous_format, seed, fast_conv=fc)
                fns.append(graph_step_fn(model, opt, x, data.y_train)[0])
            streams.append(s)
        torch.cuda.synchronize()

        def round_(streams=streams, fns=fns):
            for s, fn in zip(streams, fns):
                with torch.cuda.stream(s):
                    fn()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            round_()
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1000 / args.steps
        print(f"side by side {group:7s} x{len(cfgs):3d} fast conv {fc or '-':10s}: {ms:7.3f} ms per round "
              f"({ms / len(cfgs):.3f} ms per model-step; one epoch of all of them {ms * 938 / 1000:.2f} s)", flush=True)

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        model, opt, x = setup(MODELS["lab5"], data, torch.contiguous_format, fast_conv=default_fast_conv)
        fn, _ = graph_step_fn(model, opt, x, data.y_train)
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(100):
                fn()
            torch.cuda.synchronize()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=70))


if __name__ == "__main__":
    main()
