"""Inspect: look inside a trained run whose weights are kept — its confusion matrix (click a cell
for those test images), per-class accuracy, the most confused pairs; a drawn or uploaded digit
as the network receives it, predicted by one or two runs; the first layer's filters, every
block's feature maps before and after pooling, top-3 and saliency; the run as a standalone
PyTorch program. Deep link: /inspect?run=RUN_ID."""
import numpy as np
import streamlit as st

from app_lib.arch_chart import show_architecture
from app_lib.inspect_charts import (
    confusion_figure,
    enlarge,
    heat,
    mosaic,
    probability_figure,
    tile,
)
from app_lib.lang import _, current, render_error
from app_lib.shared import result_store, runner
from app_lib.text import percent, plain
from app_lib.trace_panel import trace_panel
from app_lib.widgets import pick_image, run_labels, table
from mnist_lab.errors import StoreError, shorten
from mnist_lab.i18n import word
from mnist_lab.lab import inspection as ir
from mnist_lab.lab.export import export_zip, onnx_unavailable
from mnist_lab.runs.weights import nonfinite_warning


@st.cache_resource(max_entries=6, show_spinner=False)
def loaded(db: str, run_id: str) -> ir.LoadedRun:
    # Shared by every session: eval mode, never trained again, and nothing here changes it (feature
    # maps run its layers one by one instead of hooking it), so two students never see each other's.
    return ir.load_run(result_store(), run_id)


@st.cache_data(max_entries=16, show_spinner=_("Predicting every test image…"))
def confusion_of(db: str, run_id: str) -> ir.Confusion:
    run = loaded(db, run_id)
    return ir.confusion(run, *ir.evaluated_images(run))


