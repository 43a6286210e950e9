"""Issue 28's target for the network drawn as it is built: its redraw on a slider change <= 150 ms of
server time, for every preset. A redraw is the diagram (lab.architecture.build_diagram: summarize and
the layout), the plotly figure (app_lib.arch_chart.architecture_figure, in Chinese) and its JSON, as
st.plotly_chart writes it (plotly.io.to_json, validate=False). Also the report's static figure
(lab.figures.architecture_figure, matplotlib), built once per report, which has no target.

    python bench/bench_arch.py             # every preset, 30 repeats
    python bench/bench_arch.py --repeats 5

Each timing is repeated after one warm-up; the median and the best are printed in ms (on a shared
machine the best is the least disturbed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plotly.io  # noqa: E402
from bench_inspect import timed as seconds  # noqa: E402  (this folder: the benches' one timing helper)

from app_lib.arch_chart import architecture_figure  # noqa: E402
from mnist_lab.i18n import translator  # noqa: E402
from mnist_lab.lab import figures  # noqa: E402
from mnist_lab.lab.architecture import build_diagram  # noqa: E402
from mnist_lab.nets.presets import PRESETS  # noqa: E402

TARGET_MS = 150


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, best) milliseconds of `repeats` calls after one warm-up call."""
    median, best = seconds(fn, repeats)
    return 1000 * median, 1000 * best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    gettext = translator("zh_CN").gettext

    def redraw(cfg) -> None:
        fig = architecture_figure(build_diagram(cfg), _=gettext, lang="zh_CN")
        plotly.io.to_json(fig, validate=False)

    print(f"{'preset':14} {'diagram':>16} {'redraw (target <= ' + str(TARGET_MS) + ' ms)':>30} {'report figure':>16}")
    worst = 0.0
    for name, preset in PRESETS.items():
        cfg = preset.model
        diagram = timed(lambda cfg=cfg: build_diagram(cfg), args.repeats)
        full = timed(lambda cfg=cfg: redraw(cfg), args.repeats)
        static = timed(lambda cfg=cfg: figures.architecture_figure(build_diagram(cfg), gettext, True, "zh_CN"),
                       max(1, args.repeats // 10))
        worst = max(worst, full[0])
        print(f"{name:14} {diagram[0]:7.2f} / {diagram[1]:6.2f} {full[0]:21.1f} / {full[1]:6.1f} "
              f"{static[0]:8.0f} / {static[1]:5.0f}   (median / best, ms)")
    verdict = "within" if worst <= TARGET_MS else "OVER"
    print(f"worst median redraw: {worst:.1f} ms ({verdict} the {TARGET_MS} ms target)")
    return 0 if worst <= TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
