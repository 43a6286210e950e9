"""Pictures for the Inspect page's "Trace a unit" tab, from what mnist_lab.lab.trace returns: a
feature map whose pixels can be clicked, the input with a unit's receptive field outlined, and
small numbered grids (patch, kernel, products, the pool's window). No streamlit here."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .charts import LAYOUT


def _square(fig: go.Figure, height: int, title: str) -> go.Figure:
    fig.update_layout(**{**LAYOUT, "height": height, "margin": dict(l=10, r=10, t=40, b=10)}, title=title,
                      dragmode=False)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    fig.update_xaxes(visible=False)
    return fig


def map_figure(fmap: np.ndarray, y: int, x: int, title: str, hover: str) -> go.Figure:
    """One channel (H, W) of a feature map, the unit (y, x) ringed. Each pixel also carries an
    invisible marker, so a click selects it (trace 1, point index y * W + x); `hover` is the
    template's words around the value, e.g. "value"."""
    h, w = fmap.shape
    fig = go.Figure(go.Heatmap(z=fmap, colorscale="RdBu", zmid=0, showscale=False, hoverinfo="skip"))
    ys, xs = np.divmod(np.arange(h * w), w)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", marker=dict(size=max(6, 300 // max(h, w)), opacity=0.0,
                                                                        symbol="square"),
                             customdata=fmap.reshape(-1), showlegend=False,
                             hovertemplate=f"(%{{y}}, %{{x}}) {hover} %{{customdata:.4f}}<extra></extra>"))
    fig.add_shape(type="rect", x0=x - 0.5, x1=x + 0.5, y0=y - 0.5, y1=y + 0.5, line=dict(color="#ffbf00", width=3))
    fig.update_layout(clickmode="event+select")
    return _square(fig, 320, title)


def field_figure(image: np.ndarray, box: tuple[int, int, int, int] | None, mask: np.ndarray | None,
                 title: str) -> go.Figure:
    """The input (grey (H, W), or colour (C, H, W) uint8) with the receptive field: `box` (top,
    left, bottom, right; inclusive, may pass the edge) outlined, or for a permuted run the `mask`
    (H, W) of the scattered pixels it reads, tinted."""
    if image.ndim == 3 and image.shape[0] == 3:
        fig = go.Figure(go.Image(z=image.transpose(1, 2, 0)))
    else:
        grey = image[0] if image.ndim == 3 else image
        fig = go.Figure(go.Heatmap(z=grey, colorscale="Greys_r", showscale=False, hoverinfo="skip"))
    if mask is not None:
        fig.add_trace(go.Heatmap(z=np.where(mask, 1.0, np.nan), colorscale=[[0, "#ffbf00"], [1, "#ffbf00"]],
                                 opacity=0.55, showscale=False, hoverinfo="skip"))
    if box is not None:
        t, left, b, right = box
        fig.add_shape(type="rect", x0=left - 0.5, x1=right + 0.5, y0=t - 0.5, y1=b + 0.5,
                      line=dict(color="#ffbf00", width=3))
    h, w = image.shape[-2:]
    fig = _square(fig, 300, title)
    if box is not None:  # the box may pass the edge (padding): keep the whole of it in view
        fig.update_xaxes(range=[min(left, 0) - 0.5, max(right, w - 1) + 0.5])
        fig.update_yaxes(range=[max(b, h - 1) + 0.5, min(t, 0) - 0.5], autorange=False)
    return fig


def grid_figure(values: np.ndarray, title: str, padded: np.ndarray | None = None,
                mark: tuple[int, int] | None = None) -> go.Figure:
    """A small grid (k, k) with each number written in its cell; `padded` cells (zero padding)
    are greyed, `mark` (row, column) is ringed."""
    k_h, k_w = values.shape
    text = [[f"{values[r, c]:.3f}" for c in range(k_w)] for r in range(k_h)]
    z = values.astype(float)
    fig = go.Figure(go.Heatmap(z=z, text=text, texttemplate="%{text}" if k_h * k_w <= 49 else "",
                               colorscale="RdBu", zmid=0, showscale=False,
                               hovertemplate="(%{y}, %{x}) %{text}<extra></extra>"))
    if padded is not None and padded.any():
        only = [[text[r][c] if padded[r, c] else "" for c in range(k_w)] for r in range(k_h)]  # no double text
        fig.add_trace(go.Heatmap(z=np.where(padded, 1.0, np.nan), colorscale=[[0, "#bbbbbb"], [1, "#bbbbbb"]],
                                 text=only, texttemplate="%{text}", showscale=False, hoverinfo="skip"))
    if mark is not None:
        r, c = mark
        fig.add_shape(type="rect", x0=c - 0.5, x1=c + 0.5, y0=r - 0.5, y1=r + 0.5, line=dict(color="#ffbf00", width=3))
    return _square(fig, max(160, 48 * k_h + 60), title)


def crop_picture(patch: np.ndarray, scale: int = 8) -> np.ndarray:
    """A receptive field's crop, uint8 (C, h, w), as a picture (h*scale + 2, w*scale + 2, 3) in a
    mid-grey frame, so white ink at its edge still reads against a light page."""
    image = np.repeat(np.repeat(patch, scale, axis=1), scale, axis=2)  # (C, H, W)
    image = np.broadcast_to(image, (3, *image.shape[1:])) if image.shape[0] == 1 else image
    framed = np.full((3, image.shape[1] + 2, image.shape[2] + 2), 128, dtype=np.uint8)
    framed[:, 1:-1, 1:-1] = image
    return np.ascontiguousarray(framed.transpose(1, 2, 0))
