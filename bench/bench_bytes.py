"""Benchmark: the bytes a run leaves on the server's disk (the results database's rows and the kept
weights), from which mnist_lab/service/quota.py's per-row figures and policy.py's per-student and
total caps are sized (issue 24).

    python bench/bench_bytes.py                 # tiny runs, then a Lab-5 epoch on all 60,000 images
    python bench/bench_bytes.py --tiny-runs 40

Trains through the product's own path (experiments.run_single + runs.recorder.Recorder into a
fresh ResultStore; CPU, the plain engine) three sets of runs and measures, after each, the
database's size as SQLite counts it (page_count x page_size after a WAL checkpoint; no VACUUM,
so it is what a server really holds) and the weights folder:
  A: N tiny runs of 1 epoch x 4 iterations      (R + E + 4 I each)
  B: N tiny runs of 2 epochs x 2 iterations     (R + 2 E + 4 I each: one epoch row more)
  C: one Lab-5 run of 1 epoch on 60,000 images  (R + E + 938 I)
and solves for I (an iteration row), E (an epoch row) and R (a run's row), then projects a Lab-5
run of 10 epochs: R + 10 E + 9,380 I + its weights file.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mnist_lab.data.datasets import DataConfig  # noqa: E402
from mnist_lab.lab.experiments import get_data, run_single  # noqa: E402
from mnist_lab.nets.model import count_params  # noqa: E402
from mnist_lab.nets.presets import PRESETS  # noqa: E402
from mnist_lab.runs.recorder import Recorder  # noqa: E402
from mnist_lab.runs.store import ResultStore  # noqa: E402
from mnist_lab.runs.weights import weights_dir  # noqa: E402
from mnist_lab.training.loop import TrainConfig  # noqa: E402


def db_pages(path: Path) -> tuple[int, int]:
    """(page_count, page_size) of the database once the WAL is folded in (no VACUUM)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return tuple(conn.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
    finally:
        conn.close()


def db_bytes(path: Path) -> int:
    pages, size = db_pages(path)
    return pages * size


def weights_bytes(path: Path) -> list[int]:
    return sorted(f.stat().st_size for f in weights_dir(path).glob("*.safetensors"))


def train(store: ResultStore, model, train_cfg: TrainConfig, data_cfg: DataConfig, n: int) -> float:
    data = get_data(data_cfg, "cpu")  # once per set: the runs share it
    record, t0 = Recorder(store), time.perf_counter()
    for i in range(n):
        run_single(model, train_cfg, data_cfg, record=record, data=data, label=f"bytes {i}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny-runs", type=int, default=30, help="runs in each tiny set (more: less page rounding)")
    args = parser.parse_args()
    n = args.tiny_runs
    lab5 = PRESETS["lab5"].model
    plain = dict(device="cpu", engine="plain", seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "runs.db"
        store = ResultStore(path)
        sizes = [db_bytes(path)]
        seconds = []
        for train_cfg, data_cfg, count in (
                (TrainConfig(epochs=1, batch_size=64, **plain), DataConfig(train_limit=256, test_limit=256), n),
                (TrainConfig(epochs=2, batch_size=64, **plain), DataConfig(train_limit=128, test_limit=256), n),
                (TrainConfig(epochs=1, batch_size=64, **plain), DataConfig(), 1)):
            seconds.append(train(store, lab5, train_cfg, data_cfg, count))
            sizes.append(db_bytes(path))
        a, b, c = (after - before for before, after in zip(sizes, sizes[1:], strict=False))
        steps = -(-60_000 // 64)  # a Lab-5 epoch on every image, batch 64
        epoch_row = (b - a) / n
        iteration_row = (c - a / n) / (steps - 4)
        run_row = a / n - epoch_row - 4 * iteration_row
        files = weights_bytes(path)
        params = count_params(lab5)
        weights = files[-1]  # every file here is a Lab-5 network's: the same size
        header = weights - 4 * params
        ten = run_row + 10 * epoch_row + 10 * steps * iteration_row + weights
        page_size = db_pages(path)[1]
        store.close()
    rows = [
        ("empty database", f"{sizes[0]:,} B"),
        (f"set A: {n} runs x 1 epoch x 4 iterations", f"{a:,} B in {seconds[0]:.1f} s"),
        (f"set B: {n} runs x 2 epochs x 2 iterations", f"{b:,} B in {seconds[1]:.1f} s"),
        (f"set C: Lab-5, 1 epoch, {steps} iterations", f"{c:,} B in {seconds[2]:.1f} s"),
        ("an iteration row (I)", f"{iteration_row:.1f} B"),
        ("an epoch row (E)", f"{epoch_row:.1f} B"),
        ("a run's row (R)", f"{run_row:.0f} B"),
        (f"Lab-5 weights file ({params:,} params x 4 + header)", f"{weights:,} B (header {header:,} B)"),
        ("Lab-5 run of 10 epochs on 60,000 images", f"{ten:,.0f} B = {ten / 2**20:.2f} MiB "
                                                    f"(rows {ten - weights:,.0f} B)"),
    ]
    width = max(len(k) for k, _ in rows)
    print(f"bytes a run keeps on the server (SQLite page size {page_size:,} B, no VACUUM)")
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


if __name__ == "__main__":
    main()
