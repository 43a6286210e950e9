"""Class results (the teacher only): every student's runs with the same settings pooled
(mnist_lab.lab.classwork: deduplicated by configuration and seed) into the depth × kernel grid and
the FC-vs-CNN table, with mean ± sd, seeds and students, the Sweep page's charts and the report's
reading; the pooled tables as CSV."""
import streamlit as st

from app_lib.charts import compare_figure, error_line_figure, heatmap_figure
from app_lib.lang import _, ngettext, render_error
from app_lib.reading import reading_markdown
from app_lib.shared import result_store, teacher_only
from app_lib.text import plain
from app_lib.widgets import MEAN_SD_HELP, csv_button, headers, mean_sd_texts, not_learned_note, table
from mnist_lab.errors import StoreError
from mnist_lab.lab.classwork import class_runs, pooled_compares, pooled_grids, pooled_tables, settings_text


def cell_texts(cells) -> list[str]:
    """Each cell's 'mean ± sd (n seeds, k students)' in the session's language."""
    return [_("{text} ({n} seeds, {k} students)").format(text=t, n=n, k=k) if n > 1 else
            _("{text} (1 seed, {k} students)").format(text=t, k=k)
            for t, n, k in zip(mean_sd_texts(cells), cells["n"], cells["students"])]


def set_names(sets) -> dict[int, str]:
    """Each pooled set (a PooledGrid or PooledCompare) as a picker shows it."""
    return {i: _("{settings} · {students} students · {runs} runs").format(
        settings=render_error(settings_text(s.settings)), students=s.students,
        runs=f"{int(s.cells['runs'].sum()):,}")
        for i, s in enumerate(sets)}


teacher_only()
st.title(_("Class results"))
try:
    runs = class_runs(result_store())
    grids, compares = pooled_grids(runs), pooled_compares(runs)
except StoreError as exc:
    st.error(plain(render_error(exc)), icon=":material/database:")
    st.stop()
st.markdown(_("Every student's finished runs with the same settings, pooled: two students who trained the same "
              "network with the same settings and seed trained the same run, so it counts once (the earliest)."),
            help=_(MEAN_SD_HELP))
c1, c2, _rest = st.columns([1, 1, 2])
with c1:
    csv_button(lambda: pooled_tables(runs)["pooled_grid"], "pooled_grid.csv", label=_("Depth × kernel (CSV)"),
               key="pooled_grid_csv_btn")
with c2:
    csv_button(lambda: pooled_tables(runs)["pooled_compare"], "pooled_compare.csv", label=_("FC vs CNN (CSV)"),
               key="pooled_compare_csv_btn")

st.header(_("Depth × kernel size"), divider="gray")
if not grids:
    st.info(_("No two students' sweeps share their settings yet (at least two cells are needed)."))
else:
    names = set_names(grids)
    pick = st.selectbox(_("Settings"), list(names), format_func=names.get, key="pooled_grid_set")
    grid = grids[pick]
    cells = grid.cells.assign(text=cell_texts(grid.cells))
    a, b = st.columns(2)
    a.plotly_chart(error_line_figure(cells, "conv_layers", "kernel_size", _("Test accuracy vs conv layers"), _=_),
                   key="pooled_depth_chart")
    b.plotly_chart(error_line_figure(cells, "kernel_size", "conv_layers", _("Test accuracy vs kernel size"), _=_),
                   key="pooled_kernel_chart")
    a.plotly_chart(heatmap_figure(cells, _=_), key="pooled_heatmap")
    with b:
        if grid.reading.best is not None:
            st.info(reading_markdown([grid.reading.best]), icon=":material/emoji_events:")
        for heading, blocks in ((_("Requirement 2: the number of conv+pool layers"), grid.reading.depth),
                                (_("Requirement 3: the kernel size"), grid.reading.kernel)):
            if blocks:
                st.markdown(f"**{plain(heading)}**\n\n" + reading_markdown(blocks))
    st.subheader(_("Test accuracy per cell, mean ± sd over seeds"))
    pivot = cells.pivot(index="conv_layers", columns="kernel_size", values="text").fillna("—")
    table(pivot.rename(columns=lambda k: _("kernel size {k}×{k}").format(k=k)).rename_axis(columns=None))
    duplicates = int(cells["duplicates"].sum())
    if duplicates:
        st.caption(ngettext("{n} run repeated another student's settings and seed and counts once.",
                            "{n} runs repeated another student's settings and seed and count once.",
                            duplicates).format(n=f"{duplicates:,}"))
    not_learned_note(grid.runs["verdict"])

st.header(_("FC vs CNN"), divider="gray")
if not compares:
    st.info(_("No finished FC-vs-CNN comparison yet."))
else:
    names = set_names(compares)
    pick = st.selectbox(_("Settings"), list(names), format_func=names.get, key="pooled_compare_set")
    pooled = compares[pick]
    cells = pooled.cells.assign(text=cell_texts(pooled.cells))
    a, b = st.columns([1, 1])
    with a:
        pivot = cells.pivot(index="model", columns="pixels", values="text")
        pivot = pivot.reindex(index=[m for m in ("FC", "CNN") if m in pivot.index],
                              columns=[p for p in ("normal", "permuted") if p in pivot.columns])
        st.dataframe(headers(pivot.rename(columns=_).rename_axis("model").rename_axis(columns=None)), width="stretch")
        if pooled.reading:
            st.info(" ".join(plain(render_error(m)) for m in pooled.reading))
    b.plotly_chart(compare_figure(pooled.cells, _=_), key="pooled_compare_bars")
    not_learned_note(pooled.runs["verdict"])
