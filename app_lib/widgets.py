"""Pieces several pages draw: a job panel that follows a job through the store (status,
progress with ETA, Stop), the live loss curves read incrementally, CSV download buttons, the
per-layer table, and the sidebar list of this workspace's jobs."""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
import streamlit as st

from mnist_lab import i18n
from mnist_lab.data.datasets import DATASETS
from mnist_lab.lab.verdicts import NOT_LEARNED, chance, did_learn, loss_bar
from mnist_lab.nets.model import ModelConfig, summarize
from mnist_lab.service.class_jobs import class_job_file, submit_class_job
from mnist_lab.service.estimate import estimate_seconds
from mnist_lab.service.jobs import JobSpec, JobView

from .charts import loss_figure
from .lang import N_, _, current, render_error, render_said
from .session import client
from .shared import (
    PAGE_KINDS,
    asker,
    due,
    ensure_workers,
    job_device,
    job_queue,
    path_hider,
    result_store,
    runner,
    server_executor,
    server_policy,
    workspace,
)
from .text import percent, plain

POLL_S = 1.0  # seconds between refreshes of a running job's panel
SIDEBAR_POLL_S = 4.0  # the sidebar's summary of one's jobs: the page's own panel is the live view
UPKEEP_S = 2.0  # seconds between looks for a dead worker, whichever page polls (shared.due)
QUEUED_POLL_S = 3.0  # a job with others ahead only moves up the queue: every refresh costs its browser a redraw
CLASS_POLL_S = 2.5  # a class job building: it counts whole reports (seconds each), so a second's refresh shows nothing
# The jargon the pages use, explained once (msgids; shown through _() as help texts).
PADDING_HELP = N_("'valid': no padding, so each k×k convolution shrinks the image by k−1 pixels (28 → 24 for k=5) "
                  "and deep nets with big kernels do not fit. 'same': zeros are added around the border so the "
                  "convolution keeps the size; only the pooling halves it.")
SEED_HELP = N_("The random seed fixes the initial weights and the order of the mini-batches: the same seed "
               "trains the same network again. Different seeds show how much a result varies by chance.")
ENGINE_HELP = N_("The engine is the code path that trains: 'plain' is PyTorch's own loop; 'cpu-native' (C++ "
                 "conv kernels) and the GPU's fast paths compute the same steps faster.")
MEAN_SD_HELP = N_("mean ± sd: the average test accuracy over the seeds and its standard deviation (in points); "
                  "a difference smaller than the sd is not distinguishable with this many seeds.")

