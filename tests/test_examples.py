"""The public demo's example set (mnist_lab/service/examples.py) at its tiny scale: what a build
writes (jobs and runs of the local workspace, all finished, recorded with the set's version), that a
second start trains nothing, that a partial or older set is rebuilt without touching a visitor's run,
that two starts at once build once, that a visitor sees and cannot change the examples, the CLI's
`examples` command, and the demo's Home and Runs pages (en, zh_CN), Inspect and Report with only
the examples there.
"""
from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from apptest import app_db, open_page, result_charts

from mnist_lab.cli.main import main
from mnist_lab.data.datasets import DataConfig
from mnist_lab.lab.experiments import final_train_loss, stored_verdict
from mnist_lab.nets.presets import PRESETS
from mnist_lab.runs.store import LOCAL_WORKSPACE, ResultStore, run_row
from mnist_lab.service import examples
from mnist_lab.service.access import Asker, may
from mnist_lab.service.jobs import StoreRunner
from mnist_lab.service.queue import JobQueue
from mnist_lab.training.loop import TrainConfig

VISITOR = Asker("visitor:abc", shared=True, demo=True)
KINDS = ["lesson", "compare", "sweep", "train", "train", "train", "train"]  # in build order
# runs per job at tiny scale (1 seed): 2 lesson variants, FC/CNN × normal/permuted, 2 × 2 cells, 4 presets
RUNS = {"lesson": 2, "compare": 4, "sweep": 4, "preset-tiny-fc": 1, "preset-tiny-cnn": 1,
        "preset-padded-16-32": 1, "preset-lab5": 1}


def _jobs(db: Path) -> list[dict]:
    store = ResultStore(db)
    try:
        return sorted(JobQueue(store).jobs(limit=1000), key=lambda j: j["seq"])
    finally:
        store.close()


