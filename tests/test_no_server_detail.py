"""No server detail in a student's or visitor's browser (issue 24): over a damaged database, a failed
CIFAR-10 job whose error names the cache folder and the download command, a run whose crafted weights
file names a server path, a sweep the Ray cluster failed (a node's error naming a path, a lost node's
address), and a page that raises, every element a shared (or demo) page draws is
scanned for an absolute path, a traceback, a command or a server file name, in both languages; the
teacher and a local user read the detail. The pages run in AppTest; no training, no worker."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from app_lib import shared
from app_lib.session import KEY as SESSION_KEY
from mnist_lab.data import datasets as data
from mnist_lab.errors import PUBLIC, STORE_DAMAGED, StoreError, failure_reason, public_form
from mnist_lab.i18n import Message, from_stored, render, to_stored
from mnist_lab.lab.experiments import SweepConfig
from mnist_lab.lab.lessons import LessonConfig
from mnist_lab.nets.model import build_model
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import LOCAL_WORKSPACE, ResultStore, run_row
from mnist_lab.runs.weights import SavedRun, save_weights
from mnist_lab.service import policy
from mnist_lab.service.identity import Identity
from mnist_lab.service.jobs import JobSpec, lesson_spec
from mnist_lab.service.queue import JobQueue
from mnist_lab.training.loop import TrainConfig
from tests.apptest import APP, TEACHER, app_db, session_for, student

STUDENT = student("s1").workspace  # the signed-in student's (a demo's visitor is signed in the same way)
TEACHER_TOKEN = "t" * 24
PAGES = ("home", "train", "sweep", "compare", "week2", "runs", "inspect", "report")
# What a student's browser must never show (besides the test's own folder, by name)
LEAKS = re.compile(r"""(?<![\w.:/~\\])/(?:[\w.+-]+/)+[\w.+-]*  # an absolute path of two parts or more
                   |Traceback|File\ "|\bmv\ |\bcurl\b|mkdir\ -p|\.safetensors|\.sqlite""", re.VERBOSE)


# ------------------------------------------------------------------------------------- who opens a page

def public_modes() -> list:
    """shared, and demo where this build has it (i24-limits adds it: ServerPolicy.shared is True for both)."""
    return ["shared", pytest.param("demo", marks=pytest.mark.skipif("demo" not in policy.MODES,
                                                                     reason="this build has no demo mode yet"))]


def reader(who: str) -> Identity:
    """The signed-in 'student' or 'teacher'; on a demo the 'student' is a visitor (a demo takes no other
    role) holding the student's workspace, so that the fixtures' runs are theirs."""
    if who == "teacher":
        return TEACHER
    return Identity("visitor", STUDENT) if os.environ.get("MNIST_LAB_MODE") == "demo" else student("s1")


def open_as(who: str, page: str, lang: str, query: dict | None = None) -> AppTest:
    """`page` as `who` ('student', 'teacher' or 'local') opens it; the mode is the env's. The one place
    that knows how a session becomes a student's or the teacher's."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"lang": lang, **(query or {})})
    if who in ("student", "teacher"):
        with contextlib.suppress(StoreError):  # a damaged database: nobody can sign in, the sign-in page says so
            at.session_state[SESSION_KEY] = session_for(reader(who))
    at.run()
    if page != "home":
        try:
            at.switch_page(f"app_pages/{page}.py").run()
        except ValueError:  # nobody could sign in (a damaged database): every address is the sign-in page
            assert who != "local" and at.title and os.environ.get("MNIST_LAB_MODE") == "shared"
    return at


def shown(at: AppTest) -> list[str]:
    """Every text of every element the page drew: each element's whole message (markdown, captions,
    alerts, labels, helps, options, expanders, exceptions with their stack, charts' specs) and each
    table's headers and cells."""
    found = []

    def walk(node) -> None:
        kind = type(node).__name__
        if kind in ("Dataframe", "Table"):
            found.append(node.value.to_csv())
        elif getattr(node, "proto", None) is not None:
            found.append(str(node.proto))
        children = getattr(node, "children", None)
        for child in (children.values() if isinstance(children, dict) else ()):
            walk(child)

    walk(at._tree)
    return found


MEDIA = re.compile(r"/(?:mock/)?media/[0-9a-f]+\.\w+")  # Streamlit's own URL of a download, not a server file


