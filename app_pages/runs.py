"""Runs: every run in the result store (it survives refreshes and restarts) — filter, overlay
loss curves, compare configurations, export as CSV, delete. The filters and the selection are
mirrored in the URL, so a link reopens the same comparison."""
import pandas as pd
import streamlit as st

from app_lib.charts import accuracy_figure, overlay_figure
from app_lib.lang import _, bound, ngettext, render_error
from app_lib.shared import (
    asker,
    init_state,
    is_teacher,
    job_queue,
    may_change,
    mirror_query,
    page_file,
    path_hider,
    result_store,
    run_scope,
    runner,
    server_policy,
)
from app_lib.text import local_times, percent, plain
from app_lib.widgets import (
    COLUMNS,
    EXAMPLE,
    csv_button,
    headers,
    normalization_words,
    not_learned_note,
    owner_names,
    rows_key,
    run_labels,
    run_messages,
    stop_reasons,
    table,
    with_owners,
    words,
)
from mnist_lab.errors import StoreError
from mnist_lab.lab.experiments import final_train_loss, stored_verdict
from mnist_lab.runs.store import VISIBLE_EXTRA
from mnist_lab.service.access import EXAMPLES_WORKSPACE

SHOWN = ["inspect", "started_at", "label", "experiment", "status", "verdict", "stop_reason", "final_test_acc",
         "params", "epochs_done", "epochs", "train_limit", "optimizer", "lr", "batch_size", "seed", "permute_pixels",
         "device", "seconds", "message", "run_id"]  # inspect first: seen without scrolling to the right

OWNERS = ["student_id", "student_name"]  # shown to whoever sees other people's runs (the teacher, the class view)

st.title(_("Runs"))
try:
    store = result_store()
    job_queue().mark_interrupted()  # jobs and runs whose process died since (a killed CLI run, a restarted server)
    scope = run_scope()  # None: every run; else this session's own workspace (shared mode)
    runs = runner().runs()
    runs = runs.assign(label_shown=run_labels(runs))  # in this session's language
except StoreError as exc:
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
if scope is not None and server_policy().demo:  # a visitor: theirs and the examples, read-only
    where = ngettext("{n} run: yours and this server's examples (the examples can be looked at, not stopped or "
                     "deleted)", "{n} runs: yours and this server's examples (the examples can be looked at, not "
                     "stopped or deleted)", len(runs)).format(n=f"{len(runs):,}")
elif scope is not None:  # no server path to a shared browser
    where = ngettext("{n} run of yours (other people's runs on this server are not shown)",
                     "{n} runs of yours (other people's runs on this server are not shown)",
                     len(runs)).format(n=f"{len(runs):,}")
elif server_policy().shared:
    where = ngettext("{n} run on this server", "{n} runs on this server", len(runs)).format(n=f"{len(runs):,}")
else:
    where = ngettext("{n} run in {path}", "{n} runs in {path}", len(runs)).format(n=f"{len(runs):,}",
                                                                                  path=plain(store.path))
st.caption(_("{runs}, newest first. Runs are saved while they train, so a stopped or interrupted run (its process "
             "ended without finishing it) keeps what it finished, and says why.").format(runs=where))
if runs.empty:
    st.info(_("No runs yet: train something on the Train, Sweep or FC vs CNN page."))
    st.stop()

owners_shown = server_policy().shared and is_teacher()  # a class view's student sees runs, not classmates' names
if server_policy().shared and not owners_shown:  # in every CSV too: a student's own runs keep their name
    others = runs["workspace"] != asker().workspace
    runs = runs.assign(student_id=runs["student_id"].mask(others, None),
                       student_name=runs["student_name"].mask(others, None))
EXPERIMENTS, STATUSES = sorted(runs["experiment"].unique()), sorted(runs["status"].unique())
FILTERS = dict(experiment=[], status=[], text="")
init_state("runs_", FILTERS, dict(experiment=EXPERIMENTS, status=STATUSES))
c1, c2, c3 = st.columns(3)
experiments = c1.multiselect(_("Experiment"), EXPERIMENTS, key="runs_experiment", placeholder=_("all"),
                             format_func=bound())
statuses = c2.multiselect(_("Status"), STATUSES, key="runs_status", placeholder=_("all"),
                          format_func=bound())
text = c3.text_input(_("Label contains"), key="runs_text", placeholder=_("e.g. CNN 2×k5"))
shown = runs
if experiments:
    shown = shown[shown["experiment"].isin(experiments)]
if statuses:
    shown = shown[shown["status"].isin(statuses)]
if text:
    hit = shown["label_shown"].str.contains(text, case=False, regex=False)
    if owners_shown:  # the teacher finds a student's runs by name or student ID too
        hit |= shown["student_name"].fillna("").str.contains(text, case=False, regex=False)
        hit |= shown["student_id"].fillna("").str.contains(text, case=False, regex=False)
    shown = shown[hit]

