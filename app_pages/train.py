"""Train: pick a dataset and a network (the lab's, week 2's, or one built with the sliders), see its
layers and parameters as you change it, train it in the background and watch every iteration's loss live."""
from dataclasses import fields
from functools import partial

import streamlit as st

from app_lib.arch_chart import show_architecture
from app_lib.charts import accuracy_figure, loss_figure
from app_lib.forms import (
    ALL_SUBSETS,
    BATCH_SIZES,
    DATASET_WORDS,
    LAB_PRESETS,
    SLIDER_PRESETS,
    build_data_cfg,
    build_model_cfg,
    build_train_cfg,
    matching_preset,
    preset_model,
    preset_option,
    preset_values,
    preset_words,
    subsets,
)
from app_lib.lang import _, bound, render_error
from app_lib.shared import init_state, mirror_query, quick_defaults, reads_public, result_store, values
from app_lib.text import plain
from app_lib.widgets import (
    ENGINE_HELP,
    PADDING_HELP,
    SEED_HELP,
    csv_button,
    expected_time,
    headers,
    job_active,
    job_panel,
    layer_table,
    live_losses,
    normalization_words,
    refusal,
    run_learned_note,
    said,
    start_job,
    table,
)
from mnist_lab.data.datasets import DATASETS, NORMALIZATIONS, normalization
from mnist_lab.errors import StoreError
from mnist_lab.nets.model import ModelConfig, count_params, describe
from mnist_lab.nets.presets import PRESETS
from mnist_lab.service.jobs import JobSpec
from mnist_lab.training.preflight import preflight

quick = quick_defaults()
MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
BASE = dict(dataset="mnist", preset="lab5", **preset_values(PRESETS["lab5"]), epochs=quick["epochs"], seed=0,
            train_limit=quick["train_limit"], permute=False, shuffle=True)
# A shared link names a preset; its other parameters are differences from that preset.
link_preset = st.query_params.get("preset") if st.query_params.get("preset") in PRESETS else "lab5"
DEFAULTS = {**BASE, "preset": link_preset, **preset_values(PRESETS[link_preset])}
# What each widget accepts: (low, high) or the options; a link's values are checked against it.
LIMITS = dict(dataset=list(DATASETS), preset=list(PRESETS), kind=["cnn", "fc"], layers=(1, 4), kernel=(1, 9),
              padding=["valid", "same"], channels=(1, 512), dropout=(0.0, 0.8), optimizer=["sgd", "adam"],
              lr=(0.0001, 10.0), momentum=(0.0, 0.99), batch_size=BATCH_SIZES, epochs=(1, 20), seed=(0, 1_000_000),
              train_limit=ALL_SUBSETS, normalize=list(NORMALIZATIONS), shuffle=[True, False])
init_state("train_", DEFAULTS, LIMITS)
dataset = DATASETS[st.session_state.train_dataset]
if st.session_state.train_train_limit not in subsets(dataset.name):  # 60,000 on MNIST: all 50,000 of CIFAR-10
    st.session_state.train_train_limit = min(subsets(dataset.name),
                                             key=lambda n: abs(n - st.session_state.train_train_limit))
try:
    result_store()  # opened and checked once per server: a damaged database is explained, not trained into
    store_problem = ""
except StoreError as exc:
    store_problem = render_error(exc)


def load_preset() -> None:
    for name, value in preset_values(PRESETS[st.session_state.train_preset]).items():
        st.session_state["train_" + name] = value


