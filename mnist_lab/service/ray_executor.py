"""The Ray executor: every kind of job ('train', 'sweep', 'compare', 'lesson') through the lab's
runner seam (`jobs.execute(..., runner=RayRunner(...))`): each run (or each group of seeds the
stacked engine trains as one) is one Ray streaming task that yields its training events as JSON-safe
dicts (training.events.to_dict: the final weights as safetensors bytes in base64); this process, the
only one that writes the store, replays them into the job's `Recorder(store)`, so the store gets the
rows a local run writes, and rebuilds each RunResult from them. A Stop reaches the task's loop as its
own cancel flag through a small Ray actor; a task whose worker or node dies is trained again once
under the same run ids. Ray is imported only when used (the extra `ray`).
"""
from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch

import mnist_lab
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import ConfigError, StoreError, failure_reason, public_form, shorten
from mnist_lab.i18n import N_, Message, from_stored, to_stored
from mnist_lab.lab.experiments import EventFn, run_group
from mnist_lab.nets.model import ModelConfig, count_params
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore
from mnist_lab.service import jobs
from mnist_lab.service.jobs import JobSpec
from mnist_lab.training import engines, events
from mnist_lab.training.events import EpochEnded, Event, Iterations, RunEnded, RunStarted
from mnist_lab.training.loop import CancelFlag, RunResult, TrainConfig, new_run_id
from mnist_lab.training.preflight import resolve_device

ADDRESS_ENV = "MNIST_LAB_RAY_ADDRESS"  # the cluster a Ray driver joins ("127.0.0.1:6379"); else Ray's own
RAY_PIN = "ray==2.60.0"
STOP_POLL_S = 0.1  # how often a task asks the stop actor (its loop checks its flag every iteration)
STOP_GRACE_S = 10.0  # after a Stop, how long the task has to end by itself before it is cancelled by force
MAX_ATTEMPTS = 2  # a task whose worker or node dies is trained once more (same run ids, same seeds)
NO_NODE_WAIT_S = 30.0  # how long a task no live node can run waits for one to join before its job fails
FEASIBLE_POLL_S = 2.0  # how often the driver looks for a live node for its queued tasks
ABORT_GRACE_S = 2.0  # after an exception on the driver, how long its tasks have to stop before a forced cancel
# a task's share of one GPU by its network's parameters (a stack of seeds: the sum): several small MNIST
# jobs share a GPU (Lab 5, 8,490 parameters: 1/8), a week-2 VGG16 on CIFAR (14.7 M) takes a whole one
GPU_SHARES = ((2_000_000, 0.125), (8_000_000, 0.25), (12_000_000, 0.5))

_NO_RAY = N_("The Ray executor needs Ray ({pin}), which is not installed here ({detail}): install the extra "
             "'ray' (pip install 'mnist-lab[ray]'), or train with the local worker.")
_NOT_YET = N_("The Ray executor trains {options} jobs so far; a {value!r} job trains with the local worker.")
_VERSION = N_("This Ray node runs {name} {theirs}, but the job was written by {name} {ours}: install the same "
              "version on every node of the cluster.")
# why a run ended on the cluster, when it was Ray (not the run) that failed: only the exception's type is kept,
# never Ray's own words (they name machines, addresses and commands of the cluster)
_MACHINE_LOST = N_("the machine training this run stopped, and again when the run was trained once more ({error})")
_CLUSTER_FAILED = N_("the cluster could not train this run ({error})")
_NO_NODE = N_("no machine of the cluster can train this run: it asks for {cpus} CPU and {gpus} GPU, and no live node "
              "has that much; start a node that does, or ask your teacher")
_DONE = object()  # the end of a task's event queue


class RemoteError(ValueError):
    """A run that failed on the cluster, with its reason as data: `template` and `params` as
    ConfigError's, so it is one translated line wherever a refusal is (i18n.render, the CLI's
    `error:` line, errors.failure_reason keeps it in each reader's language). A ValueError: what
    the job asked could not be trained, said in words (no traceback)."""

    def __init__(self, message: Message):
        self.template, self.params = message.template, dict(message.params)
        super().__init__(str(message))

    @property
    def public(self) -> Message | None:
        """Its reason's public form (errors.public_form), if the reason has one."""
        return public_form(Message(self.template, self.params))


