"""Pieces several pages draw: a polled job panel (status, progress with ETA, Stop), CSV
download buttons, the per-layer table, and the sidebar list of this session's jobs."""
from __future__ import annotations

from typing import Callable

import pandas as pd
import streamlit as st

from mnist_lab.jobs import JobFn, JobSnapshot
from mnist_lab.models import ModelConfig, summarize

from .charts import loss_figure
from .shared import JOB_SLOTS, job_manager

POLL_S = 1.0  # seconds between refreshes of a running job's panel


def start_job(slot: str, kind: str, fn: JobFn, label: str, runs_total: int = 1) -> None:
    """Submit `fn` and remember its id in this session only (other sessions never see it)."""
    job = job_manager().submit(kind, fn, label=label, runs_total=runs_total)
    st.session_state[slot] = job.id


def job_active(slot: str) -> bool:
    snap = job_manager().snapshot(st.session_state.get(slot))
    return snap is not None and snap.active


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _status(snap: JobSnapshot, slot: str) -> None:
    job = job_manager().get(snap.id)
    if snap.status == "queued":
        st.info(f"Queued — position {snap.position} in line for the training device (one job trains at a time).")
        st.button("Cancel", key=f"{slot}_cancel_btn", on_click=job.stop)
    elif snap.status == "running":
        runs = f"run {len(snap.runs)} of {snap.runs_total} · " if snap.runs_total > 1 else ""
        run = snap.runs[-1] if snap.runs else None
        steps = f"step {run.step} of {run.total_steps} · " if run else "preparing data · "
        st.progress(snap.fraction, text=f"{runs}{steps}{_duration(snap.elapsed_s)} elapsed · "
                                        f"ETA {_duration(snap.eta_s)}")
        st.button("Stop", key=f"{slot}_stop_btn", type="primary", on_click=job.stop,
                  help="Ends the run at its next iteration; what it did so far is kept.")
    elif snap.status == "finished":
        st.success(f"Finished in {_duration(snap.elapsed_s)}.")
    elif snap.status == "stopped":
        why = snap.stop_reason or "stopped"
        st.warning(f"Stopped ({why}) after {_duration(snap.elapsed_s)}. Everything finished before the "
                   "stop is kept, here and on the Runs page.")
    else:
        st.error(f"The job failed: {snap.error}")
        with st.expander("Details"):
            st.code(snap.error_detail)


def job_panel(slot: str, draw: Callable[[JobSnapshot], None]) -> None:
    """Status and `draw(snapshot)` for this session's job in `slot`, refreshed every POLL_S
    seconds while it is queued or running (each refresh is also the job's heartbeat)."""
    manager = job_manager()
    job_id = st.session_state.get(slot)
    first = manager.snapshot(job_id)
    if first is None:
        if job_id:
            st.info("This job is no longer in memory (the server restarted); its runs are on the Runs page.")
        return
    polling = first.active

    @st.fragment(run_every=POLL_S if polling else None)
    def panel() -> None:
        snap = manager.poll(job_id)
        if polling and not snap.active:
            st.rerun()  # ended: one full run redraws the page (downloads, summaries) without the timer
        _status(snap, slot)
        draw(snap)

    panel()


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
    """This session's queued or running jobs (call it inside `with st.sidebar`), on every page;
    the refresh keeps them alive while the user looks at another page of the same tab."""
    manager = job_manager()

    def mine() -> list[tuple[str, JobSnapshot]]:
        snaps = [(page, manager.snapshot(st.session_state.get(slot))) for slot, page in JOB_SLOTS.items()]
        return [(page, s) for page, s in snaps if s is not None and s.active]

    @st.fragment(run_every=2 * POLL_S if mine() else None)
    def jobs() -> None:
        for page, snap in mine():
            manager.poll(snap.id)
            where = f"queued #{snap.position}" if snap.status == "queued" else f"{100 * snap.fraction:.0f}%"
            st.caption(f":material/hourglass_top: {page}: {where}")

    jobs()


def live_runs(snap: JobSnapshot, plan: list[tuple], columns: tuple[str, ...], key: str) -> None:
    """While a many-run job trains: the newest run's loss curve and the finished runs so far,
    labelled by `plan` (one tuple of `columns` values per run, in start order)."""
    done = [dict(zip(columns, plan[i]), test_acc=r.epochs[-1].test_acc)
            for i, r in enumerate(snap.runs) if r.epochs and r.status != "running" and i < len(plan)]
    if snap.runs:
        st.plotly_chart(loss_figure(snap.runs[-1].losses, title=f"Run {len(snap.runs)}: loss of every iteration"),
                        key=key)
    if done:
        st.dataframe(pd.DataFrame(done), hide_index=True)
