"""Every dashboard page through streamlit's AppTest: it loads, the parameter count follows the
sliders, an impossible network disables training with the core's message, and tiny runs
(256 images, 1 epoch) finish with their charts and CSV downloads. Results go to a tmp SQLite;
jobs are trained by the worker process the app starts for it, as in production."""
from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import string
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from apptest import app_db, open_page, result_charts, student
from streamlit.testing.v1 import AppTest

from app_lib.shared import quick_defaults
from app_lib.widgets import rows_key
from mnist_lab.errors import shorten
from mnist_lab.lab.experiments import run_single
from mnist_lab.lab.verdicts import did_learn
from mnist_lab.nets.model import count_params
from mnist_lab.nets.presets import PRESETS
from mnist_lab.paths import DB_ENV
from mnist_lab.runs.recorder import Recorder
from mnist_lab.runs.store import ResultStore, run_row
from mnist_lab.service.estimate import estimate_seconds
from mnist_lab.service.jobs import StoreRunner
from mnist_lab.service.queue import JobQueue
from mnist_lab.training.loop import TrainConfig

pytestmark = pytest.mark.usefixtures("no_worker_left_running")
PAGES = ["home", "train", "sweep", "compare", "week2", "runs"]


@pytest.fixture(autouse=True)
def db(tmp_path, monkeypatch) -> Path:
    return app_db(tmp_path / "results.sqlite", monkeypatch)


def job_of(at: AppTest, kind: str):
    return StoreRunner(ResultStore(os.environ[DB_ENV])).poll(at.session_state[f"_{kind}_job"])


def finish(at: AppTest, kind: str, status: str = "finished") -> None:
    """Wait for the page's job (trained by the app's worker), then rerun the page as its poll would."""
    view = StoreRunner(ResultStore(os.environ[DB_ENV])).wait(at.session_state[f"_{kind}_job"], timeout=180)
    assert not view.active, "the job did not finish"
    assert view.status == status, view.error
    at.run()
    assert not at.exception, at.exception


ESCAPED = re.compile(rf"\\([{re.escape(string.punctuation)}])")
# markdown that would render a link or an image: an unescaped [ ... ]( , or a bare web address
MARKDOWN_LINK = re.compile(r"(?<!\\)\[(?:[^\]\\]|\\.)*(?<!\\)\]\(")
AUTOLINK = re.compile(r"(?<!\\)<?(?:https?|ftp)(?<!\\):|www(?<!\\)\.")


def shown(markdown: str) -> str:
    """The characters a markdown source shows once its backslash escapes are applied (the word
    joiner that breaks autolinks is invisible)."""
    return ESCAPED.sub(r"\1", markdown).replace("\u2060", "")


def params_shown(at: AppTest, label: str = "Parameters") -> int:
    return int(next(m.value for m in at.metric if m.label == label).replace(",", ""))


def downloads(at: AppTest) -> list[str]:
    return [b.label for b in at.get("download_button")]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_loads(page):
    at = open_page(page)
    assert at.title[0].value


def test_home_shows_the_device_mnist_and_digits():
    at = open_page("home")
    assert any("60,000 training" in s.value for s in at.success)
    assert len(result_charts(at)) == 1  # the 4x5 grid
    assert len(at.get("page_link")) == 7  # Train, Sweep, FC vs CNN, Week 2, Runs, Inspect, Report


@pytest.mark.native
def test_home_says_which_path_trains_cnns_on_the_cpu(monkeypatch):
    from mnist_lab.training import native

    monkeypatch.setattr(native, "_library", None)
    monkeypatch.setattr(native, "_error", "no C++ compiler found (g++ or c++)")
    at = open_page("home")
    assert any("plain PyTorch loop here: no C++ compiler found" in shown(c.value) for c in at.caption)
    monkeypatch.setattr(native, "_error", None)
    native.load_library()
    at = open_page("home")
    assert any("C++ conv kernels built for this CPU" in c.value for c in at.caption)


def test_train_parameter_count_follows_the_controls():
    at = open_page("train")
    assert params_shown(at) == 8490  # the Lab-5 net
    for name, count in (("tiny-cnn", 6422), ("tiny-fc", 6442), ("padded-16-32", 417482)):
        at.selectbox(key="train_preset").set_value(name).run()
        assert params_shown(at) == count
    at.slider(key="train_layers").set_value(3).run()  # padded: 16-32-64 channels, same padding
    expected = replace(PRESETS["padded-16-32"].model, conv_channels=(16, 32, 64))
    assert params_shown(at) == count_params(expected)
    assert list(at.dataframe[0].value["name"][:3]) == ["conv1", "relu1", "pool1"]  # the per-layer table
    assert "conv3" in list(at.dataframe[0].value["name"])