# Table headers: the data's column names (kept in CSVs) -> what a person reads, translated where shown.
COLUMNS = {
    "name": N_("name"), "layer": N_("layer"), "output_shape": N_("output shape"), "params": N_("parameters"),
    "formula": N_("formula"), "epoch": N_("epoch"), "test_acc": N_("test accuracy (%)"),
    "test_accuracy": N_("test accuracy"), "train_loss": N_("mean training loss"), "seconds": N_("seconds"),
    "conv_layers": N_("conv+pool layers"), "kernel_size": N_("kernel size"), "channels": N_("channels"),
    "seed": N_("random seed"), "status": N_("status"), "run_id": N_("run"), "model": N_("network"),
    "pixels": N_("pixels"), "architecture": N_("architecture"), "hidden": N_("hidden FC units"),
    "started_at": N_("started"), "label": N_("label"), "experiment": N_("experiment"),
    "stop_reason": N_("why it stopped"), "final_test_acc": N_("test accuracy (%)"), "epochs_done": N_("epochs done"),
    "epochs": N_("epochs"), "train_limit": N_("training images"), "optimizer": N_("optimiser"),
    "lr": N_("learning rate"), "batch_size": N_("batch size"), "permute_pixels": N_("permuted pixels"),
    "device": N_("device"), "message": N_("message"), "mean": N_("mean"), "sd": N_("sd"), "n": N_("runs"),
    "text": N_("mean ± sd"), "parameters": N_("parameters"), "preset": N_("network"), "layers": N_("layers"),
    "optimiser": N_("optimiser"), "batch": N_("batch size"), "published": N_("published result"),
    "field": N_("field"), "engine": N_("engine"), "test_loss": N_("test loss"), "hidden_units": N_("hidden FC units"),
    "iteration": N_("iteration"), "loss": N_("loss"), "diverged": N_("diverged"), "kind": N_("network type"),
    "group_id": N_("group"), "diverged_at": N_("diverged at iteration"), "conv_channels": N_("conv channels"),
    "padding": N_("padding"), "pool_before_relu": N_("pool before ReLU"), "batch_norm": N_("BatchNorm"),
    "dropout": N_("dropout"), "softmax_before_loss": N_("softmax before the loss"),
    "in_channels": N_("input channels"), "image_size": N_("image size"), "n_classes": N_("classes"),
    "momentum": N_("momentum"), "shuffle": N_("shuffle batches"), "eval_batch_size": N_("evaluation batch size"),
    "engine_requested": N_("engine asked for"), "dataset": N_("dataset"), "normalize": N_("normalisation"),
    "test_limit": N_("test images"), "permutation_seed": N_("permutation seed"), "data_dir": N_("data directory"),
    "data_source": N_("data source"), "torch_version": N_("PyTorch version"),
    "torchvision_version": N_("torchvision version"), "python_version": N_("Python version"),
    "mnist_lab_version": N_("mnist_lab version"), "steps_per_epoch": N_("iterations per epoch"),
    "inspect": N_("inspect"), "class": N_("class"), "images": N_("images"), "correct": N_("correct"),
    "accuracy": N_("accuracy"), "true_name": N_("true"), "predicted_name": N_("predicted"), "count": N_("images"),
    "share": N_("share of the true class"),
    "verdict": N_("did it learn?"), "not_learned": N_("did not learn"), "learned": N_("learned"),
    "variant": N_("variant"), "iterations": N_("iterations"),
    "student_id": N_("student ID"), "student_name": N_("student name"), "code": N_("one-time code"),
    "on_roster": N_("on the class list"), "pin_set": N_("PIN set"), "code_pending": N_("code not used yet"),
    "failures": N_("wrong tries"), "first_at": N_("first"), "last_at": N_("last"), "role": N_("role"),
    "client": N_("computer"), "created_at": N_("signed in"), "expires_at": N_("expires"), "who": N_("who"),
    # the class pages (issue 25): lab 5's steps per student, the pooled experiment
    "lab_net": N_("1: the lab's network"), "depth": N_("2: depth series"), "kernel": N_("3: kernel series"),
    "compare": N_("FC vs CNN"), "lessons": N_("week-2 lessons"), "lessons_total": N_("lessons in all"),
    "lab5_done": N_("lab 5 done"), "runs": N_("runs"), "finished": N_("finished runs"),
    "last_activity": N_("last activity"), "students": N_("students"), "duplicates": N_("duplicates"),
    "seeds": N_("seeds"), "set": N_("set"),
    "example": N_("example"),  # a demo's Runs page: the server's example runs (service/examples.py)
}
# Cell values that are words (a run's status, the pixels, an experiment): translated where shown.
WORDS = frozenset((N_("finished"), N_("running"), N_("queued"), N_("stopped"), N_("interrupted"), N_("diverged"),
                   N_("failed"), N_("normal"), N_("permuted"), N_("single"), N_("sweep"), N_("compare"), N_("none"),
                   N_("all"), N_("learned"), N_("did not learn"), N_("lesson"),
                   N_("done"), N_("partial"), N_("missing"),  # lab/classwork.py's DONE, PARTIAL, MISSING
                   N_("Example")))  # a demo's example run (EXAMPLE)
EXAMPLE = "Example"
# A run's normalisation (DataConfig.normalize, mnist_lab.data.NORMALIZATIONS) in a few words.
NORMALIZE_WORDS = {"dataset": N_("the dataset's own"), "half": N_("fixed 0.5"), "none": N_("none"),
                   "mnist": N_("MNIST's own")}


def said(stored: object, english: object = "") -> str:
    """A stored message (a stop reason, an error, a run's label: mnist_lab.i18n.to_stored) in the
    session's language; without one (a run of an earlier version), its stored `english` as it is.
    A student of a shared server reads its public form (app_lib.lang.render_said)."""
    return render_said(stored, english)


