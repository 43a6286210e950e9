"""Benchmark: model.onnx in the export (issue 28) — the time torch's dynamo exporter takes per network,
the file's size, and the check against PyTorch on the 10,000 MNIST test images (onnxruntime and
PyTorch each predicting all of them, on the CPU).

    python bench/bench_onnx.py                       # lab5, tiny-fc, tiny-cnn, padded-16-32, resnet-small
    python bench/bench_onnx.py --presets lab5 --threads 2

The networks keep their initial weights (seed 0): the exporter's and the runtimes' time depend on the
architecture, not on what the weights learned. The first export in a process also pays the exporter's
start-up (imports, tracing caches), shown as its own column.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mnist_lab.data.datasets import DataConfig, load_mnist  # noqa: E402
from mnist_lab.lab import export as ex  # noqa: E402
from mnist_lab.lab.inspection import LoadedRun  # noqa: E402
from mnist_lab.nets.model import build_model, count_params  # noqa: E402
from mnist_lab.nets.presets import PRESETS  # noqa: E402
from mnist_lab.runs.weights import SavedRun  # noqa: E402
from mnist_lab.training.loop import TrainConfig  # noqa: E402


def loaded(preset: str) -> LoadedRun:
    cfg = PRESETS[preset].model
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    saved = SavedRun(f"bench-{preset}", cfg, TrainConfig(epochs=1), DataConfig(), model.state_dict(), None,
                     "finished", None)
    return LoadedRun(saved, model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["lab5", "tiny-fc", "tiny-cnn", "padded-16-32",
                                                          "resnet-small"],
                        choices=[name for name, p in PRESETS.items() if p.dataset == "mnist"])  # checked on MNIST
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if (missing := ex.onnx_unavailable()) is not None:
        sys.exit(str(missing))
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    raw = load_mnist()
    print(f"torch {torch.__version__}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}")
    print(f"{'preset':14} {'params':>9} {'1st export':>10} {'export':>7} {'MB':>5} {'check 10k':>9} "
          f"{'differ':>6} {'max |diff|':>10}")
    first = True
    for preset in args.presets:
        run = loaded(preset)
        t0 = time.perf_counter()
        blob = ex.export_onnx(run)
        t1 = time.perf_counter()
        blob = ex.export_onnx(run)  # warm: what a second download costs
        t2 = time.perf_counter()
        check = ex.check_onnx_on_images(run, blob, raw.x_test, raw.y_test)
        t3 = time.perf_counter()
        cold = f"{t1 - t0:.2f} s" if first else "-"
        first = False
        print(f"{preset:14} {count_params(run.model):>9,} {cold:>10} {t2 - t1:>5.2f} s {len(blob) / 1e6:>5.2f} "
              f"{t3 - t2:>7.2f} s {check.differ:>6} {check.max_abs_diff:>10.2e}")


if __name__ == "__main__":
    main()
