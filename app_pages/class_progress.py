"""Progress (the teacher only): the class's roster with each student's progress through lab 5
(mnist_lab.lab.classwork.progress_table), filtered and sorted; one student's runs and their report
(.docx) to download; every student's report as one zip, built by a queued job with progress."""
import pandas as pd
import streamlit as st

from app_lib.lang import N_, _, ngettext, render_error
from app_lib.session import accounts
from app_lib.shared import result_store, teacher_only
from app_lib.text import local_times, percent, plain
from app_lib.widgets import COLUMNS, FORMATS, class_job_panel, csv_button, run_labels, table, words
from mnist_lab.errors import StoreError
from mnist_lab.lab.classwork import STEPS, class_runs, progress_table, student_runs
from mnist_lab.service import identity
from mnist_lab.service.class_jobs import report_name, student_report

STATES = {"all": _("all"), "done": _("lab 5 done"), "under_way": _("under way"), "not_started": _("not started")}
SHOWN = ["student_id", "student_name", "lab5_done", *STEPS, "lessons", "runs", "last_activity", "on_roster"]
# the progress table's columns as the page orders them, narrow enough for a laptop's width (the CSV keeps every
# one of PROGRESS_COLUMNS, 'finished' too)
SHORT = {"lab_net": N_("1: lab net"), "depth": N_("2: depth"), "kernel": N_("3: kernel"),
         "lessons": N_("week 2")}  # the table's short headers; the whole header (COLUMNS) is each one's help
NARROW = {"lab5_done": st.column_config.CheckboxColumn(width="small"),
          "on_roster": st.column_config.CheckboxColumn(width="small"),
          "runs": st.column_config.NumberColumn(format=FORMATS["runs"], width="small"),
          **{c: st.column_config.Column(_(label), help=_(COLUMNS[c])) for c, label in SHORT.items()}}
RUN_COLUMNS = ["started_at", "label", "experiment", "status", "verdict", "final_test_acc", "epochs_done", "epochs",
               "train_limit", "seed", "run_id"]  # the Runs page's first columns

teacher_only()
st.title(_("Progress"))
try:
    store = result_store()
    roster = [(e.student_id, e.name) for e in accounts().roster() if e.on_roster]
    runs = class_runs(store)
    progress = progress_table(runs, roster)
except StoreError as exc:
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
if progress.empty:
    st.info(_("No student yet: import a class list on the Sign-in and class list page, or wait for the first "
              "sign-ins."))
    st.stop()

started = progress["runs"] > 0
state = pd.Series("under_way", index=progress.index).mask(progress["lab5_done"], "done").mask(~started, "not_started")
c1, c2, c3, c4 = st.columns(4)
c1.metric(_("students"), f"{len(progress):,}")
c2.metric(_("lab 5 done"), f"{int(progress['lab5_done'].sum()):,}")
c3.metric(_("under way"), f"{int((state == 'under_way').sum()):,}")
c4.metric(_("not started"), f"{int((~started).sum()):,}")
st.caption(_("Lab 5 is done with requirement 1 (a run of the lab's network on the full training set), 2 (a depth "
             "series) and 3 (a kernel series), each with at least two seeds per level. 'partial': some runs, not "
             "yet enough."))

f1, f2 = st.columns([2, 3])
search = f1.text_input(_("Search student ID or name"), key="class_search", max_chars=64)
chosen_state = f2.segmented_control(_("Show"), list(STATES), format_func=STATES.get, key="class_state",
                                    default="all") or "all"
shown = progress
if search.strip():
    needle = search.strip().casefold()
    shown = shown[shown["student_id"].str.casefold().str.contains(needle, regex=False)
                  | shown["student_name"].fillna("").str.casefold().str.contains(needle, regex=False)]
if chosen_state != "all":
    shown = shown[state[shown.index] == chosen_state]
tz = st.context.timezone or "UTC"
view = shown.assign(**{step: words(shown[step]) for step in STEPS},
                    lessons=[f"{n} / {t}" for n, t in zip(shown["lessons"], shown["lessons_total"])],
                    last_activity=list(local_times(shown["last_activity"], tz)))[SHOWN]
st.caption(ngettext("{n} student shown", "{n} students shown", len(view)).format(n=f"{len(view):,}"))
table(view, NARROW, hide_index=True, key="class_progress_table")
csv_button(progress, "progress.csv", label=_("Progress (CSV)"), key="class_progress_csv_btn")

st.subheader(_("One student"))
names = {r.student_id: f"{r.student_name or ''} ({r.student_id})" for r in shown.itertuples()}  # a picker's text
student_id = st.selectbox(_("Student"), list(names), format_func=names.get, key="class_student") if names else None
mine = student_runs(runs, student_id) if student_id else runs.iloc[:0]
if student_id is None:
    st.caption(_("No student matches the filter."))
elif mine.empty:
    st.caption(_("No runs yet."))
else:
    rows = mine.assign(label=run_labels(mine), status=words(mine["status"]), verdict=words(mine["verdict"]),
                       experiment=words(mine["experiment"]), final_test_acc=mine["final_test_acc"].map(percent),
                       started_at=list(local_times(mine["started_at"], tz)))
    table(rows[[c for c in RUN_COLUMNS if c in rows]], hide_index=True)
report_langs = {"zh_CN": _("Chinese"), "en": _("English")}  # in the reader's words: a choice of theirs
lang = st.radio(_("Report language"), list(report_langs), format_func=report_langs.get, horizontal=True,
                key="class_report_lang", help=_("The language of one student's report and of all reports (.zip)."))
if student_id is not None:
    name = str(progress.set_index("student_id").loc[student_id, "student_name"] or "")
    # their newest run's workspace, as class_jobs.class_students has it (without reading every run again)
    workspace = str(mine["workspace"].iloc[0]) if len(mine) else identity.student_workspace(student_id)

    def report() -> bytes:  # built when clicked: a report takes a few seconds
        return student_report(result_store(), workspace, student_id, name, lang)
    st.download_button(_("Report (.docx)"), data=report, file_name=report_name(student_id, name),
                       mime="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                       on_click="ignore", key="class_report_btn", icon=":material/description:",
                       disabled=mine.empty)

st.subheader(_("All reports"))
st.caption(_("Every student's report as one zip of .docx files, in the report language chosen above ({lang}). It is "
             "built in the background: a class takes minutes.").format(lang=report_langs[lang]))
class_job_panel("reports", _("Build all reports (.zip)"), "class_reports.zip", lang=lang)