def test_an_impossible_network_disables_training_with_the_core_message():
    at = open_page("train")
    at.slider(key="train_layers").set_value(3).run()  # Lab-5: k5, valid padding: 28 -> 12 -> 4 -> no room
    assert "Conv block 3" in at.error[0].value and "does not fit" in at.error[0].value
    assert at.button(key="train_go_btn").disabled
    at.radio(key="train_padding").set_value("same").run()
    assert not at.error and not at.button(key="train_go_btn").disabled
    at.select_slider(key="train_train_limit").set_value(256).run()
    at.select_slider(key="train_batch_size").set_value(512).run()
    assert "larger than the 256 training images" in at.error[0].value
    assert at.button(key="train_go_btn").disabled


def test_a_link_reopens_the_same_setup():
    at = open_page("train", query={"preset": "tiny-cnn", "kernel": "3", "epochs": "2"})
    assert at.slider(key="train_kernel").value == 3 and at.slider(key="train_epochs").value == 2
    assert params_shown(at) == count_params(replace(PRESETS["tiny-cnn"].model, kernel_size=3))
    at.slider(key="train_layers").set_value(1).run()
    assert at.query_params["preset"] == "tiny-cnn" and at.query_params["layers"] == "1"
    assert "kernel" in at.query_params and "lr" not in at.query_params  # only what differs from the preset


@pytest.mark.parametrize("page, query, defaults", [
    ("train", {"kernel": "50", "padding": "full", "lr": "nan", "epochs": "2"},
     {"kernel": 5, "padding": "valid", "lr": PRESETS["lab5"].lr}),
    ("sweep", {"kernels": "2,11", "seeds": "1"}, {"kernels": [3, 5, 7]}),
    ("compare", {"seeds": "99", "layers": "x", "epochs": "2"}, {"seeds": quick_defaults()["seeds"], "layers": 2}),
])
def test_a_bad_link_loads_with_the_defaults_and_says_what_it_ignored(page, query, defaults):
    at = open_page(page, query=query)  # a slider given kernel=50 would raise StreamlitValueAboveMaxError
    prefix = {"train": "train_", "sweep": "sweep_", "compare": "cmp_"}[page]
    assert len(at.warning) == 1
    for name, text in query.items():
        if name in defaults:  # ignored, named in the warning, the default used
            assert f"{name}={text}" in shown(at.warning[0].value)
            assert at.session_state[prefix + name] == defaults[name]
        else:  # the link's good values are still used
            assert f"{name}=" not in shown(at.warning[0].value)
            assert str(at.session_state[prefix + name]) == text


SETTINGS = {  # what each page reads from its link (its DEFAULTS' names)
    "train": ("preset", "kind", "layers", "kernel", "padding", "channels", "double", "pool_first", "batch_norm",
              "dropout", "hidden", "softmax", "optimizer", "lr", "momentum", "batch_size", "epochs", "seed",
              "train_limit", "normalize", "permute", "dataset", "shuffle"),
    "sweep": ("layers", "kernels", "seeds", "epochs", "train_limit", "channels", "padding", "hidden", "optimizer",
              "lr"),
    "compare": ("layers", "kernel", "channels", "double", "hidden", "seeds", "epochs", "train_limit", "perm_seed"),
    "week2": ("lesson", "full", "seeds", "images"),
    "runs": ("experiment", "status", "text", "selected"),
}
HOSTILE_VALUES = ["../../../etc/passwd", "1e400", "\u202e𝟗\u0301☃", "9" * 5000]


@pytest.mark.parametrize("page", list(SETTINGS))
def test_every_setting_of_a_link_survives_hostile_values(page, db, tiny_data):
    """Each setting a page reads from its URL given a path, an overflowing number, bidi unicode and
    a 5,000-digit number (each setting each value, in turn), with a hostile language and workspace:
    the page loads, every value it cannot use is named, shortened, in one warning, and the numeric
    widgets hold their defaults."""
    if page == "runs":  # a run to list, so the page reads every filter
        run_single(PRESETS["tiny-fc"].model, TrainConfig(device="cpu"), tiny_data.config,
                   record=Recorder(ResultStore(db)), data=tiny_data)
    plain_page = open_page(page)
    prefix = {"train": "train_", "sweep": "sweep_", "compare": "cmp_", "week2": "w2_", "runs": "runs_"}[page]
    for shift in range(len(HOSTILE_VALUES)):
        query = {name: HOSTILE_VALUES[(i + shift) % len(HOSTILE_VALUES)] for i, name in enumerate(SETTINGS[page])}
        at = open_page(page, query={**query, "lang": query[SETTINGS[page][0]]})
        assert not at.exception, at.exception
        # one warning (Runs: one for its filters, one for its picked runs, which depend on the filters)
        assert len(at.warning) <= (2 if page == "runs" else 1)
        assert not any("9" * 81 in shown(w.value) for w in at.warning)  # a link's value is shortened, not echoed
        for name, value in query.items():
            key = prefix + name
            if isinstance(plain_page.session_state[key], (int, float)) and not isinstance(
                    plain_page.session_state[key], bool):
                assert at.session_state[key] == plain_page.session_state[key], (name, value)  # the default
                # shown as errors.shorten words it: cut, its bidi override escaped (one line that reads as it is)
                assert f"{name}={shorten(value, quote=False)}" in shown(at.warning[0].value)
        assert at.title[0].value == plain_page.title[0].value  # the server's language still


