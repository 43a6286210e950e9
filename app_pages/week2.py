"""Week 2: the course notes' questions as ready experiments (mnist_lab/lab/lessons.py) — pick a lesson,
train its variants over seeds as a worker job, and read the chart, the mean ± sd table and the
reading computed from the numbers."""
import streamlit as st

from app_lib.charts import lesson_figure
from app_lib.forms import SUBSETS
from app_lib.lang import _, bound, render_error
from app_lib.shared import init_state, mirror_query, reads_public, result_store, values
from app_lib.text import plain
from app_lib.widgets import (
    FORMATS,
    csv_button,
    expected_time,
    job_active,
    job_panel,
    live_runs,
    mean_sd_texts,
    normalization_words,
    not_learned_note,
    refusal,
    start_job,
    words,
)
from app_lib.widgets import table as show_table
from mnist_lab.data.datasets import DATASETS
from mnist_lab.errors import StoreError
from mnist_lab.lab.lessons import (
    LESSONS,
    LessonConfig,
    datasets_for,
    lesson_table,
    loss_texts,
    plan,
    read_lesson,
    summarize_lesson,
)
from mnist_lab.nets.model import count_params, describe
from mnist_lab.service.jobs import lesson_spec

DEFAULTS = dict(lesson="shuffle", full=False, seeds=LESSONS["shuffle"].seeds, images=LESSONS["shuffle"].train_limit)
LIMITS = dict(lesson=list(LESSONS), full=[False, True], seeds=(1, 5), images=SUBSETS)  # what a link may set
# the summary's columns (pixels: small 75, medium 200) fit the page's width together: none is cut off on the right
SUMMARY_WIDTHS = dict(variant="medium", n="small", text="medium", loss="medium", params="small", seconds="small",
                      iterations="small")


def lesson_defaults() -> None:
    """The picked lesson's own seeds and training images (they finish in about 90 s or less on 2 idle CPU cores)."""
    picked = LESSONS[st.session_state.w2_lesson]
    st.session_state.w2_seeds, st.session_state.w2_images = picked.seeds, picked.train_limit or SUBSETS[-1]


first_visit = "w2_lesson" not in st.session_state
init_state("w2_", DEFAULTS, LIMITS)
if first_visit and not {"seeds", "images"} & set(st.query_params):
    lesson_defaults()  # a link to a lesson starts from that lesson's settings

st.title(_("Week 2: the notes' questions as experiments"))
try:
    result_store()  # opened and checked once per server: a damaged database is said here, not raised below
except StoreError as exc:
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
st.markdown(_("Each lesson trains a few variants of one network, several seeds each, on the same images, and "
              "reads the result from the numbers: a difference counts only when it is larger than the spread "
              "over seeds."))

gettext_now = bound()  # AppTest may call a format_func outside the page's run
name = st.selectbox(_("Lesson"), list(LESSONS), format_func=lambda n: gettext_now(LESSONS[n].title), key="w2_lesson",
                    on_change=lesson_defaults)
lesson = LESSONS[name]
st.subheader(_(lesson.title))
st.markdown(_(lesson.question))
st.caption(_(lesson.why))
datasets = datasets_for(lesson)
spec, problem = None, ""
st.session_state.setdefault(f"w2_dataset_{name}", datasets[0])
c1, c2, c3 = st.columns(3)
dataset = c1.radio(_("Dataset"), datasets, format_func=lambda d: DATASETS[d].title, key=f"w2_dataset_{name}",
                   horizontal=True)
seeds = c2.slider(_("Seeds per variant"), *LIMITS["seeds"], key="w2_seeds")
full = c3.toggle(_("Full settings: every image, {epochs} epochs").format(epochs=lesson.full_epochs), key="w2_full")
images = c2.select_slider(_("Training images"), SUBSETS, format_func="{:,}".format, key="w2_images", disabled=full)
cfg = LessonConfig(name, dataset=dataset, seeds=seeds, full=full,
                   train_limit=None if full or images >= DATASETS[dataset].train_count else images)
try:
    spec = lesson_spec(cfg)
    variants, skipped = plan(cfg, spec.train, spec.data)
except ValueError as exc:
    problem = render_error(exc)
    st.error(plain(problem), icon=":material/warning:")