def import_ray() -> Any:
    """The `ray` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("executor", "ray", _NO_RAY, pin=RAY_PIN, detail=str(exc)[:80]) from None
    return ray


def connect(address: str | None = None) -> Any:
    """Join the cluster at `address` (else $MNIST_LAB_RAY_ADDRESS, else Ray's own lookup) as its
    driver, once per process; token authentication comes from RAY_AUTH_MODE / RAY_AUTH_TOKEN."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get(ADDRESS_ENV) or "auto", log_to_driver=False,
                 logging_level="WARNING", configure_logging=False)
    return ray


def versions() -> dict[str, str]:
    """What a spec's driver runs; a node that runs anything else refuses the spec."""
    return {"mnist_lab": mnist_lab.__version__, "torch": torch.__version__}


def check_versions(ours: dict[str, str]) -> None:
    theirs = versions()
    for name in sorted(theirs):
        if ours.get(name) != theirs[name]:
            raise ConfigError("versions", ours.get(name), _VERSION, name=name, ours=ours.get(name),
                              theirs=theirs[name])


# ------------------------------------------------------------------------------ on a node

class StopBoard:
    """The Ray actor behind Stop, one per driver process (made once: a new actor per job costs a
    worker start, seconds on a small node, during which a Stop would not arrive): the driver marks
    a job's key stopped, the job's tasks read it."""

    def __init__(self) -> None:
        self.stopped: set[str] = set()

    def set(self, key: str) -> None:
        self.stopped.add(key)

    def is_set(self, key: str) -> bool:
        return key in self.stopped

    def forget(self, key: str) -> None:
        self.stopped.discard(key)


class RemoteFlag:
    """A CancelFlag for the training loop on a node: asks the StopBoard actor about its job's `key`
    at most every STOP_POLL_S (the loop checks every iteration), never blocking the loop."""

    def __init__(self, board: Any, key: str):
        self.board, self.key, self.stopped, self.pending, self.asked = board, key, False, None, 0.0
        self.ray = import_ray()  # once: is_set runs every iteration of the loop

    def is_set(self) -> bool:
        if self.stopped:
            return True
        ray = self.ray
        if self.pending is not None:
            ready, _ = ray.wait([self.pending], timeout=0)
            if ready:
                self.stopped, self.pending = bool(ray.get(self.pending)), None
        elif time.monotonic() - self.asked >= STOP_POLL_S:
            self.pending, self.asked = self.board.is_set.remote(self.key), time.monotonic()
        return self.stopped


def task_resources(spec_or_model_train: Any, cluster_gpus: bool) -> dict[str, float]:
    """What one task asks the cluster for: a JobSpec ('train'), a (network, training) pair, or a list
    of pairs (a stack of seeds). One CPU; where the cluster has GPUs and the run may use one (device
    'auto' or 'cuda'), also a fraction of a GPU sized to its parameters (GPU_SHARES, a stack: the
    sum; capped at 1): several small MNIST jobs share one GPU, a large net takes a whole one."""
    if isinstance(spec_or_model_train, JobSpec):
        pairs = [(spec_or_model_train.model, spec_or_model_train.train)]
    elif isinstance(spec_or_model_train, tuple):
        pairs = [spec_or_model_train]
    else:
        pairs = list(spec_or_model_train)
    if not cluster_gpus or all(str(train.device).startswith("cpu") for _, train in pairs):
        return {"num_cpus": 1}
    params = sum(count_params(model) for model, _ in pairs)
    share = next((share for limit, share in GPU_SHARES if params <= limit), 1.0)
    return {"num_cpus": 1, "num_gpus": share}


def feasible(ask: dict[str, float], nodes: list[dict]) -> bool:
    """Whether some live node of `nodes` (ray.nodes()) has in all what a task `ask`s for (not what is
    free now: a busy node frees its share later)."""
    return any(node.get("Alive") and all(node.get("Resources", {}).get(name, 0.0) >= amount
                                         for name, amount in (("CPU", ask.get("num_cpus", 0)),
                                                              ("GPU", ask.get("num_gpus", 0))))
               for node in nodes)


