"""The Train page's dataset, every preset (the lab's four and week 2's) and the shuffle switch:
what the page submits, what its link keeps, what it refuses, and the week-2 presets' words in
Chinese. The job the page would submit is caught (no worker) except in the one real run."""
from __future__ import annotations

import re
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from apptest import app_db, open_page, student
from streamlit.testing.v1 import AppTest

from app_lib import widgets
from app_lib.forms import LAB_PRESETS, PRESET_WORDS, SLIDER_PRESETS, preset_option, preset_words
from mnist_lab import i18n
from mnist_lab.data.datasets import DATASETS, FASHION_MNIST, DataConfig, DataUnavailableError, load_dataset
from mnist_lab.errors import failure_reason
from mnist_lab.lab.lessons import fit
from mnist_lab.nets.model import count_params
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import LOCAL_WORKSPACE, ResultStore
from mnist_lab.service.jobs import JobSpec, run_inline
from mnist_lab.service.queue import JobQueue
from mnist_lab.training.loop import TrainConfig

pytestmark = pytest.mark.usefixtures("no_worker_left_running")
CJK = re.compile(r"[\u3400-\u9fff]")


@pytest.fixture(autouse=True)
def db(tmp_path, monkeypatch) -> Path:
    return app_db(tmp_path / "results.sqlite", monkeypatch)


@pytest.fixture
def submitted(monkeypatch) -> list[JobSpec]:
    """The specs the page hands to start_job, which queues nothing."""
    specs = []
    monkeypatch.setattr(widgets, "start_job", lambda kind, spec: specs.append(spec))
    return specs