def run_labels(runs: pd.DataFrame) -> pd.Series:
    """Each run's label in the session's language (`runs`: ResultStore.visible_runs rows)."""
    return pd.Series([said(m, e) for e, m in zip(runs["label"], runs["label_msg"])], index=runs.index, dtype=object)


def run_messages(runs: pd.DataFrame) -> pd.Series:
    """Each run's message (why it diverged) in the session's language ('' for none)."""
    return pd.Series([said(m, e) for e, m in zip(runs["message"], runs["message_msg"])], index=runs.index,
                     dtype=object)


def stop_reasons(runs: pd.DataFrame) -> pd.Series:
    """Each run's stop reason in the session's language ('' for none)."""
    return pd.Series([said(m, e) for e, m in zip(runs["stop_reason"], runs["stop_reason_msg"])], index=runs.index,
                     dtype=object)


def words(column: pd.Series) -> pd.Series:
    """A column of status / pixels / experiment / verdict words in the session's language; a missing
    one (None, NaN: e.g. no verdict for a stopped run) is blank, not a grey "None"."""
    return column.map(lambda w: _(w) if isinstance(w, str) and w in WORDS else ("" if w is None or w != w else w))


def normalization_words(code: str) -> str:
    """A normalisation's code ('dataset', 'half', ...) in the session's language; an unknown one as it is."""
    return _(NORMALIZE_WORDS[code]) if code in NORMALIZE_WORDS else code


