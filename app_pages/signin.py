"""Sign in (shared mode): a student with 学号 and 姓名, then what the server asks of that ID (the
one-time code from the teacher and a new PIN, a new PIN where there is no roster, or the PIN), or
the teacher with the token. Every address shows this page until someone signs in; then the same
address opens its own page (streamlit_app.py). Wrong tries are slowed down, never locked out."""
import streamlit as st

from app_lib.lang import N_, _, render_error
from app_lib.session import accounts, client, sign_in_as
from app_lib.shared import server_policy, without_server_paths
from app_lib.text import plain
from mnist_lab.errors import StoreError

STEP = "signin_step"  # session state: (student ID, name, what to ask) once the first form is sent
ERROR = "signin_error"  # session state: the last refusal, worded when shown (a language switch words it again)


def refuse(why: ValueError | str) -> None:
    """Keep a refusal (the core's, or a msgid of this page's) to show above the forms."""
    st.session_state[ERROR] = why


def signed_in(who) -> None:
    sign_in_as(who)
    for key in (STEP, ERROR):
        st.session_state.pop(key, None)
    st.rerun()  # the same address, now with the pages of whoever signed in


def student_id_form() -> None:
    with st.form("signin_id_form"):
        student_id = st.text_input(_("Student ID"), max_chars=32, key="signin_id")
        name = st.text_input(_("Name"), max_chars=40, key="signin_name")
        if st.form_submit_button(_("Next"), type="primary"):
            try:
                st.session_state[STEP] = (student_id.strip(), name.strip(), accounts().step(student_id.strip()))
                st.session_state.pop(ERROR, None)
            except ValueError as exc:
                refuse(exc)
            st.rerun()


def secret_form(student_id: str, name: str, step: str) -> None:
    st.markdown(f"**{plain(name)}** ({plain(student_id)})")
    if step == "new_pin":
        st.warning(_("This server has no class list: a student ID belongs to whoever signs in with it first. "
                     "Choose a PIN you will remember; you need it every time you sign in."),
                   icon=":material/warning:")
    elif step == "code":
        st.info(_("First sign-in: type the one-time code your teacher gave you, then choose a PIN of 6 to 12 "
                  "digits for the next times."), icon=":material/key:")
    with st.form("signin_secret_form"):
        secret = st.text_input(_("One-time code") if step == "code" else _("PIN"), type="password",
                               key="signin_secret") if step != "new_pin" else ""
        pins = [st.text_input(label, type="password", max_chars=12, key=key)
                for label, key in ((_("New PIN (6 to 12 digits)"), "signin_pin1"), (_("New PIN again"), "signin_pin2"))
                ] if step != "pin" else []
        if st.form_submit_button(_("Sign in"), type="primary"):
            if pins and pins[0] != pins[1]:
                refuse(N_("The two PINs differ: type the same PIN twice."))
                st.rerun()
            try:
                who = accounts().sign_in(student_id, name, secret or "", client(),
                                         new_pin=pins[0] if pins else None)
            except ValueError as exc:
                refuse(exc)
                st.rerun()
            signed_in(who)
    if st.button(_("Another student ID"), key="signin_back_btn"):
        for key in (STEP, ERROR):
            st.session_state.pop(key, None)
        st.rerun()


def teacher_form() -> None:
    token = server_policy().teacher_token
    if not token:
        st.info(_("This server has no teacher sign-in."))
        return
    with st.form("signin_teacher_form"):
        given = st.text_input(_("Teacher token"), type="password", key="signin_token")
        if st.form_submit_button(_("Sign in as the teacher"), type="primary"):
            try:
                who = accounts().sign_in_teacher(given, token, client())
            except ValueError as exc:
                refuse(exc)
                st.rerun()
            signed_in(who)


st.title(_("Sign in to MNIST CNN Lab"))
try:
    accounts()
except StoreError as exc:  # a damaged database: said without a server path; the teacher reads the detail on the server
    st.error(plain(without_server_paths(render_error(exc))), icon=":material/database:")
    st.stop()
st.caption(_("Your runs are kept under your student ID. Signing in again on another computer finds them."))
if (why := st.session_state.get(ERROR)) is not None:
    st.error(plain(_(why) if isinstance(why, str) else render_error(why)), icon=":material/block:")
student, teacher = st.tabs([_("Student"), _("Teacher")])
with student:
    if (step := st.session_state.get(STEP)) is None:
        student_id_form()
    else:
        secret_form(*step)
with teacher:
    teacher_form()