tz = st.context.timezone or "UTC"  # the browser's time zone; the store keeps UTC
kept = store.inspectable(shown["run_id"])  # runs whose weights are kept open on the Inspect page
shown = shown.assign(inspect=[_("Inspect") if r in kept else "" for r in shown["run_id"]])
started = local_times(shown["started_at"], tz)
loss = final_train_loss(store.epochs(list(shown["run_id"])))
verdicts = pd.Series([stored_verdict(r.status, r.final_test_acc, loss.get(r.run_id), r.dataset)
                      for r in shown.itertuples()], index=shown.index, dtype=object)
images = shown["train_limit"].map(lambda n: _("all") if n is None or n != n else f"{int(n):,}")  # None/NaN: all
columns = [*SHOWN[:2], *OWNERS, *SHOWN[2:]] if owners_shown else SHOWN
if server_policy().demo:  # the examples every visitor sees, marked as such
    columns = [columns[0], "example", *columns[1:]]
examples = words(shown["workspace"].map(lambda w: EXAMPLE if w == EXAMPLES_WORKSPACE else ""))
picked = table(shown.assign(verdict=words(verdicts), student_name=owner_names(shown), example=examples,
                            student_id=shown["student_id"].fillna(""))[columns].assign(
                          started_at=started, train_limit=images,
                                                         final_test_acc=shown["final_test_acc"] * 100,
                          stop_reason=stop_reasons(shown), message=run_messages(shown), status=words(shown["status"]),
                          experiment=words(shown["experiment"]), label=shown["label_shown"]),
      hide_index=True, width="stretch", on_select="rerun", selection_mode="single-row",
      # a selection is kept by position: new rows or another filter start a new one (never a neighbour's run)
      key=rows_key("pick_run_row", shown["run_id"]),
      column_config={
    "final_test_acc": st.column_config.NumberColumn(format="%.2f"),
    "started_at": st.column_config.TextColumn(_("started ({tz})").format(tz=tz)),
    # a link column would open a new tab: a selected row's link below opens the Inspect page in this one
    "inspect": st.column_config.TextColumn(pinned=True, help=_("Runs whose weights are kept: select the row, then "
                                                               "open it on the Inspect page")),
})
rows = picked.selection.rows if picked is not None else []
# positions in the table as given, whatever its sorting on screen (a filter changed since may leave one past its end)
row = shown.iloc[rows[0]] if rows and rows[0] < len(shown) else None
if row is not None and row["run_id"] in kept:  # in this tab: the session (its language, its workspace) goes along
    st.page_link(page_file("inspect"), label=_("Inspect {label}").format(label=plain(row["label_shown"])),
                 icon=":material/visibility:", query_params={"run": row["run_id"]})
elif row is not None:
    st.caption(_("This run's weights were not kept, so it cannot be inspected."))
else:
    st.caption(_("Select a run's row to open it on the Inspect page."))
if (shown["status"] == "diverged").any():
    st.caption(":material/trending_up: " + _("{n} run(s) diverged (the loss became NaN or infinite): the message "
                                             "column says where; lower the learning rate.")
               .format(n=(shown["status"] == "diverged").sum()))
not_learned_note(verdicts)
csv_button(shown.drop(columns=[*VISIBLE_EXTRA, "label_shown", "inspect"]), "runs.csv", key="runs_table_csv_btn")

names = {r.run_id: f"{r.label_shown} · {_(r.status)} · {t} · {r.run_id[-6:]}"
         for r, t in zip(runs.itertuples(), local_times(runs["started_at"], tz))}
SELECTED = list(shown["run_id"][:3])
init_state("runs_", dict(selected=SELECTED), dict(selected=list(names)))
# The picker follows the filters, as the table does: a selected run they now hide leaves the comparison (the charts
# compare what the table shows, and the link says so); when none is left, the filtered runs' newest three come in.
before = [r for r in st.session_state.runs_selected if r in names]  # deleted ones go
st.session_state.runs_selected = [r for r in before if r in set(shown["run_id"])]
hidden = len(before) - len(st.session_state.runs_selected)
if hidden and not st.session_state.runs_selected:
    st.session_state.runs_selected = SELECTED
selected = st.multiselect(_("Runs to compare"), list(shown["run_id"]), format_func=names.get, key="runs_selected",
                          placeholder=_("Choose options"))
if hidden:
    st.caption(ngettext("{n} selected run is hidden by the filters above, so it left the comparison.",
                        "{n} selected runs are hidden by the filters above, so they left the comparison.",
                        hidden).format(n=hidden))
