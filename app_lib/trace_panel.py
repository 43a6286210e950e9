"""The Inspect page's "Trace a unit" tab: pick an image, a convolution, a channel and a unit (click
the feature map, or the sliders), then follow it: its receptive field on the input, patch x
kernel = products, sum + bias (and the network's own value), BatchNorm, shortcut, ReLU, the
pool; and "what this filter looks for", the test images that excite the channel most."""
from __future__ import annotations

import numpy as np
import streamlit as st
import torch

from app_lib.lang import _, render_error
from app_lib.text import plain
from app_lib.trace_charts import crop_picture, field_figure, grid_figure, map_figure
from app_lib.widgets import pick_image
from mnist_lab.lab import inspection as ir
from mnist_lab.lab import trace as tr

TOP_K = 9
QUIET = {"displayModeBar": False}  # the toolbar would cover the small charts' titles


def number(v: float) -> str:
    return f"{v:.4f}"


def layer_label(layer: tr.ConvLayer) -> str:
    return _("block {b} · {name} · {c} channels, k{k}").format(b=layer.block, name=layer.name,
                                                               c=layer.out_channels, k=layer.kernel)


def pick_unit(fmap: np.ndarray, channel: int, layer: tr.ConvLayer) -> tuple[int, int]:
    """(y, x) from a click on the map, else the sliders (the fallback, and what a click sets)."""
    h, w = fmap.shape
    for key, high in (("insp_tr_y", h), ("insp_tr_x", w)):
        if st.session_state.get(key, 0) >= high:  # another layer's smaller map
            st.session_state[key] = high - 1
    y0, x0 = st.session_state.get("insp_tr_y", 0), st.session_state.get("insp_tr_x", 0)
    fig = map_figure(fmap, y0, x0, _("{name}, channel {c}, before ReLU (click a unit)").format(
        name=layer.name, c=channel), _("value"))
    event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="insp_tr_map", config=QUIET)
    points = [q for q in (event or {}).get("selection", {}).get("points", []) if q.get("curve_number") == 1]
    clicked = divmod(int(points[0]["point_index"]), w) if points else None
    if clicked and clicked != st.session_state.get("insp_tr_clicked"):
        st.session_state.insp_tr_clicked = clicked
        st.session_state.insp_tr_y, st.session_state.insp_tr_x = clicked
        st.rerun()
    a, b = st.columns(2)
    y = a.slider(_("Row (y)"), 0, max(h - 1, 1), key="insp_tr_y", disabled=h == 1)
    x = b.slider(_("Column (x)"), 0, max(w - 1, 1), key="insp_tr_x", disabled=w == 1)
    return min(y, h - 1), min(x, w - 1)


def show_conv(t: tr.Trace, layer: tr.ConvLayer) -> None:
    n_in = t.patch.shape[0]
    i = 0
    if n_in > 1:
        sums = t.products.reshape(n_in, -1).sum(axis=1)
        # worded now: a format_func runs again outside this run (AppTest), where the language may differ
        words = {c: _("channel {c}: products sum to {s}").format(c=c, s=number(sums[c])) for c in range(n_in)}
        i = st.selectbox(_("Input channel shown"), range(n_in), index=int(np.argmax(np.abs(sums))),
                         format_func=words.get, key="insp_tr_in")
    where = _("the input image") if layer.block == 1 and not layer.in_block and not layer.before else \
        _("the previous layer's output")
    cols = st.columns(3)
    cols[0].plotly_chart(grid_figure(t.patch[i], _("patch of {where}").format(where=where), t.padded),
                         key="insp_tr_patch", config=QUIET)
    cols[1].plotly_chart(grid_figure(t.kernel[i], _("kernel")), key="insp_tr_kernel", config=QUIET)
    cols[2].plotly_chart(grid_figure(t.products[i], _("patch × kernel")), key="insp_tr_products", config=QUIET)
    if t.padded.any():
        st.caption(_("Grey cells lie outside the previous map: zero padding, so they read 0."))
    k = t.kernel.shape[-1]
    with st.container(key="insp_tr_sum"):
        st.markdown(_("Sum of the {n} products ({c}×{k}×{k}) = **{s}**; + bias {b} = **{v}**").format(
            n=t.products.size, c=n_in, k=k, s=number(t.sum), b=number(t.bias), v=number(t.total)))
        if t.agrees:
            st.success(_("The network computed: {v} (the same number).").format(v=number(t.network)),
                       icon=":material/check:")
        else:
            st.error(_("The network computed: {v}, not the same number.").format(v=number(t.network)))


