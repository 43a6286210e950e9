"""Report: the lab report written from the stored runs, in the session's language (the sidebar's
switch) — each section's numbers, direction and figures — and its files to download (HTML, Word,
Markdown, findings.json, iterations.csv). The words come from the gettext catalogs
(mnist_lab/locale); the page only lays them out. Requirement 1's run defaults to the lab's own
network on the full training set (report.requirement1_run) and is kept in the URL (?run=); the
cover's name / student ID / class are personal, so kept with the session, never in the URL."""
import re

import pandas as pd
import streamlit as st

from app_lib.lang import N_, _, current, ngettext, render_error
from app_lib.session import current as current_identity
from app_lib.shared import asker, init_state, is_teacher, mirror_query, reads_public, result_store, run_scope, runner
from app_lib.text import local_times, plain
from app_lib.widgets import run_labels
from mnist_lab.errors import StoreError
from mnist_lab.lab.report import (
    COVER,
    COVER_LIMIT,
    Cover,
    build_report,
    findings_json,
    is_lab_run,
    requirement1_run,
    to_docx,
    to_html,
    to_markdown_zip,
)
from mnist_lab.service.class_jobs import class_students

MIME = {"report.html": "text/html", "report.docx": "application/vnd.openxmlformats-officedocument."
        "wordprocessingml.document", "report_md.zip": "application/zip", "findings.json": "application/json",
        "iterations.csv": "text/csv"}


LABELS = {"report.html": N_("HTML (print to PDF)"), "report.docx": N_("Word (.docx)"),
          "report_md.zip": N_("Markdown + figures (.zip)"), "findings.json": N_("findings.json"),
          "iterations.csv": N_("iterations.csv")}
OWN, EVERY = "", "*"  # the teacher's "whose report" choices besides a student's workspace
CHOSEN = "_report_student"  # session state: (学号, 姓名) of the student whose report the teacher reads, or None
COVER_KEYS = {key: f"report_cover_{key}" for key in COVER}  # the session's cover (not widgets: kept across pages)
SHOWN_FIXED = "_report_cover_fixed"  # session state: the cover fields last shown fixed (not the session's own)


@st.cache_data(max_entries=8, show_spinner=False)
def build(db: str, lang: str, run_id: str | None, scope: tuple[str, ...] | None, signature: tuple, cover: Cover,
          tz: str, detail: bool) -> tuple:
    """Blocks and files of one report; `signature` changes whenever the runs do; `detail`: its reader
    may see the server's detail (the teacher, a local user)."""
    report = build_report(result_store(), lang, run_id=run_id, workspace=scope, cover=cover, tz=tz, detail=detail)
    files = {"report.html": to_html(report).encode("utf-8"), "report.docx": to_docx(report),
             "report_md.zip": to_markdown_zip(report), "findings.json": findings_json(report).encode("utf-8")}
    if report.iterations_csv:
        files["iterations.csv"] = report.iterations_csv.encode("utf-8")
    return report.blocks, files


def cover_from_session() -> Cover:
    """Who hands the report in: a signed-in student's name and student ID from the sign-in (fixed),
    the rest (and everything on a local install) as this session typed it."""
    typed = {key: str(st.session_state.get(COVER_KEYS[key]) or "") for key in COVER}
    return Cover(**{**typed, **signed_in_cover()})


def signed_in_cover() -> dict[str, str]:
    """The cover fields the sign-in fixes: a student's name and student ID; none for anyone else."""
    who = current_identity()
    if who is not None and who.role == "teacher" and (chosen := st.session_state.get(CHOSEN)):
        student_id, name = chosen  # the teacher reads one student's report: that student's cover
        return {"name": name[:COVER_LIMIT], "student_id": student_id[:COVER_LIMIT]}
    if who is None or who.role != "student":
        return {}
    return {"name": who.name[:COVER_LIMIT], "student_id": who.student_id[:COVER_LIMIT]}


def whose_report() -> tuple[str, ...] | None:
    """The teacher's choice of whose runs the report reads: their own, one student's (their workspace,
    学号 and the class list's name: class_jobs.class_students), or every run (None)."""
    students = {ws: (sid, name) for ws, sid, name in class_students(result_store())}
    choices = {OWN: _("My own runs"), **{ws: f"{name} ({sid})" for ws, (sid, name) in students.items()},
               EVERY: _("Every run")}
    if st.session_state.get("report_whose") not in choices:  # a student deleted at the end of term
        st.session_state["report_whose"] = OWN
    whose = st.selectbox(_("Whose report"), list(choices), format_func=choices.get, key="report_whose",
                         help=_("A student's report is the one they download themselves, from their runs."))
    st.session_state[CHOSEN] = students.get(whose)
    return None if whose == EVERY else (asker().workspace,) if whose == OWN else (whose,)


