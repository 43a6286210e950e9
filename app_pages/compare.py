"""FC vs CNN: the equal-parameter experiment — a CNN and the fully-connected net with the
closest parameter count, each trained on normal and on pixel-permuted MNIST, over seeds."""
from dataclasses import replace

import numpy as np
import streamlit as st

from app_lib.charts import compare_figure, digits_figure, overlay_figure
from app_lib.forms import SUBSETS, build_compare_cfg, data_limit
from app_lib.lang import _, current, render_error
from app_lib.shared import init_state, mirror_query, quick_defaults, result_store, sample_images, values
from app_lib.text import plain
from app_lib.widgets import (
    MEAN_SD_HELP,
    SEED_HELP,
    csv_button,
    expected_time,
    headers,
    job_active,
    job_panel,
    live_runs,
    mean_sd_texts,
    not_learned_note,
    refusal,
    start_job,
    table,
    words,
)
from mnist_lab.data.datasets import MNIST, DataConfig
from mnist_lab.errors import StoreError
from mnist_lab.lab.experiments import compare_default_train, compare_reading, compare_table, summarize_over_seeds
from mnist_lab.nets.model import count_params, describe
from mnist_lab.service.jobs import JobSpec

quick = quick_defaults()
DEFAULTS = dict(layers=2, kernel=5, channels=6, double=False, hidden="50", seeds=quick["seeds"], epochs=1,
                train_limit=SUBSETS[-1], perm_seed=0)
LIMITS = dict(layers=(1, 3), kernel=(1, 9), channels=(1, 64), seeds=(1, 5), epochs=(1, 5), train_limit=SUBSETS,
              perm_seed=(0, 10_000))  # what each widget accepts; a link's values are checked against it
init_state("cmp_", DEFAULTS, LIMITS)

st.title(_("FC vs CNN with the same number of parameters"))
try:
    result_store()  # opened and checked once per server: a damaged database is said here, not raised below
except StoreError as exc:
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
st.markdown(_("The course notes' experiment: a tiny CNN and a fully-connected net of (almost) the same size, each "
              "trained on normal digits and on digits whose {n} pixels are shuffled by **one fixed permutation** "
              "(the same for every image). Defaults: the notes' Tiny CNN, SGD lr 0.01, momentum 0.5, batch 64.")
            .format(n=MNIST.n_pixels))
c1, c2, c3, c4 = st.columns(4)
c1.slider(_("CNN conv + pool layers"), *LIMITS["layers"], key="cmp_layers")
c1.slider(_("Kernel size"), *LIMITS["kernel"], key="cmp_kernel")
c2.number_input(_("Channels per block"), *LIMITS["channels"], key="cmp_channels")
c2.text_input(_("CNN hidden FC units"), key="cmp_hidden")
c3.slider(_("Seeds"), *LIMITS["seeds"], key="cmp_seeds", help=_(SEED_HELP))
c3.slider(_("Epochs"), *LIMITS["epochs"], key="cmp_epochs")
c4.select_slider(_("Training images"), LIMITS["train_limit"], key="cmp_train_limit", format_func="{:,}".format)
c4.number_input(_("Permutation seed"), *LIMITS["perm_seed"], key="cmp_perm_seed",
                help=_("Picks the one fixed shuffle of the {n} pixel positions; every image gets the same one.")
                .format(n=MNIST.n_pixels))

v = values("cmp_", DEFAULTS)
mirror_query(v, DEFAULTS)
try:
    compare = build_compare_cfg(v)
    models = compare.models()  # validates, and matches the FC width to the CNN
    problem = ""
except ValueError as exc:
    problem = render_error(exc)
    st.error(plain(problem), icon=":material/warning:")
if not problem:
    m1, m2, m3 = st.columns([1, 1, 2])
    m1.metric(_("CNN parameters"), f"{count_params(models['CNN']):,}", help=describe(models["CNN"]))
    m2.metric(_("FC parameters"), f"{count_params(models['FC']):,}", help=describe(models["FC"]))
    fc = models["FC"]
    m3.markdown(_("**CNN:** {cnn}  \n**FC, width matched automatically:** {fc}").format(
        cnn=plain(describe(models["CNN"])),
        fc=f"{fc.in_channels * fc.image_size ** 2} → {fc.hidden[0]} → {fc.hidden[1]} → {fc.n_classes}"))