if spec is not None and not problem:
    st.dataframe([{_("variant"): _(v.label), _("network"): describe(v.model), _("parameters"): count_params(v.model),
                   _("batch size"): v.train.batch_size, _("normalisation"): normalization_words(v.data.normalize)}
                  for v in variants],
                 hide_index=True, column_config={_("parameters"): st.column_config.NumberColumn(format="localized")})
    for s in skipped:
        reason = render_error(s.why or s.reason)
        st.caption(plain(_("Skipped {label}: {reason}").format(label=_(s.label), reason=reason)))
    if spec.data.dataset == "cifar10":
        if reads_public():  # the server's folders are the teacher's
            st.info(_("CIFAR-10 comes with no package: where this server lacks it, your teacher can add it. MNIST and "
                      "Fashion-MNIST run without it."), icon=":material/info:")
        else:
            st.info(_("CIFAR-10 comes with no package here: put cifar-10-batches-py/ or cifar-10-python.tar.gz in the "
                      "data directory, or let torchvision download it. MNIST and Fashion-MNIST run this lesson "
                      "without it."), icon=":material/info:")
    st.caption(_("{runs} runs, {epochs} epoch(s) each. Expected training time on this device: about {time}.")
               .format(runs=spec.runs_total(), epochs=spec.train.epochs, time=expected_time(spec)))
mirror_query(values("w2_", DEFAULTS), DEFAULTS)


def picked(view) -> bool:
    """A finished lesson job is shown under the lesson it ran, not under another one picked since."""
    return view.spec is not None and view.spec.lesson is not None and view.spec.lesson.name == name


busy = job_active("lesson", picked)
if st.button(_("Run lesson"), type="primary", key="w2_go_btn", disabled=spec is None or bool(problem) or busy):
    if start_job("lesson", spec):
        st.rerun()
refusal("lesson")
st.divider()


def draw(view) -> None:
    if view.spec is None or view.spec.lesson is None or view.spec.lesson.name not in LESSONS:
        st.info(_("This lesson was started by another version of mnist_lab; its runs are on the Runs page."))
        return
    cfg = view.spec.lesson
    shown = cfg.lesson
    st.subheader(_(shown.title))
    try:
        order = [v.label for v in plan(cfg, view.spec.train, view.spec.data)[0]]
    except ValueError:  # this build can no longer plan it: the runs' own labels, in start order
        order = []
    if view.active:
        runs = [(_(label), seed) for label in order for seed in range(cfg.n_seeds())]
        live_runs(view, runs, ("variant", "seed"), key="w2_live_chart")
        return
    if view.status == "failed" and view.spec.data.dataset != "mnist":
        st.caption(_("Choose MNIST above to run this lesson on data that is always here."))
    store = result_store()
    runs = store.job_runs(view.id)
    table = lesson_table(runs, store.epochs(list(runs["run_id"])))
    summary = summarize_lesson(table, order or None)
    if summary.empty:
        st.info(_("No run finished, so there is nothing to summarise."))
        return
    shown_summary = summary.assign(variant=[_(v) for v in summary["variant"]], text=mean_sd_texts(summary),
                                   loss=loss_texts(summary))
    columns = ["variant", "n", "text", *(["loss"] if "train_loss" in shown.metrics else []), "params", "seconds",
               "iterations"]
    headers = {"variant": _("variant"), "n": _("runs"), "text": _("test accuracy, mean ± sd"),
               "loss": _("final training loss, mean ± sd"), "params": _("parameters"),
               "seconds": _("seconds per run"), "iterations": _("iterations per run")}
    st.dataframe(shown_summary[columns].rename(columns=headers), hide_index=True, width="stretch",
                 column_config={headers[c]: (st.column_config.NumberColumn(width=SUMMARY_WIDTHS[c], format=FORMATS[c])
                                             if c in FORMATS else st.column_config.Column(width=SUMMARY_WIDTHS[c]))
                                for c in columns})
    csv_button(summary, f"lesson_{cfg.name}_summary.csv", label=_("Summary (CSV)"), key="w2_summary_csv_btn")
    a, b = st.columns(2)
    a.plotly_chart(lesson_figure(shown_summary, "test_acc", _("Test accuracy, mean ± sd over seeds"),
                                 _("test accuracy (%)"), _=_), key="w2_acc_chart")
    reading = read_lesson(shown, summary, view.spec.data.dataset)
    with b:  # the reading beside the chart it reads
        st.info("\n\n".join(plain(line) for line in reading.render(_)), icon=":material/lightbulb:")
        not_learned_note(table["verdict"])
    costs = [(m, axis) for m, axis in (("seconds", _("seconds per run")), ("iterations", _("iterations per run")))
             if m in shown.metrics]
    for col, (metric, axis) in zip(st.columns(2) if costs else [], costs):
        col.plotly_chart(lesson_figure(shown_summary, metric, axis, axis, _=_), key=f"w2_{metric}_chart")
    show_table(table.assign(variant=[_(v) for v in table["variant"]], test_acc=table["test_acc"] * 100,
                            status=words(table["status"]), verdict=words(table["verdict"])),
               hide_index=True, column_config={"test_acc": st.column_config.NumberColumn(format="%.2f")})
    csv_button(table, f"lesson_{cfg.name}_runs.csv", label=_("Runs (CSV)"), key="w2_runs_csv_btn")


job_panel("lesson", draw, picked)