def headers(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its column headers (and its index's name) in the session's language."""
    shown = frame.rename(columns={c: _(COLUMNS[c]) for c in frame.columns if c in COLUMNS})
    if isinstance(shown.index.name, str) and shown.index.name in COLUMNS:
        shown = shown.rename_axis(_(COLUMNS[shown.index.name]))
    return shown


# How a table shows a numeric column (docs/I18N.md, "Numbers"): counts with thousands separators,
# seconds with one decimal; accuracies are the pages' own ("%.2f" of a percentage), CSVs keep every digit.
FORMATS = {"params": "localized", "parameters": "localized", "images": "localized", "count": "localized",
           "train_limit": "localized", "test_limit": "localized", "iteration": "localized",
           "iterations": "localized", "steps_per_epoch": "localized", "seconds": "%.1f", "runs": "localized",
           "finished": "localized", "duplicates": "localized"}


def column_formats(frame: pd.DataFrame) -> dict:
    """The default NumberColumn of each numeric column of `frame` that FORMATS names."""
    return {c: st.column_config.NumberColumn(format=FORMATS[c]) for c in frame.columns
            if c in FORMATS and pd.api.types.is_numeric_dtype(frame[c])}


def table(frame: pd.DataFrame, column_config: dict | None = None, **kwargs):
    """st.dataframe of `frame` with its headers in the session's language and its numbers in the
    one format (FORMATS, unless `column_config` says otherwise); `column_config` is keyed by the
    data's own column names. Returns what st.dataframe does (its selection, when `on_select`
    is given)."""
    given = {**column_formats(frame), **(column_config or {})}
    config = {(_(COLUMNS[k]) if k in COLUMNS else k): v for k, v in given.items()}
    return st.dataframe(headers(frame), column_config=config, **kwargs)


def rows_key(prefix: str, ids) -> str:
    """A row-selecting table's key for these rows: Streamlit keeps a selection by position, so new
    rows or another filter must start a new one rather than select a neighbour."""
    return f"{prefix}_{hashlib.sha1(chr(31).join(map(str, ids)).encode()).hexdigest()[:12]}"


def not_learned_note(verdicts: pd.Series) -> None:
    """A caption when runs finished without learning (lab/verdicts.py's rule), with what to change."""
    bad = int((verdicts == NOT_LEARNED).sum())
    if bad:
        st.caption(":material/school: " + _(
            "{n} of {total} runs did not learn: test accuracy under chance + 10 points or a final training loss near "
            "a uniform guess's. Train longer (more epochs or more training images) or try another learning rate.")
            .format(n=bad, total=len(verdicts)))


def run_learned_note(run_id: str, epochs: pd.DataFrame, dataset: str) -> None:
    """A finished run that did not learn (lab/verdicts.py's rule): its numbers and what to change."""
    if not len(epochs) or dataset not in DATASETS:
        return
    last, n_classes = epochs.sort_values("epoch").iloc[-1], DATASETS[dataset].n_classes
    if did_learn(last["test_acc"], last["train_loss"], n_classes):
        return
    st.warning(_("did not learn: run {id}: {acc} test accuracy (chance is {chance}) and a final training loss of "
                 "{loss:.3f} (a run that learned is below {bar:.3f}). Train longer (more epochs or more training "
                 "images) or try another learning rate.").format(
        id=run_id, acc=i18n.pct(float(last["test_acc"])), chance=i18n.pct(chance(n_classes)),
        loss=float(last["train_loss"]), bar=loss_bar(n_classes)), icon=":material/school:")


def mean_sd_texts(summary: pd.DataFrame) -> list[str]:
    """Each row's test accuracy over seeds in the session's language (`mnist_lab.i18n.mean_sd`)."""
    return i18n.mean_sd_texts(summary, _)


def start_job(kind: str, spec: JobSpec) -> str | None:
    """Queue `spec` for this workspace; remember it as the page's job. A refusal (the server's
    limits, a full queue, a bad config) is shown as a message and nothing is queued."""
    from mnist_lab.service.quota import standing

    try:
        policy, run = server_policy(), runner()
        # what this person and the server keep, and the jobs from this browser's address (the demo's cap)
        kept = standing(result_store(), workspace(), run.client, unknown_is_one=policy.demo) if policy.shared else None
        policy.check(spec, job_device(spec.train.device), kept)  # with Ray: the cluster's device
        job_id = run.submit(spec, workspace())
    except ValueError as exc:
        st.session_state[f"_{kind}_refused"] = exc  # worded when shown: a language switch words it again
        return None
    ensure_workers(say=False)  # the entry point says a bad executor once, at the top of the page
    st.session_state[f"_{kind}_job"] = job_id
    st.session_state.pop(f"_{kind}_refused", None)
    return job_id


def page_job(kind: str, shows: Callable[[JobView], bool] | None = None) -> JobView | None:
    """The job this page shows: the one started here, else the workspace's newest of its kind,
    so a refresh, a second tab or a reopened link finds a live or recent job again. With
    `shows` (what the page's widgets pick, e.g. one lesson), a finished job it rejects gives way
    to the newest one it accepts; a queued or running job is shown whatever is picked."""
    def wanted(v: JobView) -> bool:
        return shows is None or v.active or shows(v)

    run = runner()
    job_id = st.session_state.get(f"_{kind}_job")
    view = run.poll(job_id) if job_id else None
    if view is None or view.workspace != workspace() or not wanted(view):
        # newest first; a workspace's jobs run in order, so its queued and running ones lead
        view = next(filter(wanted, run.jobs(workspace(), kinds=(kind,), limit=20 if shows else 1)), None)
        if view is not None:
            st.session_state[f"_{kind}_job"] = view.id
    return view


def job_active(kind: str, shows: Callable[[JobView], bool] | None = None) -> bool:
    view = page_job(kind, shows)
    return view is not None and view.active


def refusal(kind: str) -> None:
    """The last refused start on this page, if any (shown until a start succeeds)."""
    if (why := st.session_state.get(f"_{kind}_refused")) is not None:
        st.error(plain(render_error(why)), icon=":material/block:")


def duration(seconds: float | None) -> str:
    """A time in the session's language by the one rule (mnist_lab.i18n.seconds); '…' when unknown."""
    return "…" if seconds is None else i18n.seconds(seconds, _)


def expected_time(spec: JobSpec) -> str:
    try:  # the machine now (with Ray: the cluster's device, from its idle figures)
        device = job_device(spec.train.device)
        return duration(estimate_seconds(spec, device, now=server_executor() == "local"))
    except Exception:  # noqa: BLE001 - the page's rules catch the config's problems; an estimate never breaks it
        return duration(None)


def _status(view: JobView) -> None:
    stop = lambda: runner().stop(view.id)  # noqa: E731 - the reason: 'stopped by you'
    if view.status == "queued":
        st.info(_("Queued — position {n} in line for the training device (one job trains at a time).")
                .format(n=view.position))
        st.button(_("Cancel"), key=f"{view.kind}_cancel_btn", on_click=stop)
    elif view.status == "running":
        run = view.runs[-1] if view.runs else None
        parts = [_("run {i} of {n}").format(i=len(view.runs), n=view.runs_total)] if view.runs_total > 1 else []
        parts.append(_("step {i} of {n}").format(i=f"{run.step:,}", n=f"{run.total_steps:,}")
                     if run and run.total_steps else _("preparing data"))
        parts.append(_("{time} elapsed").format(time=duration(view.elapsed_s)))
        parts.append(_("ETA {time}").format(time=duration(view.eta_s)))
        st.progress(view.fraction, text=" · ".join(parts))
        if view.stop_requested:
            st.caption(":material/hourglass_top: " + _("Stopping after the current iteration…"))
        else:
            st.button(_("Stop"), key=f"{view.kind}_stop_btn", type="primary", on_click=stop,
                      help=_("Ends the run at its next iteration; what it did so far is kept."))
    elif view.status == "finished":
        st.success(_("Finished in {time}.").format(time=duration(view.elapsed_s)))
    elif view.status == "diverged":
        st.error(_("Diverged after {time}: the loss became NaN or infinite. Lower the learning rate (or the "
                   "momentum) and train again; what it did is kept on the Runs page.")
                 .format(time=duration(view.elapsed_s)), icon=":material/trending_up:")
    elif view.status in ("stopped", "interrupted"):
        # a stored message, in this session's language; an earlier version's English as it is
        why = plain(said(view.stop_message) or _(view.status))
        template = (_("Stopped ({why}) after {time}. Everything finished before that is kept, here and on the Runs "
                      "page.") if view.status == "stopped" else
                    _("Interrupted ({why}) after {time}. Everything finished before that is kept, here and on the "
                      "Runs page."))
        st.warning(template.format(why=why, time=duration(view.elapsed_s)))
    else:
        st.error(_("The job failed: {error}").format(error=plain(said(view.error_message, view.error))))


def job_panel(kind: str, draw: Callable[[JobView], None], shows: Callable[[JobView], bool] | None = None) -> None:
    """Status and `draw(view)` of the page's job (`page_job`), refreshed every POLL_S seconds
    from the store while it is queued or running. Closing the tab stops nothing: the worker trains on."""
    first = page_job(kind, shows)
    if first is None:
        return
    polling = first.active
    queued = first.status == "queued"
    # next in line: it starts once the device is free (the worker looks every 0.25 s); look as often as when running
    waiting = queued and first.position > 1

    @st.fragment(run_every=(QUEUED_POLL_S if waiting else POLL_S) if polling else None)
    def panel() -> None:
        if polling and due("job upkeep", UPKEEP_S):  # once per server process, not once per polling page
            job_queue().mark_interrupted()  # a worker that died mid-job: say so, not 'running' forever
            ensure_workers(say=False)  # and replace it, so queued jobs go on
        view = runner().poll(first.id)
        if view is None:
            st.info(_("This job is no longer in the store."))
            return
        if (polling and not view.active) or (waiting and (view.status != "queued" or view.position <= 1)):
            st.rerun()  # ended, or no longer waiting behind others: one full run redraws the page with the right timer
        _status(view)
        draw(view)

    panel()


def live_losses(run_id: str) -> np.ndarray:
    """Every stored iteration loss of `run_id`, read incrementally: each call fetches only the
    iterations after the last one this session already has."""
    cache = st.session_state.setdefault("_curves", {})
    have = cache.get(run_id)
    losses = have if have is not None else np.zeros(0)
    new = result_store().iterations_after(run_id, len(losses))[1]
    if new:
        losses = np.concatenate([losses, np.asarray(new, dtype=float)])
        if len(cache) > 50:  # a long session's many runs: keep the newest
            cache.pop(next(iter(cache)))
        cache[run_id] = losses
    return losses


from mnist_lab.paths import no_formula  # noqa: E402  (the CSV guard: the core's exports use it too)


def csv_button(frame: pd.DataFrame | Callable[[], pd.DataFrame], file_name: str, label: str | None = None,
               key: str | None = None) -> None:
    """A download button for `frame` as CSV; a callable frame is only built when clicked. A student
    of a shared server gets no server path in any cell either (a crashed run's English reason)."""
    hide = path_hider()  # decided in the page's run: a callable frame is built when clicked

    def data() -> str:
        table = (frame() if callable(frame) else frame).copy()
        for column in table.select_dtypes(include=["object", "string"]).columns:
            table[column] = table[column].map(lambda v: no_formula(hide(v) if hide is not None else v))
        return table.to_csv(index=False)
    st.download_button(label or file_name, data=data if callable(frame) else data(), file_name=file_name,
                       mime="text/csv", on_click="ignore", key=key or f"{file_name}_btn", icon=":material/download:")


LAYER_WORDS = frozenset((N_("no parameters"), N_("Softmax (before the loss!)")))  # the core's words in its rows
_FEATURES = re.compile(r"^(.*) = (\d+) features$")  # the flatten row's formula: '20×4×4 = 320 features'


def _layer_words(text: str) -> str:
    if text in LAYER_WORDS:
        return _(text)
    if m := _FEATURES.match(text):
        return _("{product} = {n} features").format(product=m.group(1), n=m.group(2))
    return text


def layer_table(cfg: ModelConfig) -> pd.DataFrame:
    """One row per layer (name, layer, output shape, parameters, formula), its words in the
    session's language; `cfg` is validated (a ConfigError says what to change)."""
    rows = summarize(cfg)
    return pd.DataFrame([dict(name=r.name, layer=_layer_words(r.layer),
                              output_shape=" × ".join(map(str, r.output_shape)),
                              params=r.params, formula=_layer_words(r.formula)) for r in rows])


def sidebar_jobs() -> None:
    """This workspace's queued and running jobs (call it inside `with st.sidebar`), on every page."""
    def mine() -> list[JobView]:
        return runner().jobs(workspace(), active=True, limit=10)

    @st.fragment(run_every=SIDEBAR_POLL_S if mine() else None)
    def jobs() -> None:
        for view in mine():
            where = (_("queued #{n}").format(n=view.position) if view.status == "queued"
                     else f"{100 * view.fraction:.0f}%")
            st.caption(f":material/hourglass_top: {_(PAGE_KINDS.get(view.kind, view.kind))}: {where}")

    jobs()


def live_runs(view: JobView, plan: list[tuple], columns: tuple[str, ...], key: str) -> None:
    """While a many-run job trains: the newest run's loss curve and the finished runs so far,
    labelled by `plan` (one tuple of `columns` values per run, in start order)."""
    done = [dict(zip(columns, plan[i]), test_acc=percent(r.final_test_acc))
            for i, r in enumerate(view.runs) if r.epochs_done and r.status != "running" and i < len(plan)]
    if view.runs:
        run = view.runs[-1]
        st.plotly_chart(loss_figure(live_losses(run.run_id), run.steps_per_epoch,
                                    title=_("Run {n}: loss of every iteration").format(n=len(view.runs)), _=_),
                        key=key)
    if done:
        table(pd.DataFrame(done).assign(test_acc=lambda f: f["test_acc"].str.rstrip("%")).pipe(
            lambda f: f.assign(**{c: words(f[c]) for c in ("pixels",) if c in f})), hide_index=True)


def share_link() -> None:
    """Shared mode: a link to this page and its settings. It carries nothing that signs anyone in,
    so whoever opens it gets the same setup with their own runs (after signing in)."""
    from urllib.parse import urlencode, urlsplit, urlunsplit

    with st.popover(_("Share this setup"), icon=":material/share:"):
        base = urlsplit(st.context.url or "")
        st.code(urlunsplit((base.scheme, base.netloc, base.path, urlencode(st.query_params.to_dict()), "")),
                language=None)
        st.caption(_("The link carries the page's settings, never your sign-in: whoever opens it sees their own "
                     "runs."))


UNNAMED = N_("(unnamed workspace)")  # a run of an earlier version's workspace, or of no student
OWNER_WORDS = {"teacher": N_("the teacher"), "local": N_("the server's operator")}  # workspaces that are no student


def owner_names(runs: pd.DataFrame) -> pd.Series:
    """Who each run (or job) belongs to, as the teacher reads it: the student's name, else what the
    workspace is (the teacher, a visitor, an earlier version's unnamed workspace)."""
    def name(student: object, workspace: object) -> str:
        if isinstance(student, str) and student:
            return student
        if isinstance(workspace, str) and workspace.startswith("visitor:"):
            return _("a visitor")
        return _(OWNER_WORDS.get(workspace, UNNAMED))
    ids = runs["workspace"] if "workspace" in runs else pd.Series([None] * len(runs), index=runs.index)
    return pd.Series([name(s, w) for s, w in zip(runs["student_name"], ids)], index=runs.index, dtype=object)


def with_owners(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """`frame` (rows with a run_id: iterations, epochs) with its runs' student_id and student_name
    appended, as runs.csv has them (blank for a run of no student)."""
    owners = runs.set_index("run_id")[["student_id", "student_name"]]
    return frame.join(owners, on="run_id").fillna({"student_id": "", "student_name": ""})


def class_job_panel(kind: str, label: str, file_name: str, lang: str | None = None) -> None:
    """A class job (mnist_lab.service.class_jobs: "reports", "export"): the button that queues it
    (built in `lang`, the page's language when None), its progress while it builds (polled), Stop,
    and its zip to download once finished."""
    def latest() -> JobView | None:
        mine = runner().jobs(workspace(), kinds=(kind,), limit=1)
        return mine[0] if mine else None

    first = latest()
    busy = first is not None and first.active
    if st.button(label, key=f"class_{kind}_btn", disabled=busy, icon=":material/folder_zip:"):
        try:
            submit_class_job(job_queue(), kind, asker(), lang or current(), client())
            st.session_state.pop(f"_class_{kind}_refused", None)
            ensure_workers(say=False)
            st.rerun()
        except ValueError as exc:
            st.session_state[f"_class_{kind}_refused"] = exc
    if (why := st.session_state.get(f"_class_{kind}_refused")) is not None:
        st.error(plain(render_error(why)), icon=":material/block:")
    if first is None:
        return

    queued = first.status == "queued"

    @st.fragment(run_every=(QUEUED_POLL_S if queued else CLASS_POLL_S) if busy else None)
    def panel() -> None:
        view = runner().poll(first.id)
        if view is None:
            return
        if busy and (not view.active or queued and view.status != "queued"):
            st.rerun()  # finished: one full run draws the download; started: polled at the building pace
        if view.active:
            text = (_("Queued — position {n} in line.").format(n=view.position) if view.status == "queued" else
                    _("{done} of {total} done · {time} elapsed").format(done=view.units_done, total=view.runs_total,
                                                                        time=duration(view.elapsed_s)))
            st.progress(view.fraction, text=text)
            st.button(_("Stop"), key=f"class_{kind}_stop_btn", on_click=lambda: runner().stop(view.id))
            return
        job = job_queue().job(view.id)
        path = class_job_file(result_store().path, job) if job is not None else None
        if view.status == "finished" and path is not None:
            st.download_button(_("Download {name}").format(name=file_name), data=path.read_bytes,
                               file_name=file_name, mime="application/zip", on_click="ignore",
                               key=f"class_{kind}_dl_btn", icon=":material/download:")
        elif view.status in ("stopped", "interrupted"):
            st.warning(_("Stopped before it was finished: nothing to download. Build it again."))
        elif view.status != "finished":
            st.error(_("The job failed: {error}").format(error=plain(said(view.error_message, view.error))))

    panel()


def pick_image(x_test: np.ndarray, source_key: str, index_key: str) -> np.ndarray:
    """The image a panel of the Inspect page looks at: a test image by number, or the student's drawing
    (session_state.insp_digit, once there is one)."""
    drawn = st.session_state.get("insp_digit")
    source = st.radio(_("Image"), [_("a test image"), _("your drawing")], horizontal=True,
                      key=source_key, disabled=drawn is None)
    if source == _("your drawing") and drawn is not None:
        return drawn
    index = st.number_input(_("Test image number"), 0, len(x_test) - 1, 0, key=index_key)
    return x_test[int(index)]
