"""Sweep: the lab's tasks 2 and 3 — vary the number of conv/pool layers and the kernel size,
train each network with several seeds, and compare test accuracy with its spread."""
import pandas as pd
import streamlit as st

from app_lib.charts import error_line_figure, heatmap_figure, overlay_figure, params_figure
from app_lib.forms import SUBSETS, build_sweep_cfg, data_limit
from app_lib.lang import _, ngettext, render_error
from app_lib.reading import reading_markdown
from app_lib.shared import init_state, mirror_query, on_gpu, quick_defaults, result_store, values
from app_lib.text import plain
from app_lib.widgets import (
    MEAN_SD_HELP,
    PADDING_HELP,
    SEED_HELP,
    csv_button,
    expected_time,
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
from mnist_lab.data.datasets import DataConfig
from mnist_lab.errors import StoreError
from mnist_lab.lab.experiments import summarize_over_seeds, sweep_table
from mnist_lab.lab.findings import with_verdicts
from mnist_lab.lab.sweep_reading import read_sweep
from mnist_lab.nets.model import count_params
from mnist_lab.service.jobs import JobSpec
from mnist_lab.training.loop import TrainConfig

quick = quick_defaults()
DEFAULTS = dict(layers=[1, 2, 3], kernels=[3, 5, 7], seeds=quick["seeds"], epochs=1,
                train_limit=quick["sweep_limit"], channels=16 if on_gpu() else 8, padding="same",
                hidden=0, optimizer="adam", lr=0.001)
LIMITS = dict(layers=[1, 2, 3, 4], kernels=[1, 3, 5, 7, 9], seeds=(1, 5), epochs=(1, 5), train_limit=SUBSETS,
              channels=(1, 64), padding=["same", "valid"], hidden=[0, 32, 64, 128], optimizer=["adam", "sgd"],
              lr=(0.0001, 1.0))  # what each widget accepts; a link's values are checked against it
init_state("sweep_", DEFAULTS, LIMITS)

st.title(_("Sweep: conv layers × kernel size"))
try:
    result_store()  # opened and checked once per server: a damaged database is said here, not raised below
except StoreError as exc:
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
st.markdown(_("Each cell is a CNN with *n* conv → ReLU → max-pool blocks (channels doubling every block) and a "
              "*k*×*k* kernel, trained once per seed. Error bars show the standard deviation over seeds."),
            help=_(MEAN_SD_HELP))
c1, c2, c3, c4 = st.columns(4)
c1.multiselect(_("Conv + pool layers"), LIMITS["layers"], key="sweep_layers", placeholder=_("Choose options"))
c1.multiselect(_("Kernel sizes"), LIMITS["kernels"], key="sweep_kernels", placeholder=_("Choose options"))
c2.slider(_("Seeds per cell"), *LIMITS["seeds"], key="sweep_seeds", help=_(SEED_HELP))
c2.slider(_("Epochs"), *LIMITS["epochs"], key="sweep_epochs")
c3.select_slider(_("Training images"), LIMITS["train_limit"], key="sweep_train_limit", format_func="{:,}".format)
c3.number_input(_("Channels, block 1"), *LIMITS["channels"], key="sweep_channels")
c4.radio(_("Padding"), LIMITS["padding"], key="sweep_padding", horizontal=True, help=_(PADDING_HELP))
none_label = _("none")
c4.selectbox(_("Hidden FC units"), LIMITS["hidden"], key="sweep_hidden",
             format_func=lambda h, none=none_label: str(h or none))
optimizer = c2.selectbox(_("Optimiser"), LIMITS["optimizer"], format_func=str.upper, key="sweep_optimizer")
c3.number_input(_("Learning rate"), *LIMITS["lr"], step=0.001, format="%.4f", key="sweep_lr")

v = values("sweep_", DEFAULTS)
mirror_query(v, DEFAULTS)
train_cfg = TrainConfig(epochs=v["epochs"], optimizer=optimizer, lr=v["lr"],
                        momentum=0.9 if optimizer == "sgd" else 0.0)
data_cfg = DataConfig(train_limit=data_limit(v["train_limit"]))
try:
    sweep = build_sweep_cfg(v)
    cells, skipped = sweep.cells()
    problem = ""
except ValueError as exc:
    cells, skipped, problem = [], [], render_error(exc)
    st.error(plain(problem), icon=":material/warning:")
if cells:
    plan = pd.DataFrame([dict(conv_layers=n, kernel_size=k, channels="-".join(map(str, cfg.conv_channels)),
                              params=count_params(cfg)) for n, k, _, cfg in cells])
    title = _("{cells} networks × {seeds} seeds = {runs} runs").format(cells=len(cells), seeds=sweep.seeds,
                                                                        runs=len(cells) * sweep.seeds)
    if skipped:
        title += " " + ngettext("({n} invalid cell skipped)", "({n} invalid cells skipped)", len(skipped)).format(
            n=len(skipped))
    with st.expander(title):
        table(plan, hide_index=True)
if skipped:
    st.warning(_("Skipped cells:") + "\n\n" + "\n".join(
        "- " + _("{layers} layers × k{k}: {why}").format(layers=s["conv_layers"], k=s["kernel_size"],
                                                         why=plain(render_error(s.get("error") or s["reason"])))
        for s in skipped))
busy = job_active("sweep")
if cells:
    spec = JobSpec("sweep", train_cfg, data_cfg, sweep=sweep, label=f"sweep of {len(cells)} networks")
    st.caption(_("Expected training time on this device: about {time}.").format(time=expected_time(spec)))
if st.button(_("Run sweep"), type="primary", key="sweep_go_btn", disabled=bool(problem) or busy):
    if start_job("sweep", spec):
        st.rerun()
refusal("sweep")
st.divider()


def draw(view) -> None:
    plan = [(n, k, seed) for n, k, _, _ in view.spec.sweep.cells()[0] for seed in range(view.spec.sweep.seeds)]
    if view.active:
        live_runs(view, plan, ("conv_layers", "kernel_size", "seed"), key="sweep_live_chart")
        return
    store = result_store()
    runs = store.job_runs(view.id)
    runs_table = sweep_table(runs, store.epochs(list(runs["run_id"])))
    if runs_table.empty:
        return
    summary = summarize_over_seeds(runs_table, ["conv_layers", "kernel_size"])
    if summary.empty:
        st.info(_("No run finished all its epochs, so there is nothing to summarise."))
        return
    summary = summary.assign(text=mean_sd_texts(summary))
    a, b = st.columns(2)
    a.plotly_chart(error_line_figure(summary, "conv_layers", "kernel_size", _("Test accuracy vs conv layers"), _=_),
                   key="sweep_depth_chart")
    b.plotly_chart(error_line_figure(summary, "kernel_size", "conv_layers", _("Test accuracy vs kernel size"), _=_),
                   key="sweep_kernel_chart")
    a.plotly_chart(heatmap_figure(summary, _=_), key="sweep_heatmap")
    b.plotly_chart(params_figure(runs_table, _=_), key="sweep_params_chart")
    csv_button(summary, "sweep_summary.csv", key="sweep_summary_csv_btn")
    st.subheader(_("Test accuracy per cell, mean ± sd over seeds"))
    cells = summary.assign(text=[t if n < 2 else ngettext("{text} ({n} run)", "{text} ({n} runs)", n)
                                 .format(text=t, n=n) for t, n in zip(summary["text"], summary["n"])])
    grid = cells.pivot(index="conv_layers", columns="kernel_size", values="text").fillna("—")
    table(grid.rename(columns=lambda k: _("kernel size {k}×{k}").format(k=k)).rename_axis(columns=None))
    reading = read_sweep(with_verdicts(store, runs))
    if reading.best is not None:
        st.info(reading_markdown([reading.best]), icon=":material/emoji_events:")
    for heading, blocks in ((_("Requirement 2: the number of conv+pool layers"), reading.depth),
                            (_("Requirement 3: the kernel size"), reading.kernel)):
        if blocks:
            st.markdown(f"**{plain(heading)}**\n\n" + reading_markdown(blocks))
    diverged = int((runs_table["status"] == "diverged").sum())
    if diverged:
        st.caption(":material/trending_up: " + _("{n} of {total} runs diverged (the loss became NaN or infinite) and "
                                                 "are not in the means; lower the learning rate.")
                   .format(n=diverged, total=len(runs_table)))
    not_learned_note(runs_table["verdict"])
    st.subheader(_("Runs"))
    table(runs_table.assign(test_acc=runs_table["test_acc"] * 100, status=words(runs_table["status"]),
                            verdict=words(runs_table["verdict"])),
          hide_index=True, column_config={"test_acc": st.column_config.NumberColumn(format="%.2f")})
    csv_button(runs_table, "sweep_runs.csv", key="sweep_runs_csv_btn")
    labels = {r.run_id: _("{layers}×k{k} seed {seed}").format(layers=r.conv_layers, k=r.kernel_size, seed=r.seed)
              for r in runs_table.itertuples()}
    curves = store.iterations(list(labels))
    st.plotly_chart(overlay_figure(curves.assign(run=curves["run_id"].map(labels)), _=_), key="sweep_overlay")
    csv_button(curves, "sweep_iterations.csv", key="sweep_iterations_csv_btn")
    skipped = view.spec.sweep.cells()[1]
    if skipped:
        st.caption(_("Skipped: {cells}").format(cells="; ".join(f"{s['conv_layers']}×k{s['kernel_size']}"
                                                                 for s in skipped)))


job_panel("sweep", draw)
