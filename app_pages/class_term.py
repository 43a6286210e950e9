"""End of term (the teacher only): export the class's data (a zip built by a queued job:
students, progress, the pooled tables, every run with its epochs and iterations, the jobs), then
delete it (runs, weights, sign-ins) after a typed confirmation: mnist_lab.service.class_jobs.end_term."""
import streamlit as st

from app_lib.lang import _, render_error
from app_lib.session import accounts
from app_lib.shared import is_teacher, job_queue, result_store
from app_lib.text import plain
from app_lib.widgets import class_job_panel
from mnist_lab.errors import StoreError
from mnist_lab.service.class_jobs import class_students, end_term

GONE = "_term_cleared"  # session state: what the deletion removed (class_jobs.TermCleared)

if not is_teacher():  # the navigation offers this page to the teacher only; a guessed address gets nothing
    st.error(_("Only the teacher can open this page."), icon=":material/lock:")
    st.stop()
st.title(_("End of term"))
try:
    students = class_students(result_store())
except StoreError as exc:
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
if (gone := st.session_state.get(GONE)) is not None:
    st.success(_("Deleted: {runs} runs, {jobs} jobs, {students} students, {sessions} sign-ins and {files} weights "
                 "files. The teacher's own runs stay.").format(runs=f"{gone.runs:,}", jobs=f"{gone.jobs:,}",
                                                               students=f"{gone.students:,}",
                                                               sessions=f"{gone.sessions:,}",
                                                               files=f"{gone.files:,}"))

st.subheader(_("1. Export the class's data"))
st.caption(_("One zip: the students (student ID, name, on the class list), their progress, the pooled tables, every "
             "student's run with its epochs and iterations, and their jobs, with a README. Keep it before you delete."))
class_job_panel("export", _("Build the export (.zip)"), "class_export.zip")

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
ready = int(typed) == n and saved
if st.button(_("Delete the class's data"), key="term_delete_btn", type="primary", disabled=not ready,
             icon=":material/delete_forever:"):
    try:
        st.session_state[GONE] = end_term(result_store(), job_queue(), accounts(), int(typed))
    except ValueError as exc:  # a student's job still queued or running, or the number changed meanwhile
        st.error(plain(render_error(exc)), icon=":material/block:")
    else:
        for key in ("term_confirm", "term_saved"):
            st.session_state.pop(key, None)
        st.rerun()
