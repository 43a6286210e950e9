"""Objects every session shares (the result store and its job runner, the worker processes,
MNIST, the device, the server's policy) and the per-session state around them: the workspace,
widget values that survive page switches, and the query string that mirrors a page's setup."""
from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st

from mnist_lab.data.datasets import (
    DATASETS,
    MNIST,
    CacheRebuiltWarning,
    DataConfig,
    RawSplits,
    SampleGrid,
    load_raw,
    sample_grid,
)
from mnist_lab.errors import ConfigError, StoreError, shorten
from mnist_lab.i18n import N_
from mnist_lab.paths import default_db_path
from mnist_lab.runs.store import LOCAL_WORKSPACE, ResultStore
from mnist_lab.service import executors
from mnist_lab.service.access import LOCAL, Asker, may
from mnist_lab.service.jobs import StoreRunner
from mnist_lab.service.policy import ServerPolicy
from mnist_lab.service.queue import JobQueue
from mnist_lab.service.quota import prune_visitors
from mnist_lab.service.worker import spawn_worker
from mnist_lab.training.loop import device_label, warm_up
from mnist_lab.training.preflight import resolve_device

from .lang import _, render_error
from .session import client, current
from .text import plain

KEPT_PREFIXES = ("train_", "sweep_", "cmp_", "runs_", "w2_")  # page-only widget keys kept across pages
PAGE_KINDS = {"train": N_("Train"), "sweep": N_("Sweep"), "compare": N_("FC vs CNN"),
              "lesson": N_("Week 2"), "reports": N_("All reports"),
              "export": N_("End of term")}  # job kind -> page (msgids); reports/export: jobs.CLASS_KINDS
RESERVED_QUERY = ("lang",)  # kept in the URL on every page: the language (nothing that grants access)
WORKER_IDLE_ENV = "MNIST_LAB_WORKER_IDLE_S"  # an app-started worker exits after this long idle
# With MNIST_LAB_EXECUTOR=ray, how many jobs train at once (each a Ray driver process, its runs spread over the
# cluster): a sweep fans out by itself, but one student's single run is one task, so a class's jobs must overlap
# to use several GPU boxes; each driver is a process with torch and Ray (615 MiB measured) on the class server and
# every driver writes the one SQLite file, so a few, not one per student. MNIST_LAB_WORKERS sets it.
RAY_DRIVERS = 4
PRUNE_EVERY_S = 600.0  # demo mode: visitors' old runs are looked for at most this often
PAGES_DIR = Path(__file__).resolve().parents[1] / "app_pages"


def page_file(name: str) -> str:
    """`app_pages/<name>.py` as an absolute path, for st.Page and st.page_link: both resolve a relative
    path against the MAIN script's folder, which is deploy/streamlit-cloud/ when Community Cloud runs
    that entry, so a relative "app_pages/..." would name a file that is not there."""
    return str(PAGES_DIR / f"{name}.py")


def server_policy() -> ServerPolicy:
    """Read on every run (cheap), so a changed environment needs no restart of cached objects."""
    return ServerPolicy.from_env()


@st.cache_resource
def _store(path: str) -> ResultStore:
    return ResultStore(path)


def result_store() -> ResultStore:
    return _store(str(default_db_path()))  # keyed by path, so $MNIST_LAB_DB is honoured


@st.cache_resource
def _queue(path: str) -> JobQueue:
    return JobQueue(_store(path))


def job_queue() -> JobQueue:
    """The job queue and worker registry in the result store's file."""
    return _queue(str(default_db_path()))


def runner() -> StoreRunner:
    """The job runner acting for this session (`asker`): it shows, stops and deletes only what
    `mnist_lab.service.access.may` lets this session; its jobs keep the browser's address (shared mode);
    with MNIST_LAB_EXECUTOR=ray its jobs' devices are the cluster's, not this server's."""
    policy = server_policy()
    return StoreRunner(result_store(), queue_limit=policy.queue_limit, queue=job_queue(), asker=asker(),
                       client=client() if policy.shared else "", remote=server_executor() == "ray")


def server_executor() -> str:
    """What trains this server's jobs: 'local' or 'ray' ($MNIST_LAB_EXECUTOR, checked once); 'local'
    while its value is refused (ensure_workers says so, and starts no worker)."""
    return checked_executor(os.environ.get(executors.EXECUTOR_ENV, ""))[0] or "local"


def job_device(device: str) -> str:
    """The device type a job naming `device` trains on, for its limits and estimates: this server's
    with the local executor; the Ray cluster's (a GPU if it has one) with MNIST_LAB_EXECUTOR=ray."""
    return executors.device_type(device, server_executor())