mirror_query(dict(experiment=experiments, status=statuses, text=text, selected=selected),
             {**FILTERS, "selected": SELECTED})
if not selected:
    st.stop()

iterations, epochs = store.iterations(selected), store.epochs(selected)
labels = runs.set_index("run_id")["label_shown"]
short = {rid: f"{labels[rid].split(' · ')[0]} · {rid[-6:]}" for rid in selected}
a, b = st.columns(2)
with a:
    st.plotly_chart(overlay_figure(iterations.assign(run=iterations["run_id"].map(short)), _=_), key="runs_overlay")
    csv_button(with_owners(iterations, runs), "iterations.csv", key="runs_iterations_csv_btn")
with b:
    if not epochs.empty:
        st.plotly_chart(accuracy_figure(epochs.assign(run=epochs["run_id"].map(short)), color="run", _=_),
                        key="runs_accuracy")
    csv_button(with_owners(epochs, runs), "epochs.csv", key="runs_epochs_csv_btn")

st.subheader(_("Configurations side by side"))
chosen = runs.drop(columns=[*VISIBLE_EXTRA, "label_shown"]).set_index("run_id").loc[selected]
stored = runs.set_index("run_id").loc[selected]  # with the stored messages' codes, worded below
configs = chosen.assign(final_test_acc=chosen["final_test_acc"].map(percent)).round(4).T.rename_axis("field")
configs.columns = [short[c] for c in configs.columns]  # the CSV's: the store's values and field names
shown_configs = chosen.assign(final_test_acc=chosen["final_test_acc"].map(percent),
                              params=chosen["params"].map(lambda n: "" if n != n else f"{int(n):,}"),
                              seconds=chosen["seconds"].map(lambda x: "" if x is None or x != x else f"{x:,.1f}"),
                              label=runs.set_index("run_id").loc[selected, "label_shown"],
                              status=words(chosen["status"]),
                              experiment=words(chosen["experiment"]),
                              stop_reason=stop_reasons(stored), message=run_messages(stored),
                              normalize=chosen["normalize"].map(normalization_words),
                              started_at=list(local_times(chosen["started_at"], tz))).round(4).T.astype(str)
if (hide := path_hider()) is not None:  # a run's data folder ('directory /srv/...') is the server's detail
    shown_configs = shown_configs.map(hide)
shown_configs = shown_configs.rename_axis("field")
shown_configs.columns = configs.columns  # what the table shows: words and times in the session's language and zone
differs = configs.astype(str).nunique(axis=1) > 1
st.session_state.setdefault("runs_only_diff", len(selected) > 1)  # set once; a value= too would warn
if st.toggle(_("Only fields that differ"), key="runs_only_diff") and differs.any():
    configs, shown_configs = configs[differs], shown_configs[differs]
st.dataframe(headers(shown_configs.rename(index=lambda f: _(COLUMNS[f]) if f in COLUMNS else f)), width="stretch")
csv_button(configs.reset_index(names="field"), "configs.csv", key="runs_configs_csv_btn")


# A run still training would keep writing rows for a run that no longer exists: stop it first.
owners = runs.set_index("run_id")["workspace"]
mine = [r for r in selected if may_change(owners.get(r))]
training = set(runs.loc[runs["status"] == "running", "run_id"]) & set(mine)
deletable = [r for r in mine if r not in training]
if training:
    jobs = store.run_jobs(training)

    def stop() -> None:
        runner().stop_runs(sorted(training))  # 'stopped by you'
    st.button(_("Stop the {n} selected run(s) still training").format(n=len(training)), key="runs_stop_btn",
              on_click=stop, disabled=not jobs,
              help=_("Ends each at its next iteration (a sweep or comparison stops as a whole); what it finished is "
                     "kept."))
    if len(jobs) < len(training):
        st.caption(_("A run trained by `python -m mnist_lab` in a terminal of an older version stops with Ctrl-C "
                     "there."))


def delete() -> None:
    runner().delete_runs(deletable)
    st.session_state.runs_selected = [r for r in st.session_state.runs_selected if r not in deletable]
    st.session_state.runs_sure = False


with st.expander(_("Delete the {n} selected run(s)").format(n=len(deletable))):
    if training:
        st.caption(":material/info: " + _("{n} selected run(s) are still training and are not deleted: stop them "
                                          "first, then delete them.").format(n=len(training)))
    if len(mine) < len(selected):
        st.caption(":material/lock: " + _("{n} selected run(s) belong to someone else: you can look at them, not "
                                          "stop or delete them.").format(n=len(selected) - len(mine)))
    sure = st.checkbox(_("Yes, delete them with their iterations and epochs"), key="runs_sure", disabled=not deletable)
    st.button(_("Delete"), key="runs_delete_btn", disabled=not (sure and deletable), on_click=delete)
