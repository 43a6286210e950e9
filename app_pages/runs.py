"""Runs: every run in the result store (it survives refreshes and restarts) — filter, overlay
loss curves, compare configurations, export as CSV, delete. The filters and the selection are
mirrored in the URL, so a link reopens the same comparison."""
import streamlit as st

from app_lib.charts import accuracy_figure, overlay_figure
from app_lib.shared import (init_state, may_change, mirror_query, result_store, run_scope, runner, server_policy,
                            workspace)
from app_lib.text import local_times, percent, plain
from app_lib.widgets import csv_button
from mnist_lab.errors import StoreError

SHOWN = ["started_at", "label", "experiment", "status", "stop_reason", "final_test_acc", "params", "epochs_done",
         "epochs", "train_limit", "optimizer", "lr", "batch_size", "seed", "permute_pixels", "device", "seconds",
         "message", "inspect", "run_id"]

st.title("Runs")
try:
    store = result_store()
    store.mark_interrupted()  # runs whose process died since (a killed CLI run, a restarted server)
    runs = store.visible_runs(run_scope())
except StoreError as exc:
    st.error(plain(str(exc)), icon=":material/database:")
    st.stop()
where = "on this server" if server_policy().shared else f"in {plain(store.path)}"  # no server path to a shared browser
st.caption(f"{len(runs):,} runs {where}, newest first. Runs are saved while they train, so a stopped "
           "or interrupted run (its process ended without finishing it) keeps what it finished, and says why.")
if runs.empty:
    st.info("No runs yet: train something on the Train, Sweep or FC vs CNN page.")
    st.stop()

EXPERIMENTS, STATUSES = sorted(runs["experiment"].unique()), sorted(runs["status"].unique())
FILTERS = dict(experiment=[], status=[], text="")
init_state("runs_", FILTERS, dict(experiment=EXPERIMENTS, status=STATUSES))
c1, c2, c3 = st.columns(3)
experiments = c1.multiselect("Experiment", EXPERIMENTS, key="runs_experiment", placeholder="all")
statuses = c2.multiselect("Status", STATUSES, key="runs_status", placeholder="all")
text = c3.text_input("Label contains", key="runs_text", placeholder="e.g. CNN 2×k5")
shown = runs
if experiments:
    shown = shown[shown["experiment"].isin(experiments)]
if statuses:
    shown = shown[shown["status"].isin(statuses)]
if text:
    shown = shown[shown["label"].str.contains(text, case=False, regex=False)]

tz = st.context.timezone or "UTC"  # the browser's time zone; the store keeps UTC
kept = store.inspectable(shown["run_id"])  # runs whose weights are kept open on the Inspect page
ws = f"&ws={workspace()}" if server_policy().shared else ""
shown = shown.assign(inspect=[f"./inspect?run={r}{ws}" if r in kept else None for r in shown["run_id"]])
started = local_times(shown["started_at"], tz)
images = shown["train_limit"].map(lambda n: "all" if n is None or n != n else f"{int(n):,}")  # None/NaN: all
st.dataframe(shown[SHOWN].assign(started_at=started, train_limit=images, final_test_acc=shown["final_test_acc"] * 100,
                                 stop_reason=shown["stop_reason"].fillna("")),
             hide_index=True, width="stretch", column_config={
    "final_test_acc": st.column_config.NumberColumn("test acc (%)", format="%.2f"),
    "started_at": st.column_config.TextColumn(f"started ({tz})"),
    "inspect": st.column_config.LinkColumn("inspect", display_text="Inspect",
                                           help="Runs whose weights are kept: open one on the Inspect page"),
})
if (shown["status"] == "diverged").any():
    st.caption(f":material/trending_up: {(shown['status'] == 'diverged').sum()} run(s) diverged (the loss became NaN "
               "or infinite): the message column says where; lower the learning rate.")
csv_button(shown.drop(columns=["workspace", "job_id", "inspect"]), "runs.csv", key="runs_table_csv_btn")