st.title(_("Train a network"))
left, right = st.columns([1, 2], gap="large")
with left:
    gettext_now = bound()
    dataset = DATASETS[st.selectbox(_("Dataset"), LIMITS["dataset"], key="train_dataset",
                                    format_func=lambda d, t=gettext_now: t(DATASET_WORDS[d]),
                                    help=_("The images the network learns from and is tested on."))]
    st.selectbox(_("Preset"), LIMITS["preset"], format_func=lambda p, t=gettext_now: preset_option(p, t),
                 key="train_preset", on_change=load_preset,
                 help=_("Loads one of the lab's four networks or one of week 2's, with its optimiser settings."))
    fixed = st.session_state.train_preset not in SLIDER_PRESETS  # a week-2 network the sliders cannot describe
    if fixed:
        st.caption(":material/lock: " + _("The sliders cannot describe this network, so its layers are fixed (see "
                                          "them on the right); pick one of the lab's presets to build your own. "
                                          "The training settings below apply to it."))
    kind = "fixed" if fixed else st.radio(_("Network"), LIMITS["kind"], key="train_kind", horizontal=True,
                                          format_func={"cnn": _("Convolutional"), "fc": _("Fully connected")}.get)
    c1, c2 = st.columns(2)
    if kind == "cnn":
        c1.slider(_("Conv + pool layers"), *LIMITS["layers"], key="train_layers",
                  help=_("How many conv → ReLU → max-pool blocks the network has."))
        c2.slider(_("Kernel size"), *LIMITS["kernel"], key="train_kernel",
                  help=_("The side k of each k×k convolution kernel, in pixels."))
        c1.radio(_("Padding"), LIMITS["padding"], key="train_padding", horizontal=True, help=_(PADDING_HELP))
        c2.number_input(_("Channels, block 1"), *LIMITS["channels"], key="train_channels",
                        help=_("Feature maps of the first conv layer."))
        st.checkbox(_("Double the channels every block"), key="train_double")
        st.checkbox(_("Pool before ReLU (Lab-5 order)"), key="train_pool_first")
        st.checkbox(_("BatchNorm after each conv"), key="train_batch_norm")
    if not fixed:
        st.text_input(_("Hidden FC units (comma-separated, empty for none)"), key="train_hidden")
        st.slider(_("Dropout"), *LIMITS["dropout"], step=0.05, key="train_dropout",
                  help=_("The probability that each input of a fully-connected layer is zeroed during training."))
        st.checkbox(_("Softmax before the loss"), key="train_softmax",
                    help=_("The course notes' mistake: CrossEntropyLoss already applies log-softmax."))
    st.divider()
    c1, c2 = st.columns(2)
    optimizer = c1.selectbox(_("Optimiser"), LIMITS["optimizer"], format_func=str.upper, key="train_optimizer")
    c2.number_input(_("Learning rate"), *LIMITS["lr"], step=0.001, format="%.4f", key="train_lr")
    c1.slider(_("Momentum"), *LIMITS["momentum"], step=0.01, key="train_momentum", disabled=optimizer == "adam",
              help=_("SGD only: how much of the previous step each step keeps."))
    c2.select_slider(_("Batch size"), LIMITS["batch_size"], key="train_batch_size",
                     help=_("Images per iteration: one iteration is one optimiser step on one mini-batch."))
    c1.slider(_("Epochs"), *LIMITS["epochs"], key="train_epochs",
              help=_("One epoch is one pass over all the training images."))
    c2.number_input(_("Seed"), *LIMITS["seed"], key="train_seed", help=_(SEED_HELP))
    st.select_slider(_("Training images"), subsets(dataset.name), key="train_train_limit", format_func="{:,}".format,
                     help=_("The first N of the {train}; the test set is always all {test}.").format(
                         train=f"{dataset.train_count:,}", test=f"{dataset.test_count:,}"))

    def channels(x: tuple[float, ...]) -> str:  # one number where every channel has it, else R, G, B in order
        return ", ".join(f"{v:g}" for v in x) if len(set(x)) > 1 else f"{x[0]:g}"

    norm_labels = {n: _("{name}: mean {mean}, sd {sd}").format(
        name=normalization_words(n), mean=channels(normalization(n, dataset.name)[0]),
        sd=channels(normalization(n, dataset.name)[1])) for n in LIMITS["normalize"]}
    st.selectbox(_("Normalisation"), LIMITS["normalize"], key="train_normalize", format_func=norm_labels.get,
                 help=_("Each pixel becomes (pixel − mean) / sd before it enters the network."))
    st.toggle(_("Shuffle"), key="train_shuffle",
              help=_("On: a new random batch order every epoch. Off: the same order every epoch (the Week 2 lesson "
                     "'Shuffle on or off' compares them)."))
    st.checkbox(_("Permuted pixels"), key="train_permute",
                help=_("One fixed shuffle of the {n} pixel positions.").format(n=dataset.n_pixels))
    if dataset.name == "cifar10":
        if reads_public():  # the server's folders are the teacher's
            st.info(_("CIFAR-10 comes with no package: where this server lacks it, your teacher can add it. MNIST and "
                      "Fashion-MNIST run without it."), icon=":material/info:")
        else:
            st.info(_("CIFAR-10 comes with no package here: put cifar-10-batches-py/ or cifar-10-python.tar.gz in the "
                      "data directory, or let torchvision download it. MNIST and Fashion-MNIST train without it."),
                    icon=":material/info:")

    v = values("train_", DEFAULTS)
    mirror_query(v, {**BASE, **preset_values(PRESETS[v["preset"]])})
    try:
        model_cfg = preset_model(v["preset"], dataset.name) if fixed else build_model_cfg(v)
        train_cfg, data_cfg = build_train_cfg(v), build_data_cfg(v)
        preflight(model_cfg, train_cfg, data_cfg)  # the core's one check: configs, fit, batch, device, memory
        layers = layer_table(model_cfg)
        problem, locked = "", False
    except ValueError as exc:
        problem = render_error(exc)
        locked = fixed and getattr(exc, "field", None) in MODEL_FIELDS  # the network itself, which no widget changes
        st.caption(":material/warning: " + _("Fix the network first: see the message beside the controls."))
    busy = not store_problem and job_active("train")
    if not problem:
        spec = JobSpec("train", train_cfg, data_cfg, model=model_cfg)
        st.caption(_("Expected training time on this device: about {time}.").format(time=expected_time(spec)))
    if st.button(_("Train"), type="primary", key="train_go_btn", disabled=bool(problem or store_problem) or busy,
                 width="stretch",
                 help=_("Training runs in a worker process; you can change settings, or close the tab, meanwhile.")):
        if start_job("train", spec):
            st.rerun()
    refusal("train")
    if busy:
        st.caption(_("A run of yours is in progress: stop it or let it finish to start another."))