@st.cache_data(max_entries=4, show_spinner=False)
def test_arrays(db: str, run_id: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = ir.evaluated_images(loaded(db, run_id))
    return x.numpy(), y.numpy()


def problem(exc: BaseException) -> str:
    """A refusal in the session's language; an OSError of this server (a file deleted meanwhile, a
    permission) by its cause only, never with its path (a server's folders are not the student's)."""
    if isinstance(exc, OSError) and not getattr(exc, "template", None):
        return _("A file on the server could not be read ({detail}). Try again, or tell whoever runs the lab.").format(
            detail=exc.strerror or type(exc).__name__)
    return render_error(exc)


st.title(_("Inspect a trained network"))
try:
    store = result_store()
    runs = runner().runs()  # only the runs this session may see (mnist_lab.service.access)
except StoreError as exc:
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
kept = store.inspectable(runs["run_id"])
runs = runs[runs["run_id"].isin(kept)]
if runs.empty:
    st.info(_("No run can be inspected yet: runs keep their weights from this version on. Train one on the Train "
              "page, then come back."))
    st.stop()
labels = {r.run_id: f"{label} · {percent(r.final_test_acc)} · {r.run_id}"
          for r, label in zip(runs.itertuples(), run_labels(runs))}
asked = st.query_params.get("run")
if asked is not None and asked not in labels:  # unknown, or another workspace's: the same words, nothing named
    st.warning(_("This link has values the page cannot use, so their defaults are shown instead: {values}.")
               .format(values=plain(f"run={shorten(asked, quote=False)}")), icon=":material/link_off:")
if "insp_run" not in st.session_state or (asked in labels and asked != st.session_state.get("insp_asked")):
    st.session_state.insp_run = asked if asked in labels else next(iter(labels))
    st.session_state.insp_asked = asked
if st.session_state.insp_run not in labels:
    st.session_state.insp_run = next(iter(labels))
run_id = st.selectbox(_("Run"), list(labels), format_func=labels.get, key="insp_run")
st.query_params["run"] = run_id
db = str(store.path)
if not runner().may_see_run(run_id):  # another workspace's run: not loaded, not even named
    st.stop()
try:
    run = loaded(db, run_id)  # a damaged or crafted weights file is refused whole (WeightsError), in words
except (OSError, ValueError, RuntimeError) as exc:  # weights deleted meanwhile, or refused
    st.error(plain(problem(exc)))
    st.stop()


def export_tab() -> None:
    st.caption(_("A zip with the weights (safetensors and a PyTorch state_dict) and train_{run}.py: the network as an "
                 "nn.Module, the data, the optimiser and a training loop printing every iteration's loss; "
                 "`--evaluate` reports this run's test accuracy. It needs only torch and torchvision.").format(
        run=run_id))
    if (missing := onnx_unavailable()) is None:
        st.caption(_("The zip also holds model.onnx, the trained network in ONNX. To see its layers, shapes and "
                     "weights, open it in Netron: drop it on [netron.app](https://netron.app), or run `pip install "
                     "netron` and then `netron model.onnx`. It takes the image normalised (and, for a permuted run, "
                     "permuted) as this run's network does; the zip's README.md says how."))
    else:
        st.caption(plain(word(missing, current())))
    st.download_button(_("Download the run as a program (.zip)"), data=lambda: export_zip(run),
                       file_name=f"run_{run_id}.zip", mime="application/zip", key="insp_export")


if (warning := nonfinite_warning(run.saved)) is not None:  # a diverged run: its accuracy and predictions mean nothing
    st.warning(plain(word(warning, current())), icon=":material/warning:")
    export_tab()  # the program still reproduces the run, divergence included
    st.stop()
try:
    conf = confusion_of(db, run_id)
    x_test, y_test = test_arrays(db, run_id)
except (OSError, ValueError, RuntimeError) as exc:  # data unavailable
    st.error(plain(problem(exc)))
    st.stop()
names, permuted = ir.class_names(run.data_cfg, current()), run.permutation is not None
st.caption(_("{n:,} test images · test accuracy {acc} · {status}{perm}").format(
    n=conf.n, acc=percent(conf.accuracy), status=_(run.saved.status),
    perm=_(" · trained on permuted pixels") if permuted else ""))

show_architecture(run.model_cfg, key="insp_arch_chart", expanded=False)
tab_cm, tab_digit, tab_maps, tab_trace, tab_export = st.tabs([_("Confusion matrix"), _("Your own digit"),
                                                              _("Filters and feature maps"), _("Trace a unit"),
                                                              _("Export")])
with tab_cm:
    normalized = st.toggle(_("Row-normalised (share of each true class)"), key="insp_norm")
    fig = confusion_figure(conf.counts, names, normalized, _("Confusion matrix (click a cell)"), _("predicted"),
                           _("true"))
    event = st.plotly_chart(fig, on_select="rerun", selection_mode="points", key="insp_cm")
    points = [q for q in (event or {}).get("selection", {}).get("points", []) if q.get("curve_number") == 1]
    clicked = divmod(int(points[0]["point_index"]), len(names)) if points else None  # the markers: (true, pred)
    if clicked and clicked != st.session_state.get("insp_clicked"):  # a new click sets the selectboxes below
        st.session_state.insp_clicked = clicked
        st.session_state.insp_true, st.session_state.insp_pred = clicked
    pairs = conf.confused_pairs(5)
    if "insp_true" not in st.session_state and len(pairs):
        st.session_state.insp_true, st.session_state.insp_pred = int(pairs["true"][0]), int(pairs["predicted"][0])
    a, b = st.columns(2)
    with a:
        st.subheader(_("Per-class accuracy"))
        table(conf.per_class().drop(columns="class_id").rename(columns={"name": "class"}), hide_index=True,
              column_config={"accuracy": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)})
    with b:
        st.subheader(_("Most confused pairs"))
        table(pairs[["true_name", "predicted_name", "count", "share"]], hide_index=True,
              column_config={"share": st.column_config.NumberColumn(format="percent")})
    st.subheader(_("Gallery"))
    c1, c2 = st.columns(2)
    true = c1.selectbox(_("True class"), range(len(names)), format_func=names.__getitem__, key="insp_true")
    pred = c2.selectbox(_("Predicted as"), range(len(names)), format_func=names.__getitem__, key="insp_pred")
    cell = conf.cell(true, pred)
    st.caption(_("{n} test image(s) of class {t} predicted as {p}, most confident first.").format(
        n=len(cell), t=names[true], p=names[pred]))
    shown = cell[:24]
    if len(shown):
        st.image([enlarge(x_test[i], 3) for i in shown], caption=[
            f"#{i}: {names[int(y_test[i])]} → {names[int(conf.y_pred[i])]} ({percent(conf.confidence[i])})"
            for i in shown])


def maps_tab_changes(before: np.ndarray | None, image: np.ndarray | None) -> bool:
    """Whether a new drawing or upload changes the feature maps tab or the trace tab: their "your
    drawing" choice appears or goes, or the drawing one of them shows is another one."""
    if (before is None) != (image is None):
        return True
    shown = any(st.session_state.get(key) == _("your drawing") for key in ("insp_source", "insp_tr_source"))
    return image is not None and shown and not np.array_equal(before, image)


