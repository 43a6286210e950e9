"""Pictures for the Inspect page, from the numpy arrays mnist_lab.lab.inspection returns: the
confusion matrix as a clickable heatmap, channels tiled into one image (filters and feature maps
with gaps between them), probabilities as bars. No streamlit here."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .charts import LAYOUT


def confusion_figure(counts: np.ndarray, names: list[str], normalized: bool, title: str, x_title: str,
                     y_title: str) -> go.Figure:
    """counts (K, K), rows true. Each cell also carries an invisible marker, so a click selects
    it (plotly reports clicks on scatter points): trace 1, point index true * K + predicted."""
    k = len(names)
    rows = counts.sum(axis=1, keepdims=True)
    z = counts / np.maximum(rows, 1) if normalized else counts
    text = [[f"{z[t, p]:.2f}" if normalized else f"{int(z[t, p])}" for p in range(k)] for t in range(k)]
    fig = go.Figure(go.Heatmap(z=z, x=names, y=names, text=text, texttemplate="%{text}", colorscale="Blues",
                               hoverinfo="skip", showscale=False))
    t, p = np.divmod(np.arange(k * k), k)
    # the markers take the hover and the click ("skip" would drop both events)
    fig.add_trace(go.Scatter(x=[names[i] for i in p], y=[names[i] for i in t], mode="markers",
                             marker=dict(size=28, opacity=0.0, symbol="square"),
                             text=[text[i][j] for i, j in zip(t, p)], showlegend=False,
                             hovertemplate=f"{y_title} %{{y}} → {x_title} %{{x}}: %{{text}}<extra></extra>"))
    fig.update_layout(**{**LAYOUT, "height": 480}, title=title, xaxis_title=x_title, yaxis_title=y_title,
                      clickmode="event+select", dragmode=False)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category", side="bottom")
    return fig


def _stretched(m: np.ndarray) -> np.ndarray:
    """One channel (H, W) as grey uint8, stretched to its own min..max (a flat one is black)."""
    m = m.astype(np.float32)
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return (m * 255).round().astype(np.uint8)


def tile(maps: np.ndarray, columns: int | None = None, scale: int = 1, pad: int = 1) -> np.ndarray:
    """Channels (C, H, W) as one grey uint8 image: a grid of C tiles, each stretched to its own
    min..max, `pad` pixels of mid-grey between them, every pixel repeated `scale` times."""
    c, h, w = maps.shape
    columns = columns or int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / columns))
    out = np.full((rows * (h + pad) - pad, columns * (w + pad) - pad), 128, dtype=np.uint8)
    for i in range(c):
        r, q = divmod(i, columns)
        out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = _stretched(maps[i])
    return np.kron(out, np.ones((scale, scale), dtype=np.uint8)) if scale > 1 else out


def mosaic(maps: np.ndarray, columns: int | None = None, scale: int = 1, gap: int | None = None) -> np.ndarray:
    """Channels (C, H, W) as one RGBA uint8 picture (rows * (H*scale + gap) - gap, ...): each tile
    stretched to its own min..max and enlarged `scale` times, `gap` fully transparent pixels
    between tiles (default: as wide as one enlarged pixel, at least 4). The page shows through
    the gaps, so the tiles read as separate filters whatever their own grey levels (a grey gap
    disappears next to grey weights)."""
    c, h, w = maps.shape
    gap = max(4, scale) if gap is None else gap
    columns = columns or int(np.ceil(np.sqrt(c)))
    rows = int(np.ceil(c / columns))
    th, tw = h * scale, w * scale
    out = np.zeros((rows * (th + gap) - gap, columns * (tw + gap) - gap, 4), dtype=np.uint8)  # transparent
    for i in range(c):
        r, q = divmod(i, columns)
        grey = np.kron(_stretched(maps[i]), np.ones((scale, scale), dtype=np.uint8))
        cell = out[r * (th + gap):r * (th + gap) + th, q * (tw + gap):q * (tw + gap) + tw]
        cell[..., :3] = grey[..., None]
        cell[..., 3] = 255
    return out


def enlarge(image: np.ndarray, scale: int) -> np.ndarray:
    """A dataset image, grey (H, W) or colour (C, H, W) as the datasets store it, as a picture
    (H, W[, C]) upscaled nearest-neighbour, so a 28×28 digit shows its pixels sharp."""
    if image.ndim == 3:
        image = image.transpose(1, 2, 0)
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def probability_figure(probs: np.ndarray, names: list[str], title: str) -> go.Figure:
    best = int(np.argmax(probs))
    fig = go.Figure(go.Bar(x=names, y=probs, marker_color=["#1f77b4" if i == best else "#c7c7c7"
                                                           for i in range(len(names))],
                           hovertemplate="%{x}: %{y:.2%}<extra></extra>"))
    fig.update_layout(**{**LAYOUT, "height": 240}, title=title, yaxis=dict(range=[0, 1], tickformat=".0%"))
    fig.update_xaxes(type="category")
    return fig


def heat(image: np.ndarray, title: str) -> go.Figure:
    """A saliency map (H, W) as a heat image."""
    fig = go.Figure(go.Heatmap(z=image, colorscale="Hot", showscale=False, hoverinfo="skip"))
    fig.update_layout(**{**LAYOUT, "height": 260}, title=title)
    fig.update_yaxes(autorange="reversed", scaleanchor="x", visible=False)
    fig.update_xaxes(visible=False)
    return fig
