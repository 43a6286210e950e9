"""Train: pick a lab network or build one, see its layers and parameters as you change it,
train it in the background and watch every iteration's loss live."""
from functools import partial

import streamlit as st

from app_lib.charts import accuracy_figure, loss_figure
from app_lib.forms import (BATCH_SIZES, SLIDER_PRESETS, SUBSETS, build_data_cfg, build_model_cfg, build_train_cfg, matching_preset,
                           preset_title, preset_values)
from app_lib.shared import init_state, mirror_query, quick_defaults, result_store, values
from app_lib.text import plain
from app_lib.widgets import (csv_button, expected_time, job_active, job_panel, layer_table, live_losses, refusal,
                             start_job)
from mnist_lab.data import MNIST, NORMALIZATIONS, describe_normalization
from mnist_lab.errors import StoreError
from mnist_lab.jobs import JobSpec
from mnist_lab.models import PRESETS, count_params, describe

quick = quick_defaults()
BASE = dict(preset="lab5", **preset_values(PRESETS["lab5"]), epochs=quick["epochs"], seed=0,
            train_limit=quick["train_limit"], permute=False)
# A shared link names a preset; its other parameters are differences from that preset.
link_preset = st.query_params.get("preset") if st.query_params.get("preset") in SLIDER_PRESETS else "lab5"
DEFAULTS = {**BASE, "preset": link_preset, **preset_values(PRESETS[link_preset])}
# What each widget accepts: (low, high) or the options; a link's values are checked against it.
LIMITS = dict(preset=SLIDER_PRESETS, kind=["cnn", "fc"], layers=(1, 4), kernel=(1, 9), padding=["valid", "same"],
              channels=(1, 512), dropout=(0.0, 0.8), optimizer=["sgd", "adam"], lr=(0.0001, 10.0),
              momentum=(0.0, 0.99), batch_size=BATCH_SIZES, epochs=(1, 20), seed=(0, 1_000_000),
              train_limit=SUBSETS, normalize=list(NORMALIZATIONS))
init_state("train_", DEFAULTS, LIMITS)
try:
    result_store()  # opened and checked once per server: a damaged database is explained, not trained into
    store_problem = ""
except StoreError as exc:
    store_problem = str(exc)


def load_preset() -> None:
    for name, value in preset_values(PRESETS[st.session_state.train_preset]).items():
        st.session_state["train_" + name] = value


st.title("Train a network")
left, right = st.columns([1, 2], gap="large")
with left:
    st.selectbox("Preset", LIMITS["preset"], format_func=preset_title, key="train_preset", on_change=load_preset,
                 help="Loads one of the lab's four networks with its optimiser settings.")
    kind = st.radio("Network", LIMITS["kind"], key="train_kind", horizontal=True,
                    format_func={"cnn": "Convolutional", "fc": "Fully connected"}.get)
    c1, c2 = st.columns(2)
    if kind == "cnn":
        c1.slider("Conv + pool layers", *LIMITS["layers"], key="train_layers")
        c2.slider("Kernel size", *LIMITS["kernel"], key="train_kernel")
        c1.radio("Padding", LIMITS["padding"], key="train_padding", horizontal=True)
        c2.number_input("Channels, block 1", *LIMITS["channels"], key="train_channels")
        st.checkbox("Double the channels every block", key="train_double")
        st.checkbox("Pool before ReLU (Lab-5 order)", key="train_pool_first")
        st.checkbox("BatchNorm after each conv", key="train_batch_norm")
    st.text_input("Hidden FC units (comma-separated, empty for none)", key="train_hidden")
    st.slider("Dropout", *LIMITS["dropout"], step=0.05, key="train_dropout")
    st.checkbox("Softmax before the loss", key="train_softmax",
                help="The course notes' mistake: CrossEntropyLoss already applies log-softmax.")
    st.divider()
    c1, c2 = st.columns(2)
    optimizer = c1.selectbox("Optimiser", LIMITS["optimizer"], format_func=str.upper, key="train_optimizer")
    c2.number_input("Learning rate", *LIMITS["lr"], step=0.001, format="%.4f", key="train_lr")
    c1.slider("Momentum", *LIMITS["momentum"], step=0.01, key="train_momentum", disabled=optimizer == "adam")
    c2.select_slider("Batch size", LIMITS["batch_size"], key="train_batch_size")
    c1.slider("Epochs", *LIMITS["epochs"], key="train_epochs")
    c2.number_input("Seed", *LIMITS["seed"], key="train_seed")
    st.select_slider("Training images", LIMITS["train_limit"], key="train_train_limit", format_func="{:,}".format,
                     help=f"The first N of the {MNIST.train_count:,}; the test set is always all {MNIST.test_count:,}.")
    st.selectbox("Normalisation", LIMITS["normalize"], key="train_normalize",
                 format_func=describe_normalization)
    st.checkbox("Permuted pixels", key="train_permute",
                help=f"One fixed shuffle of the {MNIST.n_pixels} pixel positions.")

    v = values("train_", DEFAULTS)
    mirror_query(v, {**BASE, **preset_values(PRESETS[v["preset"]])})
    try:
        model_cfg, train_cfg, data_cfg = build_model_cfg(v), build_train_cfg(v), build_data_cfg(v)
        layers = layer_table(model_cfg)  # validates the geometry
        train_cfg.validate(n_train=v["train_limit"])
        problem = ""
    except ValueError as exc:
        problem = str(exc)
        st.caption(":material/warning: Fix the network first: see the message beside the controls.")
    busy = not store_problem and job_active("train")
    if not problem:
        spec = JobSpec("train", train_cfg, data_cfg, model=model_cfg)
        st.caption(f"Expected training time on this device: about {expected_time(spec)}.")
    if st.button("Train", type="primary", key="train_go_btn", disabled=bool(problem or store_problem) or busy,
                 width="stretch",
                 help="Training runs in a worker process; you can change settings, or close the tab, meanwhile."):
        if start_job("train", spec):
            st.rerun()
    refusal("train")
    if busy:
        st.caption("A run of yours is in progress: stop it or let it finish to start another.")