grid = sample_images(10, permutation_seed=v["perm_seed"], one_per_class=True, lang=current())  # and permuted copies
if grid is not None:
    st.plotly_chart(digits_figure(np.concatenate([grid.images, grid.permuted]), np.concatenate([grid.labels] * 2),
                                  cols=10, titles=grid.names + [_("permuted")] * 10, _=_),
                    key="cmp_digits", config={"staticPlot": True})

busy = job_active("compare")
if not problem:
    train_cfg = replace(compare_default_train(), epochs=v["epochs"])
    data_cfg = DataConfig(train_limit=data_limit(v["train_limit"]))
    spec = JobSpec("compare", train_cfg, data_cfg, compare=compare, label="FC vs CNN")
    st.caption(_("Expected training time on this device: about {time}.").format(time=expected_time(spec)))
if st.button(_("Run comparison"), type="primary", key="cmp_go_btn", disabled=bool(problem) or busy):
    if start_job("compare", spec):
        st.rerun()
refusal("compare")
st.divider()


def draw(view) -> None:
    models = view.spec.compare.models()
    plan = [(p, m, s) for p in ("normal", "permuted") for m in models for s in range(view.spec.compare.seeds)]
    if view.active:
        live_runs(view, plan, ("pixels", "model", "seed"), key="cmp_live_chart")
        return
    store = result_store()
    runs = store.job_runs(view.id)
    runs_table = compare_table(runs, view.spec.compare, store.epochs(list(runs["run_id"])))
    if runs_table.empty:
        return
    summary = summarize_over_seeds(runs_table, ["model", "pixels"])
    if summary.empty:
        st.info(_("No run finished, so there is nothing to summarise."))
        return
    shown = summary.assign(text=mean_sd_texts(summary), pixels=words(summary["pixels"]))
    grid = shown.pivot(index="model", columns="pixels", values="text").reindex(["FC", "CNN"])
    params = runs_table.groupby("model")["params"].first()
    a, b = st.columns([2, 3])
    with a:
        st.subheader(_("Test accuracy, mean ± sd"), help=_(MEAN_SD_HELP))
        st.dataframe(headers(grid.assign(parameters=params).rename_axis("model").rename_axis(columns=None)),
                     width="stretch",
                     column_config={_("parameters"): st.column_config.NumberColumn(format="localized")})
        csv_button(summary, "compare_summary.csv", key="cmp_summary_csv_btn")
        st.info(" ".join(plain(render_error(m)) for m in compare_reading(summary)))
    b.plotly_chart(compare_figure(summary, _=_), key="cmp_bars")
    diverged = int((runs_table["status"] == "diverged").sum())
    if diverged:
        st.caption(":material/trending_up: " + _("{n} of {total} runs diverged (the loss became NaN or infinite) and "
                                                 "are not in the means; lower the learning rate.")
                   .format(n=diverged, total=len(runs_table)))
    not_learned_note(runs_table["verdict"])
    st.subheader(_("Runs"))
    table(runs_table.assign(test_acc=runs_table["test_acc"] * 100, status=words(runs_table["status"]),
                            verdict=words(runs_table["verdict"]),
                            pixels=words(runs_table["pixels"])),
          hide_index=True, column_config={"test_acc": st.column_config.NumberColumn(format="%.2f")})
    csv_button(runs_table, "compare_runs.csv", key="cmp_runs_csv_btn")
    labels = {r.run_id: _("{model} / {pixels} / seed {seed}").format(model=r.model, pixels=_(r.pixels), seed=r.seed)
              for r in runs_table.itertuples()}
    curves = store.iterations(list(labels))
    st.plotly_chart(overlay_figure(curves.assign(run=curves["run_id"].map(labels)), _=_), key="cmp_overlay")
    csv_button(curves, "compare_iterations.csv", key="cmp_iterations_csv_btn")


job_panel("compare", draw)
