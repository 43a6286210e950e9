"""Sign-in and class list (the teacher only): the class list (a CSV of 学号, 姓名) and the one-time codes for each
student's first sign-in, printable; the students and their PINs (reset one); repeated wrong sign-ins
(clear them); who is signed in. The accounts themselves are mnist_lab.service.identity's."""
import html

import pandas as pd
import streamlit as st

from app_lib.lang import N_, _, current, render_error
from app_lib.session import KEY as SESSION_KEY
from app_lib.session import accounts, app_address
from app_lib.shared import teacher_only
from app_lib.text import epoch_times, plain
from app_lib.widgets import csv_button, table
from mnist_lab.service.identity import key_parts

CODES = "teacher_codes"  # session state: {student ID: code} issued in this session (plain codes exist only here)
MAX_ROSTER_BYTES = 256 * 1024  # 2,000 rows of 学号, 姓名 fit in far less
ROLES = {"student": N_("student"), "teacher": N_("teacher"), "visitor": N_("visitor")}


def who_failed(key: str) -> str:
    """A throttle key (identity.key_parts: a computer, an account, the teacher's token, or one
    computer's tries at one account) as the teacher reads it."""
    kind, address, student_id = key_parts(key)
    computer = _("computer {address}").format(address=address or _("unknown"))
    account = _("student {id}").format(id=student_id) if student_id else _("the teacher's account")
    if kind == "client":
        return computer
    if kind in ("account", "teacher"):
        return account
    if kind == "pair":
        return _("{account} from {computer}").format(account=account, computer=computer)
    return key


def times(seconds: pd.Series) -> pd.Series:
    """Unix times as the browser's local 'YYYY-MM-DD HH:MM:SS'."""
    return epoch_times(seconds, st.context.timezone or "UTC").set_axis(seconds.index)


def remember(codes: dict[str, str]) -> None:
    st.session_state[CODES] = {**st.session_state.get(CODES, {}), **codes}


def codes_table(codes: dict[str, str]) -> pd.DataFrame:
    names = {e.student_id: e.name for e in accounts().roster()}
    return pd.DataFrame([dict(student_id=i, student_name=names.get(i, ""), code=c) for i, c in sorted(codes.items())])


def printable(codes: pd.DataFrame, address: str) -> str:
    """The codes as an HTML page to print and cut into slips: each slip says where and how to sign in."""
    steps = _("Open {address}, choose Student, type your student ID and name, then this one-time code, and choose "
              "a PIN of 6 to 12 digits. The code works once; keep your PIN to yourself.").format(address=address)
    rows = "".join(f"<tr><td>{html.escape(r.student_id)}</td><td>{html.escape(r.student_name)}</td>"
                   f"<td class='code'>{html.escape(r.code)}</td></tr>" for r in codes.itertuples())
    lang = "zh-CN" if current() == "zh_CN" else "en"
    return (f"<!doctype html><html lang='{lang}'><meta charset='utf-8'><title>{html.escape(_('One-time codes'))}"
            "</title><style>body{font-family:sans-serif}table{border-collapse:collapse;width:100%}"
            "td,th{border:1px dashed #888;padding:10px;text-align:left}.code{font:bold 1.3em monospace}"
            "@media print{tr{break-inside:avoid}p{font-size:10pt}}</style>"
            f"<h1>{html.escape(_('One-time codes'))}</h1><p>{html.escape(steps)}</p>"
            f"<table><tr><th>{html.escape(_('student ID'))}</th><th>{html.escape(_('student name'))}</th>"
            f"<th>{html.escape(_('one-time code'))}</th></tr>{rows}</table></html>")


teacher_only()
st.title(_("Sign-in and class list"))

st.subheader(_("Class list"))
st.caption(_("A CSV file with the columns 学号,姓名 (or student_id,name), one student per row. With a class list, each "
             "student's first sign-in needs a one-time code from you; without one, a student ID belongs to whoever "
             "signs in with it first."))
