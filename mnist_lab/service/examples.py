"""The public demo's example set: finished runs a visitor sees at once (the four lab presets' curves,
a depth × kernel sweep over seeds, FC vs CNN on normal and permuted pixels, a week-2 lesson), trained
on the server as ordinary jobs of the local workspace (`access.EXAMPLES_WORKSPACE`, through
`jobs.run_inline`) and listed in the `examples` table (schema 7) with the set's version and scale.
"""
from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import need_choice
from mnist_lab.i18n import N_
from mnist_lab.lab.experiments import CompareConfig, SweepConfig
from mnist_lab.lab.lessons import LessonConfig
from mnist_lab.nets.presets import PRESETS
from mnist_lab.paths import default_db_path
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.jobs import JobSpec, lesson_spec, run_inline
from mnist_lab.service.queue import JobQueue
from mnist_lab.training.events import Event
from mnist_lab.training.loop import TrainConfig

VERSION = 1  # of the set: bump it when what the examples train changes, and every demo rebuilds them
SCALES = ("full", "tiny")
LESSON = "softmax"  # MNIST, the Lab-5 net, two variants, one of them meant to fail: quick on a CPU


@dataclass(frozen=True)
class Scale:
    """How much each example trains: the full set (a demo: under 3 minutes on one CPU core without
    g++, bench/bench_examples.py) or the tiny one (tests: seconds)."""

    preset_images: int  # training images of each preset's run
    preset_epochs: int
    sweep_images: int  # of each sweep cell's runs
    compare_images: int  # of each FC-vs-CNN run
    compare_epochs: int  # 2 at full scale: after 1 the CNN on permuted pixels has not learned yet
    lesson_images: int  # of each lesson run
    test_images: int  # test images every run evaluates on
    seeds: int  # of each sweep cell, comparison cell and lesson variant


SIZES = {
    "full": Scale(preset_images=12000, preset_epochs=3, sweep_images=10000, compare_images=15000,
                  compare_epochs=2, lesson_images=10000, test_images=2000, seeds=2),
    "tiny": Scale(preset_images=1500, preset_epochs=2, sweep_images=300, compare_images=600, compare_epochs=1,
                  lesson_images=300, test_images=200, seeds=1),
}
# The presets' runs, trained last so that the newest finished run (the report's requirement 1 when
# no run trains on every image) is the Lab-5 net's. Their labels are the Train page's titles.
PRESET_LABELS = {"tiny-fc": N_("Tiny FC (FC2Layer)"), "tiny-cnn": N_("Tiny CNN"),
                 "padded-16-32": N_("Padded 16/32 CNN"), "lab5": N_("Lab-5 net")}


@dataclass(frozen=True)
class Example:
    name: str  # its key in the examples table
    spec: JobSpec


def check_scale(scale: str) -> str:
    return need_choice("scale", scale, "Scale", SCALES, "Unknown example scale {value!r}; choose one of {options}.")


def example_specs(scale: str = "full", device: str = "auto", data_dir: str | None = None) -> list[Example]:
    """The set at `scale`, in the order it is built: the lesson, FC vs CNN, the sweep, then the presets."""
    size = SIZES[check_scale(scale)]
    lesson = LessonConfig(LESSON, dataset="mnist", seeds=size.seeds, epochs=1, train_limit=size.lesson_images,
                          test_limit=size.test_images)
    compare = CompareConfig(cnn=PRESETS["tiny-cnn"].model, seeds=size.seeds)
    sweep = SweepConfig(conv_layers=(1, 2), kernel_sizes=(3, 5), seeds=size.seeds)

    def data(images: int) -> DataConfig:
        return DataConfig(train_limit=images, test_limit=size.test_images, data_dir=data_dir)

    examples = [Example("lesson", lesson_spec(lesson, device=device, data_dir=data_dir)),
                Example("compare", JobSpec("compare", TrainConfig(epochs=size.compare_epochs, device=device),
                                           data(size.compare_images), compare=compare, label="FC vs CNN")),
                Example("sweep", JobSpec("sweep", TrainConfig(device=device), data(size.sweep_images), sweep=sweep,
                                         label=f"sweep of {len(sweep.cells()[0])} networks"))]
    for name, label in PRESET_LABELS.items():
        p = PRESETS[name]
        train = TrainConfig(epochs=size.preset_epochs, batch_size=p.batch_size, optimizer=p.optimizer, lr=p.lr,
                            momentum=p.momentum, device=device)
        data = DataConfig(dataset=p.dataset, normalize=p.normalize, train_limit=size.preset_images,
                          test_limit=size.test_images, data_dir=data_dir)
        examples.append(Example(f"preset-{name}", JobSpec("train", train, data, model=p.model, label=label)))
    return examples


# ------------------------------------------------------------------------------------ the table

@dataclass(frozen=True)
class Recorded:
    """An example's row, with its job's state."""

    name: str
    version: int
    scale: str
    job_id: str
    status: str | None  # the job's ('finished', ...); None: its job is gone
    runs_total: int
    runs_finished: int

    def current(self, scale: str) -> bool:
        """Of this version and scale, its job finished with every run it trains."""
        return (self.version == VERSION and self.scale == scale and self.status == "finished"
                and self.runs_finished == self.runs_total > 0)


_READ = ("SELECT e.name, e.version, e.scale, e.job_id, j.status, COALESCE(j.runs_total, 0), "
         "(SELECT COUNT(*) FROM runs r WHERE r.job_id = e.job_id AND r.status = 'finished') "
         "FROM examples e LEFT JOIN jobs j ON j.job_id = e.job_id")


