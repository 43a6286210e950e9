"""FC vs CNN: the equal-parameter experiment — a CNN and the fully-connected net with the
closest parameter count, each trained on normal and on pixel-permuted MNIST, over seeds."""
from dataclasses import replace

import numpy as np
import streamlit as st

from app_lib.charts import compare_figure, digits_figure, overlay_figure
from app_lib.forms import SUBSETS, build_compare_cfg, data_limit
from app_lib.shared import init_state, mirror_query, quick_defaults, result_store, sample_images, values
from app_lib.text import plain
from app_lib.widgets import csv_button, expected_time, job_active, job_panel, live_runs, refusal, start_job
from mnist_lab.data import MNIST, DataConfig
from mnist_lab.experiments import compare_default_train, compare_table, read_compare, summarize_over_seeds
from mnist_lab.jobs import JobSpec
from mnist_lab.models import count_params, describe

quick = quick_defaults()
DEFAULTS = dict(layers=2, kernel=5, channels=6, double=False, hidden="50", seeds=quick["seeds"], epochs=1,
                train_limit=SUBSETS[-1], perm_seed=0)
LIMITS = dict(layers=(1, 3), kernel=(1, 9), channels=(1, 64), seeds=(1, 5), epochs=(1, 5), train_limit=SUBSETS,
              perm_seed=(0, 10_000))  # what each widget accepts; a link's values are checked against it
init_state("cmp_", DEFAULTS, LIMITS)

st.title("FC vs CNN with the same number of parameters")
st.markdown("The course notes' experiment: a tiny CNN and a fully-connected net of (almost) the same size, each "
            f"trained on normal digits and on digits whose {MNIST.n_pixels} pixels are shuffled by **one fixed "
            "permutation** "
            "(the same for every image). Defaults: the notes' Tiny CNN, SGD lr 0.01, momentum 0.5, batch 64.")
c1, c2, c3, c4 = st.columns(4)
c1.slider("CNN conv + pool layers", *LIMITS["layers"], key="cmp_layers")
c1.slider("Kernel size", *LIMITS["kernel"], key="cmp_kernel")
c2.number_input("Channels per block", *LIMITS["channels"], key="cmp_channels")
c2.text_input("CNN hidden FC units", key="cmp_hidden")
c3.slider("Seeds", *LIMITS["seeds"], key="cmp_seeds")
c3.slider("Epochs", *LIMITS["epochs"], key="cmp_epochs")
c4.select_slider("Training images", LIMITS["train_limit"], key="cmp_train_limit", format_func="{:,}".format)
c4.number_input("Permutation seed", *LIMITS["perm_seed"], key="cmp_perm_seed")

v = values("cmp_", DEFAULTS)
mirror_query(v, DEFAULTS)
try:
    compare = build_compare_cfg(v)
    models = compare.models()  # validates, and matches the FC width to the CNN
    problem = ""
except ValueError as exc:
    problem = str(exc)
    st.error(plain(problem), icon=":material/warning:")
if not problem:
    m1, m2, m3 = st.columns([1, 1, 2])
    m1.metric("CNN parameters", f"{count_params(models['CNN']):,}", help=describe(models["CNN"]))
    m2.metric("FC parameters", f"{count_params(models['FC']):,}", help=describe(models["FC"]))
    m3.markdown(f"**CNN:** {describe(models['CNN'])}  \n**FC, width matched automatically:** "
                f"{models['FC'].in_channels * models['FC'].image_size ** 2} → {models['FC'].hidden[0]} → "
                f"{models['FC'].hidden[1]} → {models['FC'].n_classes}")

grid = sample_images(10, permutation_seed=v["perm_seed"], one_per_class=True)  # originals and permuted copies
if grid is not None:
    st.plotly_chart(digits_figure(np.concatenate([grid.images, grid.permuted]), np.concatenate([grid.labels] * 2),
                                  cols=10, titles=grid.names + ["permuted"] * 10),
                    key="cmp_digits", config={"staticPlot": True})

busy = job_active("compare")
if not problem:
    train_cfg = replace(compare_default_train(), epochs=v["epochs"])
    data_cfg = DataConfig(train_limit=data_limit(v["train_limit"]))
    spec = JobSpec("compare", train_cfg, data_cfg, compare=compare, label="FC vs CNN")
    st.caption(f"Expected training time on this device: about {expected_time(spec)}.")
if st.button("Run comparison", type="primary", key="cmp_go_btn", disabled=bool(problem) or busy):
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
    table = compare_table(store.job_runs(view.id), view.spec.compare)
    if table.empty:
        return
    summary = summarize_over_seeds(table, ["model", "pixels"])
    if summary.empty:
        st.info("No run finished, so there is nothing to summarise.")
        return
    grid = summary.pivot(index="model", columns="pixels", values="text").reindex(["FC", "CNN"])
    params = table.groupby("model")["params"].first()
    a, b = st.columns([2, 3])
    with a:
        st.subheader("Test accuracy, mean ± sd")
        st.dataframe(grid.assign(parameters=params), width="stretch")
        csv_button(summary, "compare_summary.csv", key="cmp_summary_csv_btn")
        st.info(read_compare(summary))
    b.plotly_chart(compare_figure(summary), key="cmp_bars")
    diverged = int((table["status"] == "diverged").sum())
    if diverged:
        st.caption(f":material/trending_up: {diverged} of {len(table)} runs diverged (the loss became NaN or "
                   "infinite) and are not in the means; lower the learning rate.")
    st.subheader("Runs")
    st.dataframe(table.assign(test_acc=table["test_acc"] * 100), hide_index=True,
                 column_config={"test_acc": st.column_config.NumberColumn("test acc (%)", format="%.2f")})
    csv_button(table, "compare_runs.csv", key="cmp_runs_csv_btn")
    labels = {r.run_id: f"{r.model} / {r.pixels} / seed {r.seed}" for r in table.itertuples()}
    curves = store.iterations(list(labels))
    st.plotly_chart(overlay_figure(curves.assign(run=curves["run_id"].map(labels))), key="cmp_overlay")
    csv_button(curves, "compare_iterations.csv", key="cmp_iterations_csv_btn")


job_panel("compare", draw)