def test_a_link_cannot_pick_another_workspaces_run(db, tiny_data, monkeypatch):
    """Shared mode: `selected` in a Runs link picks only among the signed-in student's own runs; another
    student's run id is answered as an unknown one (named back as the link's text, nothing of it shown)."""
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    store = ResultStore(db)
    ids = {}
    for who in (student("s1"), student("s2")):
        with store.context(job_id=f"j-{who.student_id}", workspace=who.workspace, student_id=who.student_id,
                           student_name=who.name):
            ids[who.student_id] = run_single(PRESETS["tiny-fc"].model, TrainConfig(device="cpu"), tiny_data.config,
                                             record=Recorder(store), data=tiny_data).run_id
    theirs = ids["s2"]
    at = open_page("runs", query={"selected": theirs}, who=student("s1"))
    assert at.multiselect(key="runs_selected").value == [ids["s1"]]  # the default: your own
    assert not any(theirs in o for o in at.multiselect(key="runs_selected").options)
    unknown = open_page("runs", query={"selected": "20990101-000000-000000"}, who=student("s1"))
    assert shown(at.warning[0].value).replace(theirs, "X") == shown(unknown.warning[0].value).replace(
        "20990101-000000-000000", "X")  # the same answer as for a run that does not exist
    assert theirs not in "".join(str(c.value) for c in [*at.caption, *at.markdown])  # nothing of theirs shown


def train_tiny_fc() -> AppTest:
    """The Train page after one epoch of the tiny FC net on 256 images (4 iterations: it stays at chance)."""
    at = open_page("train")
    at.selectbox(key="train_preset").set_value("tiny-fc").run()
    at.select_slider(key="train_train_limit").set_value(256).run()
    at.slider(key="train_epochs").set_value(1).run()
    at.button(key="train_go_btn").click().run()
    finish(at, "train")
    return at


def test_a_tiny_training_run_shows_its_loss_chart_and_csvs(db):
    at = train_tiny_fc()
    assert at.success[0].value.startswith("Finished")
    assert len(result_charts(at)) == 1  # the loss of every iteration
    assert {"iterations.csv", "epochs.csv", "runs.csv"} <= set(downloads(at))
    run_id = ResultStore(db).runs()["run_id"].item()
    assert len(ResultStore(db).iterations([run_id])) == 4  # 256 images / batch 64
    assert any("trained on cpu (plain engine)" in c.value for c in at.caption)  # an FC net: the plain loop


@pytest.mark.native
def test_a_cnn_trains_on_the_cpu_kernels_and_says_so(db):
    at = open_page("train", query={"preset": "lab5", "train_limit": "256", "epochs": "1"})
    at.button(key="train_go_btn").click().run()
    finish(at, "train")
    assert any("trained on cpu (cpu-native engine)" in c.value for c in at.caption)


def test_two_epochs_add_the_test_accuracy_chart():
    at = open_page("train", query={"preset": "tiny-fc", "train_limit": "256", "epochs": "2"})
    at.button(key="train_go_btn").click().run()
    finish(at, "train")
    assert len(result_charts(at)) == 2  # loss of every iteration, test accuracy per epoch
    assert len(at.dataframe[-1].value) == 2  # one row per epoch


def test_touching_widgets_leaves_a_running_job_alone_and_stop_keeps_its_results():
    at = open_page("train", query={"preset": "tiny-fc", "train_limit": "60000", "epochs": "20"})
    at.button(key="train_go_btn").click().run()
    job_id = at.session_state["_train_job"]
    assert at.button(key="train_go_btn").disabled  # one run per page at a time
    at.number_input(key="train_seed").set_value(7).run()
    at.selectbox(key="train_preset").set_value("lab5").run()
    assert at.session_state["_train_job"] == job_id and job_of(at, "train").active  # same job, still going
    runner = StoreRunner(ResultStore(os.environ[DB_ENV]))
    deadline = time.monotonic() + 120
    while not runner.poll(job_id).runs or not runner.poll(job_id).runs[0].step:  # training, not loading
        assert time.monotonic() < deadline
        time.sleep(0.2)
    running = runner.poll(job_id)  # its ETA: the page's measured estimate, scaled by the job's own pace
    whole = estimate_seconds(running.spec, "cpu")
    assert running.eta_s is not None and 0 < running.eta_s <= 3 * whole, (running.eta_s, whole)
    at.run()
    at.button(key="train_stop_btn").click().run()  # the panel's Stop
    view = runner.wait(job_id, timeout=60)
    assert view.status == "stopped" and view.stop_reason == "stopped by you"
    assert 0 < view.runs[0].step < view.runs[0].total_steps  # partial, and kept
    at.run()
    assert at.warning[0].value.startswith("Stopped (stopped by you)")
    assert "iterations.csv" in downloads(at)


