"""Benchmark: where the seconds of a Train page refresh mid-run go (issue 9's "reattach in under 2 s"),
and what a chart library alone costs a reload.

    python bench/bench_reload.py                  # 3 reloads while Lab-5 trains, then the chart-only pages
    python bench/bench_reload.py --reloads 5 --skip-charts

Part 1, a real `streamlit run` in shared mode, Debian's Chromium: starts the job, reloads the
page mid-run and times, in the page itself (performance.now() from navigation start), the
page's shell, the websocket's open, the last message of the script run that the reload asked
for, the page's title, the progress line and the loss curve. Part 2: a one-file app
showing a 2,000-point line with plotly, with `st.line_chart` (Vega-Lite) and with no chart,
each reloaded with nothing training; median seconds until it is drawn.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from app_server import CHROMIUM, CHROMIUM_ARGS, AppServer  # noqa: E402
from bench_sessions import PROGRESS, REFRESH_JOBS  # noqa: E402

LINE = ".js-plotly-plot .scatterlayer path.js-line"
# Recorded in the page from its first script on: when each selector first matches, and the websocket's traffic.
TIMELINE = r"""
window.__tl = {}; window.__ws = [];
const marks = {title: '[data-testid="stMainBlockContainer"] h1',
               shell: '[data-testid="stApp"]', chart: '.js-plotly-plot .scatterlayer path.js-line'};
const look = () => {
  const now = performance.now();
  for (const [k, s] of Object.entries(marks))
    if (!(k in window.__tl) && document.querySelector(s)) window.__tl[k] = now;
  if (!('progress' in window.__tl) && document.body && /step [\d,]+ of/.test(document.body.innerText)) {
    window.__tl.progress = now;
  }
};
new MutationObserver(look).observe(document, {subtree: true, childList: true});
const Native = window.WebSocket;
window.WebSocket = function (...args) {
  const ws = new Native(...args);
  ws.addEventListener('open', () => window.__ws.push(['open', performance.now()]));
  ws.addEventListener('message', () => window.__ws.push(['message', performance.now()]));
  return ws;
};
window.WebSocket.prototype = Native.prototype;
Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
"""

CHART_APP = '''
import numpy as np, pandas as pd, plotly.graph_objects as go, streamlit as st
x = np.arange(2000)
y = np.exp(-x / 500) + 0.05 * np.random.default_rng(0).random(2000)
st.title("A loss curve")
st.markdown("step 1,234 of 5,000")
kind = st.query_params.get("kind")
if kind == "plotly":
    st.plotly_chart(go.Figure(go.Scatter(x=x, y=y, mode="lines")))
elif kind == "vega-lite":
    st.line_chart(pd.DataFrame({"loss": y}, index=x))
'''
CHART_DRAWN = {"plotly": LINE, "vega-lite": ".vega-embed canvas, .vega-embed svg", "none": "text=step 1,234"}


def train_page_reloads(browser, tmp: Path, reloads: int, query: str) -> list[dict]:
    server = AppServer(tmp / "reload.sqlite", tmp / "reload.log", env={"MNIST_LAB_MODE": "shared"}).start()
    try:
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.add_init_script(TIMELINE)
        page = context.new_page()
        page.goto(f"{server.url}/train?{query}")
        page.get_by_role("button", name="Train", exact=True).click()
        page.get_by_text(PROGRESS).first.wait_for(timeout=90_000)
        time.sleep(2)
        out = []
        for _ in range(reloads):
            t0 = time.monotonic()
            page.reload()
            page.get_by_text(PROGRESS).first.wait_for(timeout=30_000)
            page.locator(LINE).first.wait_for(timeout=30_000)
            wall = time.monotonic() - t0
            tl, ws = page.evaluate("window.__tl"), page.evaluate("window.__ws")
            opened = next(t for kind, t in ws if kind == "open")
            # the reload's own script run: its messages come in one burst; the page's polls come a second later
            burst = [t for kind, t in ws if kind == "message"]
            last = burst[0]
            for t in burst[1:]:
                if t - last > 150:
                    break
                last = t
            out.append(dict(wall=wall, shell=tl["shell"], ws_open=opened, script_done=last, title=tl["title"],
                            progress=tl["progress"], chart=tl["chart"]))
            time.sleep(2)
        context.close()
        return out
    finally:
        server.stop()


def chart_reloads(browser, tmp: Path, reloads: int) -> dict[str, list[float]]:
    app = tmp / "chart_app.py"
    app.write_text(CHART_APP)
    server = AppServer(tmp / "charts.sqlite", tmp / "charts.log", script=app).start()
    try:
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        times: dict[str, list[float]] = {k: [] for k in CHART_DRAWN}
        for r in range(reloads + 1):  # the first round warms the browser's caches and is not counted
            for kind, drawn in CHART_DRAWN.items():
                page.goto(f"{server.url}/?kind={kind}")
                page.locator(drawn).first.wait_for(timeout=30_000)
                time.sleep(0.5)
                t0 = time.monotonic()
                page.reload()
                page.locator(drawn).first.wait_for(timeout=30_000)
                if r:
                    times[kind].append(time.monotonic() - t0)
        return times
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reloads", type=int, default=3)
    parser.add_argument("--job", choices=list(REFRESH_JOBS), default="Lab-5, cpu-native")
    parser.add_argument("--skip-charts", action="store_true", help="only the Train page reloads")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    print(f"# {datetime.now():%Y-%m-%d %H:%M} · {platform.processor() or platform.machine()} · "
          f"python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as d, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        rows = train_page_reloads(browser, Path(d), args.reloads, REFRESH_JOBS[args.job])
        print(f"Train page reloaded while {args.job} trains (ms from navigation start):")
        print("  " + " | ".join(f"{k:>11}" for k in rows[0]))
        for row in rows:
            print("  " + " | ".join(f"{row['wall']:10.2f}s" if k == "wall" else f"{v:11.0f}" for k, v in row.items()))
        if not args.skip_charts:
            times = chart_reloads(browser, Path(d), args.reloads)
            print("a 2,000-point line alone, reloaded with nothing training (s until drawn):")
            for kind, ts in times.items():
                print(f"  {kind:>9}: {', '.join(f'{t:.2f}' for t in ts)} (median {statistics.median(ts):.2f})")
        browser.close()


if __name__ == "__main__":
    main()