def cap_gpu_memory(device: str, fraction: float) -> bool:
    """On a node: cap this process's CUDA memory to its task's GPU fraction (others share the GPU),
    when `device` resolves to CUDA here; says whether it did. Always set (a whole GPU: 1.0), so a
    process that ran a smaller share before is not left capped at it. (A GPU task's process trains
    one task only, `_remotes`: the GPU Ray gave it is its cuda:0.)"""
    if not fraction > 0:
        return False
    dev = resolve_device(device)
    if dev.type != "cuda":
        return False
    torch.cuda.set_per_process_memory_fraction(min(float(fraction), 1.0), dev)
    return True


def train_unit(unit: dict[str, Any], driver_versions: dict[str, str], board: Any, key: str) -> Iterator[dict]:
    """The task: train `unit` (plain data made by `units`: its runs, each a 'train' spec as JSON, a
    run id and a stored label; their experiment and group; the GPU fraction it was given) on this
    node through lab.experiments.run_group (one run, or a stack of seeds), and yield each event as
    `events.to_dict` writes it, stopping when `board` (a StopBoard) has `key`; a unit whose job was
    stopped before it began yields nothing (as a local sweep does not start it). A failure is
    yielded as {'kind': 'error', 'message': its stored reason}, never raised: only plain data leaves
    the node."""
    out: queue.Queue = queue.Queue()

    def work() -> None:
        try:
            check_versions(driver_versions)
            specs = [JobSpec.from_json(run["spec"]) for run in unit["runs"]]
            for spec in specs:
                if spec.kind != "train":
                    raise ConfigError("kind", spec.kind, _NOT_YET, options="train")
            if board is not None and import_ray().get(board.is_set.remote(key)):
                return
            cap_gpu_memory(specs[0].train.device, float(unit.get("gpu_fraction") or 0))
            labels = [(from_stored(run["label_msg"]) or [spec.label])[0] if run["label_msg"] else spec.label
                      for spec, run in zip(specs, unit["runs"])]
            run_group([(spec.model, spec.train, label) for spec, label in zip(specs, labels)], specs[0].data,
                      on_progress=lambda e: out.put(events.to_dict(e)),
                      cancel=RemoteFlag(board, key) if board is not None else None,
                      experiment=unit["experiment"], group_id=unit["group_id"],
                      run_ids=[run["run_id"] for run in unit["runs"]])
        except Exception as exc:  # noqa: BLE001 - sent to the driver as data
            out.put({"kind": "error", "message": to_stored(failure_reason(exc))})
        finally:
            out.put(_DONE)

    # the loop reports through a callback; a thread lets this generator yield what it reports as it comes
    worker = threading.Thread(target=work, name="mnist-lab-ray-run", daemon=True)
    worker.start()
    while (item := out.get()) is not _DONE:
        yield item
    worker.join()


def train_unit_on_gpu(unit: dict[str, Any], driver_versions: dict[str, str], board: Any,
                      key: str) -> Iterator[dict]:
    """train_unit for a task given a GPU share: its own remote function, made with max_calls=1 (one
    task per worker process, as Ray does for a GPU task it is told of in the decorator; .options()
    cannot ask it): a process keeps the CUDA device and memory cap of its first task, and Ray gives
    the next task another GPU (CUDA_VISIBLE_DEVICES) on a box with several."""
    yield from train_unit(unit, driver_versions, board, key)


Job = tuple[ModelConfig, TrainConfig, "str | Message"]


def units(jobs: list[Job]) -> list[list[int]]:
    """The tasks a runner call makes of `jobs`, as lists of job indices in the local order: one per
    run, except that runs asking for a stacking engine that differ only in their seed are one task
    (the group run_many would stack: train_many stacks them there)."""
    groups: dict[Any, list[int]] = {}
    for k, (model_cfg, train_cfg, _) in enumerate(jobs):
        stack = engines.asks_to_stack(train_cfg) and len(jobs) > 1
        groups.setdefault((model_cfg, replace(train_cfg, seed=0)) if stack else k, []).append(k)
    return list(groups.values())