def test_while_it_trains_the_epochs_are_a_static_table_and_the_grid_comes_at_the_end():
    """A first data grid or a second chart costs a browser on the same CPU seconds to draw: the
    live panel shows the finished epochs as a static table, the data grid and accuracy chart at the end."""
    at = open_page("train", query={"preset": "tiny-fc", "train_limit": "60000", "epochs": "20"})
    at.button(key="train_go_btn").click().run()
    job_id = at.session_state["_train_job"]
    runner = StoreRunner(ResultStore(os.environ[DB_ENV]))
    deadline = time.monotonic() + 120
    while not runner.poll(job_id).runs or runner.poll(job_id).runs[0].epochs_done < 2:  # epochs 1, 2 make a RangeIndex
        assert time.monotonic() < deadline
        time.sleep(0.2)
    at.run()
    assert job_of(at, "train").active
    epoch_tables = [t for t in at.table if t.value.index.name == "epoch"]
    epoch_rows = [t.value for t in epoch_tables]
    assert len(epoch_rows) == 1 and 1 in epoch_rows[0].index and epoch_rows[0]["test accuracy"].str.endswith("%").all()
    assert not epoch_tables[0].proto.hide_index  # the browser shows the epochs
    assert len(result_charts(at)) == 1 and not [d for d in at.dataframe if "epoch" in d.value.columns]
    at.button(key="train_stop_btn").click().run()
    runner.wait(job_id, timeout=60)
    at.run()
    assert not [t for t in at.table if t.value.index.name == "epoch"]
    grid = [d for d in at.dataframe if "epoch" in d.value.columns]
    assert len(grid) == 1 and grid[0].proto.columns.count('"%.4f"') == 2  # 0.1860, not 0.186, for both losses
    seconds = {c.get("label", name): c.get("type_config", {}).get("format")
               for name, c in json.loads(grid[0].proto.columns).items()}
    assert seconds.get("seconds") == "%.1f", seconds  # 8.0, not 8 beside 7.8 (the one number format)


def test_a_refreshed_page_finds_its_job_again():
    """A refresh is a new session: the page finds the workspace's newest job of its kind."""
    at = open_page("train", query={"preset": "tiny-fc", "train_limit": "256", "epochs": "1"})
    at.button(key="train_go_btn").click().run()
    job_id = at.session_state["_train_job"]
    finish(at, "train")
    again = open_page("train", query={"preset": "tiny-fc"})  # a new session, as after F5
    assert again.session_state["_train_job"] == job_id
    assert again.success[0].value.startswith("Finished")
    assert "iterations.csv" in downloads(again)


def test_a_tiny_sweep_lists_skipped_cells_and_draws_every_chart():
    at = open_page("sweep")
    at.multiselect(key="sweep_layers").set_value([1, 4]).run()
    at.multiselect(key="sweep_kernels").set_value([3]).run()
    at.radio(key="sweep_padding").set_value("valid").run()
    at.select_slider(key="sweep_train_limit").set_value(256).run()
    at.slider(key="sweep_seeds").set_value(2).run()
    assert "4 layers × k3" in at.warning[0].value  # skipped, with the reason
    at.button(key="sweep_go_btn").click().run()
    finish(at, "sweep")
    assert len(result_charts(at)) == 5  # vs depth, vs kernel, heatmap, params, loss curves
    assert {"sweep_summary.csv", "sweep_runs.csv", "sweep_iterations.csv"} <= set(downloads(at))


def test_a_sweep_with_no_valid_cell_disables_run_with_the_core_message():
    at = open_page("sweep")
    at.radio(key="sweep_padding").set_value("valid").run()
    at.multiselect(key="sweep_layers").set_value([4]).run()
    at.multiselect(key="sweep_kernels").set_value([9]).run()  # 28 -> 10 -> 1 -> no room for block 3
    assert "No cell of this sweep is a valid network" in at.error[0].value
    assert "Conv block 3" in at.error[0].value and "does not fit" in at.error[0].value
    assert at.button(key="sweep_go_btn").disabled
    at.radio(key="sweep_padding").set_value("same").run()
    assert not at.error and not at.button(key="sweep_go_btn").disabled