with right:
    if store_problem:
        st.error(plain(store_problem), icon=":material/database:")
    if problem:
        st.error(plain(problem), icon=":material/warning:")
    else:
        same = matching_preset(v)
        m1, m2 = st.columns([1, 3])
        m1.metric("Parameters", f"{int(layers['params'].sum()):,}")
        m2.markdown(f"**{describe(model_cfg)}**  \n" + (f"The lab's {preset_title(same)}; published result: "
                                                         f"{PRESETS[same].published}." if same else "A custom network."))
        with st.expander("Layers: output shape and parameters", expanded="_train_job" not in st.session_state):
            st.dataframe(layers, hide_index=True, width="stretch",
                         column_config={"params": st.column_config.NumberColumn("params", format="%d")})
            csv_button(layers, "layers.csv", key="train_layers_csv_btn")


def draw(view) -> None:
    if view.spec is not None and view.spec.model is not None:  # the job's own network, whatever the widgets say now
        spec = view.spec
        images = spec.data.n_train()
        st.markdown(f"**This run:** {plain(describe(spec.model))} · {count_params(spec.model):,} parameters · "
                    f"{spec.train.epochs} epoch(s) on {images:,} images")
    run = view.runs[-1] if view.runs else None
    if run is None:
        return
    if run.status == "diverged":
        message = result_store().runs([run.run_id])["message"].item() or "The loss became NaN or infinite."
        st.error(f"**Diverged.** {plain(message)}", icon=":material/trending_up:")
    st.plotly_chart(loss_figure(live_losses(run.run_id), run.steps_per_epoch), key="train_loss_chart")
    store, ids = result_store(), [run.run_id]
    epochs = store.epochs(ids)
    if len(epochs):
        last = epochs.iloc[-1]
        table = epochs.assign(test_acc=(100 * epochs["test_acc"]).map("{:.2f}%".format),
                              seconds=epochs["seconds"].round(1)).drop(columns="run_id")
        st.metric(f"Test accuracy after epoch {int(last['epoch'])}", f"{100 * last['test_acc']:.2f}%")
        st.dataframe(table.rename(columns={"test_acc": "test_accuracy"}), hide_index=True, width="stretch")
        if len(epochs) > 1:
            st.plotly_chart(accuracy_figure(epochs[["epoch", "test_acc"]]), key="train_accuracy_chart")
    if not view.active:
        row = store.runs(ids)
        where = f", trained on {row['device'].item()} ({row['engine'].item()} engine)" if len(row) else ""
        st.caption(f"Run `{run.run_id}`: {run.step:,} iterations recorded{where}.")
        cols = st.columns(3)
        for col, name in zip(cols, ("iterations", "epochs", "runs")):
            with col:
                csv_button(partial(getattr(store, name), ids), f"{name}.csv", key=f"train_{name}_csv_btn")


with right:
    if not store_problem:
        job_panel("train", draw)
