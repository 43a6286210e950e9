"""MNIST CNN Lab — the dashboard's entry point: `streamlit run streamlit_app.py`.
Sets up what every page shares, then runs the page the user picked (pages/)."""
import streamlit as st

from app_lib.shared import keep_page_state
from app_lib.widgets import sidebar_jobs

st.set_page_config(page_title="MNIST CNN Lab", page_icon="🔢", layout="wide")
keep_page_state()

page = st.navigation([
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/train.py", title="Train", icon="🏋️", url_path="train"),
    st.Page("pages/sweep.py", title="Sweep: depth × kernel", icon="🧪", url_path="sweep"),
    st.Page("pages/compare.py", title="FC vs CNN", icon="🔀", url_path="compare"),
    st.Page("pages/runs.py", title="Runs", icon="🗂️", url_path="runs"),
])
with st.sidebar:
    sidebar_jobs()
page.run()