def test_a_cnn_that_does_not_fit_disables_the_comparison_with_the_core_message():
    at = open_page("compare")
    at.slider(key="cmp_layers").set_value(3).run()
    at.slider(key="cmp_kernel").set_value(9).run()  # valid padding: 28 -> 10 -> 1 -> no room for block 3
    assert "Conv block 3" in at.error[0].value and "does not fit" in at.error[0].value
    assert at.button(key="cmp_go_btn").disabled
    assert not [m for m in at.metric if m.label == "CNN parameters"]
    at.slider(key="cmp_kernel").set_value(3).run()
    assert not at.error and not at.button(key="cmp_go_btn").disabled


def test_fc_vs_cnn_matches_the_fc_width_and_reads_the_result():
    at = open_page("compare")
    assert params_shown(at, "CNN parameters") == 6422 and params_shown(at, "FC parameters") == 6442
    at.slider(key="cmp_kernel").set_value(3).run()
    assert params_shown(at, "CNN parameters") == count_params(replace(PRESETS["tiny-cnn"].model, kernel_size=3))
    at.slider(key="cmp_kernel").set_value(5).run()
    at.select_slider(key="cmp_train_limit").set_value(256).run()
    at.slider(key="cmp_seeds").set_value(1).run()
    at.button(key="cmp_go_btn").click().run()
    finish(at, "compare")
    assert any("Shuffling the pixels costs the CNN" in i.value for i in at.info)
    assert {"compare_summary.csv", "compare_runs.csv", "compare_iterations.csv"} <= set(downloads(at))


def test_runs_page_overlays_and_deletes_stored_runs(db, tiny_data):
    store = ResultStore(db)
    for seed in (0, 1):
        run_single(PRESETS["tiny-fc"].model, TrainConfig(seed=seed, device="cpu"), tiny_data.config,
                   record=Recorder(store),
                   data=tiny_data)
    at = open_page("runs")
    assert len(at.multiselect(key="runs_selected").value) == 2
    assert len(result_charts(at)) == 2  # loss curves, accuracy per epoch
    assert {"runs.csv", "iterations.csv", "epochs.csv", "configs.csv"} <= set(downloads(at))
    keep = at.multiselect(key="runs_selected").value[0]
    at.multiselect(key="runs_selected").set_value([keep]).run()
    at.checkbox(key="runs_sure").check().run()
    at.button(key="runs_delete_btn").click().run()
    assert not at.exception
    left = list(store.runs()["run_id"])
    assert len(left) == 1 and keep not in left


def test_runs_page_does_not_delete_a_run_still_training(db, tiny_data):
    store = ResultStore(db)
    run_single(PRESETS["tiny-fc"].model, TrainConfig(device="cpu"), tiny_data.config,
               record=Recorder(store), data=tiny_data)
    done = store.runs()["run_id"].item()
    store.start_run(run_row("training-now", PRESETS["tiny-fc"].model, TrainConfig(), tiny_data.config,
                            label="still training"))  # status 'running', as the recorder writes it
    at = open_page("runs")
    at.multiselect(key="runs_selected").set_value([done, "training-now"]).run()
    assert any("still training" in c.value and "stop them first" in c.value for c in at.caption)
    at.checkbox(key="runs_sure").check().run()
    at.button(key="runs_delete_btn").click().run()
    assert not at.exception
    assert list(store.runs()["run_id"]) == ["training-now"]
    assert at.multiselect(key="runs_selected").value == ["training-now"]
    assert at.button(key="runs_delete_btn").disabled  # nothing left that may be deleted


def test_runs_page_lets_a_run_whose_process_died_be_deleted(db, tiny_data):
    store = ResultStore(db)
    store.start_run(run_row("orphan", PRESETS["tiny-fc"].model, TrainConfig(), tiny_data.config,
                            label="left running by a killed process"))
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with sqlite3.connect(db) as conn:  # as if a process that no longer exists had started it
        conn.execute("UPDATE runs SET owner = ? WHERE run_id = 'orphan'", (f"{socket.gethostname()}:{gone.pid}",))
    at = open_page("runs")
    assert store.runs()["status"].item() == "interrupted"
    at.multiselect(key="runs_selected").set_value(["orphan"]).run()
    assert not any("still training" in c.value for c in at.caption)
    at.checkbox(key="runs_sure").check().run()
    at.button(key="runs_delete_btn").click().run()
    assert not at.exception and store.runs().empty


