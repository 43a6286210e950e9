"""MNIST CNN Lab — the dashboard's entry point: `streamlit run streamlit_app.py`.
Sets up what every page shares, then runs the page the user picked (app_pages/; not `pages/`,
which Streamlit would also auto-load as an old-style multipage app for the first visitor of a
deep link such as /train)."""
import streamlit as st

from app_lib.lang import _, keep_in_url, language_picker
from app_lib.shared import ensure_workers, keep_page_state, server_policy, workspace
from app_lib.widgets import share_link, sidebar_jobs
from mnist_lab.errors import StoreError

st.set_page_config(page_title=_("MNIST CNN Lab"), page_icon="🔢", layout="wide")  # the browser tab, too
policy = server_policy()
if policy.shared:  # no traceback, file path or other workspace's data reaches a browser
    st.set_option("client.showErrorDetails", "none")
keep_page_state()
workspace()  # shared mode: this browser's token, kept in the URL
keep_in_url()  # the language: a shared link opens in it
try:
    ensure_workers()  # training happens in worker processes, never in this server
    store_ok = True
except StoreError:  # a damaged database: the pages say so and how to move it aside
    store_ok = False

page = st.navigation([
    st.Page("app_pages/home.py", title=_("Home"), icon=":material/home:", default=True),
    st.Page("app_pages/train.py", title=_("Train"), icon=":material/model_training:", url_path="train"),
    st.Page("app_pages/sweep.py", title=_("Sweep: depth × kernel"), icon=":material/grid_on:", url_path="sweep"),
    st.Page("app_pages/compare.py", title=_("FC vs CNN"), icon=":material/compare_arrows:", url_path="compare"),
    st.Page("app_pages/week2.py", title=_("Week 2"), icon=":material/science:", url_path="week2"),
    st.Page("app_pages/runs.py", title=_("Runs"), icon=":material/history:", url_path="runs"),
    st.Page("app_pages/inspect.py", title=_("Inspect"), icon=":material/visibility:", url_path="inspect"),
    st.Page("app_pages/report.py", title=_("Report"), icon=":material/description:", url_path="report"),
])
with st.sidebar:
    language_picker()
    if store_ok:
        sidebar_jobs()
    if policy.shared:
        share_link()
        if policy.teacher_token:
            st.text_input(_("Teacher token"), type="password", key="teacher_token",
                          help=_("Shows and exports every run on this server."))
page.run()
