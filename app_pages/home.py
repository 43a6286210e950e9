"""Home: what the lab is, which device trains, whether MNIST is ready, a grid of digits."""
import pandas as pd
import streamlit as st

from app_lib.charts import digits_figure
from app_lib.forms import preset_words
from app_lib.lang import _, render_error
from app_lib.shared import (
    device_name,
    mnist,
    on_gpu,
    page_file,
    quick_defaults,
    sample_digits,
    server_policy,
    without_server_paths,
)
from app_lib.text import plain
from app_lib.widgets import headers
from mnist_lab.data.datasets import MNIST, source_message
from mnist_lab.nets.model import count_params
from mnist_lab.nets.presets import PRESETS
from mnist_lab.service.examples import SCALES, examples_ready
from mnist_lab.training.native import kernel_state

st.title(_("MNIST CNN Lab"))
intro, digits = st.columns([3, 2], gap="large")
with intro:
    st.markdown(_(
        "An interactive companion to **Experiment 5: classify MNIST with a convolutional neural network**. "
        "Train the lab's networks and watch the loss of every iteration, change the number of conv/pool "
        "layers and the kernel size and see what happens to test accuracy, and find out why a CNN beats a "
        "fully-connected net with the same number of parameters — until the pixels are shuffled."
    ))
    if on_gpu():
        st.success(_("**Training device:** GPU, {name}").format(name=plain(device_name())), icon=":material/memory:")
    else:
        quick = quick_defaults()
        st.info(_("**Training device:** CPU only. Train starts on {train} training images, the Sweep page on a "
                  "{sweep}-image subset (it trains many networks); raise them when you have time.")
                .format(train=f"{quick['train_limit']:,}", sweep=f"{quick['sweep_limit']:,}"), icon=":material/memory:")
        state, why = kernel_state()
        if state == "unavailable":
            st.caption(_("CNNs train on the plain PyTorch loop here: {why}.").format(why=plain(why)))
        elif state == "ready":
            st.caption(_("CNNs train on C++ conv kernels built for this CPU (engine cpu-native, about 2x the plain "
                         "PyTorch loop)."))
        else:
            st.caption(_("CNNs train on C++ conv kernels built for this CPU (engine cpu-native, about 2x the plain "
                         "PyTorch loop); they are being built (a few seconds)."))
        st.caption(_("An engine is the code path that trains a network: plain is PyTorch's own loop, cpu-native "
                     "the C++ kernels; both give the same results."))
    raw, problem = mnist()
    if raw is None:
        st.error(_("**MNIST is not available.** {why}").format(why=plain(problem)),
                 icon=":material/error:")
    else:
        st.success(_("**MNIST ready:** {train} training and {test} test images, {size}×{size} grey, from {source}.")
                   .format(train=f"{len(raw.x_train):,}", test=f"{len(raw.x_test):,}", size=MNIST.image_size,
                           # where from, in the reader's words (no server path on a shared server)
                           source=plain(without_server_paths(render_error(source_message(raw))))),
                   icon=":material/check_circle:")
    # examples_ready reads only (None: the store this app opens): a damaged store stays the pages' to explain
    if server_policy().demo and any(examples_ready(None, scale) for scale in SCALES):
        st.info(_("**This demo comes with finished example runs:** the lab's four networks, a depth × kernel sweep, "
                  "FC vs CNN and a week-2 lesson. Look at them before you train anything:"),
                icon=":material/auto_awesome:")
        runs_link, inspect_link, report_link = st.columns(3)
        runs_link.page_link(page_file("runs"), label=_("The example runs"), icon=":material/history:")
        inspect_link.page_link(page_file("inspect"), label=_("Inspect an example"), icon=":material/visibility:")
        report_link.page_link(page_file("report"), label=_("A report from the examples"),
                              icon=":material/description:")
    st.page_link(page_file("train"), label=_("**Train** one network and watch every iteration's loss live"),
                 icon=":material/model_training:")
    st.page_link(page_file("sweep"), label=_("**Sweep** conv layers × kernel size (lab tasks 2 and 3)"),
                 icon=":material/grid_on:")
    st.page_link(page_file("compare"), label=_("**FC vs CNN** with equal parameters, on normal and permuted pixels"),
                 icon=":material/compare_arrows:")
    st.page_link(page_file("week2"), label=_("**Week 2**: the course notes' questions as ready experiments"),
                 icon=":material/science:")
    st.page_link(page_file("runs"), label=_("**Runs**: every run so far, compared, exported as CSV"),
                 icon=":material/history:")
    st.page_link(page_file("inspect"), label=_("**Inspect** a trained network: confusion matrix, feature maps, "
                                                 "your own digit"), icon=":material/visibility:")
    st.page_link(page_file("report"), label=_("**Report**: the lab report written from your runs"),
                 icon=":material/description:")
with digits:
    images, labels = sample_digits(20)
    if images is not None:
        st.markdown("**" + _("The first 20 training images") + "**")
        st.plotly_chart(digits_figure(images, labels, cols=5, _=_), key="home_digits", config={"staticPlot": True})


def optimiser(p) -> str:
    if p.optimizer == "sgd":
        return _("SGD lr {lr}, momentum {momentum}").format(lr=f"{p.lr:g}", momentum=f"{p.momentum:g}")
    return _("{name} lr {lr}").format(name=p.optimizer.upper(), lr=f"{p.lr:g}")


st.subheader(_("The lab's networks"))
rows = []
for name, p in PRESETS.items():
    title, layers, published = preset_words(name, _)
    rows.append(dict(preset=title, layers=layers, parameters=f"{count_params(p.model):,}", optimiser=optimiser(p),
                     batch=p.batch_size, published=published))
st.table(headers(pd.DataFrame(rows).set_index("preset")))  # static: wraps its long layer lists, never cuts them
st.caption(_("Every run is saved as it trains (SQLite), so results survive a refresh or a restart."))