def md(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>#|$~])", r"\\\1", text)  # the report's text is plain, not Markdown


lang = current()
try:
    store = result_store()
    scope, detail = run_scope(), not reads_public()
    if scope is None and not detail:  # a student of a class view sees the class's runs; the report is their own
        scope = (asker().workspace,)
    runs = runner().runs()  # only the runs this session may see (mnist_lab.service.access)
    if is_teacher():  # whose report: the teacher's own runs (the default), one student's, or every run
        scope = whose_report()
        if st.session_state[CHOSEN] is not None:  # the report the student downloads: no server detail
            detail = False
    if scope is not None:
        runs = runs[runs["workspace"].isin(scope)]
except StoreError as exc:  # a damaged database: said as the other pages say it
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
done = runs[runs["status"] == "finished"]
tz = st.context.timezone or "UTC"  # the browser's time zone; the store keeps UTC
default_run, fallback = requirement1_run(done)
lab = [is_lab_run(row) for _i, row in done.iterrows()]  # the lab's own network on the full set: listed first
order = sorted(range(len(done)), key=lambda i: not lab[i])  # stable: newest first within each
names = {}
for i, r, label, t in zip(range(len(done)), done.itertuples(), run_labels(done),
                          local_times(done["started_at"], tz)):
    prefix = _("Lab 5 net, full training set") + " · " if lab[i] else ""
    n = 0 if pd.isna(r.epochs_done) else int(r.epochs_done)
    names[r.run_id] = f"{prefix}{label} · {ngettext('{n} epoch', '{n} epochs', n).format(n=n)} · {t} · {r.run_id[-6:]}"
names = {list(names)[i]: names[list(names)[i]] for i in order}
init_state("report_", dict(run=default_run or ""), dict(run=list(names)) if names else None)
if st.session_state.get("report_run") not in names:  # a run deleted since, or none yet
    st.session_state["report_run"] = default_run
run_id = st.selectbox(_("Run for requirement 1 (the loss of every iteration)"), list(names), format_func=names.get,
                      key="report_run", placeholder=_("no finished run yet"),
                      help=_("The lab's own network on the full training set first (the newest of them is the "
                             "default), then every other finished run, newest first; the report's other sections "
                             "use every finished sweep and comparison."))
mirror_query({"run": run_id or ""}, {"run": default_run or ""})

with st.expander(_("Cover: name, student ID, class"), expanded=not any(vars(cover_from_session()).values())):
    fixed = signed_in_cover()
    whose_words = (_("The student's name and student ID, from the class list.") if st.session_state.get(CHOSEN)
                   else _("Your name and student ID are those you signed in with."))
    st.caption(_("Printed on the report's cover; kept only while this browser session lasts.") + (
        " " + whose_words if fixed else ""))
    cols = st.columns(3)
    for col, key in zip(cols, COVER):
        widget = COVER_KEYS[key] + "_input"  # Streamlit forgets a widget's value on other pages; the session keeps it
        if key in fixed:  # shown, never saved: the session's own cover stays the teacher's
            st.session_state[widget] = fixed[key]
        elif widget not in st.session_state or key in st.session_state.get(SHOWN_FIXED, ()):
            st.session_state[widget] = st.session_state.get(COVER_KEYS[key], "")
        typed = col.text_input(_(COVER[key]), key=widget, max_chars=COVER_LIMIT, disabled=key in fixed)
        if key not in fixed:
            st.session_state[COVER_KEYS[key]] = typed
    st.session_state[SHOWN_FIXED] = tuple(fixed)
try:
    cover = cover_from_session().validate()
except ValueError as exc:
    st.error(render_error(exc))
    cover = Cover()
signature = (len(runs), tuple(runs["run_id"]), tuple(runs["status"]), int(runs["epochs_done"].fillna(0).sum()))
try:
    with st.spinner(_("Writing the report…")):
        # the default run is the report's own choice: one it cannot read leaves section 1 to do, not the report
        blocks, files = build(str(store.path), lang, None if run_id == default_run else run_id, scope, signature,
                              cover, tz, detail)
except ValueError as exc:  # a run that cannot be read (e.g. one iteration): said in the reader's words, not a traceback
    st.error(md(render_error(exc)), icon=":material/warning:")
    st.stop()

cols = st.columns(len(files))
for col, (name, data) in zip(cols, files.items()):
    col.download_button(_(LABELS[name]), data, file_name=name, mime=MIME[name], key=f"report_dl_{name}",
                        width="stretch")
st.caption(_("The report states what these runs show, with the numbers behind every direction; add your own "
             "reflections in the Word file."))

for b in blocks:
    if b.kind == "h1":
        st.title(b.text)
    elif b.kind == "h2":
        st.header(b.text, divider="gray")
    elif b.kind == "h3":
        st.subheader(b.text)
    elif b.kind == "p":
        st.markdown(md(b.text))
    elif b.kind == "note":
        st.warning(b.text)
    elif b.kind == "list":
        st.markdown("\n".join(f"- {md(item)}" for item in b.items))
    elif b.kind == "code":
        st.code(b.text, language=b.name or "bash")
    elif b.kind == "table":
        st.dataframe(pd.DataFrame(b.rows, columns=b.header), hide_index=True)
    elif b.kind == "figure":
        st.image(b.png, caption=b.text)
