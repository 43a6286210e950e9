"""The Ray executor against the local worker (issue 26's targets), on a local cluster this bench
starts itself (tests/ray_cluster.py: 127.0.0.1, token auth, no dashboard, 1 CPU and a small object
store per node, its own temp dir; only its own processes are stopped at the end).

    PYTHONPATH=/path/to/ray python bench/bench_ray.py                 # every section
    PYTHONPATH=/path/to/ray python bench/bench_ray.py overhead stop   # some sections
    PYTHONPATH=/path/to/ray python bench/bench_ray.py --quick         # a smoke run of every section

Sections:
  same-results  a 2 x 2 x 2-seed sweep through ray_executor.execute and through jobs.execute (local,
                torch on 1 thread, as a 1-CPU task trains), CPU, engines plain and cpu-native: run for
                run, the first 30 losses and the final accuracy equal (PASS/FAIL)
  overhead      per-run overhead for a tiny run (Lab 5, 256 images, 4 iterations): median of N warm
                runs, Ray execute minus local execute (both on 1 thread, no store); goal <= 0.5 s
  sweep27       the 27-run sweep (3 x 3 x 3 seeds, 1 epoch, 2,000 images per run for training and for
                test, CPU, plain) through Ray on the 2 one-CPU nodes against the local worker at its
                default threads, each recorded into its own store: wall times and their ratio (on 2
                cores no speed-up is expected: this measures the cost); both warmed by a 2-run sweep;
                then the local sweep again on 1 thread (a busy machine hurts 2 threads the most)
  stop          a long run through Ray stopped at its first losses: seconds from the Stop to the
                run's end at the driver, 5 tries (goal < 2 s)
  node-kill     a 2 x 2 x 2-seed sweep through Ray whose second node's raylet is SIGKILLed once a run
                has finished and both nodes train one: no finished run lost, the interrupted run retried
                under its run id, every run's losses those of an uninterrupted (local, 1 thread) sweep,
                and the executor takes the next job (PASS/FAIL)
  gpu           with CUDA only: 8 concurrent Lab-5 jobs through Ray's GPU fractions (where the
                cluster's nodes offer no GPU: 8 local executions at once) against the same 8 one
                after another

Exits 1 when a section FAILs.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from mnist_lab.data.datasets import DataConfig  # noqa: E402
from mnist_lab.lab.experiments import SweepConfig  # noqa: E402
from mnist_lab.nets.presets import PRESETS  # noqa: E402
from mnist_lab.runs.store import ResultStore  # noqa: E402
from mnist_lab.service import jobs, ray_executor  # noqa: E402
from mnist_lab.service.jobs import JobSpec  # noqa: E402
from mnist_lab.training.events import Iterations, RunEnded, RunStarted  # noqa: E402
from mnist_lab.training.loop import TrainConfig  # noqa: E402

SECTIONS = ("same-results", "overhead", "sweep27", "stop", "node-kill", "gpu")
FIRST_LOSSES = 30  # compared run for run
OVERHEAD_GOAL_S = 0.5
STOP_GOAL_S = 2.0
LAB5 = PRESETS["lab5"]


def lab5_train(**changes: Any) -> TrainConfig:
    """The Lab-5 optimiser (SGD lr 0.01, momentum 0.5, batch 64), CPU, seed 0, plain engine."""
    base = TrainConfig(epochs=1, batch_size=LAB5.batch_size, optimizer=LAB5.optimizer, lr=LAB5.lr,
                       momentum=LAB5.momentum, device="cpu", engine="plain", seed=0)
    return replace(base, **changes)


def sweep_spec(layers: tuple[int, ...], kernels: tuple[int, ...], seeds: int, train_limit: int,
               test_limit: int | None = None, engine: str = "plain") -> JobSpec:
    return JobSpec("sweep", lab5_train(engine=engine), DataConfig(train_limit=train_limit, test_limit=test_limit),
                   sweep=SweepConfig(conv_layers=layers, kernel_sizes=kernels, seeds=seeds))


def train_spec(train_limit: int, epochs: int = 1, batch_size: int = 64, test_limit: int = 500,
               device: str = "cpu") -> JobSpec:
    return JobSpec("train", lab5_train(epochs=epochs, batch_size=batch_size, device=device),
                   DataConfig(train_limit=train_limit, test_limit=test_limit), model=LAB5.model)


def runs_of(result: Any) -> list[Any]:
    """The runs of an execute result, in plan order: a sweep's or comparison's `.results`, the
    Ray executor's `.runs` (before it returned jobs.execute's types), or a single RunResult."""
    for name in ("results", "runs"):
        if isinstance(getattr(result, name, None), list):
            return getattr(result, name)
    return [result]


class OneThread:
    """torch on one thread in this process, as a task on a 1-CPU share trains (Ray sets
    OMP_NUM_THREADS to its CPUs): sums in another order differ in the last bits."""

    def __enter__(self) -> OneThread:
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc: Any) -> None:
        torch.set_num_threads(self.before)


def timed(fn: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ------------------------------------------------------------------------------ the sections

def same_results(cluster: Any, args: argparse.Namespace) -> bool:
    limit = 1920 if args.quick else 2000  # at batch 64: 30 or 32 iterations, at least FIRST_LOSSES
    ok = True
    for engine in ("plain", "cpu-native"):
        if engine == "cpu-native" and not (os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")):
            print(f"\n[same-results] engine {engine}: skipped: no C++ compiler (g++) on this machine")
            continue
        spec = sweep_spec((1, 2), (3, 5), 2, limit, test_limit=500 if args.quick else 2000, engine=engine)
        with OneThread():
            local, local_s = timed(lambda spec=spec: jobs.execute(spec, None))
        engines: dict[str, str] = {}  # run id: the path it trained on, on its node

        def note_engine(event: Any, engines: dict[str, str] = engines) -> None:
            if isinstance(event, RunStarted):
                engines[event.run_id] = event.engine
        remote, remote_s = timed(lambda spec=spec: ray_executor.execute(spec, None, on_progress=note_engine))
        local_runs, remote_runs = runs_of(local), runs_of(remote)
        print(f"\n[same-results] 2 x 2 x 2-seed sweep, {limit} images, 1 epoch, CPU, engine {engine}: "
              f"local (1 thread) {local_s:.2f} s, Ray {remote_s:.2f} s")
        print(f"{'#':>2s} {'layers':>6s} {'kernel':>6s} {'seed':>4s} {'engine (local/ray)':>20s} "
              f"{'first 30 losses':>15s} {'acc local':>9s} {'acc ray':>9s}  same")
        if len(local_runs) != len(remote_runs):
            print(f"FAIL: {len(local_runs)} local runs, {len(remote_runs)} through Ray")
            ok = False
            continue
        for k, (here, there) in enumerate(zip(local_runs, remote_runs, strict=True)):
            losses_same = list(here.losses)[:FIRST_LOSSES] == list(there.losses)[:FIRST_LOSSES]
            acc_same = here.final_test_acc == there.final_test_acc
            n = min(len(here.losses), len(there.losses), FIRST_LOSSES)
            both = f"{here.engine}/{engines.get(there.run_id, '?')}"
            print(f"{k + 1:2d} {here.model_cfg.conv_layers:6d} {here.model_cfg.kernel_size:6d} "
                  f"{here.train_cfg.seed:4d} {both:>20s} {('equal' if losses_same else 'DIFFER') + f' ({n})':>15s} "
                  f"{100 * here.final_test_acc:8.2f}% {100 * there.final_test_acc:8.2f}%  "
                  f"{verdict(losses_same and acc_same and n == FIRST_LOSSES)}")
            ok &= losses_same and acc_same and n == FIRST_LOSSES
    print(f"same-results: {verdict(ok)}")
    return ok


def overhead(cluster: Any, args: argparse.Namespace) -> bool:
    n = 3 if args.quick else 10
    spec = train_spec(256)  # 4 iterations of 64
    with OneThread():
        for _ in range(2):
            jobs.execute(spec, None)
        local = [timed(lambda: jobs.execute(spec, None))[1] for _ in range(n)]
    for _ in range(3):  # each node's worker process started, its imports and data loaded
        ray_executor.execute(spec, None)
    remote = [timed(lambda: ray_executor.execute(spec, None))[1] for _ in range(n)]
    extra = statistics.median(remote) - statistics.median(local)
    print(f"\n[overhead] tiny run (Lab 5, 256 images, 4 iterations, 500 test images, CPU, plain), "
          f"median of {n} warm runs")
    print(f"local jobs.execute (1 thread): {statistics.median(local):.3f} s "
          f"(min {min(local):.3f}, max {max(local):.3f})")
    print(f"ray_executor.execute:          {statistics.median(remote):.3f} s "
          f"(min {min(remote):.3f}, max {max(remote):.3f})")
    print(f"overhead per run: {extra:+.3f} s (goal <= {OVERHEAD_GOAL_S} s): {verdict(extra <= OVERHEAD_GOAL_S)}")
    return extra <= OVERHEAD_GOAL_S


def sweep27(cluster: Any, args: argparse.Namespace) -> bool:
    if args.quick:
        spec, shape = sweep_spec((1, 2), (3, 5), 1, 500, test_limit=500), "2 x 2 x 1 seed, 500 images"
    else:
        spec, shape = sweep_spec((1, 2, 3), (3, 5, 7), 3, 2000, test_limit=2000), "3 x 3 x 3 seeds, 2,000 images"
    warm = sweep_spec((1, 2), (3,), 1, 256, test_limit=500)  # the data loaded, both nodes' workers started
    jobs.execute(warm, None)
    ray_executor.execute(warm, None)
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        local_store, remote_store = ResultStore(Path(tmp) / "local.sqlite"), ResultStore(Path(tmp) / "ray.sqlite")
        local, local_s = timed(lambda: jobs.execute(spec, local_store))
        remote, remote_s = timed(lambda: ray_executor.execute(spec, remote_store))
        rows = len(local_store.runs()), len(remote_store.runs())
        local_store.close()
        remote_store.close()
    with OneThread():  # the same CPU work per run as a 1-CPU task: a busy machine hurts 2 threads the most
        _, one_s = timed(lambda: jobs.execute(spec, None))
    runs = len(runs_of(local))
    print(f"\n[sweep27] {shape} (training and test), 1 epoch, CPU, plain; each recorded into its own store, "
          "both warm")
    print(f"local worker ({torch.get_num_threads()} threads): {local_s:.2f} s ({runs} runs, {rows[0]} rows)")
    print(f"Ray, {_nodes(cluster)} one-CPU nodes:     {remote_s:.2f} s ({len(runs_of(remote))} runs, {rows[1]} rows)")
    print(f"local at 1 thread, no store:  {one_s:.2f} s")
    print(f"ratio Ray / local worker: {remote_s / local_s:.2f} (Ray / local at 1 thread: {remote_s / one_s:.2f}); "
          f"per run: local {local_s / runs:.3f} s, Ray {remote_s / runs:.3f} s; load average now "
          f"{os.getloadavg()[0]:.2f}")
    ok = rows[0] == rows[1] == runs and local.status == remote.status == "finished"
    print(f"sweep27: {verdict(ok)} (every run finished and recorded on both paths)")
    return ok


def node_kill(cluster: Any, args: argparse.Namespace) -> bool:
    spec = sweep_spec((1, 2), (3, 5), 2, 1000 if args.quick else 2000, test_limit=500 if args.quick else 2000)
    with OneThread():
        reference = runs_of(jobs.execute(spec, None))
    starts: Counter[tuple[str, int]] = Counter()  # (label, seed): RunStarted events (2: retried)
    run_ids: dict[tuple[str, int], str] = {}
    streamed: dict[str, list[float]] = {}  # run id: the losses of its last attempt
    accuracy: dict[str, float | None] = {}
    ended_before_kill: list[str] = []
    killed: list[float] = []

    open_runs: set[str] = set()
    retry_began: list[float] = []

    def on_progress(event: Any) -> None:
        if isinstance(event, RunStarted):
            key = (event.label, event.train["seed"])
            starts[key] += 1
            if starts[key] == 2 and not retry_began:
                retry_began.append(time.perf_counter())
            run_ids[key], streamed[event.run_id] = event.run_id, []
            open_runs.add(event.run_id)
        elif isinstance(event, Iterations):
            streamed[event.run_id].extend(event.losses)
            # mid-sweep: a run has finished, and both nodes (1 CPU each) train one now
            if not killed and ended_before_kill and len(open_runs) >= 2:
                cluster.kill_node(1)  # SIGKILL the second node's raylet: the task it runs dies with it
                killed.append(time.perf_counter())
                print(f"[node-kill] {len(ended_before_kill)} run(s) ended, {len(open_runs)} training: "
                      "SIGKILLed node 1's raylet", flush=True)
        elif isinstance(event, RunEnded):
            accuracy[event.run_id] = event.final_test_acc
            open_runs.discard(event.run_id)
            if not killed:
                ended_before_kill.append(event.run_id)

    ray_executor.execute(sweep_spec((1, 2), (3,), 1, 256, test_limit=500), None)  # both nodes' workers warm
    print(f"\n[node-kill] 2 x 2 x 2-seed sweep through Ray, {spec.data.train_limit} images, 1 epoch, CPU, plain; "
          "node 1's raylet SIGKILLed mid-sweep")
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        store = ResultStore(Path(tmp) / "ray.sqlite")
        t0 = time.perf_counter()
        try:
            ray_executor.execute(spec, store, on_progress=on_progress)
            error = None
        except Exception as exc:  # noqa: BLE001 - what the section shows
            error = exc
        ended = time.perf_counter()
        wall = ended - t0
        rows = {row["run_id"]: row for row in store.runs().to_dict("records")}
        kept = store.iterations().groupby("run_id")["loss"].apply(list).to_dict()
        store.close()
    print(f"wall {wall:.2f} s" + (f"; after the kill: the retry began {retry_began[0] - killed[0]:.2f} s, "
                                  if retry_began and killed else "; ")
          + (f"the job ended {ended - killed[0]:.2f} s after it" if killed else "no node was killed"))
    if error is not None:
        print(f"the job raised {type(error).__name__}: {str(error)[:240]}")
    print(f"{'#':>2s} {'run':>16s} {'seed':>4s} {'starts':>6s} {'stored status':>13s} {'stored losses':>13s} "
          f"{'= uninterrupted':>15s} {'acc':>7s}")
    ok = error is None and bool(killed)
    for k, ref in enumerate(reference):
        key = (ref.label, ref.train_cfg.seed)
        run_id = run_ids.get(key, "")
        status = rows.get(run_id, {}).get("status", "absent")
        stored = kept.get(run_id, [])
        same = stored == list(ref.losses) == streamed.get(run_id) and accuracy.get(run_id) == ref.final_test_acc
        acc = "-" if accuracy.get(run_id) is None else f"{100 * accuracy[run_id]:.2f}%"
        print(f"{k + 1:2d} {ref.label[:16]:>16s} {ref.train_cfg.seed:4d} {starts[key]:6d} {status:>13s} "
              f"{len(stored):13d} {'equal' if same else 'DIFFER':>15s} {acc:>7s}")
        ok &= same and status == "finished"
    retried = [f"{label} seed {seed}" for (label, seed), n in starts.items() if n > 1]
    lost = [r for r in ended_before_kill if rows.get(r, {}).get("status") != "finished"]
    print(f"finished before the kill and kept: {len(ended_before_kill) - len(lost)} of {len(ended_before_kill)}; "
          f"retried: {len(retried)} {retried}; runs in the store: {len(rows)} (planned {len(reference)})")
    ok &= not lost and len(retried) >= 1 and len(rows) == len(reference)
    cluster.add_node()  # two nodes again; then does the executor take the next job?
    try:
        after, after_s = timed(lambda: ray_executor.execute(train_spec(256), None))
        print(f"the next job, node 1 replaced: {runs_of(after)[0].status} in {after_s:.2f} s")
    except Exception as exc:  # noqa: BLE001 - what the section shows
        print(f"the next job, node 1 replaced: raised {type(exc).__name__}: {str(exc)[:240]}")
        ok = False
    print(f"node-kill: {verdict(ok)}")
    return ok


def stop(cluster: Any, args: argparse.Namespace) -> bool:
    tries = 2 if args.quick else 5
    spec = train_spec(2048, epochs=20, batch_size=8)  # 5,120 iterations: minutes if the Stop were missed
    times, statuses = [], []
    for _ in range(tries):
        cancel, asked = threading.Event(), []

        def stop_at_first_losses(event: Any, cancel: threading.Event = cancel, asked: list = asked) -> None:
            if isinstance(event, Iterations) and not cancel.is_set():
                asked.append(time.perf_counter())
                cancel.set()

        result = ray_executor.execute(spec, None, cancel=cancel, on_progress=stop_at_first_losses)
        times.append(time.perf_counter() - asked[0])
        statuses.append(runs_of(result)[0].status)
    ok = max(times) < STOP_GOAL_S and all(s == "stopped" for s in statuses)
    print(f"\n[stop] Lab 5, 2,048 images, batch 8, 20 epochs through Ray; Stop at the first losses, {tries} tries")
    print("Stop -> run ended at the driver: " + ", ".join(f"{t:.3f}" for t in times) + " s")
    print(f"max {max(times):.3f} s, median {statistics.median(times):.3f} s (goal < {STOP_GOAL_S} s); "
          f"run status {sorted(set(statuses))}: {verdict(ok)}")
    return ok


def gpu(cluster: Any, args: argparse.Namespace) -> bool:
    """8 Lab-5 jobs on one GPU at once against one after another: through Ray's GPU fractions where
    the cluster has a GPU, else (the issue's fallback) 8 local executions side by side in this process."""
    if not torch.cuda.is_available():
        print("\n[gpu] skipped: no CUDA device")
        return True
    gpus = ray_executor.connect(cluster.address).cluster_resources().get("GPU", 0)
    spec = train_spec(10_000 if args.quick else 60_000, test_limit=10_000, device="cuda")
    if gpus:
        path = f"through Ray's GPU fractions ({gpus:g} GPU in the cluster)"
        spec = replace(spec, train=replace(spec.train, device="auto"))  # resolved on the node

        def execute() -> Any:
            return ray_executor.execute(spec, None)
    else:
        path = "as 8 local executions in this process (the cluster's nodes offer no GPU)"

        def execute() -> Any:
            return jobs.execute(spec, None)
    execute()  # warm: CUDA, cuDNN, the data
    results, one_by_one = timed(lambda: [execute() for _ in range(8)])
    together: list[Any] = []
    threads = [threading.Thread(target=lambda: together.append(execute())) for _ in range(8)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = len(together) == 8 and all(r.status == "finished" for r in [*results, *together])
    print(f"\n[gpu] 8 Lab-5 jobs ({spec.data.train_limit} images, 1 epoch) on {torch.cuda.get_device_name(0)}, {path}")
    print(f"one after another: {one_by_one:.2f} s; 8 at once: {wall:.2f} s; ratio {wall / one_by_one:.2f}: "
          f"{verdict(ok)} (every job finished)")
    return ok


RUN = {"same-results": same_results, "overhead": overhead, "sweep27": sweep27, "stop": stop,
       "node-kill": node_kill, "gpu": gpu}


# ------------------------------------------------------------------------------ the machine and cluster

def _nodes(cluster: Any) -> int:
    ray = ray_executor.connect(cluster.address)
    return len([n for n in ray.nodes() if n["Alive"]])


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 2)[2],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sections", nargs="*", metavar="SECTION", help=f"any of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smaller runs and fewer tries: a smoke run")
    args = parser.parse_args(argv)
    if unknown := [s for s in args.sections if s not in SECTIONS]:
        parser.error(f"unknown section {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    sections = [s for s in SECTIONS if s in args.sections] or list(SECTIONS)
    if importlib.util.find_spec("ray") is None:  # not imported here: start_cluster sets the token first
        print(f"skipped: Ray is not installed: install the extra 'ray' ({ray_executor.RAY_PIN}) "
              "or put it on PYTHONPATH")
        return 0
    from ray_cluster import start_cluster
    load = os.getloadavg()
    print(f"# bench_ray | {machine()} | torch {torch.__version__} | ray {_ray_version()} | Python "
          f"{platform.python_version()} | {time.strftime('%Y-%m-%d %H:%M %Z')} | load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} | sections {' '.join(sections)}{' (quick)' if args.quick else ''}")
    t0 = time.perf_counter()
    saved = dict(os.environ)
    cluster = start_cluster(nodes=2, cpus=1, object_store_mb=100)  # sets the token before Ray is imported
    failed = []
    try:
        ray_executor.connect(cluster.address)
        print(f"# cluster: {_nodes(cluster)} nodes of 1 CPU, 100 MiB object store, at {cluster.address}, token auth; "
              f"up and joined in {time.perf_counter() - t0:.1f} s", flush=True)
        for name in sections:
            if not RUN[name](cluster, args):
                failed.append(name)
            sys.stdout.flush()
    finally:
        import ray
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop()
        os.environ.clear()
        os.environ.update(saved)
    print(f"\n# {len(sections) - len(failed)} of {len(sections)} sections passed"
          + (f"; FAILED: {', '.join(failed)}" if failed else "") + f"; bench wall {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


def _ray_version() -> str:
    """Without importing Ray: it reads the token from the environment when first imported."""
    return importlib.metadata.version("ray")


if __name__ == "__main__":
    sys.exit(main())