def shown(markdown: str) -> str:
    """The characters a markdown source shows (app_lib.text.plain escapes every punctuation mark)."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def params_shown(at: AppTest) -> int:
    return int(next(m.value for m in at.metric if m.label == "Parameters").replace(",", ""))


def keys(at: AppTest) -> set[str]:
    return {w.key for kind in ("slider", "radio", "checkbox", "text_input", "number_input") for w in at.get(kind)}


def test_fashion_mnist_a_residual_net_and_no_shuffle_make_the_job(submitted):
    at = open_page("train")
    assert at.selectbox(key="train_dataset").options == [f"{d.title}: " + w for d, w in zip(
        DATASETS.values(), ("handwritten digits", "clothes, shoes and bags", "colour photos of animals and vehicles"))]
    assert at.selectbox(key="train_preset").options[:5] == ["Lab 5 · Lab-5 net", "Lab 5 · Padded 16/32 CNN",
                                                            "Lab 5 · Tiny FC (FC2Layer)", "Lab 5 · Tiny CNN",
                                                            "Week 2 · The course's CIFAR-10 net"]
    assert at.toggle(key="train_shuffle").value  # on by default
    at.selectbox(key="train_dataset").set_value("fashion-mnist").run()
    at.selectbox(key="train_preset").set_value("resnet-small").run()
    at.toggle(key="train_shuffle").set_value(False).run()
    at.select_slider(key="train_train_limit").set_value(256).run()
    at.slider(key="train_epochs").set_value(1).run()
    assert not at.error and params_shown(at) == count_params(PRESETS["resnet-small"].model) == 174986
    # the sliders cannot describe it: they are gone, one caption says why, its layers are listed
    assert not keys(at) & {"train_kind", "train_layers", "train_kernel", "train_hidden", "train_dropout"}
    assert sum("sliders cannot describe this network" in c.value for c in at.caption) == 1
    assert "res" in " ".join(at.dataframe[0].value["name"])
    assert any("Week 2 of the course notes: A small residual net" in shown(m.value) for m in at.markdown)
    assert "The first N of the 60,000" in at.select_slider(key="train_train_limit").help
    at.button(key="train_go_btn").click().run()
    (spec,) = submitted
    assert spec.kind == "train" and spec.model == PRESETS["resnet-small"].model
    assert (spec.data.dataset, spec.data.train_limit, spec.data.normalize) == ("fashion-mnist", 256, "mnist")
    t = spec.train
    assert (t.shuffle, t.epochs, t.lr, t.momentum, t.batch_size) == (False, 1, 0.05, 0.9, 128)
    assert at.query_params["dataset"] == "fashion-mnist" and at.query_params["shuffle"] == "0"


def test_the_sliders_and_the_week2_nets_follow_the_dataset(submitted):
    at = open_page("train", {"train_limit": "60000"})
    at.selectbox(key="train_dataset").set_value("cifar10").run()
    assert params_shown(at) == count_params(fit(PRESETS["lab5"].model, "cifar10")) == 10790  # lab5 on 3×32×32
    assert at.select_slider(key="train_train_limit").options[-1] == "50,000"
    assert at.select_slider(key="train_train_limit").value == 50000  # all of MNIST became all of CIFAR-10
    assert "mean 0.4914, 0.4822, 0.4465, sd 0.247, 0.2435, 0.2616" in at.selectbox(key="train_normalize").options[0]
    assert "1024 pixel positions" in at.checkbox(key="train_permute").help
    assert any("CIFAR-10 comes with no package here" in i.value for i in at.info)
    at.selectbox(key="train_preset").set_value("lenet-cifar").run()  # the sliders describe LeNet: they stay
    assert "lenet-cifar" in SLIDER_PRESETS and "train_layers" in keys(at)
    assert params_shown(at) == count_params(PRESETS["lenet-cifar"].model) == 121182
    at.selectbox(key="train_dataset").set_value("mnist").run()  # fitted to 1×28×28, said so
    assert params_shown(at) == count_params(fit(PRESETS["lenet-cifar"].model, "mnist"))
    assert any("Its input is fitted to MNIST's 1×28×28 images" in shown(m.value) for m in at.markdown)
    # VGG16's five pools do not fit 28×28: the core's refusal, training off, what to change
    at.selectbox(key="train_preset").set_value("vgg16-cifar").run()
    assert "too small for the 2x2 max-pool" in shown(at.error[0].value) and at.button(key="train_go_btn").disabled
    assert any("choose another dataset or another preset" in c.value for c in at.caption)
    at.select_slider(key="train_batch_size").set_value(16).run()  # its estimate measures a step: keep it short
    at.selectbox(key="train_dataset").set_value("cifar10").run()
    assert not at.error and params_shown(at) == 14728266


def test_a_link_keeps_the_dataset_the_preset_and_shuffle():
    query = {"dataset": "fashion-mnist", "preset": "plain-small", "shuffle": "0", "train_limit": "256"}
    at = open_page("train", query)
    assert not at.warning
    state = {k: at.session_state["train_" + k] for k in query}
    assert state == {"dataset": "fashion-mnist", "preset": "plain-small", "shuffle": False, "train_limit": 256}
    assert params_shown(at) == count_params(PRESETS["plain-small"].model)
    link = {k: at.query_params[k] for k in at.query_params}
    assert {k: link[k] for k in query} == query and "lr" not in link  # only what differs from the preset
    again = open_page("train", link)
    assert {k: again.session_state["train_" + k] for k in query} == state


def test_a_link_whose_count_exceeds_the_dataset_takes_all_of_it():
    at = open_page("train", {"dataset": "cifar10", "train_limit": "60000"})
    assert not at.warning and at.session_state["train_train_limit"] == 50000


def test_a_bad_dataset_preset_or_shuffle_in_a_link_is_refused():
    at = open_page("train", {"dataset": "emnist", "preset": "resnet-huge", "shuffle": "maybe", "epochs": "2"})
    (warning,) = at.warning
    for part in ("dataset=emnist", "preset=resnet-huge", "shuffle=maybe"):
        assert part in shown(warning.value)
    assert at.session_state["train_dataset"] == "mnist" and at.session_state["train_preset"] == "lab5"
    assert at.session_state["train_shuffle"] is True and at.session_state["train_epochs"] == 2


def test_every_preset_has_chinese_words_on_home_and_train():
    zh = i18n.translator("zh_CN").gettext
    assert set(PRESET_WORDS) == set(PRESETS) and set(LAB_PRESETS) < set(PRESETS)
    for name in PRESETS:
        title, layers, published = preset_words(name, zh)
        assert CJK.search(title), name
        assert CJK.search(published), name
        english = preset_words(name)
        assert english[0] in PRESETS[name].description and english[1] in PRESETS[name].description
        assert CJK.search(preset_option(name, zh))
    home = open_page("home", {"lang": "zh_CN"})
    rows = home.table[0].value
    assert {zh("The course's CIFAR-10 net"), zh("A small residual net")} <= set(rows.index)
    assert "no result given" not in rows.to_string() and "13 same-padded" not in rows.to_string()
    train = open_page("train", {"lang": "zh_CN", "preset": "cifar-course"})
    assert any(zh("The course's CIFAR-10 net") in shown(m.value) and "课程讲义第 2 周" in shown(m.value)
               and "MNIST 的 1×28×28 图像" in shown(m.value) for m in train.markdown)


def test_a_dataset_that_cannot_be_had_fails_its_job_in_words_not_a_crash(submitted, db, tmp_path):
    """CIFAR-10 has no offline copy here: the worker's failure (stored as errors.failure_reason
    makes it) is shown by the page as the job's error, with what to choose instead."""
    at = open_page("train", {"dataset": "cifar10", "train_limit": "256", "epochs": "1"})
    at.button(key="train_go_btn").click().run()
    (spec,) = submitted
    with pytest.raises(DataUnavailableError) as refused:  # what the worker meets where no copy is found
        load_dataset("cifar10", data_dir=str(tmp_path))
    queue = JobQueue(ResultStore(db))
    queue.start_inline("j-cifar", LOCAL_WORKSPACE, spec.kind, spec.title, spec.to_json(), spec.runs_total())
    queue.finish("j-cifar", "failed", error=failure_reason(refused.value))
    again = open_page("train", {"dataset": "cifar10"})
    assert not again.exception
    assert shown(again.error[0].value).startswith("The job failed: The CIFAR-10 directory")
    assert any("Choose MNIST above" in c.value for c in again.caption)
    # the frame in Chinese, the reason as the core has it
    zh = open_page("train", {"dataset": "cifar10", "lang": "zh_CN"})
    assert shown(zh.error[0].value).startswith("任务失败：") and any("在上方选择 MNIST" in c.value for c in zh.caption)


