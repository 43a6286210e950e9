"""Pieces several pages draw: a job panel that follows a job through the store (status,
progress with ETA, Stop), the live loss curves read incrementally, CSV download buttons, the
per-layer table, and the sidebar list of this workspace's jobs."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import streamlit as st

from mnist_lab.jobs import JobSpec, JobView
from mnist_lab.models import ModelConfig, summarize
from mnist_lab.policy import estimate_seconds

from .charts import loss_figure
from .text import percent, plain
from .shared import PAGE_KINDS, ensure_workers, result_store, runner, server_policy, workspace

POLL_S = 1.0  # seconds between refreshes of a running job's panel
QUEUED_POLL_S = 3.0  # a queued job only moves up the queue: every refresh costs its browser a redraw


def start_job(kind: str, spec: JobSpec) -> str | None:
    """Queue `spec` for this workspace; remember it as the page's job. A refusal (the server's
    limits, a full queue, a bad config) is shown as a message and nothing is queued."""
    from mnist_lab.train import resolve_device

    try:
        server_policy().check(spec, resolve_device(spec.train.device).type)
        job_id = runner().submit(spec, workspace())
    except ValueError as exc:
        st.session_state[f"_{kind}_refused"] = plain(str(exc))
        return None
    ensure_workers()
    st.session_state[f"_{kind}_job"] = job_id
    st.session_state.pop(f"_{kind}_refused", None)
    return job_id


def page_job(kind: str) -> JobView | None:
    """The job this page shows: the one started here, else the workspace's newest of its kind,
    so a refresh, a second tab or a reopened link finds a live or recent job again."""
    run = runner()
    job_id = st.session_state.get(f"_{kind}_job")
    view = run.poll(job_id) if job_id else None
    if view is None or view.workspace != workspace():
        newest = run.jobs(workspace(), kinds=(kind,), limit=1)
        view = newest[0] if newest else None
        if view is not None:
            st.session_state[f"_{kind}_job"] = view.id
    return view


def job_active(kind: str) -> bool:
    view = page_job(kind)
    return view is not None and view.active


def refusal(kind: str) -> None:
    """The last refused start on this page, if any (shown until a start succeeds)."""
    if why := st.session_state.get(f"_{kind}_refused"):
        st.error(why, icon=":material/block:")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def expected_time(spec: JobSpec) -> str:
    from mnist_lab.train import resolve_device

    return duration(estimate_seconds(spec, resolve_device(spec.train.device).type))


def _status(view: JobView) -> None:
    stop = lambda: runner().stop(view.id, "stopped by you")  # noqa: E731
    if view.status == "queued":
        st.info(f"Queued — position {view.position} in line for the training device (one job trains at a time).")
        st.button("Cancel", key=f"{view.kind}_cancel_btn", on_click=stop)
    elif view.status == "running":
        runs = f"run {len(view.runs)} of {view.runs_total} · " if view.runs_total > 1 else ""
        run = view.runs[-1] if view.runs else None
        steps = f"step {run.step:,} of {run.total_steps:,} · " if run and run.total_steps else "preparing data · "
        st.progress(view.fraction, text=f"{runs}{steps}{duration(view.elapsed_s)} elapsed · ETA {duration(view.eta_s)}")
        if view.stop_requested:
            st.caption(":material/hourglass_top: Stopping after the current iteration…")
        else:
            st.button("Stop", key=f"{view.kind}_stop_btn", type="primary", on_click=stop,
                      help="Ends the run at its next iteration; what it did so far is kept.")
    elif view.status == "finished":
        st.success(f"Finished in {duration(view.elapsed_s)}.")
    elif view.status == "diverged":
        st.error(f"Diverged after {duration(view.elapsed_s)}: the loss became NaN or infinite. Lower the learning "
                 "rate (or the momentum) and train again; what it did is kept on the Runs page.",
                 icon=":material/trending_up:")
    elif view.status in ("stopped", "interrupted"):
        why = plain(view.stop_reason or view.status)
        st.warning(f"{view.status.capitalize()} ({why}) after {duration(view.elapsed_s)}. Everything finished "
                   "before that is kept, here and on the Runs page.")
    else:
        st.error(f"The job failed: {plain(view.error)}")


def job_panel(kind: str, draw: Callable[[JobView], None]) -> None:
    """Status and `draw(view)` of the page's job, refreshed every POLL_S seconds from the store
    while it is queued or running. Closing the tab stops nothing: the worker trains on."""
    first = page_job(kind)
    if first is None:
        return
    polling = first.active
    queued = first.status == "queued"

    @st.fragment(run_every=(QUEUED_POLL_S if queued else POLL_S) if polling else None)
    def panel() -> None:
        if polling:
            result_store().mark_interrupted()  # a worker that died mid-job: say so, not 'running' forever
            ensure_workers()  # and replace it, so queued jobs go on
        view = runner().poll(first.id)
        if view is None:
            st.info("This job is no longer in the store.")
            return
        if (polling and not view.active) or (queued and view.status != "queued"):
            st.rerun()  # ended (or started): one full run redraws the page with the right timer
        _status(view)
        draw(view)

    panel()


def live_losses(run_id: str) -> np.ndarray:
    """Every stored iteration loss of `run_id`, read incrementally: each call fetches only the
    iterations after the last one this session already has."""
    cache = st.session_state.setdefault("_curves", {})
    have = cache.get(run_id)
    losses = have if have is not None else np.zeros(0)
    _, new = result_store().iterations_after(run_id, len(losses))
    if new:
        losses = np.concatenate([losses, np.asarray(new, dtype=float)])
        if len(cache) > 50:  # a long session's many runs: keep the newest
            cache.pop(next(iter(cache)))
        cache[run_id] = losses
    return losses


def csv_button(frame: pd.DataFrame | Callable[[], pd.DataFrame], file_name: str, label: str | None = None,
               key: str | None = None) -> None:
    """A download button for `frame` as CSV; a callable frame is only built when clicked."""
    def data() -> str:
        return (frame() if callable(frame) else frame).to_csv(index=False)
    st.download_button(label or file_name, data=data if callable(frame) else data(), file_name=file_name,
                       mime="text/csv", on_click="ignore", key=key or f"{file_name}_btn", icon=":material/download:")


def layer_table(cfg: ModelConfig) -> pd.DataFrame:
    rows = summarize(cfg)
    return pd.DataFrame([dict(name=r.name, layer=r.layer, output_shape=" × ".join(map(str, r.output_shape)),
                              params=r.params, formula=r.formula) for r in rows])


def sidebar_jobs() -> None:
    """This workspace's queued and running jobs (call it inside `with st.sidebar`), on every page."""
    def mine() -> list[JobView]:
        return runner().jobs(workspace(), active=True, limit=10)

    @st.fragment(run_every=2 * POLL_S if mine() else None)
    def jobs() -> None:
        for view in mine():
            where = f"queued #{view.position}" if view.status == "queued" else f"{100 * view.fraction:.0f}%"
            st.caption(f":material/hourglass_top: {PAGE_KINDS.get(view.kind, view.kind)}: {where}")

    jobs()