def test_a_runs_link_reopens_the_same_filters_and_comparison(db, tiny_data):
    store = ResultStore(db)
    for seed in (0, 1, 2, 3):
        run_single(PRESETS["tiny-fc"].model, TrainConfig(seed=seed, device="cpu"), tiny_data.config,
                   record=Recorder(store),
                   data=tiny_data, label=f"seed {seed}")
    ids = list(store.runs()["run_id"])
    at = open_page("runs")
    at.text_input(key="runs_text").set_value("seed").run()
    at.multiselect(key="runs_selected").set_value([ids[3], ids[1]]).run()
    link = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert link == {"text": "seed", "selected": f"{ids[3]},{ids[1]}", "lang": "en"}  # the language, kept in links

    again = open_page("runs", query=link)  # another browser opening the copied link
    assert again.text_input(key="runs_text").value == "seed"
    assert again.multiselect(key="runs_selected").value == [ids[3], ids[1]]
    gone = open_page("runs", query={"selected": "no-such-run", "status": "finished"})
    assert gone.multiselect(key="runs_status").value == ["finished"]
    assert any("selected=no-such-run" in shown(w.value) for w in gone.warning)


def test_runs_page_shows_inspect_first_and_opens_a_selected_run_in_this_tab(db, tiny_data):
    store = ResultStore(db)
    run_single(PRESETS["tiny-fc"].model, TrainConfig(device="cpu"), tiny_data.config, record=Recorder(store),
               data=tiny_data)
    store.start_run(run_row("no-weights", PRESETS["tiny-fc"].model, TrainConfig(), tiny_data.config, label="old",
                            status="finished"))  # a run from before weights were kept
    at = open_page("runs")
    runs_table = at.dataframe[0]
    assert list(runs_table.value.columns[:2]) == ["inspect", "started"]  # no scrolling to the right for it
    assert json.loads(runs_table.proto.columns)["inspect"]["pinned"] is True
    by_id = dict(zip(runs_table.value["run"], runs_table.value["inspect"]))
    kept = next(r for r in by_id if r != "no-weights")
    assert by_id == {kept: "Inspect", "no-weights": ""}
    assert not at.get("page_link") and any("Select a run's row" in c.value for c in at.caption)
    row = list(runs_table.value["run"]).index(kept)
    key = rows_key("pick_run_row", runs_table.value["run"])  # the rows as shown: a new set, a new selection
    assert key in at.session_state
    at.session_state[key] = {"selection": {"rows": [row], "columns": [], "cells": []}}
    at.run()
    assert not at.exception, at.exception
    [link] = at.get("page_link")
    assert link.proto.page.endswith("inspect") and link.proto.query_string == f"run={kept}"
    assert not link.proto.external  # Streamlit's own navigation: this tab, this session
    at.session_state[key] = {"selection": {"rows": [1 - row], "columns": [], "cells": []}}
    at.run()
    assert not at.get("page_link") and any("weights were not kept" in c.value for c in at.caption)


def test_the_comparison_picker_follows_the_filters_above_it(db, tiny_data):
    store = ResultStore(db)
    for rid, experiment in (("a-single", "single"), ("b-sweep", "sweep"), ("c-sweep", "sweep")):
        store.start_run(run_row(rid, PRESETS["tiny-fc"].model, TrainConfig(), tiny_data.config, experiment=experiment,
                                label=rid, status="finished"))
    at = open_page("runs")

    def offered() -> list[str]:  # the picker's options by label (each shown as 'label · status · time · id')
        return sorted(o.split(" · ")[0] for o in at.multiselect(key="runs_selected").options)
    assert offered() == ["a-single", "b-sweep", "c-sweep"]
    at.multiselect(key="runs_selected").set_value(["a-single", "b-sweep"]).run()
    at.multiselect(key="runs_experiment").set_value(["sweep"]).run()
    assert not at.exception, at.exception
    assert offered() == ["b-sweep", "c-sweep"]  # only what the filters show, as the table
    assert at.multiselect(key="runs_selected").value == ["b-sweep"]  # the hidden one left; the other stays
    assert any("1 selected run is hidden by the filters above" in c.value for c in at.caption)
    assert at.query_params["selected"] == "b-sweep"  # the link says what is compared
    at.multiselect(key="runs_experiment").set_value(["single"]).run()  # every picked run hidden: the newest shown
    assert at.multiselect(key="runs_selected").value == ["a-single"]
    at.multiselect(key="runs_experiment").set_value([]).run()  # no filter: every run offered again, the pick kept
    assert offered() == ["a-single", "b-sweep", "c-sweep"]
    assert at.multiselect(key="runs_selected").value == ["a-single"]


