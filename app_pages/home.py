"""Home: what the lab is, which device trains, whether MNIST is ready, a grid of digits."""
import pandas as pd
import streamlit as st

from app_lib.charts import digits_figure
from app_lib.shared import device_name, mnist, on_gpu, quick_defaults, sample_digits
from app_lib.text import plain
from mnist_lab.data import MNIST
from mnist_lab.models import PRESETS, count_params
from mnist_lab.native import kernel_state

st.title("MNIST CNN Lab")
intro, digits = st.columns([3, 2], gap="large")
with intro:
    st.markdown(
        "An interactive companion to **Experiment 5: classify MNIST with a convolutional neural network**. "
        "Train the lab's networks and watch the loss of every iteration, change the number of conv/pool "
        "layers and the kernel size and see what happens to test accuracy, and find out why a CNN beats a "
        "fully-connected net with the same number of parameters — until the pixels are shuffled."
    )
    if on_gpu():
        st.success(f"**Training device:** GPU, {device_name()}", icon=":material/memory:")
    else:
        quick = quick_defaults()
        st.info(f"**Training device:** CPU only. Train starts on {quick['train_limit']:,} training images, the Sweep "
                f"page on a {quick['sweep_limit']:,}-image subset (it trains many networks); raise them when you have "
                "time.", icon=":material/memory:")
        state, why = kernel_state()
        if state == "unavailable":
            st.caption(f"CNNs train on the plain PyTorch loop here: {plain(why)}.")
        else:
            st.caption("CNNs train on C++ conv kernels built for this CPU (engine cpu-native, about 2x the plain "
                       "PyTorch loop)" + ("." if state == "ready" else "; they are being built (a few seconds)."))
    raw, problem = mnist()
    if raw is None:
        st.error(f"**MNIST is not available.** {plain(problem)}", icon=":material/error:")
    else:
        st.success(f"**MNIST ready:** {len(raw.x_train):,} training and {len(raw.x_test):,} test images, "
                   f"{MNIST.image_size}×{MNIST.image_size} grey, from {plain(raw.source)}.",
                   icon=":material/check_circle:")
    st.page_link("app_pages/train.py", label="**Train** one network and watch every iteration's loss live",
                 icon=":material/model_training:")
    st.page_link("app_pages/sweep.py", label="**Sweep** conv layers × kernel size (lab tasks 2 and 3)",
                 icon=":material/grid_on:")
    st.page_link("app_pages/compare.py", label="**FC vs CNN** with equal parameters, on normal and permuted pixels",
                 icon=":material/compare_arrows:")
    st.page_link("app_pages/runs.py", label="**Runs**: every run so far, compared, exported as CSV",
                 icon=":material/history:")
with digits:
    images, labels = sample_digits(20)
    if images is not None:
        st.markdown("**The first 20 training images**")
        st.plotly_chart(digits_figure(images, labels, cols=5), key="home_digits", config={"staticPlot": True})

st.subheader("The lab's networks")
st.table(  # a static table wraps its long layer lists instead of cutting them off
    pd.DataFrame([dict(preset=p.description.split(":")[0], layers=p.description.split(": ", 1)[1],
                       parameters=f"{count_params(p.model):,}",
                       optimiser=f"{p.optimizer.upper()} lr {p.lr:g}" + (f", momentum {p.momentum:g}"
                                                                         if p.optimizer == "sgd" else ""),
                       batch=p.batch_size, published=p.published) for p in PRESETS.values()]).set_index("preset"),
)
st.caption("Every run is saved as it trains (SQLite), so results survive a refresh or a restart.")
