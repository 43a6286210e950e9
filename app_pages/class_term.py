"""End of term (the teacher only): export the class's data (a zip built by a queued job:
students, progress, the pooled tables, every run with its epochs and iterations, the jobs), then
delete it (runs, weights, sign-ins) after a typed confirmation: mnist_lab.service.class_jobs.end_term."""
import pandas as pd
import streamlit as st

from app_lib.lang import _, render_error
from app_lib.session import accounts
from app_lib.shared import job_queue, result_store, teacher_only
from app_lib.text import epoch_times, plain
from app_lib.widgets import class_job_panel
from mnist_lab.errors import ConfigError, StoreError
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.class_jobs import check_term_ready, class_job_file, class_students, end_term, export_snapshot

GONE = "_term_cleared"  # session state: what the deletion removed (class_jobs.TermCleared)


def out_of_date(store: ResultStore, export: dict) -> str | None:
    """Why the export `export` (a finished JobQueue row) may lack some of the class, in the reader's
    words; None when it holds it all. end_term(snapshot=...) checks the same before it deletes."""
    snapshot = export_snapshot(export)
    if snapshot is None:  # an export built before exports kept their snapshot: a student's run started after it
        runs = store.visible_runs(None)
        newest = pd.to_datetime(runs.loc[runs["student_id"] != "", "started_at"], utc=True, format="ISO8601").max()
        stale = not pd.isna(newest) and newest.timestamp() >= float(export["started_at"] or 0)
        return _("Students trained after this export was started: it is out of date. Build the export again "
                 "before you delete.") if stale else None
    try:
        check_term_ready(store, snapshot=snapshot)
    except ConfigError as exc:  # newer runs or jobs, or a class job still queued or running
        return plain(render_error(exc))
    return None


teacher_only()
st.title(_("End of term"))
try:
    store = result_store()
    students = class_students(store)
    export = next(iter(job_queue().jobs(kinds=["export"], statuses=["finished"], limit=1)), None)
    if export is not None and class_job_file(store.path, export) is None:  # its zip pruned or deleted
        export = None
    stale = out_of_date(store, export) if export is not None else None
except StoreError as exc:
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
if (gone := st.session_state.get(GONE)) is not None:
    counts = {key: f"{getattr(gone, key):,}" for key in ("runs", "jobs", "students", "sessions", "files")}
    st.success(_("Deleted: {runs} runs, {jobs} jobs, {students} students, {sessions} sign-ins and {files} files "
                 "(weights, exports). The teacher's own runs stay.").format(**counts))

st.subheader(_("1. Export the class's data"))
st.caption(_("One zip: the students (student ID, name, on the class list), their progress, the pooled tables, every "
             "student's run with its epochs and iterations, and their jobs, with a README. Keep it before you delete."))
class_job_panel("export", _("Build the export (.zip)"), "class_export.zip")
tz = st.context.timezone or "UTC"  # the browser's time zone; the store keeps UTC
if export is not None:
    built = epoch_times([export["finished_at"]], tz).iloc[0]
    st.caption(_("The export was built at {time} ({tz}).").format(time=built, tz=tz))
if stale:
    st.warning(stale, icon=":material/update:")

st.subheader(_("2. Delete the class"))
n = len(students)
st.caption(_("Deletes every student's runs, their weights files and jobs, the class list, the PINs, the one-time "
             "codes and every sign-in but yours. Your own runs stay. This cannot be undone."))
if not n:
    st.info(_("There is no student's data to delete."))
    st.stop()
typed = st.columns(3)[0].number_input(_("Type the number of students ({n}) to confirm").format(n=n), min_value=0,
                                     value=0, step=1, key="term_confirm")
saved = st.checkbox(_("I have downloaded the export"), key="term_saved")
ready = int(typed) == n and saved and export is not None and not stale
if export is None or stale:
    st.caption(_("The delete waits for an export built after the students' last run."))
if st.button(_("Delete the class's data"), key="term_delete_btn", type="primary", disabled=not ready,
             icon=":material/delete_forever:"):
    try:
        st.session_state[GONE] = end_term(result_store(), job_queue(), accounts(), int(typed),
                                             snapshot=export_snapshot(export))
    except StoreError as exc:  # a damaged or full database: said as the other pages say it
        st.error(plain(render_error(exc)), icon=":material/database:")
    except ValueError as exc:  # a student's job still queued or running, or the number changed meanwhile
        st.error(plain(render_error(exc)), icon=":material/block:")
    else:
        for key in ("term_confirm", "term_saved"):
            st.session_state.pop(key, None)
        st.rerun()