def live_runs(view: JobView, plan: list[tuple], columns: tuple[str, ...], key: str) -> None:
    """While a many-run job trains: the newest run's loss curve and the finished runs so far,
    labelled by `plan` (one tuple of `columns` values per run, in start order)."""
    done = [dict(zip(columns, plan[i]), test_acc=percent(r.final_test_acc))
            for i, r in enumerate(view.runs) if r.epochs_done and r.status != "running" and i < len(plan)]
    if view.runs:
        run = view.runs[-1]
        st.plotly_chart(loss_figure(live_losses(run.run_id), run.steps_per_epoch,
                                    title=f"Run {len(view.runs)}: loss of every iteration"), key=key)
    if done:
        st.dataframe(pd.DataFrame(done), hide_index=True)


def share_link() -> None:
    """Shared mode: a link to this page and its settings without the workspace token, so
    whoever opens it gets the same setup in a workspace of their own."""
    from urllib.parse import urlencode, urlsplit, urlunsplit

    with st.popover("Share this setup", icon=":material/share:"):
        base = urlsplit(st.context.url or "")
        query = {k: v for k, v in st.query_params.to_dict().items() if k != "ws"}
        st.code(urlunsplit((base.scheme, base.netloc, base.path, urlencode(query), "")), language=None)
        st.caption("The link carries the page's settings, never your workspace: your runs stay yours.")