def show_steps(t: tr.Trace) -> None:
    for step in t.steps:
        if isinstance(step, tr.BatchNormStep):
            st.markdown(_("**BatchNorm** (evaluation mode: the running mean {m} and variance {var}): {v} × scale {a} + "
                          "shift {s} = **{out}**").format(m=number(step.mean), var=number(step.var),
                                                          v=number(step.before), a=number(step.scale),
                                                          s=number(step.shift), out=number(step.after)))
            st.caption(_("scale = γ / √(variance + ε) = {g} / √({var} + {eps:g}); shift = β − mean × scale = {b} − {m} "
                         "× scale").format(g=number(step.gamma), var=number(step.var), eps=step.eps,
                                           b=number(step.beta), m=number(step.mean)))
        elif isinstance(step, tr.ShortcutStep):
            words = _("**Shortcut** (a 1×1 convolution with BatchNorm of the block's input): {v} + {a} = **{out}**") \
                if step.projection else _("**Shortcut** (the block's input itself): {v} + {a} = **{out}**")
            st.markdown(words.format(
                v=number(step.before), a=number(step.added), out=number(step.after)))
        elif isinstance(step, tr.ReluStep):
            st.markdown(_("**ReLU**: max(0, {v}) = **{out}**").format(v=number(step.before), out=number(step.after)))
        elif isinstance(step, tr.PoolStep):
            if step.window is None:
                st.markdown(_("**Max-pool**: this unit is dropped; its row or column is left out by the 2×2 windows "
                              "(an odd size)."))
                continue
            ty, tx = step.top_left
            mark = (t.y - max(ty, 0), t.x - max(tx, 0))  # the unit's cell (one pool follows a convolution)
            a, b = st.columns([1, 2])
            a.plotly_chart(grid_figure(step.window, _("max-pool window"), mark=mark), key="insp_tr_pool", config=QUIET)
            b.markdown((_("**Max-pool**: the window's largest value is this unit's, {out}: it is **kept** (at {at} of "
                          "the pooled map)") if step.kept else
                        _("**Max-pool**: the window's largest value is {out}, not this unit's {v}: it is **dropped**"))
                       .format(out=number(step.after), v=number(step.before), at=str(step.at)))


def show_field(t: tr.Trace, image: np.ndarray) -> None:
    t_, left, b, right = t.box
    if t.permuted:
        fig = field_figure(image, None, t.field_mask, _("receptive field on the image"))
        st.plotly_chart(fig, key="insp_tr_field", config=QUIET)
        st.caption(_("This run was trained on permuted pixels: the unit reads a {r}×{r} box of the shuffled image, "
                     "that is these {n} pixels scattered over the digit.").format(r=t.field_size,
                                                                                    n=int(t.field_mask.sum())))
        return
    st.plotly_chart(field_figure(image, t.box, None, _("receptive field on the image")), key="insp_tr_field",
                    config=QUIET)
    st.caption(_("Rows {t}–{b}, columns {l}–{r}: {n}×{n} pixels, 1 + Σ (kernel − 1) × the strides before it; parts "
                 "outside the image are padding.").format(t=t_, b=b, l=left, r=right, n=t.field_size))
    if len(t.growth) > 2:
        st.caption(_("It grows layer by layer: {sizes} pixels a side.").format(sizes=" → ".join(map(str, t.growth))))


def top_patches(run: ir.LoadedRun, x_test: np.ndarray, layer: tr.ConvLayer, channel: int) -> None:
    st.subheader(_("What this filter looks for"))
    done = st.session_state.setdefault("insp_tr_done", set())
    key = (run.run_id, layer.name)
    searched = tr.searched_images(run, layer.name, len(x_test))  # a deep network: the first images that fit
    among = (_("all {n} test images").format(n=f"{searched:,}") if searched == len(x_test) else
             _("the first {n} of the {total} test images (a deeper network: all of them would take minutes)").format(
                 n=f"{searched:,}", total=f"{len(x_test):,}"))
    if key not in done:
        st.caption(_("The {k} test images that excite channel {c} of {name} most, each cut to the unit's receptive "
                     "field. Once per convolution it goes through {among} (a few seconds), then it is kept.").format(
                         k=TOP_K, c=channel, name=layer.name, among=among))
        if not st.button(_("Find them"), key="insp_tr_find"):
            return
    with st.spinner(_("Going through the test images…")):
        units = tr.top_units(run, torch.from_numpy(x_test), layer.name, channel, TOP_K, searched=searched)
    done.add(key)
    st.caption(_("Searched: {among}.").format(among=among))
    if run.permutation is not None:
        st.caption(_("This run was trained on permuted pixels: each crop is of the shuffled image the network "
                     "received."))
    st.image([crop_picture(u.patch) for u in units], caption=[
        _("#{i}: {v} at ({y}, {x})").format(i=u.index, v=number(u.value), y=u.y, x=u.x) for u in units])


def trace_panel(run: ir.LoadedRun, x_test: np.ndarray) -> None:
    layers = tr.conv_layers(run)
    if not layers:
        st.info(_("A fully-connected network has no convolution to trace: each of its units reads every pixel."))
        return
    image = pick_image(x_test, "insp_tr_source", "insp_tr_index")
    by_name = {layer.name: layer for layer in layers}
    words = {layer.name: layer_label(layer) for layer in layers}
    a, b = st.columns(2)
    name = a.selectbox(_("Convolution"), list(by_name), format_func=words.get, key="insp_tr_layer")
    layer = by_name[name]
    if st.session_state.get("insp_tr_channel", 0) >= layer.out_channels:
        st.session_state.insp_tr_channel = 0
    channel = int(b.number_input(_("Channel"), 0, layer.out_channels - 1, 0, key="insp_tr_channel"))
    x = ir.network_input(run, image)
    fmap = tr.pre_activations(run, x, layer)[0, channel].float().numpy()
    left, right = st.columns([1, 1])
    with left:
        y, x_ = pick_unit(fmap, channel, layer)
    try:
        t = tr.trace(run, x, name, channel, y, x_)
    except ValueError as exc:
        st.error(plain(render_error(exc)))
        return
    with right:
        show_field(t, image)
    where = _(" of {block}'s {conv}").format(block=layer.path[0], conv=layer.in_block) if layer.in_block else ""
    st.markdown(_("**Unit ({c}, {y}, {x}) of {name}**{where}: a {k}×{k} convolution, stride {s}, padding {p}.").format(
        c=channel, y=y, x=x_, name=name, where=where, k=layer.kernel, s=layer.stride, p=layer.padding))
    show_conv(t, layer)
    show_steps(t)
    top_patches(run, x_test, layer, channel)
