"""Plotly figures for the pages, built from plain lists and DataFrames. No streamlit here: each
figure takes the page's gettext function as `_` (English when left out) for its titles and axes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go


def _english(message: str) -> str:
    return message


# Hover numbers in the one format (docs/I18N.md, "Numbers"), as d3-format specs: accuracies in % with 2
# decimals, seconds with 1, counts with thousands separators.
HOVER = {"acc": ":.2f", "seconds": ":.1f", "count": ":,.0f"}
SMOOTH = 20  # iterations in the moving average drawn over the raw loss
LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), height=340, legend=dict(orientation="h", y=-0.2))


def smooth(values: list[float] | pd.Series, window: int = SMOOTH) -> pd.Series:
    """Mean of the last `window` values (fewer at the start)."""
    return pd.Series(values, dtype=float).rolling(window, min_periods=1).mean()


MAX_POINTS = 2000  # drawn per curve; the CSVs and the store keep every iteration


def display_points(x: np.ndarray, y: np.ndarray, n_out: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most `n_out` points of a curve for drawing (MinMaxLTTB: the spikes stay visible)."""
    if len(y) <= n_out:
        return x, y
    from tsdownsample import MinMaxLTTBDownsampler

    y = np.asarray(y, dtype=np.float64)
    keep = MinMaxLTTBDownsampler().downsample(np.nan_to_num(y, nan=0.0, posinf=0.0, neginf=0.0), n_out=n_out)
    return x[keep], y[keep]


def loss_figure(losses, steps_per_epoch: int = 0, title: str | None = None, _=_english) -> go.Figure:
    """One run: every iteration's loss, its moving average, and dotted lines at epoch ends
    (at most MAX_POINTS drawn per curve). Built from one dict: a live chart is rebuilt every
    poll, and plotly's property-by-property setters cost 5x as much."""
    losses = np.asarray(losses, dtype=float)
    x = np.arange(1, len(losses) + 1)
    traces = []
    for y, name, line in ((losses, _("loss (each iteration)"), dict(width=1, color="#9db4d8")),
                          (smooth(losses).to_numpy(), _("moving mean of the last {n}").format(n=SMOOTH),
                           dict(width=2.5, color="#1f4e99"))):
        xs, ys = display_points(x, y)
        traces.append(dict(type="scatter", x=xs, y=ys, mode="lines", name=name, line=line))
    ends = range(steps_per_epoch, len(losses), steps_per_epoch) if steps_per_epoch else ()
    shapes = [dict(type="line", xref="x", yref="paper", x0=end + 0.5, x1=end + 0.5, y0=0, y1=1,
                   line=dict(dash="dot", width=1, color="grey")) for end in ends]
    layout = dict(title=dict(text=title or _("Loss of every iteration")), xaxis=dict(title=dict(text=_("iteration"))),
                  yaxis=dict(title=dict(text=_("cross-entropy loss"))), shapes=shapes, **LAYOUT)
    return go.Figure(dict(data=traces, layout=layout))


def overlay_figure(curves: pd.DataFrame, title: str | None = None, _=_english) -> go.Figure:
    """Several runs: `curves` has columns run, iteration, loss; each run drawn smoothed."""
    fig = go.Figure()
    for run, part in curves.groupby("run", sort=False):
        x, y = display_points(part["iteration"].to_numpy(), smooth(part["loss"]).to_numpy())
        fig.add_scatter(x=x, y=y, mode="lines", name=str(run), line=dict(width=1.8))
    fig.update_layout(title=title or _("Loss curves (moving mean)"), xaxis_title=_("iteration"),
                      yaxis_title=_("loss (moving mean of the last {n})").format(n=SMOOTH), **LAYOUT)
    return fig


MIN_SPAN = 5.0  # accuracy points an accuracy axis spans at least, so a 0.6-point change stays small
WIDE_SPREAD = 30.0  # beyond this spread the axis shows 0-100 %