def test_shared_mode_gives_each_student_a_workspace_and_refuses_jobs_over_the_limits(db, monkeypatch, tiny_data):
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    monkeypatch.setenv("MNIST_LAB_MAX_EPOCHS", "2")
    at = open_page("train", query={"preset": "tiny-fc", "train_limit": "256", "epochs": "3"}, who=student("s1"))
    assert "ws" not in at.query_params  # nothing in a URL grants access
    at.button(key="train_go_btn").click().run()
    assert any("at most 2 epochs" in e.value and "make run" in e.value for e in at.error)
    assert JobQueue(ResultStore(db)).jobs() == []  # refused before anything was queued

    store = ResultStore(db)  # a run of another student (and a CLI run of the local one)
    other = student("s2")
    with store.context(job_id="j-other", workspace=other.workspace, student_id="s2", student_name=other.name):
        run_single(PRESETS["tiny-fc"].model, TrainConfig(device="cpu"), tiny_data.config,
                   record=Recorder(store), data=tiny_data)
    runs = open_page("runs", who=student("s1"))
    assert any("No runs yet" in i.value for i in runs.info)  # not this student's
    assert not any(str(db) in c.value for c in runs.caption)  # no server path in shared mode
    assert any("0 runs of yours (other people's runs on this server are not shown)" in c.value for c in runs.caption)
    again = open_page("runs", who=other)  # its owner, signed in
    assert len(again.multiselect(key="runs_selected").value) == 1
    assert not any("belong to someone else" in c.value for c in again.caption)
    assert any(c.value.startswith("1 run of yours") for c in again.caption)