names = {r.run_id: f"{r.label} · {r.status} · {t} · {r.run_id[-6:]}"
         for r, t in zip(runs.itertuples(), local_times(runs["started_at"], tz))}
SELECTED = list(shown["run_id"][:3])
init_state("runs_", dict(selected=SELECTED), dict(selected=list(names)))
st.session_state.runs_selected = [r for r in st.session_state.runs_selected if r in names]  # deleted ones go
options = list(dict.fromkeys([*shown["run_id"], *st.session_state.runs_selected]))
selected = st.multiselect("Runs to compare", options, format_func=names.get, key="runs_selected")
mirror_query(dict(experiment=experiments, status=statuses, text=text, selected=selected),
             {**FILTERS, "selected": SELECTED})
if not selected:
    st.stop()

iterations, epochs = store.iterations(selected), store.epochs(selected)
short = {rid: f"{names[rid].split(' · ')[0]} · {rid[-6:]}" for rid in selected}
a, b = st.columns(2)
with a:
    st.plotly_chart(overlay_figure(iterations.assign(run=iterations["run_id"].map(short))), key="runs_overlay")
    csv_button(iterations, "iterations.csv", key="runs_iterations_csv_btn")
with b:
    if not epochs.empty:
        st.plotly_chart(accuracy_figure(epochs.assign(run=epochs["run_id"].map(short)), color="run"),
                        key="runs_accuracy")
    csv_button(epochs, "epochs.csv", key="runs_epochs_csv_btn")

st.subheader("Configurations side by side")
chosen = runs.drop(columns=["workspace", "job_id"]).set_index("run_id").loc[selected]
configs = chosen.assign(final_test_acc=chosen["final_test_acc"].map(percent)).round(4).T
configs.columns = [short[c] for c in configs.columns]
differs = configs.astype(str).nunique(axis=1) > 1
st.session_state.setdefault("runs_only_diff", len(selected) > 1)  # set once; a value= too would warn
if st.toggle("Only fields that differ", key="runs_only_diff") and differs.any():
    configs = configs[differs]
st.dataframe(configs.astype(str), width="stretch")
csv_button(configs.reset_index(names="field"), "configs.csv", key="runs_configs_csv_btn")


# A run still training would keep writing rows for a run that no longer exists: stop it first.
owners = runs.set_index("run_id")["workspace"]
mine = [r for r in selected if may_change(owners.get(r))]
training = set(runs.loc[runs["status"] == "running", "run_id"]) & set(mine)
deletable = [r for r in mine if r not in training]
if training:
    jobs = store.run_jobs(training)

    def stop() -> None:
        for job_id in set(jobs.values()):
            runner().stop(job_id, "stopped by you")
    st.button(f"Stop the {len(training)} selected run(s) still training", key="runs_stop_btn", on_click=stop,
              disabled=not jobs, help="Ends each at its next iteration (a sweep or comparison stops as a whole); "
                                      "what it finished is kept.")
    if len(jobs) < len(training):
        st.caption("A run trained by `python -m mnist_lab` in a terminal of an older version stops with Ctrl-C there.")


def delete() -> None:
    store.delete_runs(deletable)
    st.session_state.runs_selected = [r for r in st.session_state.runs_selected if r not in deletable]
    st.session_state.runs_sure = False


with st.expander(f"Delete the {len(deletable)} selected run(s)"):
    if training:
        st.caption(f":material/info: {len(training)} selected run(s) are still training and are not deleted: "
                   "stop them first, then delete them.")
    if len(mine) < len(selected):
        st.caption(f":material/lock: {len(selected) - len(mine)} selected run(s) belong to someone else: "
                   "you can look at them, not stop or delete them.")
    sure = st.checkbox("Yes, delete them with their iterations and epochs", key="runs_sure", disabled=not deletable)
    st.button("Delete", key="runs_delete_btn", disabled=not (sure and deletable), on_click=delete)
