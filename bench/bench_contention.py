"""Benchmark: cpu-native training while other programs take cores (a browser, a server's pages, a
second run), with the thread governor (mnist_lab/training/threads.py) against fixed thread counts.

    python bench/bench_contention.py              # Lab-5, 20,000 images, 1 epoch per case
    python bench/bench_contention.py --nice 5     # the trainer at the app worker's priority

Each case trains the same run in a fresh process beside 0, 1 or 2 busy-looping processes (at
normal priority): the governor as shipped, the governor switched off at all threads (the count
before it existed), and one thread throughout. Reports seconds per epoch (training and test
evaluation) and how often the governor changed the count.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, {root!r})
import torch
from mnist_lab.training import threads
from mnist_lab.data.datasets import DataConfig
from mnist_lab.lab.experiments import get_data
from mnist_lab.nets.presets import PRESETS
from mnist_lab.training.loop import TrainConfig, train

mode, hogs, nice = {mode!r}, {hogs}, {nice}
if nice:
    os.nice(nice)
if mode == "one thread":
    torch.set_num_threads(1)
made = []
original = threads.ThreadGovernor.__init__
def counted(self, *args, **kwargs):
    original(self, *args, **kwargs)
    made.append(self)
threads.ThreadGovernor.__init__ = counted
if mode == "all threads, fixed":
    threads.ThreadGovernor._decide = lambda self: None
data = get_data(DataConfig(train_limit={images}), "cpu")
train(PRESETS["lab5"].model, TrainConfig(epochs=1, device="cpu", engine="cpu-native"),
      get_data(DataConfig(train_limit=512, test_limit=512), "cpu"))  # kernels loaded, caches warm
busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)]
try:
    time.sleep(0.5)
    result = train(PRESETS["lab5"].model, TrainConfig(epochs={epochs}, device="cpu", engine="cpu-native"), data)
finally:
    for p in busy:
        p.kill()
print(json.dumps(dict(epoch_s=[e.seconds for e in result.epochs], engine=result.engine,
                      changes=made[-1].changes if made else 0, threads=torch.get_num_threads())))
"""

MODES = ("governor", "all threads, fixed", "one thread")


def run_case(mode: str, hogs: int, nice: int, images: int, epochs: int) -> dict:
    code = CASE.format(root=str(ROOT), mode=mode, hogs=hogs, nice=nice, images=images, epochs=epochs)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--nice", type=int, default=0, help="the trainer's nice level (the app's worker: 5)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per case; the median is shown")
    args = parser.parse_args()
    import torch

    print(f"# {datetime.now():%Y-%m-%d %H:%M} · {platform.machine()} · {torch.get_num_threads()} threads · "
          f"trainer at nice {args.nice} · Lab-5 on {args.images:,} images, {args.epochs} epoch(s)")
    print(f"{'busy processes':>15} | " + " | ".join(f"{m:>22}" for m in MODES))
    for hogs in (0, 1, 2):
        cells = []
        for mode in MODES:
            runs = [run_case(mode, hogs, args.nice, args.images, args.epochs) for _ in range(args.rounds)]
            epoch = statistics.median(statistics.median(r["epoch_s"]) for r in runs)
            changes = f" ({max(r['changes'] for r in runs)} changes)" if mode == "governor" else ""
            cells.append(f"{epoch:.2f} s/epoch{changes}")
        print(f"{hogs:>15} | " + " | ".join(f"{c:>22}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