def unit_data(jobs: list[Job], data_cfg: DataConfig, group: list[int], experiment: str, group_id: str,
              run_ids: list[str], gpu_fraction: float) -> dict[str, Any]:
    """One task's argument: plain data only (JSON specs, ids, stored labels)."""
    runs = []
    for k in group:
        model_cfg, train_cfg, label = jobs[k]
        text = label if isinstance(label, str) else ""
        runs.append(dict(spec=JobSpec("train", train_cfg, data_cfg, model=model_cfg, label=text).to_json(),
                         run_id=run_ids[k], label_msg="" if isinstance(label, str) else to_stored(label)))
    return dict(runs=runs, experiment=experiment, group_id=group_id, gpu_fraction=gpu_fraction)


_REMOTES: dict[str, tuple[Any, Any, Any]] = {}  # the connection's job id: its (task, GPU task, StopBoard)


def _remotes() -> tuple[Any, Any, Any]:
    """(the streaming task, the same for a task with a GPU share (one task per process), this
    driver's StopBoard actor), made once per connection: an actor belongs to the connection that
    made it, so after ray.shutdown() and a new ray.init the old handle is dropped, never called."""
    ray = import_ray()
    import ray.util.scheduling_strategies  # noqa: F401, F811 - loaded on demand
    job_id = ray.get_runtime_context().get_job_id()
    if job_id not in _REMOTES:
        _REMOTES.clear()
        task = ray.remote(num_returns="streaming", num_cpus=1, max_retries=0)(train_unit)
        gpu_task = ray.remote(num_returns="streaming", num_cpus=1, max_retries=0, max_calls=1)(train_unit_on_gpu)
        # on the driver's own node: a board on a worker node would die with it, and every Stop with it
        here = ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(
            ray.get_runtime_context().get_node_id(), soft=False)
        _REMOTES[job_id] = (task, gpu_task,
                            ray.remote(num_cpus=0)(StopBoard).options(scheduling_strategy=here).remote())
    return _REMOTES[job_id]


# ------------------------------------------------------------------------------ the driver

@dataclass
class _Run:
    """What the driver saw of one run: its start, losses, epochs and end."""

    started: RunStarted | None = None
    losses: list[float] = field(default_factory=list)
    epochs: list[events.EpochMetrics] = field(default_factory=list)
    ended: RunEnded | None = None


