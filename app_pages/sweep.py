"""Sweep: the lab's tasks 2 and 3 — vary the number of conv/pool layers and the kernel size,
train each network with several seeds, and compare test accuracy with its spread."""
import pandas as pd
import streamlit as st

from app_lib.charts import error_line_figure, heatmap_figure, overlay_figure, params_figure
from app_lib.forms import SUBSETS, build_sweep_cfg, data_limit
from app_lib.shared import init_state, mirror_query, on_gpu, quick_defaults, result_store, values
from app_lib.text import plain
from app_lib.widgets import csv_button, expected_time, job_active, job_panel, live_runs, refusal, start_job
from mnist_lab.data import DataConfig
from mnist_lab.experiments import summarize_over_seeds, sweep_table
from mnist_lab.jobs import JobSpec
from mnist_lab.models import count_params
from mnist_lab.train import TrainConfig

quick = quick_defaults()
DEFAULTS = dict(layers=[1, 2, 3], kernels=[3, 5, 7], seeds=quick["seeds"], epochs=1,
                train_limit=quick["sweep_limit"], channels=16 if on_gpu() else 8, padding="same",
                hidden=0, optimizer="adam", lr=0.001)
LIMITS = dict(layers=[1, 2, 3, 4], kernels=[1, 3, 5, 7, 9], seeds=(1, 5), epochs=(1, 5), train_limit=SUBSETS,
              channels=(1, 64), padding=["same", "valid"], hidden=[0, 32, 64, 128], optimizer=["adam", "sgd"],
              lr=(0.0001, 1.0))  # what each widget accepts; a link's values are checked against it
init_state("sweep_", DEFAULTS, LIMITS)

st.title("Sweep: conv layers × kernel size")
st.markdown("Each cell is a CNN with *n* conv → ReLU → max-pool blocks (channels doubling every block) and a "
            "*k*×*k* kernel, trained once per seed. Error bars show the standard deviation over seeds.")
c1, c2, c3, c4 = st.columns(4)
c1.multiselect("Conv + pool layers", LIMITS["layers"], key="sweep_layers")
c1.multiselect("Kernel sizes", LIMITS["kernels"], key="sweep_kernels")
c2.slider("Seeds per cell", *LIMITS["seeds"], key="sweep_seeds")
c2.slider("Epochs", *LIMITS["epochs"], key="sweep_epochs")
c3.select_slider("Training images", LIMITS["train_limit"], key="sweep_train_limit", format_func="{:,}".format)
c3.number_input("Channels, block 1", *LIMITS["channels"], key="sweep_channels")
c4.radio("Padding", LIMITS["padding"], key="sweep_padding", horizontal=True,
         help="'valid' shrinks the image by k−1 per block, so deep nets with big kernels do not fit.")
c4.selectbox("Hidden FC units", LIMITS["hidden"], key="sweep_hidden", format_func=lambda h: str(h or "none"))
optimizer = c2.selectbox("Optimiser", LIMITS["optimizer"], format_func=str.upper, key="sweep_optimizer")
c3.number_input("Learning rate", *LIMITS["lr"], step=0.001, format="%.4f", key="sweep_lr")

v = values("sweep_", DEFAULTS)
mirror_query(v, DEFAULTS)
train_cfg = TrainConfig(epochs=v["epochs"], optimizer=optimizer, lr=v["lr"], momentum=0.9 if optimizer == "sgd" else 0.0)
data_cfg = DataConfig(train_limit=data_limit(v["train_limit"]))
try:
    sweep = build_sweep_cfg(v)
    cells, skipped = sweep.cells()
    problem = ""
except ValueError as exc:
    cells, skipped, problem = [], [], str(exc)
    st.error(plain(problem), icon=":material/warning:")
if cells:
    plan = pd.DataFrame([dict(conv_layers=n, kernel_size=k, channels="-".join(map(str, cfg.conv_channels)),
                              params=count_params(cfg)) for n, k, _, cfg in cells])
    with st.expander(f"{len(cells)} networks × {sweep.seeds} seeds = {len(cells) * sweep.seeds} runs"
                     + (f" ({len(skipped)} invalid cells skipped)" if skipped else "")):
        st.dataframe(plan, hide_index=True)
if skipped:
    st.warning("Skipped cells:\n\n" + "\n".join(f"- {s['conv_layers']} layers × k{s['kernel_size']}: "
                                               f"{plain(s['reason'])}" for s in skipped))
busy = job_active("sweep")
if cells:
    spec = JobSpec("sweep", train_cfg, data_cfg, sweep=sweep, label=f"sweep of {len(cells)} networks")
    st.caption(f"Expected training time on this device: about {expected_time(spec)}.")
if st.button("Run sweep", type="primary", key="sweep_go_btn", disabled=bool(problem) or busy):
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
    table = sweep_table(runs, store.epochs(list(runs["run_id"])))
    if table.empty:
        return
    summary = summarize_over_seeds(table, ["conv_layers", "kernel_size"])
    if summary.empty:
        st.info("No run finished all its epochs, so there is nothing to summarise.")
        return
    a, b = st.columns(2)
    a.plotly_chart(error_line_figure(summary, "conv_layers", "kernel_size", "Test accuracy vs conv layers"),
                   key="sweep_depth_chart")
    b.plotly_chart(error_line_figure(summary, "kernel_size", "conv_layers", "Test accuracy vs kernel size"),
                   key="sweep_kernel_chart")
    a.plotly_chart(heatmap_figure(summary), key="sweep_heatmap")
    b.plotly_chart(params_figure(table), key="sweep_params_chart")
    csv_button(summary, "sweep_summary.csv", key="sweep_summary_csv_btn")
    diverged = int((table["status"] == "diverged").sum())
    if diverged:
        st.caption(f":material/trending_up: {diverged} of {len(table)} runs diverged (the loss became NaN or infinite) "
                   "and are not in the means; lower the learning rate.")
    st.subheader("Runs")
    st.dataframe(table.assign(test_acc=table["test_acc"] * 100), hide_index=True,
                 column_config={"test_acc": st.column_config.NumberColumn("test acc (%)", format="%.2f")})
    csv_button(table, "sweep_runs.csv", key="sweep_runs_csv_btn")
    labels = {r.run_id: f"{r.conv_layers}×k{r.kernel_size} seed {r.seed}" for r in table.itertuples()}
    curves = store.iterations(list(labels))
    st.plotly_chart(overlay_figure(curves.assign(run=curves["run_id"].map(labels))), key="sweep_overlay")
    csv_button(curves, "sweep_iterations.csv", key="sweep_iterations_csv_btn")
    skipped = view.spec.sweep.cells()[1]
    if skipped:
        st.caption("Skipped: " + "; ".join(f"{s['conv_layers']}×k{s['kernel_size']}" for s in skipped))


job_panel("sweep", draw)
