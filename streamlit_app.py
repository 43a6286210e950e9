"""MNIST CNN Lab — the dashboard's entry point: `streamlit run streamlit_app.py`.
Sets up what every page shares, then runs the page the user picked (app_pages/; not `pages/`,
which Streamlit would also auto-load as an old-style multipage app for the first visitor of a
deep link such as /train). Shared mode: until someone signs in, every address shows the sign-in
page, and after it the same address opens its page. Demo mode: a visitor needs no sign-in."""
import streamlit as st

from app_lib.lang import _, keep_in_url, language_picker
from app_lib.session import accounts, client, current, sign_in_as, sign_out, write_cookie
from app_lib.shared import ensure_workers, keep_page_state, page_file, server_policy
from app_lib.text import plain
from app_lib.widgets import share_link, sidebar_jobs
from mnist_lab.errors import StoreError

st.set_page_config(page_title=_("MNIST CNN Lab"), page_icon="🔢", layout="wide")  # the browser tab, too
policy = server_policy()
if policy.shared:  # no traceback, file path or other workspace's data reaches a browser
    st.set_option("client.showErrorDetails", "none")
keep_page_state()
keep_in_url()  # the language: a shared link opens in it
try:
    who = current() if policy.shared else None
    if policy.demo and who is None:  # a visitor: an anonymous workspace, kept by the same signed cookie
        sign_in_as(who := accounts().visitor(client()))
    ensure_workers()  # training happens in worker processes, never in this server
    store_ok = True
except StoreError:  # a damaged database: the pages say so and how to move it aside
    who, store_ok = None, False

PAGES = [  # (file, title, icon, url path)
    ("home", _("Home"), ":material/home:", ""),
    ("train", _("Train"), ":material/model_training:", "train"),
    ("sweep", _("Sweep: depth × kernel"), ":material/grid_on:", "sweep"),
    ("compare", _("FC vs CNN"), ":material/compare_arrows:", "compare"),
    ("week2", _("Week 2"), ":material/science:", "week2"),
    ("runs", _("Runs"), ":material/history:", "runs"),
    ("inspect", _("Inspect"), ":material/visibility:", "inspect"),
    ("report", _("Report"), ":material/description:", "report"),
]
CLASS = [  # the teacher's pages: (file, title, icon, url path)
    ("class_progress", _("Progress"), ":material/checklist:", "class"),
    ("class_pooled", _("Class results"), ":material/query_stats:", "pooled"),
    ("teacher", _("Sign-in and class list"), ":material/school:", "teacher"),
    ("class_term", _("End of term"), ":material/event_busy:", "term"),
]
if policy.signin and who is None:
    # every address of the app shows the sign-in form and keeps its path and query: once signed in, the same
    # address (a copied link) opens its page and settings for whoever signed in
    page = st.navigation([st.Page(page_file("signin"), title=_("Sign in"), icon=":material/login:",
                                  url_path=path or None, default=not path) for *_page, path in [*PAGES, *CLASS]],
                         position="hidden")
else:
    pages = [st.Page(page_file(name), title=title, icon=icon, url_path=path or None, default=not path)
             for name, title, icon, path in PAGES]
    if who is not None and who.role == "teacher":  # the course's pages, then the class's (issue 25)
        pages = {_("Course"): pages, _("Class"): [st.Page(page_file(name), title=title, icon=icon, url_path=path)
                                                  for name, title, icon, path in CLASS]}
    page = st.navigation(pages)
with st.sidebar:
    language_picker()
    if who is not None and who.role != "visitor":
        st.caption(":material/person: " + (  # a name is the student's own text: shown as its characters
            _("Signed in as the teacher") if who.role == "teacher" else
            _("Signed in as {name} ({id})").format(name=plain(who.name), id=plain(who.student_id))))
        st.button(_("Sign out"), key="sign_out_btn", on_click=sign_out, icon=":material/logout:")
    if store_ok and (who is not None or not policy.shared):  # a signed-in person's jobs (local: every job)
        sidebar_jobs()
    if policy.shared and who is not None:
        share_link()
    write_cookie()  # a sign-in or sign-out of the last run: the browser keeps (or drops) its cookie now
page.run()