class RayRunner:
    """A lab.experiments.Runner that trains on the cluster: `(jobs, data_cfg, *, record, on_progress,
    cancel, experiment, group_id) -> list[RunResult]`, as run_many does (results in `jobs` order;
    those not begun after a Stop left out). One per job (its Stop key on the board); close() at the end."""

    def __init__(self, address: str | None = None):
        self.ray = connect(address)
        self.task, self.gpu_task, self.board = _remotes()
        self.key = uuid.uuid4().hex  # the job's, on the board
        self.stopped = False  # a Stop reached the board (later calls start nothing)

    def close(self) -> None:
        self.board.forget.remote(self.key)

    def __call__(self, jobs: list[Job], data_cfg: DataConfig, *, record: EventFn | None = None,
                 on_progress: EventFn | None = None, cancel: CancelFlag | None = None,
                 experiment: str = "sweep", group_id: str = "") -> list[RunResult]:
        if not jobs or self.stopped or (cancel is not None and cancel.is_set()):
            return []
        ray = self.ray
        run_ids = [new_run_id() for _ in jobs]
        nodes = ray.nodes()
        gpus = any(node.get("Alive") and node.get("Resources", {}).get("GPU", 0) > 0 for node in nodes)
        groups = units(jobs)
        asks = [task_resources([jobs[k][:2] for k in group], gpus) for group in groups]
        for ask in asks:  # a task no node can run would wait for ever: the job fails now, nothing trained
            if not feasible(ask, nodes):
                raise RemoteError(no_node(ask))
        args = [unit_data(jobs, data_cfg, group, experiment, group_id, run_ids, ask.get("num_gpus", 0.0))
                for group, ask in zip(groups, asks)]
        unit_runs = [[run_ids[k] for k in group] for group in groups]
        seen = {run_id: _Run() for run_id in run_ids}
        arrived: queue.Queue = queue.Queue()  # (unit, attempt, event dict, or _DONE, or a RayError)
        gens: list[Any] = [None] * len(groups)
        attempts = [0] * len(groups)
        begun: set[tuple[int, int]] = set()  # (unit, attempt) that sent something: it runs on a node

        def queued() -> set[int]:  # the units whose task has not begun on a node
            return {u for u in list(live) if (u, attempts[u]) not in begun}

        def submit(u: int) -> None:
            attempts[u] += 1
            task = self.gpu_task if asks[u].get("num_gpus") else self.task
            gens[u] = task.options(**asks[u]).remote(args[u], versions(), self.board, self.key)
            threading.Thread(target=_pump, args=(ray, u, attempts[u], gens[u], arrived, begun), daemon=True,
                             name="mnist-lab-ray-pump").start()

        for u in range(len(groups)):
            submit(u)
        done, forced = threading.Event(), threading.Event()
        watcher = threading.Thread(target=self._watch_stop, args=(cancel, gens, queued, done, forced), daemon=True,
                                   name="mnist-lab-ray-stop")
        watcher.start()
        failure: Message | None = None
        live = set(range(len(groups)))
        waiting = _Waiting(ray, asks)
        try:
            while live:  # the one thread that writes the store: this one
                if failure is None and (failure := waiting.check(queued())) is not None:
                    self.board.set.remote(self.key)  # no node for a queued task: the job fails, the others stop
                    for u in queued():
                        ray.cancel(gens[u])
                try:
                    u, attempt, data = arrived.get(timeout=FEASIBLE_POLL_S)
                except queue.Empty:
                    continue
                if attempt != attempts[u]:  # an earlier attempt's, after its retry was sent
                    continue
                if data is _DONE:
                    live.discard(u)
                elif isinstance(data, BaseException):
                    stopping = forced.is_set() or self.stopped or (cancel is not None and cancel.is_set())
                    mine = unit_runs[u]
                    if stopping:  # a Stop: what it trained is kept, not retried
                        _end_open(record, on_progress, seen, [i for i in _open(seen) if i in mine], "stopped", None)
                    elif all(seen[i].ended is not None for i in mine):
                        pass  # its runs had all ended before its machine went: kept as they are
                    elif failure is None and attempts[u] < MAX_ATTEMPTS and machine_lost(ray, data):
                        if feasible(asks[u], ray.nodes()):
                            self._forget(record, seen, mine)
                            submit(u)  # the same run ids and seeds; its first attempt's rows are gone
                        else:
                            failure = no_node(asks[u])
                            self.board.set.remote(self.key)
                    else:
                        failure = failure or lost_reason(ray, data)
                        self.board.set.remote(self.key)  # the job has failed: its other runs stop
                elif data.get("kind") == "error":
                    failure = failure or _message(data.get("message"))
                    self.board.set.remote(self.key)
                else:
                    event = events.from_dict(data, "ray event")
                    if event.run_id not in seen:  # not a run of this call: nothing to record
                        continue
                    _note(seen[event.run_id], event)
                    if record is not None:
                        record(event)
                    if on_progress is not None:
                        on_progress(event)
            if failure is not None:
                _end_open(record, None, seen, _open(seen), "failed", failure)
        except BaseException as exc:  # on the driver (the store, a bad event, on_progress): no task goes on
            self._abort(exc, gens, live, queued(), arrived, attempts, record, seen)
            raise
        finally:
            done.set()
            watcher.join()
        if failure is not None:
            raise RemoteError(failure)
        return [_result(jobs[k], data_cfg, run_ids[k], seen[run_ids[k]]) for k in range(len(jobs))
                if seen[run_ids[k]].started is not None]

    def _abort(self, exc: BaseException, gens: list[Any], live: set[int], queued: set[int], arrived: queue.Queue,
               attempts: list[int], record: EventFn | None, seen: dict[str, _Run]) -> None:
        """After an exception on the driver: the job's tasks stop (queued ones are cancelled at once, a
        running one that has not ended ABORT_GRACE_S later by force), and its open runs end as the
        local _Reporter.fail_open ends them: 'interrupted' after a Ctrl-C, else 'failed' with the reason."""
        with contextlib.suppress(Exception):
            self.board.set.remote(self.key)
            for u in queued:
                self.ray.cancel(gens[u])
            deadline = time.monotonic() + ABORT_GRACE_S
            while live and (left := deadline - time.monotonic()) > 0:
                try:
                    u, attempt, data = arrived.get(timeout=left)
                except queue.Empty:
                    break
                if data is _DONE and attempt == attempts[u]:
                    live.discard(u)
            for u in live:
                self.ray.cancel(gens[u], force=True)
        why = failure_reason(exc)
        status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        for run_id in _open(seen):
            with contextlib.suppress(StoreError):  # the database itself may be what failed
                _end_open(record, None, seen, [run_id], status, why)

    def _forget(self, record: EventFn | None, seen: dict[str, _Run], run_ids: list[str]) -> None:
        """Before a retry: the first attempt's rows of these runs go (the retry's replace them)."""
        if isinstance(record, Recorder):
            record.store.delete_runs(run_ids)
        for run_id in run_ids:
            seen[run_id] = _Run()

    def _watch_stop(self, cancel: CancelFlag | None, gens: list[Any], queued: Callable[[], set[int]],
                    done: threading.Event, forced: threading.Event) -> None:
        """Pass a Stop on to the job's tasks: those still queued on the cluster are cancelled at once
        (they never begin), those training stop by their flag, and are cancelled by force (never
        retried) when they have not ended STOP_GRACE_S later."""
        if cancel is None:
            return
        while not done.wait(STOP_POLL_S):
            if cancel.is_set():
                self.stopped = True
                self.board.set.remote(self.key)
                for u in queued():
                    self.ray.cancel(gens[u])
                if not done.wait(STOP_GRACE_S):
                    forced.set()
                    for gen in gens:
                        self.ray.cancel(gen, force=True)
                return