with right:
    if store_problem:
        st.error(plain(store_problem), icon=":material/database:")
    if problem:
        st.error(plain(problem), icon=":material/warning:")
        if locked:
            st.caption(_("This network is trained as it is: choose another dataset or another preset."))
    else:
        same = v["preset"] if fixed else matching_preset(v)
        m1, m2 = st.columns([1, 3])
        m1.metric(_("Parameters"), f"{int(layers['params'].sum()):,}")
        if same:
            title, _layers, published = preset_words(same, _)
            about = (_("The lab's {preset}; published result: {result}.") if same in LAB_PRESETS else
                     _("Week 2 of the course notes: {preset}. Published result: {result}.")).format(
                preset=title, result=published)
            made = PRESETS[same].model
            if (made.in_channels, made.image_size) != (dataset.channels, dataset.image_size):
                about += " " + _("Its input is fitted to {dataset}'s {shape} images.").format(
                    dataset=dataset.title, shape=f"{dataset.channels}×{dataset.image_size}×{dataset.image_size}")
        else:
            about = _("A custom network.")
        m2.markdown(f"**{plain(describe(model_cfg))}**  \n" + plain(about))
        show_architecture(model_cfg, key="train_arch_chart")  # redrawn as the sliders move
        with st.expander(_("Layers: output shape and parameters"), expanded="_train_job" not in st.session_state):
            table(layers, hide_index=True, width="stretch",
                  column_config={"params": st.column_config.NumberColumn(format="localized")})
            csv_button(layers, "layers.csv", key="train_layers_csv_btn")


def draw(view) -> None:
    if view.spec is not None and view.spec.model is not None:  # the job's own network, whatever the widgets say now
        spec = view.spec
        images = spec.data.n_train()
        st.markdown(_("**This run:** {network} · {params} parameters · {epochs} epoch(s) on {images} {dataset} images")
                    .format(network=plain(describe(spec.model)), params=f"{count_params(spec.model):,}",
                            epochs=spec.train.epochs, images=f"{images:,}", dataset=spec.data.spec.title))
    if view.status == "failed" and view.spec is not None and view.spec.data.dataset != "mnist":
        st.caption(_("Choose MNIST above to train on data that is always here."))
    run = view.runs[-1] if view.runs else None
    if run is None:
        return
    if run.status == "diverged":
        row = next(r for r in result_store().job_run_rows(view.id, ["run_id", "message", "message_msg"])
                   if r["run_id"] == run.run_id)
        message = said(row["message_msg"], row["message"]) or _("The loss became NaN or infinite.")
        st.error(_("**Diverged.** {message}").format(message=plain(message)), icon=":material/trending_up:")
    st.plotly_chart(loss_figure(live_losses(run.run_id), run.steps_per_epoch, _=_), key="train_loss_chart")
    store, ids = result_store(), [run.run_id]
    epochs = store.epochs(ids)
    if len(epochs):
        last = epochs.iloc[-1]
        shown = epochs.assign(test_acc=(100 * epochs["test_acc"]).map("{:.2f}%".format),
                              seconds=epochs["seconds"].round(1)).drop(columns="run_id")
        st.metric(_("Test accuracy after epoch {n}").format(n=int(last["epoch"])), f"{100 * last['test_acc']:.2f}%")
        shown = shown.rename(columns={"test_acc": "test_accuracy"})
        if view.active:  # a static table while it trains: a first data grid or a second chart cost a
            # browser on the same CPU 2-3 s of a core to draw (docs/BENCHMARKS.md); both come when it ends
            st.table(headers(shown.set_index("epoch").round(4).astype({"seconds": str})),  # "5.7", not "5.7000"
                     hide_index=False)  # epochs 1..n would pass for a default index and be hidden
        else:
            table(shown, hide_index=True, width="stretch",
                  column_config={c: st.column_config.NumberColumn(format="%.4f") for c in ("train_loss", "test_loss")})
            if len(epochs) > 1:
                st.plotly_chart(accuracy_figure(epochs[["epoch", "test_acc"]], _=_), key="train_accuracy_chart")
    if not view.active and run.status == "finished" and view.spec is not None:
        run_learned_note(run.run_id, epochs, view.spec.data.dataset)
    if not view.active:
        row = store.runs(ids)
        if len(row):
            st.caption(_("Run {id}: {n} iterations recorded, trained on {device} ({engine} engine).").format(
                id=f"`{run.run_id}`", n=f"{run.step:,}", device=row["device"].item(),  # the app's own names
                engine=row["engine"].item()), help=_(ENGINE_HELP))
        else:
            st.caption(_("Run {id}: {n} iterations recorded.").format(id=f"`{run.run_id}`", n=f"{run.step:,}"))
        cols = st.columns(3)
        for col, name in zip(cols, ("iterations", "epochs", "runs")):
            with col:
                csv_button(partial(getattr(store, name), ids), f"{name}.csv", key=f"train_{name}_csv_btn")


with right:
    if not store_problem:
        job_panel("train", draw)
