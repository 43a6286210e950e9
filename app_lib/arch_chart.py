"""The network's architecture as a plotly figure, drawn from mnist_lab.lab.architecture's diagram:
a box per block scaled to its output shape, what each block does above it, its shape and parameters
below it, residual shortcuts as arcs over the boxes, every layer's formula in the hover
(`architecture_figure`: no streamlit), and `show_architecture`, the pages' one call that draws it."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from mnist_lab.i18n import word
from mnist_lab.lab.architecture import Diagram, build_diagram, shape_text
from mnist_lab.nets.model import ModelConfig

COLOURS = {"input": "#c7c7c7", "block": "#9db4d8", "head": "#f5c08a"}
EDGE = "#1f4e99"
ARC = "#d62728"
DENSE = 8  # boxes above which only their shapes are written under them
LINE = 0.3  # one line of text under a box, in the drawing's units (about 14 px at the default height)


def _english(message: str) -> str:
    return message


def architecture_figure(diagram: Diagram, _=_english, lang: str = "en", height: int | None = None) -> go.Figure:
    """The diagram as one figure (built from one dict, as charts.loss_figure, for speed): `_` words
    the figure's own labels, `lang` the diagram's Messages. Above the boxes: the shortcuts' arcs;
    below each box: its label, shape and parameters, then what it does."""
    top = max(b.height for b in diagram.boxes) / 2
    dense = len(diagram.boxes) > DENSE  # too many to word under each box: its shape only, the rest on hover
    shapes, notes, hover_x, hover_y, hover = [], [], [], [], []
    deepest = 0  # text lines under the lowest box's bottom
    for i, box in enumerate(diagram.boxes):
        half = box.height / 2
        shapes.append(dict(type="rect", x0=box.x, x1=box.x + box.width, y0=-half, y1=half, layer="below",
                           line=dict(color=EDGE, width=1), fillcolor=COLOURS[box.kind]))
        if i:  # the arrow from the previous box into this one
            prev = diagram.boxes[i - 1]
            notes.append(dict(x=box.x, y=0, ax=prev.x + prev.width, ay=0, xref="x", yref="y", axref="x", ayref="y",
                              text="", showarrow=True, arrowhead=2, arrowsize=0.8, arrowwidth=1, arrowcolor="#777"))
        said = [word(m, lang) for m in box.notes]
        name = word(box.label, lang)
        if dense:
            below = [shape_text(box.shape)]
        else:
            below = [f"<b>{name}</b>", shape_text(box.shape)]
            if box.params:
                below.append(_("{n} parameters").format(n=f"{box.params:,}"))
            below += [f"<span style='color:#555;font-size:9px'>{s}</span>" for s in said]
        deepest = max(deepest, len(below) + (box.height - 2 * top) / 2 / LINE)
        notes.append(dict(x=box.centre, y=-half, yshift=-4, text="<br>".join(below), showarrow=False, yanchor="top",
                          font=dict(size=9 if dense else 10)))
        lines = [f"<b>{name}</b> → {shape_text(box.shape)}", *said]
        if box.params:
            lines.append(_("{n} parameters").format(n=f"{box.params:,}"))
        lines += [f"{r.name}: {r.formula}" for r in box.rows if r.params]
        hover_x.append(box.centre)
        hover_y.append(0)
        hover.append("<br>".join(lines))
    for arc in diagram.arcs:  # a quadratic curve over the block, from its input's box to its output's
        a, b = diagram.boxes[arc.start], diagram.boxes[arc.end]
        peak = max(a.height, b.height) / 2 + 1.2
        shapes.append(dict(type="path", path=f"M {a.centre},{a.height / 2} Q {(a.centre + b.centre) / 2},{peak} "
                           f"{b.centre},{b.height / 2}", line=dict(color=ARC, width=1.5, dash="dot")))
        notes.append(dict(x=(a.centre + b.centre) / 2, y=(max(a.height, b.height) / 2 + peak) / 2, yanchor="bottom",
                          text=word(arc.note, lang), showarrow=False, font=dict(size=9, color=ARC)))
    trace = dict(type="scatter", x=hover_x, y=hover_y, mode="markers", marker=dict(size=18, opacity=0),
                 hovertext=hover, hoverinfo="text", showlegend=False)
    axis = dict(visible=False, fixedrange=True)
    layout = dict(shapes=shapes, annotations=notes, height=height or (320 if dense else 380),
                  margin=dict(l=10, r=10, t=40, b=10),
                  title=dict(text=_("The network: {n} parameters").format(n=f"{diagram.params:,}")),
                  xaxis=dict(range=[-0.6, diagram.width + 0.6], **axis),
                  yaxis=dict(range=[-top - 0.2 - LINE * deepest, top + (1.4 if diagram.arcs else 0.3)], **axis),
                  plot_bgcolor="white", hovermode="closest")
    return go.Figure(dict(data=[trace], layout=layout))


def show_architecture(cfg: ModelConfig, key: str, expanded: bool | None = None) -> None:
    """The network of `cfg` (validated) drawn in the session's language; `expanded` None: drawn in
    place, else inside an expander open or closed. Redrawn on every rerun: the diagram is arithmetic
    and the figure one dict (bench/bench_arch.py)."""
    from app_lib.lang import _, current

    fig = architecture_figure(build_diagram(cfg), _=_, lang=current())
    caption = _("Each box is a block's output (channels × height × width), its height growing with the side and "
                "its width with the channels; hover over a box for its layers' parameter formulas.")
    if expanded is None:
        st.plotly_chart(fig, key=key, config=dict(displayModeBar=False))
        st.caption(caption)
        return
    with st.expander(_("The network, drawn"), expanded=expanded):
        st.plotly_chart(fig, key=key, config=dict(displayModeBar=False))
        st.caption(caption)