class _Waiting:
    """The driver's watch on its queued tasks: a task that no live node can run (its node, the only one
    with a GPU, died; the head has no CPU to give) for NO_NODE_WAIT_S fails its job with the reason,
    where Ray would keep it queued for ever. Looked at every FEASIBLE_POLL_S."""

    def __init__(self, ray: Any, asks: list[dict[str, float]]):
        self.ray, self.asks = ray, asks
        self.since: dict[int, float] = {}
        self.checked = time.monotonic()

    def check(self, queued: set[int]) -> Message | None:
        now = time.monotonic()
        if now - self.checked < FEASIBLE_POLL_S or not queued:
            return None
        self.checked = now
        nodes = self.ray.nodes()
        for u in sorted(queued):
            if feasible(self.asks[u], nodes):
                self.since.pop(u, None)
            elif now - self.since.setdefault(u, now) >= NO_NODE_WAIT_S:
                return no_node(self.asks[u])
        return None


def no_node(ask: dict[str, float]) -> Message:
    return Message(_NO_NODE, {"cpus": f"{ask.get('num_cpus', 0):g}", "gpus": f"{ask.get('num_gpus', 0):g}"})


# Ray's errors for a task whose worker process, node or results were lost: the machine, not the run
_MACHINE_ERRORS = ("WorkerCrashedError", "NodeDiedError", "LocalRayletDiedError", "ObjectLostError",
                   "OutOfMemoryError")


def machine_lost(ray: Any, exc: BaseException) -> bool:
    """Whether a task's RayError says its machine (worker, node, object) was lost: only then is it
    trained again; a failure of the run itself (RayTaskError: its code raised) would fail again."""
    kinds = tuple(getattr(ray.exceptions, name) for name in _MACHINE_ERRORS if hasattr(ray.exceptions, name))
    return isinstance(exc, kinds) and not isinstance(exc, ray.exceptions.TaskCancelledError)


