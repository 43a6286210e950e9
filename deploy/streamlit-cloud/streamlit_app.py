"""Streamlit Community Cloud's main file: the host runs `streamlit run deploy/streamlit-cloud/streamlit_app.py`
from the repository's root and installs the requirements.txt beside this file. Settings come from
deploy/start.py (target `cloud`: demo mode, example runs) so this host cannot drift from the images;
the app is the repository's own streamlit_app.py, run as it is, with its pages at absolute paths
(app_lib.shared.page_file) and the root's .streamlit/config.toml (the host reads that one only).

Once per server process: the settings are checked (a bad secret is one line on the page), MNIST is
found and cached (the host has the internet: torchvision's download when no offline copy is
installed, seconds), and the example runs are built in a background process under the store's
lock, so the first visitor is not kept waiting for minutes on a host with 0.078-2 cores; the pages
show the examples once they are in the store.
"""
import importlib.util
import os
import runpy
import subprocess
import sys
from pathlib import Path

import streamlit as st

ROOT = Path(__file__).resolve().parents[2]
START = "mnist_lab_deploy_start"  # deploy/start.py, imported once per process under this name


def start_module():
    module = sys.modules.get(START)
    if module is None:
        spec = importlib.util.spec_from_file_location(START, ROOT / "deploy" / "start.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[START] = module  # before it runs: its dataclasses look their module up
        spec.loader.exec_module(module)
    return module


@st.cache_resource(show_spinner=False)
def prepare() -> None:
    """Once per server process, the settings checked, MNIST cached, the examples building in the background.
    A refused setting raises start.SettingError, which is not cached: the next page run checks again."""
    start = start_module()
    st.secrets.load_if_toml_exists()  # the app's root-level secrets become environment variables
    settings = start.resolve(target="cloud")
    os.environ.update(settings.environment())  # this server, its workers and the builder read the same
    try:
        start.check_data(settings)
    except Exception as exc:  # noqa: BLE001 - the pages say MNIST is missing and how to get it
        print(f"start.py: MNIST could not be prepared: {exc}", flush=True)
    if settings.examples != "off":  # its output goes to the host's log
        subprocess.Popen([sys.executable, str(ROOT / "deploy" / "start.py"), "--target", "cloud", "--prepare-only"],
                         cwd=ROOT, env=os.environ.copy(), start_new_session=True)


try:
    prepare()
except start_module().SettingError as exc:  # a secret the app cannot use: the one line that says which, nothing else
    from app_lib.shared import SERVER_PATH

    print(f"start.py: {exc}", flush=True)  # the host's log: the whole line, for the app's owner
    st.error(SERVER_PATH.sub("(a folder on the server)", str(exc)), icon=":material/error:")  # no server path
    st.stop()
os.chdir(ROOT)  # the host starts here already; a local `streamlit run` of this file from elsewhere too
runpy.run_path(str(ROOT / "streamlit_app.py"), run_name="__main__")