@st.cache_resource
def spawned_workers() -> dict:
    return {}  # (database, slot) -> the worker Popen this server started


@st.cache_resource(show_spinner=False)
def checked_executor(value: str) -> tuple[str, ConfigError | None]:
    """The executor $MNIST_LAB_EXECUTOR (`value`) names, checked once per value this server sees:
    ('local' or 'ray', None), or ('', the refusal naming the choices)."""
    try:
        return executors.choose(), None
    except ConfigError as exc:
        return "", exc


def ensure_workers(say: bool = True) -> None:
    """Start the worker processes this store lacks: one per GPU, one on a CPU machine, RAY_DRIVERS
    Ray drivers with MNIST_LAB_EXECUTOR=ray (MNIST_LAB_WORKERS wins over each). A worker started
    elsewhere (`python -m mnist_lab worker`) counts. A bad MNIST_LAB_EXECUTOR starts none: the page
    says so in one line (`say`; the app's entry point, once per page run), queued jobs wait. In demo
    mode, at most every PRUNE_EVERY_S, delete the visitors' runs older than the keep time."""
    store, policy = result_store(), server_policy()
    # MNIST_LAB_EXECUTOR; the child reads MNIST_LAB_RAY_ADDRESS and Ray's token itself
    executor, refused = checked_executor(os.environ.get(executors.EXECUTOR_ENV, ""))
    if refused is None:
        _spawn_workers(store, policy, executor)
    elif say:
        st.error(plain(_("No job trains until this is fixed: {why}").format(why=render_error(refused))),
                 icon=":material/error:")
    _prune(store, policy)


def _spawn_workers(store: ResultStore, policy: ServerPolicy, executor: str) -> None:
    import torch

    gpus = 0 if executor == "ray" else torch.cuda.device_count() if torch.cuda.is_available() else 0
    wanted = policy.workers if policy.workers is not None else RAY_DRIVERS if executor == "ray" else max(gpus, 1)
    live = {w["slot"] for w in job_queue().live_workers()}
    spawned = spawned_workers()
    idle = os.environ.get(WORKER_IDLE_ENV)
    for slot in range(wanted):
        key = (str(store.path), slot)
        proc = spawned.get(key)
        if slot in live or (proc is not None and proc.poll() is None):
            continue
        device = "auto" if executor == "ray" else f"cuda:{slot % gpus}" if gpus else "cpu"  # Ray: the node's
        spawned[key] = spawn_worker(store.path, slot, device, parent_pid=os.getpid(), executor=executor,
                                    idle_exit_s=float(idle) if idle else None,
                                    max_job_s=2 * policy.max_job_seconds if policy.shared else None,
                                    log=store.path.with_name("worker.log"))  # beside its database


def _prune(store: ResultStore, policy: ServerPolicy) -> None:
    last = pruned_at()
    if policy.demo and time.monotonic() - last.get(str(store.path), -PRUNE_EVERY_S) >= PRUNE_EVERY_S:
        last[str(store.path)] = time.monotonic()  # claimed before it runs: one session prunes, the rest go on
        with contextlib.suppress(sqlite3.Error, OSError, StoreError):  # a busy or full disk: tried again later
            prune_visitors(store, job_queue(), policy.keep_hours * 3600)


@st.cache_resource
def pruned_at() -> dict:
    return {}  # database -> time.monotonic() when the demo last pruned its visitors' old runs


@st.cache_resource
def _done_at() -> dict:
    return {"lock": threading.Lock()}  # (what, database) -> time.monotonic() it was last done


def due(what: str, every_s: float) -> bool:
    """Whether `what` (upkeep every page's poll would otherwise repeat: looking for dead workers) is
    due in this server process, at most once every `every_s` seconds for its database, whichever
    session asks. A class's 30 pages polling each second would otherwise each do it."""
    done = _done_at()
    key, now = (what, str(default_db_path())), time.monotonic()
    with done["lock"]:
        if now - done.get(key, -float("inf")) < every_s:
            return False
        done[key] = now
        return True


def workspace() -> str:
    """This session's workspace: 'local' on a local install; in shared mode the signed-in person's
    ('student:<id>', 'teacher'), in demo mode the visitor's; '' when no one is signed in (sees nothing)."""
    if not server_policy().shared:
        return LOCAL_WORKSPACE
    who = current()
    return who.workspace if who is not None else ""


def is_teacher() -> bool:
    who = current()
    return who is not None and who.role == "teacher"