def test_runs_page_stops_a_run_trained_elsewhere_and_shows_why(db, tiny_data):
    """A CLI run (its own process in real life; a thread here) is a job of the local workspace:
    the Runs page stops it through the store, and the run says why it ended."""
    import threading

    from mnist_lab.service.jobs import JobSpec, run_inline

    store = ResultStore(db)
    spec = JobSpec("train", TrainConfig(epochs=500, device="cpu"), tiny_data.config, model=PRESETS["tiny-fc"].model)
    cancel = threading.Event()
    thread = threading.Thread(target=run_inline, args=(spec, store, cancel), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while store.runs().empty or not len(store.iterations()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    at = open_page("runs")
    assert at.multiselect(key="runs_selected").value == [store.runs()["run_id"].item()]
    at.button(key="runs_stop_btn").click().run()
    thread.join(30)
    assert not thread.is_alive() and cancel.is_set()
    run = store.runs()
    assert run["status"].item() == "stopped" and run["stop_reason"].item() == "stopped by you"
    at.run()
    assert "stopped by you" in list(at.dataframe[0].value["why it stopped"])  # the header a person reads



# ------------------------------------------------------------------------- hostile input, broken store

def test_a_hostile_link_is_shown_as_text_not_as_a_link():
    hostile = "[clickme](https://evil.example/phish)"
    at = open_page("train", query={"hidden": hostile})
    [error] = [e.value for e in at.error]
    assert hostile in shown(error)  # the person sees exactly what the link held
    assert not MARKDOWN_LINK.search(error) and not AUTOLINK.search(error)
    assert at.button(key="train_go_btn").disabled


def test_a_hostile_runs_link_loads_no_image(db, tiny_data):
    run_single(PRESETS["tiny-fc"].model, TrainConfig(device="cpu"), tiny_data.config, record=Recorder(ResultStore(db)),
               data=tiny_data)
    hostile = "`![t](http://127.0.0.1:9/track.png)`"
    at = open_page("runs", query={"experiment": hostile})
    [warning] = [w.value for w in at.warning]
    assert f"experiment={hostile}" in shown(warning)
    assert not MARKDOWN_LINK.search(warning) and not AUTOLINK.search(warning) and "`" not in ESCAPED.sub("", warning)


@pytest.mark.parametrize("page", ["train", "runs"])
def test_a_damaged_database_is_explained_on_the_page(page, broken_db, monkeypatch):
    monkeypatch.setenv(DB_ENV, str(broken_db))
    at = open_page(page)
    message = shown(next(e.value for e in at.error if "results database" in shown(e.value)))
    assert str(broken_db) in message and f"mv {broken_db} {broken_db}.broken" in message
    # SQLite's words for the damaged page (which page the fixture hits moves with the tables): both SQLITE_CORRUPT
    assert "malformed" in message or "error code 11" in message
    if page == "train":
        assert at.button(key="train_go_btn").disabled


# ------------------------------------------------------------------------- what the pages say

def test_runs_show_accuracy_in_percent_and_a_diverged_run_with_its_message(db, tiny_data):
    store = ResultStore(db)
    run_single(PRESETS["tiny-fc"].model, TrainConfig(device="cpu"), tiny_data.config,
               record=Recorder(store), data=tiny_data)
    fine = store.runs()
    store.start_run(run_row("went-nan", PRESETS["tiny-fc"].model, TrainConfig(lr=10), tiny_data.config,
                            status="diverged", diverged_at=7, message="The loss became nan at iteration 7: lower it."))
    at = open_page("runs")
    table = at.dataframe[0].value.set_index("run")  # the headers a person reads (app_lib.widgets.COLUMNS)
    assert table.loc[fine["run_id"].item(), "test accuracy (%)"] == pytest.approx(100 * fine["final_test_acc"].item())
    assert table.loc["went-nan", "status"] == "diverged" and "iteration 7" in table.loc["went-nan", "message"]
    assert any("1 run(s) diverged" in c.value for c in at.caption)
    at.multiselect(key="runs_selected").set_value([fine["run_id"].item(), "went-nan"]).run()
    at.run()  # a rerun with the toggle's value in Session State: no default-and-state warning
    assert not at.warning and not at.exception


def test_local_times_follow_the_browsers_time_zone():
    from app_lib.text import local_times, percent

    stamps = ["2026-12-01T19:30:00+00:00", "2026-12-01T23:59:59+00:00"]
    assert list(local_times(stamps, "Asia/Shanghai")) == ["2026-12-02 03:30:00", "2026-12-02 07:59:59"]
    assert list(local_times(stamps, "Not/AZone")) == ["2026-12-01 19:30:00", "2026-12-01 23:59:59"]  # UTC then
    assert percent(0.96875) == "96.88%" and percent(None) == "" and percent(float("nan")) == ""


def test_the_live_runs_header_describes_its_own_network_not_the_widgets():
    at = open_page("train", query={"preset": "tiny-fc", "train_limit": "256", "epochs": "1"})
    at.button(key="train_go_btn").click().run()
    at.selectbox(key="train_preset").set_value("padded-16-32").run()  # the widgets now show another network
    finish(at, "train")
    header = shown(next(m.value for m in at.markdown if m.value.startswith("**This run:**")))
    assert "FC 8" in header and "6,442 parameters" in header and "417,482" not in header


def test_a_diverging_run_is_shown_as_diverged_with_its_message(db):
    at = open_page("train", query={"preset": "tiny-fc", "hidden": "256, 256", "lr": "10", "momentum": "0.9",
                                   "batch_size": "16", "train_limit": "2000", "epochs": "1"})
    at.button(key="train_go_btn").click().run()
    finish(at, "train", status="diverged")
    error = shown(next(e.value for e in at.error if "Diverged." in e.value))
    assert "at iteration" in error and "Lower the learning rate" in error
    assert ResultStore(db).runs()["status"].item() == "diverged"


def test_home_lists_every_network_in_full():
    at = open_page("home")
    [table] = at.table
    layers = list(table.value["layers"])
    assert layers[0] == PRESETS["lab5"].description.split(": ", 1)[1]  # the whole layer list, wrapped, not cut
    assert list(table.value["parameters"]) == ["8,490", "417,482", "6,442", "6,422", "62,006", "121,182", "14,728,266",
                                              "174,986", "172,234"]


def test_a_sweep_without_kernel_sizes_asks_for_one():
    at = open_page("sweep")
    at.multiselect(key="sweep_kernels").set_value([]).run()
    assert "Choose at least one kernel size" in shown(at.error[0].value)
    assert "hidden width" not in shown(at.error[0].value)  # the hidden width is a single choice, never empty


def test_a_cpu_with_two_cores_trains_on_all_60000_images_by_default(monkeypatch):
    import os

    from app_lib import shared

    monkeypatch.setattr(shared, "on_gpu", lambda: False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert shared.quick_defaults()["train_limit"] == 60000
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # a 1-core hosted tier: a subset
    assert shared.quick_defaults()["train_limit"] == 10000


def test_plain_text_breaks_the_autolinks_a_browser_would_still_make():
    from app_lib.text import plain

    for text in ("https://evil.example/phish", "see www.evil.example", "mail me@evil.example"):
        rendered = plain(text)
        assert "\u2060" in rendered and not AUTOLINK.search(rendered)
        assert rendered.replace("\u2060", "").replace("\\", "") == text  # the same characters, shown


def test_a_run_that_did_not_learn_is_named_on_the_train_and_runs_pages(db):
    """4 iterations of the tiny FC net stay at chance: the Train page says so with what to change,
    and the Runs page marks it in its table and a caption, in Chinese too."""
    at = train_tiny_fc()
    run = ResultStore(db).runs().iloc[0]
    epochs = ResultStore(db).epochs([run["run_id"]]).iloc[-1]
    assert not did_learn(epochs["test_acc"], epochs["train_loss"], 10)  # the premise: at chance
    assert any(w.value.startswith("did not learn: run ") and "Train longer" in w.value for w in at.warning)
    runs = open_page("runs")
    assert "did not learn" in list(runs.dataframe[0].value["did it learn?"])
    assert any("1 of 1 runs did not learn" in c.value for c in runs.caption)
    zh = open_page("runs", query={"lang": "zh_CN"})
    assert "没有学会" in list(zh.dataframe[0].value["学会了吗？"])


def test_a_run_without_a_verdict_shows_a_blank_not_none():
    """A stopped or failed run has no did-it-learn verdict: its cell is blank, as are other missing words."""
    from app_lib.widgets import words

    assert list(words(pd.Series(["learned", None, float("nan"), "did not learn"], dtype=object))) == [
        "learned", "", "", "did not learn"]