def lost_reason(ray: Any, exc: BaseException) -> Message:
    """Why a run the cluster could not train ended, in each reader's language and without Ray's own
    words (they name the cluster's machines, addresses and commands): a lost machine (after the
    retry) or Ray's failure by its type; an error of the run's code on the node by its cause (a
    refusal's template, else its first line, shortened)."""
    if machine_lost(ray, exc):
        return Message(_MACHINE_LOST, {"error": type(exc).__name__})
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            if isinstance(getattr(cause, "template", None), str):
                return failure_reason(cause)
            words = (str(cause).strip().splitlines() or [""])[0]
            detail = f"{type(cause).__name__}: {words}" if words else type(cause).__name__
            return Message(_CLUSTER_FAILED, {"error": str(shorten(detail, quote=False))})
    return Message(_CLUSTER_FAILED, {"error": type(exc).__name__})


def execute(spec: JobSpec, store: ResultStore | None, cancel: CancelFlag | None = None,
            on_progress: Callable[[Event], None] | None = None, address: str | None = None) -> Any:
    """service.jobs.execute on the cluster at `address`: the same result type for each kind
    (RunResult, SweepResult, CompareResult, LessonResult), every event recorded in `store` (one
    Recorder) as it arrives, then passed to `on_progress`. A set `cancel` stops the runs as a local
    Stop does (what finished is kept; runs not begun never start); a run that fails on the cluster
    after its retry ends 'failed' with its reason, the others stop, and RemoteError is raised."""
    runner = RayRunner(address)
    try:
        return jobs.execute(spec, store, cancel=cancel, on_progress=on_progress, runner=runner)
    finally:
        runner.close()


def _pump(ray: Any, u: int, attempt: int, gen: Any, arrived: queue.Queue, begun: set[tuple[int, int]]) -> None:
    """Move task `u`'s events to `arrived` as they come, then _DONE (after a RayError, if it died);
    (u, attempt) joins `begun` with its first event (it runs on a node: a Stop no longer cancels it at once)."""
    try:
        for ref in gen:
            item = ray.get(ref)
            begun.add((u, attempt))
            arrived.put((u, attempt, item))
    except ray.exceptions.RayError as exc:  # its worker or node died, or it was cancelled by force
        arrived.put((u, attempt, exc))
    finally:
        arrived.put((u, attempt, _DONE))


def _note(run: _Run, event: Event) -> None:
    if isinstance(event, RunStarted):
        run.started = event
    elif isinstance(event, Iterations):
        run.losses.extend(event.losses)
    elif isinstance(event, EpochEnded):
        run.epochs.append(event.metrics)
    elif isinstance(event, RunEnded):
        run.ended = event


def _open(seen: dict[str, _Run]) -> list[str]:
    return [run_id for run_id, run in seen.items() if run.started is not None and run.ended is None]


def _end_open(record: EventFn | None, on_progress: EventFn | None, seen: dict[str, _Run], run_ids: list[str],
              status: str, why: Message | None) -> None:
    """End runs that started and did not end: 'failed' with the reason, or 'stopped'."""
    for run_id in run_ids:
        end = RunEnded(run_id=run_id, epoch=0, step=0, total_steps=0, status=status, seconds=0.0,
                       message=str(why) if why else "", message_msg=to_stored(why) if why else "")
        _note(seen[run_id], end)
        if record is not None:
            record(end)
        if on_progress is not None:
            on_progress(end)


def _result(job: Job, data_cfg: DataConfig, run_id: str, run: _Run) -> RunResult:
    """The RunResult a local run returns, rebuilt from the events the task streamed."""
    start, end = run.started, run.ended
    assert start is not None
    return RunResult(run_id=run_id, model_cfg=job[0], train_cfg=job[1], data_cfg=data_cfg, params=start.params,
                     device=start.device, engine=start.engine, status=end.status if end else "failed",
                     losses=list(run.losses), epochs=list(run.epochs), steps_per_epoch=start.steps_per_epoch,
                     started_at=start.started_at, seconds=end.seconds if end else 0.0,
                     data_source=start.data_source, diverged_at=end.diverged_at if end else None,
                     message=end.message if end else "", message_msg=end.message_msg if end else "",
                     state_dict=end.weights if end else None, label=start.label)


def _message(stored: Any) -> Message:
    parts = from_stored(stored)
    return parts[0] if parts else Message(N_("the run failed; no reason was given"))