def teacher_only() -> None:
    """The first line of every class page: anyone but the teacher reads one refusal and nothing else.
    The navigation offers these pages to the teacher only; this stops a guessed address or a page run directly."""
    if not is_teacher():
        st.error(_("Only the teacher can open this page."), icon=":material/lock:")
        st.stop()


def asker() -> Asker:
    """Who this session is, for `mnist_lab.service.access.may`: the signed-in person (mode local: the
    local user)."""
    policy = server_policy()
    return policy.asker(current()) if policy.shared else LOCAL


def run_scope() -> str | None:
    """Whose runs this session may see: None for every run (a local user, a teacher, or a
    shared server with the class view on), else its own workspace."""
    return asker().scope


def may_change(run_workspace: str | None) -> bool:
    """Whether this session may stop or delete a run of `run_workspace`."""
    return may(asker(), "delete", run_workspace)


@st.cache_resource
def device_name() -> str:
    device = resolve_device("auto")
    # pay cuDNN's start-up, or the build of the CPU kernels (seconds), now, not in the first student's run
    threading.Thread(target=warm_up, args=(device,), name="warm-up", daemon=True).start()
    return device_label(device)


def on_gpu() -> bool:
    return device_name().startswith("cuda")


def quick_defaults() -> dict[str, int]:
    """Sizes that finish in a minute or two. One run trains on all 60,000 images wherever an epoch
    of a lab net takes seconds: a GPU, or a CPU with 2 or more cores (2.5-6 s per Lab-5 epoch on 2
    cores, docs/BENCHMARKS.md), so its accuracy can be held against the published one; a 1-core
    CPU (a hosted free tier) starts on 10,000. A sweep trains dozens of networks: a subset on a CPU.
    (The FC vs CNN page always starts on all 60,000 images: its tiny nets are cheap.)"""
    if on_gpu():
        return dict(train_limit=MNIST.train_count, epochs=3, sweep_limit=MNIST.train_count, seeds=3)
    return dict(train_limit=MNIST.train_count if (os.cpu_count() or 1) >= 2 else 10000, epochs=1, sweep_limit=10000,
                seeds=2)


@st.cache_resource(show_spinner=False)  # the spinner is dataset_raw()'s, in the session's language
def _raw(dataset: str) -> RawSplits:
    return load_raw(DataConfig(dataset=dataset))


def dataset_raw(dataset: str = "mnist") -> tuple[RawSplits | None, str]:
    """(the decoded tensors of `dataset`, '') or (None, why it is unavailable: for a student of a
    shared server its public form, for the teacher and a local user where to put the files)."""
    try:
        with st.spinner(_("Loading {dataset} (once per server)…").format(dataset=DATASETS[dataset].title)):
            raw = _raw(dataset)  # the spinner shows only if it takes a moment
    except Exception as exc:  # noqa: BLE001 - shown on the page, retried on the next run
        return None, render_error(exc)  # in the session's language where the error is a template
    if raw.rebuilt is not None and not st.session_state.get(f"data_rebuilt_{dataset}"):
        st.session_state[f"data_rebuilt_{dataset}"] = True  # said once to each session, not on every rerun
        st.info(plain(without_server_paths(rebuilt_note(raw.rebuilt))), icon=":material/cached:")
    return raw, ""


# An absolute path on the server (the data, cache, download or database folder, a file in one); not
# a URL's path, a "~" path or a fraction: what a student of a shared server must not be shown.
SERVER_PATH = re.compile(r"(?<![\w.:/~])/(?:[\w.+-]+/)*[\w.+-]+/?")


def reads_public() -> bool:
    """Whether this session reads errors in their public form (app_lib.lang.render_error): a student
    or visitor of a shared or demo server. The teacher and a local user read the detail (the path,
    the command) that tells them what to fix."""
    return server_policy().shared and not is_teacher()


def without_server_paths(text: str) -> str:
    """`text` as a browser may show it: for a student or visitor of a shared server every absolute
    path becomes "a folder on the server" (the last net behind the public forms of
    app_lib.lang.render_error); for the teacher and locally, as it is."""
    hide = path_hider()
    return text if hide is None else hide(text)


def path_hider() -> Callable[[Any], Any] | None:
    """`without_server_paths` decided now, for text made later outside the page's run (a download
    built when clicked, the text cells of a CSV); None where nothing is hidden (the teacher, a local
    user)."""
    if not reads_public():
        return None
    folder = _("(a folder on the server)")
    return lambda value: SERVER_PATH.sub(folder, value) if isinstance(value, str) else value