def _examples_table(db: Path) -> dict[str, tuple]:
    with sqlite3.connect(db) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT name, version, scale, job_id FROM examples")}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """The tiny set, built by two ensure_examples calls at once (as two starting processes would)."""
    db = tmp_path_factory.mktemp("examples") / "results.sqlite"
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def ensure() -> None:
        try:
            outcomes.append(examples.ensure_examples(db, "tiny"))
        except BaseException as exc:  # noqa: BLE001 - raised again below, in the test's thread
            errors.append(exc)
    threads = [threading.Thread(target=ensure) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return {"db": db, "outcomes": outcomes}


def _copy(db: Path, to: Path) -> Path:
    """The built database with its weights, for a test that changes it."""
    to.mkdir()
    shutil.copy(db, to / db.name)
    shutil.copytree(Path(f"{db}.weights"), to / f"{db.name}.weights")
    return to / db.name


def test_two_concurrent_starts_build_once(built):
    assert sorted(built["outcomes"]) == [False, True]  # one trained, the other waited and found the set
    assert len(_jobs(built["db"])) == len(KINDS)


def test_the_tiny_set_is_the_expected_jobs_and_runs_all_finished(built):
    db = built["db"]
    jobs = _jobs(db)
    assert [j["kind"] for j in jobs] == KINDS
    assert {j["workspace"] for j in jobs} == {LOCAL_WORKSPACE} and {j["status"] for j in jobs} == {"finished"}
    table = _examples_table(db)
    assert set(table) == set(RUNS) and {(v, s) for v, s, _ in table.values()} == {(examples.VERSION, "tiny")}
    assert {job_id for *_, job_id in table.values()} == {j["job_id"] for j in jobs}
    store = ResultStore(db)
    runs = store.visible_runs(None)
    by_job = runs.groupby("job_id").size()
    assert {name: by_job[job_id] for name, (*_, job_id) in table.items()} == RUNS
    assert set(runs["status"]) == {"finished"} and set(runs["workspace"]) == {LOCAL_WORKSPACE}
    assert sorted(runs["experiment"].value_counts().items()) == [("compare", 4), ("lesson", 2), ("single", 4),
                                                                 ("sweep", 4)]
    assert store.inspectable(runs["run_id"]) == set(runs["run_id"])  # every example can be inspected
    loss = final_train_loss(store.epochs())
    verdict = {r.label: stored_verdict(r.status, r.final_test_acc, loss.get(r.run_id), r.dataset)
               for r in runs.itertuples()}
    assert verdict["Lab-5 net"] == "learned"  # the run the report's requirement 1 falls back to
    assert verdict["softmax before CrossEntropyLoss"] == "did not learn"  # the lesson's variant meant to fail
    newest = runs.sort_values("started_at").iloc[-1]
    assert newest["label"] == "Lab-5 net"  # trained last: the newest finished run
    store.close()
    assert examples.examples_ready(db, "tiny") and not examples.examples_ready(db, "full")


def test_a_second_start_trains_nothing(built):
    before = _jobs(built["db"])
    assert examples.ensure_examples(built["db"], "tiny") is False
    assert examples.build_examples(built["db"], "tiny") == [j["job_id"] for j in before]  # kept, in order
    assert _jobs(built["db"]) == before


def test_a_partial_set_and_an_older_version_are_rebuilt_without_touching_a_visitors_run(built, tmp_path,
                                                                                        monkeypatch):
    db = _copy(built["db"], tmp_path / "copy")
    store = ResultStore(db)
    with store.context(workspace="visitor:abc"):
        store.start_run(run_row("r-visitor", PRESETS["tiny-fc"].model, TrainConfig(), DataConfig(),
                                status="finished"))
    store.close()
    before = _examples_table(db)
    cut = before["sweep"][2]
    with sqlite3.connect(db) as conn:  # a build killed while the sweep trained
        conn.execute("UPDATE jobs SET status = 'interrupted' WHERE job_id = ?", (cut,))
    assert not examples.examples_ready(db, "tiny")
    assert examples.ensure_examples(db, "tiny") is True
    after = _examples_table(db)
    assert after["sweep"][2] != cut and all(after[n] == before[n] for n in before if n != "sweep")
    assert cut not in {j["job_id"] for j in _jobs(db)}  # the cut job and its runs are gone
    monkeypatch.setattr(examples, "VERSION", examples.VERSION + 1)  # the set changed: every example again
    assert not examples.examples_ready(db, "tiny")
    assert examples.ensure_examples(db, "tiny") is True
    again = _examples_table(db)
    assert {v for v, *_ in again.values()} == {examples.VERSION}
    assert not {j for *_, j in again.values()} & {j for *_, j in after.values()}
    store = ResultStore(db)
    runs = store.visible_runs(None)
    assert len(runs[runs["workspace"] == LOCAL_WORKSPACE]) == sum(RUNS.values())  # the old ones deleted
    assert list(runs[runs["workspace"] == "visitor:abc"]["run_id"]) == ["r-visitor"]
    assert len(_jobs(db)) == len(KINDS)
    store.close()


def test_a_visitor_sees_the_examples_and_cannot_stop_or_delete_them(built):
    store = ResultStore(built["db"])
    runner = StoreRunner(store, asker=VISITOR)
    ids = list(store.visible_runs(None)["run_id"])
    assert set(runner.runs()["run_id"]) == set(ids)
    for job in _jobs(built["db"]):
        assert may(VISITOR, "see", job) and not may(VISITOR, "stop", job) and not may(VISITOR, "delete", job)
        assert runner.poll(job["job_id"]) is not None and not runner.stop(job["job_id"])
    assert runner.delete_runs(ids) == 0 and len(store.visible_runs(None)) == len(ids)
    store.close()


def test_cli_check_says_in_one_line_and_a_bad_scale_is_refused(built, tmp_path, capsys):
    assert main(["examples", "--db", str(built["db"]), "--scale", "tiny", "--check"]) == 0
    assert capsys.readouterr().out.strip().splitlines() == ["the demo's example runs are there (tiny set)"]
    missing = tmp_path / "none.sqlite"
    assert main(["examples", "--db", str(missing), "--check", "--lang", "zh"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "python -m mnist_lab examples" in out[0] and "演示的示例运行" in out[0]
    assert not missing.exists() and list(tmp_path.iterdir()) == []  # a check makes no file
    assert main(["examples", "--db", str(built["db"]), "--check"]) == 1  # the full set is not there
    capsys.readouterr()
    assert main(["examples", "--db", str(missing), "--scale", "huge"]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "'huge'" in err[0] and not captured.out
    assert not missing.exists()
    assert main(["examples", "--db", str(built["db"]), "--scale", "tiny", "--quiet"]) == 0  # nothing to train
    assert "nothing to train" in capsys.readouterr().out


def test_a_bad_scale_is_a_config_error_before_any_file(tmp_path):
    with pytest.raises(ValueError, match="Unknown example scale 'huge'"):
        examples.build_examples(tmp_path / "r.sqlite", "huge")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("lang, line, link, word", [
    ("en", "This demo comes with finished example runs", "The example runs", "Example"),
    ("zh_CN", "本演示已带有训练好的示例运行", "示例运行", "示例"),
])
def test_a_demo_visitor_sees_the_examples_on_home_and_runs(built, tmp_path, monkeypatch, lang, line, link, word):
    monkeypatch.setenv("MNIST_LAB_MODE", "demo")
    app_db(_copy(built["db"], tmp_path / "app"), monkeypatch)
    home = open_page("home", {"lang": lang})
    assert any(line in i.value for i in home.info)
    assert link in [p.proto.label for p in home.get("page_link")]
    runs = open_page("runs", {"lang": lang})
    shown = runs.dataframe[0].value
    header = "example" if lang == "en" else "示例"
    assert list(shown.columns[:2]) == ["inspect" if lang == "en" else "查看", header]
    assert set(shown[header]) == {word} and len(shown) == sum(RUNS.values())


def test_without_examples_a_demo_home_says_nothing_of_them(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", "demo")
    app_db(tmp_path / "results.sqlite", monkeypatch)
    home = open_page("home")
    assert not any("example runs" in i.value for i in home.info)


def test_inspect_and_report_work_for_a_visitor_with_only_the_examples(built, tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_LAB_MODE", "demo")
    app_db(_copy(built["db"], tmp_path / "app"), monkeypatch)
    inspect = open_page("inspect")
    assert not inspect.error and len(result_charts(inspect)) >= 1  # an example's confusion matrix
    report = open_page("report")
    assert not report.error and report.title and len(report.get("download_button")) >= 1