def assert_no_detail(at: AppTest, *secrets: str) -> None:
    texts = shown(at)
    assert texts, "the page drew nothing"
    for text in texts:
        text = MEDIA.sub("", text)
        leak = LEAKS.search(text)
        assert leak is None, (leak.group(), text[:2000])
        for secret in secrets:
            assert secret not in text, (secret, text[:2000])


def everything(at: AppTest) -> str:
    return "\n".join(shown(at))


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def server(tmp_path, monkeypatch):
    """A tmp database and cache; no worker (the jobs here are over); the teacher token set; the
    option Streamlit's own exception display reads (a shared run sets it for the process) restored."""
    app_db(tmp_path / "results.sqlite", monkeypatch)
    monkeypatch.setenv("MNIST_LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("MNIST_LAB_TEACHER_TOKEN", TEACHER_TOKEN)
    monkeypatch.setattr("app_lib.shared.ensure_workers", lambda: shared.result_store())  # opened, as it does
    details = st_config.get_option("client.showErrorDetails")
    yield tmp_path
    st_config.set_option("client.showErrorDetails", details)


@pytest.fixture
def damaged(server) -> Path:
    """A results database whose file is garbage after a valid header."""
    db = server / "results.sqlite"
    db.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 64)
    return db


def cifar_unavailable(monkeypatch) -> data.DataUnavailableError:
    """The refusal of a server without CIFAR-10 and without a network: it names the download folder
    and the curl line that fills it."""
    def offline(root, spec):
        raise OSError("network unreachable")
    monkeypatch.setattr(data, "load_cifar10_from_torchvision", offline)
    with pytest.raises(data.DataUnavailableError) as refused:
        data.load_dataset("cifar10", use_cache=False)
    assert "curl" in str(refused.value) and str(data.download_dir()) in str(refused.value)
    return refused.value


@pytest.fixture
def failed_cifar(server, monkeypatch) -> Path:
    """The student's failed CIFAR-10 train job and lesson job (their error: the loader's refusal), and
    a run of theirs that a crash ended with a server path in its words."""
    error = failure_reason(cifar_unavailable(monkeypatch))
    store = ResultStore(server / "results.sqlite")
    queue = JobQueue(store)
    train = JobSpec("train", TrainConfig(epochs=1), data.DataConfig(dataset="cifar10", train_limit=256),
                    model=PRESETS["cifar-course"].model)
    lesson = lesson_spec(LessonConfig("cifar-nets", dataset="cifar10", seeds=1, epochs=1, train_limit=256))
    for job_id, spec in (("j-train", train), ("j-lesson", lesson)):
        queue.start_inline(job_id, STUDENT, spec.kind, spec.title, spec.to_json(), spec.runs_total())
        queue.finish(job_id, "failed", error=error)
    with store.context("j-train", STUDENT):
        store.start_run(run_row("run-crashed", PRESETS["tiny-fc"].model, TrainConfig(), data.DataConfig()))
    crash = failure_reason(RuntimeError(f"cannot map {server}/cache/torchvision/blob.bin"))
    store.finish_run("run-crashed", "failed", 1.0, stop_reason=str(crash), stop_reason_msg=to_stored(crash))
    store.close()
    return server


@pytest.fixture
def crafted_weights(server) -> Path:
    """A run of the student's whose weights file carries an entry named after a server file."""
    store = ResultStore(server / "results.sqlite")
    model = PRESETS["tiny-fc"].model
    with store.context("", STUDENT):
        store.start_run(run_row("run-w", model, TrainConfig(), data.DataConfig(), status="finished"))
    store.finish_run("run-w", "finished", 1.0)
    path = save_weights(store.path, SavedRun("run-w", model, TrainConfig(), data.DataConfig(),
                                             build_model(model).state_dict(), None, "finished", 0.5))
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(path), metadata={**meta, str(path): "1"})
    store.close()
    return path


def raising(monkeypatch) -> str:
    """Home's first call into the server raises, naming a server file."""
    words = "cannot open /srv/lab/secret.sqlite"

    def boom():
        raise RuntimeError(words)
    monkeypatch.setattr("app_lib.shared.device_name", boom)
    return words


# ------------------------------------------------------------------------------------------- the core

