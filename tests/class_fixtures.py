"""A class's runs written straight into a store (no training), for the class-page tests and the bench:
`add_run` writes one run as a worker does (row, iterations, epochs, end, in the student's workspace);
`lab5_complete` and `lab5_half` make a student who finished lab 5 or did only requirement 1;
`realistic_class` fills a store of a real term's size (every iteration kept) with executemany.
"""
from __future__ import annotations

import math
import random
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from mnist_lab.data.datasets import FROM_PACKAGE, DataConfig
from mnist_lab.i18n import to_stored
from mnist_lab.lab.lessons import LESSONS
from mnist_lab.nets.model import ModelConfig, count_params, match_fc_width
from mnist_lab.nets.presets import PRESETS, cnn_config
from mnist_lab.runs.store import MESSAGES, OWNER_COLUMNS, RUN_COLUMNS, ResultStore, owner_id, run_row
from mnist_lab.service.identity import student_workspace
from mnist_lab.training.loop import EpochMetrics, TrainConfig

LAB5 = PRESETS["lab5"].model
# Where a worker's data came from, as it records it (training.loop: the English and the stored message).
DATA_SOURCE = dict(data_source=str(FROM_PACKAGE), data_source_msg=to_stored([FROM_PACKAGE]))
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
_clock = [0]


def _next_time() -> str:
    _clock[0] += 1
    return (START + timedelta(seconds=_clock[0])).isoformat()


def _losses(n: int, start: float, end: float, seed: int = 0) -> list[float]:
    """A loss falling from `start` towards `end` over n iterations, with a little deterministic noise."""
    return [end + (start - end) * math.exp(-6 * i / max(n, 1)) + 0.02 * (((i + seed) * 7919) % 11 - 5) / 5
            for i in range(n)]


def add_run(store: ResultStore, *, student_id: str, student_name: str, experiment: str, model: ModelConfig,
            seed: int = 0, acc: float = 0.97, status: str = "finished", epochs: int = 1, iterations: int = 20,
            train_limit: int | None = None, permute: bool = False, group_id: str = "", dataset: str = "mnist",
            started_at: str | None = None, loss_start: float = 2.3, loss_end: float = 0.1,
            lr: float | None = None) -> str:
    """One run of `student_id` (workspace, job and owner columns as a worker writes them): its row, its
    `iterations` per epoch of a falling loss, `epochs` epochs (the last at test accuracy `acc`), its
    end with `status` (a diverged run ends at NaN loss, with no accuracy). `lr`: the training's (0.01)."""
    started_at = started_at or _next_time()
    run_id = f"{student_id or 'anon'}-{_clock[0]:05d}-{seed}"
    train = TrainConfig(epochs=epochs, seed=seed, **({} if lr is None else {"lr": lr}))
    data = DataConfig(dataset=dataset, train_limit=train_limit, permute_pixels=permute)
    with store.context(job_id=f"job-{group_id or run_id}", workspace=student_workspace(student_id),
                       student_id=student_id, student_name=student_name):
        store.start_run(run_row(run_id, model, train, data, experiment=experiment, group_id=group_id,
                                started_at=started_at, device="cpu", engine="plain", params=count_params(model),
                                steps_per_epoch=iterations, **DATA_SOURCE))
    losses = _losses(iterations * epochs, loss_start, loss_end, seed)
    if status == "diverged":
        losses[-1] = float("nan")
    store.add_iterations(run_id, 1, losses, iterations)
    done_epochs = epochs if status != "diverged" else epochs - 1
    for e in range(1, done_epochs + 1):
        part = losses[(e - 1) * iterations:e * iterations]
        store.add_epoch(run_id, EpochMetrics(e, sum(part) / len(part), loss_end + 0.05, acc - 0.01 * (epochs - e),
                                             1.0))
    extra = {"diverged_at": iterations * epochs} if status == "diverged" else {}
    store.finish_run(run_id, status, 1.0 * epochs, **extra)
    return run_id


def sweep_model(layers: int, kernel: int) -> ModelConfig:
    """The Sweep page's network for a cell (valid padding would leave no map at 3 blocks of k7)."""
    return cnn_config(layers, kernel)


def lab5_complete(store: ResultStore, student_id: str, name: str, seeds: int = 2) -> None:
    """Requirement 1 (the lab's network on the full set) and a 2 × 2 depth × kernel sweep with `seeds`."""
    add_run(store, student_id=student_id, student_name=name, experiment="single", model=LAB5, acc=0.985)
    for layers in (1, 2):
        for kernel in (3, 5):
            for seed in range(seeds):
                add_run(store, student_id=student_id, student_name=name, experiment="sweep",
                        model=sweep_model(layers, kernel), seed=seed, acc=0.95 + 0.01 * layers + 0.001 * seed,
                        group_id=f"sweep-{student_id}", train_limit=6000)


def lab5_half(store: ResultStore, student_id: str, name: str) -> None:
    """Requirement 1 only."""
    add_run(store, student_id=student_id, student_name=name, experiment="single", model=LAB5, acc=0.985)


# ------------------------------------------------------------------------------ a term's store

SWEEP_LAYERS, SWEEP_KERNELS = (1, 2, 3), (3, 5, 7)
LESSON_NAMES = list(LESSONS)