@st.fragment
def own_digit() -> None:
    """Drawing reruns only this part of the page: the drawn digit reaches its prediction fast."""
    mnist_like = run.data_cfg.dataset == "mnist"
    # the instruction beside the canvas, not above it: the canvas's toolbar cannot cover it there
    beside, note = st.columns([1, 2]) if mnist_like else (None, st.container())
    note.caption(_("Draw a digit (white on black) or upload a picture of one. It is prepared as MNIST's digits were: "
                   "its bounding box scaled into 20×20, centred by its centre of mass in 28×28.") if mnist_like
                 else _("Upload a picture: it is resized to the dataset's image size."))
    ink = None
    if mnist_like:
        from streamlit_drawable_canvas import st_canvas

        with beside:
            # room above the canvas: its toolbar is drawn over what is above it (here, the tabs to click)
            st.markdown("<div style='height:2.5rem'></div>", unsafe_allow_html=True)
            drawn = st_canvas(stroke_width=18, stroke_color="#FFFFFF", background_color="#000000", height=224,
                              width=224, drawing_mode="freedraw", return_image_data=True, key="insp_canvas")
        rgba = drawn.image_data if drawn is not None else None  # (H, W, 4) uint8
        if rgba is not None and rgba[..., :3].max() > 0:
            ink = (rgba[..., :3].max(axis=2) * (rgba[..., 3] / 255.0)).astype(np.float32)
    upload = st.file_uploader(_("…or upload an image"), type=[f.lower() for f in ir.UPLOAD_FORMATS] + ["jpg"],
                              key="insp_upload")
    image = None
    try:
        if upload is not None:
            name = shorten(upload.name, quote=False)  # the browser's text: one line, cut
            ir.check_size(upload.size, name)  # before its bytes are read
            image = ir.prepare_upload(ir.decode_image(upload.getvalue(), name=name), run)
        elif ink is not None:
            image = ir.prepare_digit(ink)
    except ValueError as exc:  # ImageRefused: too large, not an image, a bomb, an empty drawing
        st.error(plain(render_error(exc)))
    before = st.session_state.get("insp_digit")
    st.session_state.insp_digit = image  # for the feature maps tab
    if maps_tab_changes(before, image):
        st.rerun()  # this fragment's reruns leave the tab below as it was drawn: draw the page again
    if image is None:
        return
    others = [r for r in labels if r != run_id]
    second = st.selectbox(_("Compare with another run"), [None, *others], key="insp_second",
                          format_func=lambda r: _("(none)") if r is None else labels[r])
    for slot, (rid, col) in enumerate(zip([run_id, second], st.columns(2))):
        if rid is None:
            continue
        try:
            other = loaded(db, rid)
        except (OSError, ValueError, RuntimeError) as exc:  # its weights deleted meanwhile, or refused
            col.error(plain(problem(exc)))
            continue
        if (other_warning := nonfinite_warning(other.saved)) is not None:
            col.warning(plain(word(other_warning, current())), icon=":material/warning:")
            continue
        result = ir.predict(other, image)
        with col:
            st.image([enlarge(image, 6), enlarge(tile(result.seen), 6)], caption=[
                _("prepared 28×28"), _("what the network receives (permuted)") if other.permutation is not None
                else _("what the network receives (normalised)")])
            with st.container(key=f"insp_top_{slot}"):  # top-3; the key marks it for the browser test and bench
                st.markdown(" · ".join(f"**{plain(n)}** {percent(p)}" for _c, n, p in result.top))
            st.plotly_chart(probability_figure(result.probs, ir.class_names(other.data_cfg, current()), labels[rid]),
                            key=f"insp_p_{rid}")


with tab_digit:
    own_digit()

with tab_maps:
    filters = ir.first_layer_filters(run)  # (out, C, kh, kw)
    st.subheader(_("First layer's filters"))
    grid = mosaic(filters[:, 0], columns=min(len(filters), 16), scale=max(1, 48 // filters.shape[-1]))
    st.image(grid, width=min(grid.shape[1], 1000),
             caption=_("{n} filters of {k}×{k} (channel 1)").format(n=len(filters), k=filters.shape[-1]))
    image = pick_image(x_test, "insp_source", "insp_index")
    result = ir.predict(run, image)
    x = ir.network_input(run, image)
    target = result.top[0][0]
    sal = ir.saliency(run, x, target)  # in the original pixel order
    cols = st.columns(4 if permuted else 3)
    cols[0].image(enlarge(image, 6), caption=_("the image"))
    if permuted:
        cols[1].image(enlarge(tile(result.seen), 6), caption=_("what the network sees: the same pixels shuffled"))
    cols[-2].markdown("\n".join(f"{k}. **{plain(n)}** {percent(p)}" for k, (_c, n, p) in enumerate(result.top, 1)))
    cols[-1].plotly_chart(heat(sal, _("saliency for {c}").format(c=names[target])), key="insp_sal")
    st.subheader(_("Feature maps, block by block"))
    maps = ir.feature_maps(run, x)
    if not maps:
        st.info(_("A fully-connected network flattens the image at once: it has no feature maps. Its first layer's "
                  "weights, drawn above as images, are what it looks for."))
    for block in sorted({m.block for m in maps}):
        stages = [m for m in maps if m.block == block]
        st.markdown(_("**Block {b}**").format(b=block) if block else _("**Input layers**"))
        for m, col in zip(stages, st.columns(len(stages))):
            grid = mosaic(m.maps, scale=max(1, 96 // m.shape[-1]))
            col.image(grid, width="stretch", caption=f"{m.name} {m.shape}")  # as wide as its column

with tab_trace:
    trace_panel(run, x_test)

with tab_export:
    export_tab()