def test_on_a_shared_server_a_failed_jobs_reason_names_no_server_folder(db, tmp_path, monkeypatch):
    """The loader's message names the folders it looked in (useful on one's own machine): a student
    of a shared server reads its public form (no folder, no command), in either language."""
    monkeypatch.setenv("MNIST_LAB_MODE", "shared")
    with pytest.raises(DataUnavailableError) as refused:
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert str(tmp_path) in str(refused.value)  # the detail is there, for the server's own log
    ws = student("s1").workspace  # the signed-in student's
    spec = JobSpec("train", TrainConfig(epochs=1), DataConfig(dataset="cifar10", train_limit=256),
                   model=PRESETS["cifar-course"].model)
    queue = JobQueue(ResultStore(db))
    queue.start_inline("j-cifar", ws, spec.kind, spec.title, spec.to_json(), spec.runs_total())
    queue.finish("j-cifar", "failed", error=failure_reason(refused.value))
    for lang, words in (("en", "cannot be loaded on this server"), ("zh_CN", "本服务器现在无法加载")):
        at = open_page("train", {"dataset": "cifar10", "lang": lang}, who=student("s1"))
        error = shown(at.error[0].value)
        assert words in error and str(tmp_path) not in error and not re.search(r"(?<![\w.:/~])/[\w.+-]+/", error)


@pytest.mark.slow
def test_a_residual_net_trains_on_fashion_mnist_as_the_page_asks(submitted, db):
    """One real run of the job the page submits: 256 Fashion-MNIST images, 1 epoch, shuffle off
    (evaluated on 500 test images, in this process); the page then shows it."""
    try:
        load_dataset(FASHION_MNIST)
    except Exception as exc:  # noqa: BLE001 - any reason it cannot be had here
        pytest.skip(f"no offline Fashion-MNIST here (Debian: apt-get install dataset-fashion-mnist): {exc}")
    at = open_page("train", {"dataset": "fashion-mnist", "preset": "resnet-small", "shuffle": "0",
                          "train_limit": "256", "epochs": "1"})
    at.button(key="train_go_btn").click().run()
    (spec,) = submitted
    store = ResultStore(db)
    run_inline(replace(spec, data=replace(spec.data, test_limit=500)), store, threading.Event())
    run = store.runs().iloc[0]
    assert (run["dataset"], bool(run["shuffle"]), run["steps_per_epoch"], run["status"]) == (
        "fashion-mnist", False, 2, "finished")  # 256 images / batch 128
    assert len(store.iterations([run["run_id"]])) == 2 and 0.0 <= run["final_test_acc"] <= 1.0
    at.run()  # the page shows the workspace's newest job: this one
    assert not at.exception, at.exception
    assert any("on 256 Fashion-MNIST images" in shown(m.value) for m in at.markdown)
    assert at.success[0].value.startswith("Finished")