def accuracy_range(values_pct) -> list[float]:
    """A y range (in %) for accuracies: 0-100 when they spread widely, else their span widened to at
    least MIN_SPAN points around them (never past 0 or 100), never plotly's auto-zoom."""
    values = pd.Series(values_pct, dtype=float).dropna()
    if values.empty:
        return [0.0, 100.0]
    lo, hi = float(values.min()), float(values.max())
    if hi - lo > WIDE_SPREAD:
        return [0.0, 100.0]
    pad = max((MIN_SPAN - (hi - lo)) / 2, 0.5)
    lo, hi = lo - pad, hi + pad
    if lo < 0:
        lo, hi = 0.0, min(100.0, hi - lo)
    if hi > 100:
        lo, hi = max(0.0, lo - (hi - 100)), 100.0
    return [lo, hi]


def accuracy_figure(epochs: pd.DataFrame, color: str | None = None, title: str | None = None,
                    _=_english) -> go.Figure:
    """`epochs` has columns epoch, test_acc (fraction) and optionally `color`. The accuracy axis
    spans at least MIN_SPAN points; the epoch axis shows whole epochs only, so a 1-epoch run is
    a marker at epoch 1, not a dot on a 0-2 axis."""
    frame = epochs.assign(test_acc_pct=epochs["test_acc"] * 100)
    fig = px.line(frame, x="epoch", y="test_acc_pct", color=color, markers=True,
                  title=title or _("Test accuracy per epoch"), hover_data={"test_acc_pct": HOVER["acc"]},
                  labels={"test_acc_pct": _("test accuracy (%)"), "epoch": _("epoch"), "run": _("run")})
    last = int(frame["epoch"].max()) if len(frame) else 1
    fig.update_traces(marker=dict(size=9))
    fig.update_layout(yaxis_title=_("test accuracy (%)"), xaxis_title=_("epoch"),
                      yaxis=dict(range=accuracy_range(frame["test_acc_pct"])),
                      xaxis=dict(dtick=1, range=[0.5, last + 0.5]), **LAYOUT)
    return fig


AXES = {"conv_layers": "conv+pool layers", "kernel_size": "kernel size"}  # msgids, translated by the caller's _


def error_line_figure(summary: pd.DataFrame, x: str, color: str, title: str, _=_english) -> go.Figure:
    """Mean test accuracy vs `x`, one line per `color`, error bars = sd over seeds."""
    frame = summary.assign(acc=summary["mean"] * 100, sd_pct=summary["sd"] * 100, **{color: summary[color].astype(str)})
    fig = px.line(frame.sort_values(x), x=x, y="acc", color=color, error_y="sd_pct", markers=True, title=title,
                  hover_data={"acc": HOVER["acc"], "sd_pct": False, "n": True, "text": True},
                  labels={x: _(AXES[x]), color: _(AXES[color]), "n": _("runs"), "text": _("mean ± sd"),
                          "acc": _("test accuracy (%)")})
    fig.update_layout(yaxis_title=_("test accuracy (%)"), xaxis_title=_(AXES[x]),
                      xaxis=dict(tickmode="array", tickvals=sorted(frame[x].unique())),
                      yaxis=dict(range=accuracy_range(pd.concat([frame["acc"] - frame["sd_pct"],
                                                                 frame["acc"] + frame["sd_pct"]]))), **LAYOUT)
    return fig


def heatmap_figure(summary: pd.DataFrame, _=_english) -> go.Figure:
    """Mean test accuracy over conv layers (rows) x kernel size (columns)."""
    grid = summary.pivot(index="conv_layers", columns="kernel_size", values="mean") * 100
    fig = px.imshow(grid, text_auto=".2f", color_continuous_scale="Blues", aspect="auto",
                    labels=dict(x=_("kernel size"), y=_("conv+pool layers"), color=_("test accuracy (%)")),
                    title=_("Mean test accuracy (%): depth × kernel size"))
    fig.update_traces(hovertemplate=f"{_('conv+pool layers')}: %{{y}}<br>{_('kernel size')}: %{{x}}<br>"
                                    f"{_('test accuracy (%)')}: %{{z:.2f}}<extra></extra>")
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    fig.update_layout(**{**LAYOUT, "legend": {}})
    return fig