upload = st.file_uploader(_("Class list (CSV)"), type=["csv"], key="teacher_roster")
if upload is not None and st.button(_("Import the class list"), key="teacher_import_btn", type="primary"):
    try:
        if upload.size > MAX_ROSTER_BYTES:
            raise ValueError(_("This file is larger than a class list can be ({n} KiB at most).")
                             .format(n=MAX_ROSTER_BYTES // 1024))
        try:
            text = upload.getvalue().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise ValueError(_("This file is not UTF-8 text: save the class list as CSV UTF-8 and try again.")) \
                from None
        remember(accounts().import_roster(text))
        st.success(_("Class list imported."))
    except ValueError as exc:  # checked whole: nothing was imported
        st.error(plain(render_error(exc)), icon=":material/block:")

entries = accounts().roster()
if st.button(_("New one-time codes for every student without a PIN"), key="teacher_issue_btn",
             disabled=not any(e.on_roster and not e.pin_set for e in entries)):
    remember(accounts().issue_codes())
if codes := st.session_state.get(CODES):
    st.subheader(_("One-time codes"))
    st.caption(_("Shown in this browser session only: print them now (or download them). A new code replaces an "
                 "older one."))
    shown = codes_table(codes)
    table(shown, hide_index=True)
    address = app_address()
    st.download_button(_("Printable codes (HTML)"), printable(shown, address), file_name="codes.html",
                       mime="text/html", on_click="ignore", key="teacher_codes_html_btn", icon=":material/print:")
    csv_button(shown, "codes.csv", label=_("Codes (CSV)"), key="teacher_codes_csv_btn")

st.subheader(_("Students"))
if not entries:
    st.info(_("No student has signed in or been imported yet."))
else:
    students = pd.DataFrame([dict(student_id=e.student_id, student_name=e.name, on_roster=e.on_roster,
                                  pin_set=e.pin_set, code_pending=e.code_pending) for e in entries])
    table(students, hide_index=True)
    names = {e.student_id: f"{e.name} ({e.student_id})" for e in entries}
    with st.expander(_("Reset a student's PIN")):
        chosen = st.selectbox(_("Student"), list(names), format_func=names.get, key="teacher_reset_id")
        sure = st.checkbox(_("Yes, reset this PIN: the student is signed out and needs a new one-time code"),
                           key="teacher_reset_sure")
        if st.button(_("Reset the PIN"), key="teacher_reset_btn", disabled=not sure):
            remember({chosen: accounts().reset(chosen)})
            st.session_state.pop("teacher_reset_sure", None)
            st.rerun()
    with st.expander(_("Remove a student from the class list")):
        st.caption(_("Their PIN, one-time code and sessions go; their runs stay, under the student ID and name they "
                     "were made with. Without a class list, anyone could then claim this student ID."))
        gone = st.selectbox(_("Student"), list(names), format_func=names.get, key="teacher_remove_id")
        sure = st.checkbox(_("Yes, remove this student from the class list"), key="teacher_remove_sure")
        if st.button(_("Remove from the class list"), key="teacher_remove_btn", disabled=not sure):
            accounts().remove(gone)
            st.session_state[CODES] = {k: v for k, v in st.session_state.get(CODES, {}).items() if k != gone}
            st.session_state.pop("teacher_remove_sure", None)
            st.rerun()

st.subheader(_("Wrong sign-ins"))
failures = pd.DataFrame(accounts().failures(), columns=["key", "failures", "first_at", "last_at"])
if failures.empty:
    st.caption(_("No wrong sign-ins."))
else:
    st.caption(_("Repeated wrong PINs or tokens from one computer or for one account: each try waits longer (never a "
                 "lockout). Clear them once you know who it was."))
    table(failures.assign(key=failures["key"].map(who_failed), first_at=times(failures["first_at"]),
                          last_at=times(failures["last_at"])).rename(columns={"key": "who"}), hide_index=True)
    labels = {None: _("all of them"), **{k: who_failed(k) for k in failures["key"]}}
    clear = st.selectbox(_("Clear"), list(labels), key="teacher_clear_key", format_func=labels.get)
    if st.button(_("Clear the wrong sign-ins"), key="teacher_clear_btn"):
        accounts().clear_failures(clear)
        st.rerun()

st.subheader(_("Signed in now"))
sessions = pd.DataFrame(accounts().sessions(),
                        columns=["role", "student_id", "name", "client", "created_at", "expires_at"])
if sessions.empty:
    st.caption(_("No one is signed in."))
else:
    table(sessions.rename(columns={"name": "student_name"}).assign(
        role=sessions["role"].map(lambda r: _(ROLES.get(r, r))), created_at=times(sessions["created_at"]),
        expires_at=times(sessions["expires_at"])), hide_index=True)
    signed_in = {e["student_id"]: f"{e['name']} ({e['student_id']})" for e in accounts().sessions()
                 if e["role"] == "student" and e["student_id"]}
    c1, c2 = st.columns(2)
    if signed_in:
        out = c1.selectbox(_("Student"), list(signed_in), format_func=signed_in.get, key="teacher_sign_out_id")
        if c1.button(_("Sign this student out"), key="teacher_sign_out_btn", icon=":material/logout:"):
            accounts().close_sessions(student_id=out)
            st.rerun()
    if c2.button(_("Sign everyone out"), key="teacher_sign_out_all_btn", icon=":material/group_off:",
                 help=_("Every student and visitor session ends, and any other teacher session; yours stays.")):
        accounts().close_sessions(everyone=True, keep=st.session_state.get(SESSION_KEY) or None)
        st.rerun()