def _recorded(conn: sqlite3.Connection) -> dict[str, Recorded]:
    return {row[0]: Recorded(*row) for row in conn.execute(_READ)}


def _ready(recorded: dict[str, Recorded], scale: str) -> bool:
    names = [e.name for e in example_specs(scale)]
    return all(name in recorded and recorded[name].current(scale) for name in names)


def examples_ready(db_path: str | Path | None = None, scale: str = "full") -> bool:
    """Whether the current version's set at `scale` is in the database, every job finished. Reads
    only: a missing file, or one from before the examples table, is not ready (and is not made)."""
    scale = check_scale(scale)
    path = Path(db_path) if db_path is not None else default_db_path()
    if not path.is_file():
        return False
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    except sqlite3.Error:
        return False
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] < 7:
            return False
        return _ready(_recorded(conn), scale)
    except sqlite3.Error:  # damaged, or not a results database: the builder says why
        return False
    finally:
        conn.close()


@contextlib.contextmanager
def build_lock(db_path: Path) -> Iterator[None]:
    """One builder at a time per database, across processes: an exclusive lock on the empty file
    `<db>.examples.lock` beside it (kept; removing it would let a waiting process lock a file no
    longer there)."""
    lock = db_path.parent / f"{db_path.name}.examples.lock"
    with open(lock, "a+b") as f:
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    time.sleep(0.2)
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove(store: ResultStore, queue: JobQueue, conn: sqlite3.Connection, stale: list[Recorded]) -> None:
    """An older or unfinished example: its runs (rows and weights), its job and its row."""
    for old in stale:
        store.delete_runs([r["run_id"] for r in store.job_run_rows(old.job_id, ("run_id",))])
        queue.delete_jobs([old.job_id])
        with conn:
            conn.execute("DELETE FROM examples WHERE name = ?", (old.name,))


def _build(db_path: str | Path | None, scale: str, on_progress: Callable[[Event], None] | None,
           device: str, data_dir: str | None, cancel: threading.Event | None) -> tuple[list[str], bool]:
    scale = check_scale(scale)
    plan = example_specs(scale, device, data_dir)
    for example in plan:  # every example checked, its data loaded, before any file is made
        example.spec.preflight()
        example.spec.load_data()
    cancel = cancel if cancel is not None else threading.Event()
    path = Path(db_path) if db_path is not None else default_db_path()
    store = ResultStore(path)  # made and brought to the newest schema (the lock's folder exists after)
    try:
        with build_lock(Path(store.path)):
            conn = sqlite3.connect(store.path, timeout=30)
            queue = JobQueue(store)
            try:
                recorded = _recorded(conn)
                keep = {name for name, r in recorded.items() if r.current(scale) and name in {e.name for e in plan}}
                _remove(store, queue, conn, [r for name, r in recorded.items() if name not in keep])
                job_ids, built = [], False
                for example in plan:
                    if cancel.is_set():  # stopped: what is built stays, the rest is built next time
                        break
                    if example.name in keep:
                        job_ids.append(recorded[example.name].job_id)
                        continue
                    job_id = uuid.uuid4().hex
                    with conn:  # recorded first: a build cut short leaves a partial set the next build replaces
                        conn.execute("INSERT INTO examples (name, version, scale, job_id, built_at) "
                                     "VALUES (?, ?, ?, ?, ?)", (example.name, VERSION, scale, job_id, time.time()))
                    run_inline(example.spec, store, cancel, on_progress=on_progress, job_id=job_id)
                    job_ids.append(job_id)
                    built = True
                return job_ids, built
            finally:
                queue.close()
                conn.close()
    finally:
        store.close()


def build_examples(db_path: str | Path | None = None, scale: str = "full",
                   on_progress: Callable[[Event], None] | None = None, device: str = "auto",
                   data_dir: str | None = None, cancel: threading.Event | None = None) -> list[str]:
    """Train the example set at `scale` into the database (the default one for None) as jobs of the
    local workspace; returns their job ids in build order. Idempotent: an example already there (this
    version, this scale, finished) is kept; an older, other-scale or unfinished one is deleted (its
    runs, weights and job) and trained again. Visitors' runs are never touched. Two processes that
    build at once build once (a file lock beside the database). `on_progress` gets every training
    event; `cancel` set stops the job training and starts no other (the set stays partial). Raises
    what the core raises (ConfigError, DataUnavailableError, StoreError)."""
    return _build(db_path, scale, on_progress, device, data_dir, cancel)[0]


def ensure_examples(db_path: str | Path | None = None, scale: str = "full",
                    on_progress: Callable[[Event], None] | None = None, device: str = "auto",
                    data_dir: str | None = None, cancel: threading.Event | None = None) -> bool:
    """Build the set unless it is ready (build_examples); True when this call trained something
    (of two processes that ensure at once, one trains, the other waits and finds it ready)."""
    if examples_ready(db_path, scale):
        return False
    return _build(db_path, scale, on_progress, device, data_dir, cancel)[1]


def total_steps(scale: str = "full") -> int:
    """Iterations the whole set trains (a progress bar's total)."""
    total = 0
    for example in example_specs(scale):
        for _, train, data in example.spec.run_configs():
            total += -(-data.n_train() // train.batch_size) * train.epochs * example.spec.runs_per_config()
    return total