def test_each_refusal_that_names_the_server_has_a_public_form_kept_with_its_stored_failure(tmp_path, monkeypatch):
    refusal = cifar_unavailable(monkeypatch)
    damaged = StoreError(tmp_path / "r.sqlite", "file is not a database", STORE_DAMAGED)
    for exc in (refusal, damaged, RuntimeError(f"{tmp_path} is gone")):
        public = public_form(exc)
        assert public is not None
        for lang in ("en", "zh_CN"):
            words = render(public, lang)
            assert words and not LEAKS.search(words) and str(tmp_path) not in words
    assert render(public_form(refusal), "zh_CN") != render(public_form(refusal), "en")
    assert public_form(ValueError("a refusal of the student's own setting")) is None  # shown as it is
    stored = to_stored(failure_reason(refusal))
    assert str(failure_reason(refusal)) == str(refusal)  # the English column keeps the detail
    assert public_form(stored) == public_form(refusal)  # read from the code, no sentence parsed back
    assert from_stored(stored)[0].template == refusal.template and PUBLIC in from_stored(stored)[0].params
    assert public_form(to_stored(Message("{text}", {"text": "an earlier version's words"}))) is None


# ------------------------------------------------------------------------------- a student's browser

@pytest.mark.parametrize("mode", public_modes())
@pytest.mark.parametrize("lang", ["en", "zh_CN"])
def test_a_damaged_database_shows_no_path_or_command_on_any_page(mode, lang, damaged, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", mode)
    for page in PAGES:
        at = open_as("student", page, lang)
        assert not at.exception, (page, at.exception)
        assert_no_detail(at, str(damaged))
        if page in ("train", "runs", "inspect"):
            assert at.error, page  # said, in words a student can act on
    assert ("老师" if lang == "zh_CN" else "teacher") in everything(at)


@pytest.mark.parametrize("mode", public_modes())
@pytest.mark.parametrize("lang", ["en", "zh_CN"])
def test_a_failed_cifar_job_and_a_crashed_run_show_no_folder_or_download(mode, lang, failed_cifar, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", mode)
    monkeypatch.setattr(data, "load_cifar10_from_torchvision", lambda root, spec: (_ for _ in ()).throw(OSError()))
    for page, query in (("train", {"dataset": "cifar10"}), ("week2", {"lesson": "cifar-nets"}), ("runs", {}),
                        ("report", {})):
        at = open_as("student", page, lang, query)
        assert not at.exception, (page, at.exception)
        assert_no_detail(at, str(failed_cifar))
        if page in ("train", "week2"):
            assert "cifar-10-python.tar.gz" not in everything(at)  # where to put the files is the teacher's
            assert any("CIFAR-10" in e.value.replace("\\", "") for e in at.error), (page, [e.value for e in at.error])


def downloads(monkeypatch) -> dict[str, str]:
    """file name -> the text of each CSV download button a page draws (their data is not an element)."""
    import streamlit as st
    got, button = {}, st.download_button

    def recorded(label, data=None, file_name=None, *args, **kwargs):
        if isinstance(file_name, str) and file_name.endswith(".csv"):
            got[file_name] = data() if callable(data) else data
        return button(label, data, file_name, *args, **kwargs)
    monkeypatch.setattr(st, "download_button", recorded)
    return got


@pytest.mark.parametrize("who, mode", [("student", "shared"), ("teacher", "shared")])
def test_a_students_runs_csv_holds_no_server_path_the_teachers_does(who, mode, failed_cifar, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", mode)
    got = downloads(monkeypatch)
    open_as(who, "runs", "en")
    path = f"{failed_cifar}/cache/torchvision/blob.bin"
    assert "run-crashed" in got["runs.csv"]
    assert (path in got["runs.csv"]) == (who == "teacher")
    if who == "student":
        assert not any(LEAKS.search(text) for text in got.values()), got


@pytest.mark.parametrize("mode", public_modes())
@pytest.mark.parametrize("lang", ["en", "zh_CN"])
def test_a_crafted_weights_file_shows_no_path(mode, lang, crafted_weights, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", mode)
    at = open_as("student", "inspect", lang)
    assert not at.exception, at.exception
    assert_no_detail(at, str(crafted_weights))
    assert at.error and "run-w" in at.error[0].value.replace("\\", "")


@pytest.mark.parametrize("mode", public_modes())
def test_a_page_that_raises_shows_no_traceback(mode, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", mode)
    words = raising(monkeypatch)
    for lang in ("en", "zh_CN"):
        at = open_as("student", "home", lang)
        assert at.exception  # Streamlit's own box, with its words only
        assert_no_detail(at, words, "RuntimeError")


# --------------------------------------------------------------------------- the teacher and a local user

def test_a_local_user_reads_the_detail_and_a_shared_servers_log_has_it(damaged, monkeypatch, caplog):
    monkeypatch.setenv("MNIST_LAB_MODE", "local")
    for lang in ("en", "zh_CN"):
        for page in ("train", "runs", "inspect"):
            at = open_as("local", page, lang)
            text = everything(at).replace("\\", "")
            assert str(damaged) in text and "mv " in text, (page, lang)
    # A shared server's sessions live in the database: nobody, the teacher included, can sign in to
    # read the detail on a page, so the sign-in page says what is wrong and the server's log says where.
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    with caplog.at_level("ERROR", logger="mnist_lab"):
        text = everything(open_as("teacher", "runs", "en"))
    assert not LEAKS.search(text) and str(damaged) not in text
    assert str(damaged) in caplog.text


@pytest.mark.parametrize("who, mode", [("teacher", "shared"), ("local", "local")])
def test_the_teacher_reads_the_crash_and_a_local_user_the_download(who, mode, failed_cifar, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", mode)
    for lang in ("en", "zh_CN"):
        text = everything(open_as(who, "runs", lang)).replace("\\", "")
        assert f"{failed_cifar}/cache/torchvision/blob.bin" in text, lang  # every run, the crash in its words
    if who == "local":  # the student's job is theirs alone; a local user's own failed job says where and how
        store = ResultStore(failed_cifar / "results.sqlite")
        queue = JobQueue(store)
        queue.start_inline("j-local", LOCAL_WORKSPACE, "train", "CIFAR-10", queue.job("j-train")["spec"], 1)
        queue.finish("j-local", "failed", error=failure_reason(cifar_unavailable(monkeypatch)))
        store.close()
        text = everything(open_as(who, "train", "en", {"dataset": "cifar10"})).replace("\\", "")
        assert "curl" in text and str(data.download_dir()) in text


@pytest.mark.parametrize("who, mode", [("teacher", "shared"), ("local", "local")])
def test_the_teacher_reads_what_is_wrong_in_a_weights_file(who, mode, crafted_weights, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", mode)
    text = everything(open_as(who, "inspect", "en")).replace("\\", "")
    assert "entries this lab never writes" in text and str(crafted_weights)[:40] in text


def test_a_local_user_reads_the_traceback_of_a_page_that_raises(monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", "local")
    st_config.set_option("client.showErrorDetails", "full")  # what `make run` passes
    words = raising(monkeypatch)
    at = open_as("local", "home", "en")
    assert at.exception and words in at.exception[0].message and at.exception[0].stack_trace


FOLDER = "/srv/lab-data/mnist"  # MNIST_LAB_DATA_DIR on the server: a run's data_source names it


@pytest.fixture
def from_a_folder(server) -> str:
    """A finished run of the student's, and one of a classmate's, whose data came from the server's
    data folder: 'directory /srv/lab-data/mnist' (English and stored message) and data_dir."""
    store = ResultStore(server / "results.sqlite")
    source = data.from_directory(FOLDER)
    for run_id, who in (("run-folder", student("s1")), ("run-mate", student("s2", "=HYPERLINK(\"x\")"))):
        with store.context(job_id=f"j-{run_id}", workspace=who.workspace, student_id=who.student_id,
                           student_name=who.name):
            store.start_run(run_row(run_id, PRESETS["tiny-fc"].model, TrainConfig(), data.DataConfig(data_dir=FOLDER),
                                    label=run_id, data_source=str(source), data_source_msg=to_stored([source])))
        store.add_iterations(run_id, 1, [2.3 - 0.01 * i for i in range(40)], 10)
        store.finish_run(run_id, "finished", 1.0, final_test_acc=0.5, epochs_done=4)
    store.close()
    return FOLDER


@pytest.mark.parametrize("lang", ["en", "zh_CN"])
@pytest.mark.parametrize("mode", public_modes())
def test_a_run_from_a_data_folder_names_no_folder_on_the_runs_page_or_in_the_report(mode, lang, from_a_folder,
                                                                                   monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", mode)
    got = downloads(monkeypatch)
    runs = open_as("student", "runs", lang, {"selected": "run-folder"})
    assert any("configs" in name for name in got) and "run-folder" in got["runs.csv"]
    assert_no_detail(runs, from_a_folder)
    assert not any(from_a_folder in text for text in got.values()), got
    report = open_as("student", "report", lang)
    assert_no_detail(report, from_a_folder)
    assert ("(a folder on the server)" if lang == "en" else "（服务器上的某个文件夹）") in everything(report)


def test_the_teacher_reads_the_data_folder_on_the_runs_page_and_in_the_report(from_a_folder, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    got = downloads(monkeypatch)
    runs = open_as("teacher", "runs", "en", {"selected": "run-folder"})
    assert from_a_folder in everything(runs) and from_a_folder in got["runs.csv"]
    report = open_as("teacher", "report", "en")  # by default the teacher's own runs: this run is another's
    assert from_a_folder not in everything(report)
    report.selectbox(key="report_whose").set_value("*").run()  # every run on the server: the teacher reads detail
    assert from_a_folder in everything(report)


def test_the_core_report_names_the_folder_only_for_a_reader_of_the_detail(from_a_folder, server):
    from mnist_lab.lab.report import build_report, findings_json, to_html

    store = ResultStore(server / "results.sqlite")
    try:
        mine = build_report(store, "en", workspace=(STUDENT,))
        assert from_a_folder not in to_html(mine) and from_a_folder not in findings_json(mine)
        assert "results.sqlite" not in to_html(mine)
        everyone = build_report(store, "en", workspace=None, detail=False)  # a class view's student
        assert from_a_folder not in to_html(everyone) and from_a_folder not in findings_json(everyone)
        assert "results.sqlite" not in to_html(everyone)
        teacher = build_report(store, "en", workspace=None)
        assert from_a_folder in to_html(teacher) and "results.sqlite" in to_html(teacher)
    finally:
        store.close()


# ------------------------------------------------------------------------------------- the Ray executor

@pytest.fixture
def failed_on_ray(server) -> Path:
    """The student's sweep that the Ray executor failed (issue 26): one run whose node raised an error
    naming a server path (its reason: service.ray_executor.lost_reason of Ray's RayTaskError), one
    whose machine was lost twice (Ray's own words name the node's address: only the error's kind is
    kept). Ray's exception classes are stood in for: the reasons are what the driver stores."""
    from mnist_lab.service import ray_executor

    class RayTaskError(Exception):
        cause = FileNotFoundError(f"[Errno 2] No such file or directory: '{server}/nodes/cifar-10-batches-py'")

    class NodeDiedError(Exception):
        pass

    class TaskCancelledError(Exception):
        pass

    fake_ray = type("ray", (), {"exceptions": type("exceptions", (), {
        "RayTaskError": RayTaskError, "NodeDiedError": NodeDiedError, "TaskCancelledError": TaskCancelledError})})
    crashed = ray_executor.lost_reason(fake_ray, RayTaskError())
    lost = ray_executor.lost_reason(fake_ray, NodeDiedError("Node IP: 192.0.2.2, node ID: 8009: ray logs raylet.out"))
    assert "NodeDiedError" in str(lost) and "192.0.2.2" not in str(lost)
    store = ResultStore(server / "results.sqlite")
    queue = JobQueue(store)
    spec = JobSpec("sweep", TrainConfig(epochs=1), data.DataConfig(train_limit=256),
                   sweep=SweepConfig(conv_layers=(1, 2), kernel_sizes=(3,), seeds=1))
    queue.start_inline("j-ray", STUDENT, spec.kind, spec.title, spec.to_json(), spec.runs_total())
    with store.context("j-ray", STUDENT):
        for run_id, why in (("run-ray-crashed", crashed), ("run-ray-lost", lost)):
            store.start_run(run_row(run_id, PRESETS["lab5"].model, TrainConfig(), data.DataConfig()))
            store.finish_run(run_id, "failed", 1.0, stop_reason=str(why), stop_reason_msg=to_stored(why))
    queue.finish("j-ray", "failed", error=crashed)
    store.close()
    return server


@pytest.mark.parametrize("mode", public_modes())
@pytest.mark.parametrize("lang", ["en", "zh_CN"])
def test_a_sweep_the_ray_cluster_failed_shows_no_server_path_or_node_address(mode, lang, failed_on_ray, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", mode)
    for page in ("runs", "sweep"):
        at = open_as("student", page, lang)
        assert not at.exception, (page, at.exception)
        assert_no_detail(at, str(failed_on_ray), "192.0.2.2", "raylet")
    assert ("集群" if lang == "zh_CN" else "cluster") in everything(open_as("student", "runs", lang))