def rebuilt_note(warning: CacheRebuiltWarning) -> str:
    """Why the data cache was rebuilt, in the session's language, naming no server path: "the cache"."""
    params = warning.params
    why, path = str(params.get("why", "")), str(params.get("path", ""))
    if path:
        why = why.replace(path, _("the cache"))
    return _("The {title} cache was not used ({why}); it was rebuilt from the original files.").format(
        title=params.get("title", ""), why=why)


def mnist() -> tuple[RawSplits | None, str]:
    """(the decoded MNIST tensors, '') or (None, why it is unavailable)."""
    return dataset_raw("mnist")


@st.cache_data
def sample_images(n: int, dataset: str = "mnist", permutation_seed: int | None = None, one_per_class: bool = False,
                  lang: str = "en") -> SampleGrid | None:
    """A grid of `dataset`'s first training images (grey or colour) with class names in `lang`,
    and with `permutation_seed` their pixel-permuted copies; None while the data is unavailable."""
    raw, _why = dataset_raw(dataset)
    return None if raw is None else sample_grid(raw, DATASETS[dataset], n, permutation_seed, one_per_class, lang)


def sample_digits(n: int, permutation_seed: int | None = None, one_per_class: bool = False):
    """(images uint8 (n, 28, 28), labels (n,)) from MNIST's training set, pixel-permuted by the
    experiments' fixed permutation when a seed is given; (None, None) while MNIST is unavailable."""
    grid = sample_images(n, "mnist", permutation_seed, one_per_class)
    if grid is None:
        return None, None
    return (grid.images if permutation_seed is None else grid.permuted), grid.labels


# ------------------------------------------------------------------------- session state

def keep_page_state() -> None:
    """Streamlit forgets the values of widgets not drawn in a run; re-assigning them keeps each
    page's setup while the user visits another page. Buttons (keys ending '_btn') can't be set."""
    for key in list(st.session_state):
        if isinstance(key, str) and key.startswith(KEPT_PREFIXES) and not key.endswith("_btn"):
            st.session_state[key] = st.session_state[key]


def _cast(text: str, like: Any) -> Any:
    if isinstance(like, bool):  # a switch: anything else is refused, not read as off
        if text.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(text)
        return text.lower() in ("1", "true", "yes", "on")
    if isinstance(like, int):
        return int(float(text))
    if isinstance(like, float):
        return float(text)
    if isinstance(like, (list, tuple)):
        return [_cast(t, like[0] if like else "") for t in text.split(",") if t != ""]
    return text


def _allowed(value: Any, rule: Any) -> bool:
    """Whether a value read from a link fits its widget: `rule` is `(low, high)` for a slider or
    number input, a list of options for a select or radio (every item of a multiselect's list)."""
    if isinstance(rule, tuple):
        low, high = rule
        return low <= value <= high  # False for NaN too
    if isinstance(value, list):
        return all(item in rule for item in value)
    return value in rule


def init_state(prefix: str, defaults: dict[str, Any], limits: dict[str, Any] | None = None) -> None:
    """Set each `prefix + name` session key once per session: from the URL's query string when
    it names the key (a shared link), else from `defaults`. A link value that does not parse or
    lies outside `limits[name]` (see `_allowed`) falls back to the default, with one warning
    naming what was ignored: a widget given an out-of-range value would stop the page."""
    params, limits = st.query_params, limits or {}
    ignored = []
    for name, default in defaults.items():
        key = prefix + name
        if key in st.session_state:
            continue
        value = default
        if name in params:
            try:
                value = _cast(params[name], default)
                if name in limits and not _allowed(value, limits[name]):
                    raise ValueError(name)
            except (ValueError, OverflowError):  # int('inf') overflows
                value = default
                text = params[name]
                ignored.append(f"{name}={shorten(text, quote=False)}")  # the link's text: one line, its length not ours
        st.session_state[key] = value
    if ignored:  # the values are the link's own text: shown as text, never as markdown
        st.warning(_("This link has values the page cannot use, so their defaults are shown instead: {values}.")
                   .format(values=", ".join(plain(i) for i in ignored)), icon=":material/link_off:")


def values(prefix: str, names) -> dict[str, Any]:
    return {name: st.session_state[prefix + name] for name in names}


def mirror_query(current: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Write the values that differ from `defaults` into the URL, so a copied link reopens them."""
    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "1" if v else "0"
        if isinstance(v, (list, tuple)):
            return ",".join(str(x) for x in v)
        return str(v)
    wanted = {k: text(v) for k, v in current.items() if v != defaults.get(k)}
    wanted.update({k: st.query_params[k] for k in RESERVED_QUERY if k in st.query_params})
    if wanted != st.query_params.to_dict():
        st.query_params.from_dict(wanted)