def _plan(i: int, runs_per_student: int, rng: random.Random) -> list[dict]:
    """Student i's runs as (experiment, model, seed, epochs, limit, group, lr, permute, status) dicts."""
    plan = [dict(experiment="single", model=LAB5, seed=s, epochs=10, limit=None, group="", lr=0.01,
                 permute=False) for s in (0, 1)]
    lr = 0.05 if i % 5 == 4 else 0.01  # a fifth of the class swept with another learning rate
    seeds = (3, 4, 5) if i % 3 == 2 else (0, 1, 2)  # a third with other seeds; the rest repeat each other
    if i % 6 == 5:
        seeds = (0,)  # one seed: requirements 2 and 3 under way
    plan += [dict(experiment="sweep", model=sweep_model(a, k), seed=s, epochs=1, limit=6000, group=f"sweep-{i}",
                  lr=lr, permute=False) for a in SWEEP_LAYERS for k in SWEEP_KERNELS for s in seeds]
    cnn = PRESETS["tiny-cnn"].model
    fc = match_fc_width(cnn)
    if i % 10 != 7:  # a tenth never ran the comparison
        plan += [dict(experiment="compare", model=m, seed=s, epochs=1, limit=6000, group=f"compare-{i}", lr=0.01,
                      permute=p) for p in (False, True) for m in (fc, cnn) for s in (0, 1, 2)]
    n = 0
    while len(plan) < runs_per_student:
        lesson = LESSON_NAMES[n % len(LESSON_NAMES)]
        plan.append(dict(experiment="lesson", model=replace(LAB5, batch_norm=bool(n % 2)), seed=n % 3, epochs=1,
                         limit=6000, group=f"lesson:{lesson}:{i}-{n // len(LESSON_NAMES)}", lr=0.01, permute=False))
        n += 1
    plan = plan[:runs_per_student]
    for p in plan:  # a few runs stopped or diverged, as a real term has
        roll = rng.random()
        p["status"] = "stopped" if roll < 0.03 else "diverged" if roll < 0.04 else "finished"
    return plan


def realistic_class(store: ResultStore, students: int = 60, runs_per_student: int = 100,
                    iterations_per_epoch: int = 938) -> None:
    """`students` students with `runs_per_student` runs each, every iteration kept: two Lab-5 runs of
    10 epochs on the full set, a 27-run depth × kernel sweep and a 12-run comparison of 1 epoch on
    6,000 images, lesson runs for the rest (a fifth sweep with lr 0.05, a third with seeds 3-5, a sixth
    with one seed; a tenth runs no comparison; a few runs stopped or diverged). Written with
    executemany, one transaction per student: 60 × 100 make about 110 MB in about 7 s."""
    rng = random.Random(0)
    rows_template: dict = {}
    cols = [*RUN_COLUMNS, *MESSAGES, "owner", "job_id", "workspace", *OWNER_COLUMNS]
    owner = owner_id()
    conn = sqlite3.connect(store.path)
    try:
        for i in range(students):
            sid, name = f"2026{i:04d}", f"学生{i:02d}"
            run_rows, epoch_rows, iteration_rows = [], [], []
            for j, p in enumerate(_plan(i, runs_per_student, rng)):
                key = (p["model"], p["epochs"], p["limit"], p["lr"], p["permute"], p["experiment"])
                if key not in rows_template:  # run_row is slow-ish (versions, labels): once per setting
                    rows_template[key] = run_row("x", p["model"], TrainConfig(epochs=p["epochs"], lr=p["lr"]),
                                                 DataConfig(train_limit=p["limit"], permute_pixels=p["permute"]),
                                                 experiment=p["experiment"], device="cpu", engine="plain",
                                                 params=count_params(p["model"]), **DATA_SOURCE)
                run_id = f"{sid}-{j:03d}"
                steps = iterations_per_epoch if p["limit"] is None else max(1, iterations_per_epoch // 10)
                status = p["status"]
                done = p["epochs"] if status == "finished" else max(0, p["epochs"] - 1)
                acc = 0.9 + 0.08 * rng.random() if done else None
                if status == "finished" and p["experiment"] == "sweep":  # deeper does better, by a little
                    acc = 0.95 + 0.01 * p["model"].conv_layers + 0.002 * ((p["seed"] * 7 + i) % 5)
                started = (START + timedelta(days=i % 14, minutes=j)).isoformat()
                row = dict(rows_template[key], run_id=run_id, group_id=p["group"], seed=p["seed"], status=status,
                           started_at=started, seconds=3.0 * p["epochs"], final_test_acc=acc, epochs_done=done,
                           steps_per_epoch=steps, diverged_at=steps if status == "diverged" else None,
                           owner=owner, job_id=f"job-{sid}-{p['group'] or j}", workspace=student_workspace(sid),
                           student_id=sid, student_name=name)
                run_rows.append(tuple(row.get(c) for c in cols))
                n_iter = steps * (done if status != "diverged" else 1)
                losses = _losses(n_iter, 2.3, 0.1 + 0.1 * rng.random(), p["seed"])
                iteration_rows += [(run_id, it // steps + 1, it + 1, loss) for it, loss in enumerate(losses)]
                for e in range(1, done + 1):
                    part = losses[(e - 1) * steps:e * steps]
                    epoch_rows.append((run_id, e, sum(part) / len(part), 0.15, acc - 0.01 * (done - e), 3.0))
            with conn:
                conn.executemany(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                                 run_rows)
                conn.executemany("INSERT INTO epochs VALUES (?, ?, ?, ?, ?, ?)", epoch_rows)
                conn.executemany("INSERT INTO iterations VALUES (?, ?, ?, ?)", iteration_rows)
    finally:
        conn.close()