def params_figure(table: pd.DataFrame, _=_english) -> go.Figure:
    """Each run: parameters (log axis) vs test accuracy."""
    frame = table.dropna(subset=["test_acc"]).assign(acc=lambda t: t["test_acc"] * 100,
                                                     conv_layers=lambda t: t["conv_layers"].astype(str),
                                                     kernel_size=lambda t: t["kernel_size"].astype(str))
    fig = px.scatter(frame, x="params", y="acc", color="conv_layers", symbol="kernel_size", log_x=True,
                     hover_data={"seed": True, "channels": True, "acc": HOVER["acc"], "params": HOVER["count"]},
                     title=_("Parameters vs test accuracy"),
                     labels={"conv_layers": _("conv+pool layers"), "kernel_size": _("kernel size"),
                             "seed": _("random seed"), "channels": _("channels"), "params": _("parameters"),
                             "acc": _("test accuracy (%)")})
    fig.update_traces(marker=dict(size=10))
    fig.update_layout(yaxis_title=_("test accuracy (%)"), xaxis_title=_("parameters"), **LAYOUT)
    return fig


def compare_figure(summary: pd.DataFrame, _=_english) -> go.Figure:
    """FC vs CNN on normal and permuted pixels: mean with sd error bars."""
    frame = summary.assign(acc=summary["mean"] * 100, sd_pct=summary["sd"] * 100,
                           pixels=summary["pixels"].map(lambda p: _(p)))  # 'normal' / 'permuted'
    fig = px.bar(frame, x="model", y="acc", color="pixels", barmode="group", error_y="sd_pct",
                 hover_data={"acc": HOVER["acc"], "sd_pct": False, "n": True},
                 title=_("Test accuracy, mean ± sd over seeds"),
                 labels={"model": _("network"), "pixels": _("pixels"), "n": _("runs"), "acc": _("test accuracy (%)")})
    fig.update_layout(yaxis_title=_("test accuracy (%)"), xaxis_title=_("network"), **LAYOUT)
    return fig


def digits_figure(images: np.ndarray, labels: np.ndarray, cols: int, titles: list[str] | None = None,
                  row_height: int = 100, _=_english) -> go.Figure:
    """A grid of uint8 images, (n, H, W) grey or (n, H, W, 3) colour, with a title above each."""
    rows = -(-len(images) // cols)
    fig = px.imshow(images, facet_col=0, facet_col_wrap=cols, binary_string=True, facet_row_spacing=0.08,
                    facet_col_spacing=0.01)
    names = titles or [_("label {y}").format(y=y) for y in labels]
    for ann in fig.layout.annotations:  # facet titles are 'facet_col=i'
        ann.text = names[int(ann.text.split("=")[1])]
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_traces(hovertemplate=None, hoverinfo="skip")  # a pixel's x, y and colour say nothing to a student
    fig.update_layout(height=row_height * rows + 20, margin=dict(l=0, r=0, t=25, b=0))
    return fig


def lesson_figure(summary: pd.DataFrame, metric: str, title: str, axis: str, _=_english) -> go.Figure:
    """A lesson's variants side by side (`variant` already in the page's language): test accuracy
    as mean ± sd over seeds (metric 'test_acc', in %), or the mean 'seconds' / 'iterations' per run."""
    labels = {"variant": _("variant"), "text": _("mean ± sd"), "n": _("runs"), "y": axis, metric: axis}
    if metric == "test_acc":
        frame = summary.assign(y=summary["mean"] * 100, err=summary["sd"] * 100)
        fig = px.bar(frame, x="variant", y="y", error_y="err", title=title, labels=labels,
                     hover_data={"y": HOVER["acc"], "err": False, "text": True, "n": True})
    else:
        fig = px.bar(summary, x="variant", y=metric, title=title, labels=labels,
                     hover_data={metric: HOVER["seconds"] if metric == "seconds" else HOVER["count"]})
    fig.update_layout(yaxis_title=axis, xaxis_title="", **LAYOUT)
    return fig
