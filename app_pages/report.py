"""Report: the lab report written from the stored runs, in the session's language (the sidebar's
switch) — each section's numbers, direction and figures — and its files to download (HTML, Word,
Markdown, findings.json). The words come from the gettext catalogs (mnist_lab/locale); the page
only lays them out."""
import re

import pandas as pd
import streamlit as st

from app_lib.lang import N_, _, current
from app_lib.shared import result_store, run_scope, runner
from app_lib.text import local_times
from app_lib.widgets import run_labels
from mnist_lab.lab.report import build_report, findings_json, to_docx, to_html, to_markdown_zip

MIME = {"report.html": "text/html", "report.docx": "application/vnd.openxmlformats-officedocument."
        "wordprocessingml.document", "report_md.zip": "application/zip", "findings.json": "application/json"}


LABELS = {"report.html": N_("HTML (print to PDF)"), "report.docx": N_("Word (.docx)"),
          "report_md.zip": N_("Markdown + figures (.zip)"), "findings.json": N_("findings.json")}


@st.cache_data(max_entries=8, show_spinner=False)
def build(db: str, lang: str, run_id: str | None, scope: str | None, signature: tuple) -> tuple:
    """Blocks and files of one report; `signature` changes whenever the runs do."""
    report = build_report(result_store(), lang, run_id=run_id, workspace=scope)
    files = {"report.html": to_html(report).encode("utf-8"), "report.docx": to_docx(report),
             "report_md.zip": to_markdown_zip(report), "findings.json": findings_json(report).encode("utf-8")}
    return report.blocks, files


def md(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>#|$~])", r"\\\1", text)  # the report's text is plain, not Markdown


store = result_store()
lang = current()

scope = run_scope()
runs = runner().runs()  # only the runs this session may see (mnist_lab.service.access)
done = runs[runs["status"] == "finished"]
tz = st.context.timezone or "UTC"  # the browser's time zone; the store keeps UTC
names = {r.run_id: f"{label} · {t} · {r.run_id[-6:]}"
         for r, label, t in zip(done.itertuples(), run_labels(done), local_times(done["started_at"], tz))}
run_id = st.selectbox(_("Run for requirement 1 (the loss of every iteration)"), list(names), format_func=names.get,
                      key="report_run", placeholder=_("no finished run yet"),
                      help=_("Newest first; the report's other sections use every finished sweep and comparison."))
signature = (len(runs), tuple(runs["run_id"]), tuple(runs["status"]), int(runs["epochs_done"].fillna(0).sum()))
with st.spinner(_("Writing the report…")):
    blocks, files = build(str(store.path), lang, run_id, scope, signature)

cols = st.columns(len(files))
for col, (name, data) in zip(cols, files.items()):
    col.download_button(_(LABELS[name]), data, file_name=name, mime=MIME[name], key=f"report_dl_{name}",
                        width="stretch")
st.caption(_("The report states what these runs show, with the numbers behind every direction; add your own "
             "reflections in the Word file."))

for b in blocks:
    if b.kind == "h1":
        st.title(b.text)
    elif b.kind == "h2":
        st.header(b.text, divider="gray")
    elif b.kind == "h3":
        st.subheader(b.text)
    elif b.kind == "p":
        st.markdown(md(b.text))
    elif b.kind == "note":
        st.warning(b.text)
    elif b.kind == "list":
        st.markdown("\n".join(f"- {md(item)}" for item in b.items))
    elif b.kind == "code":
        st.code(b.text, language="bash")
    elif b.kind == "table":
        st.dataframe(pd.DataFrame(b.rows, columns=b.header), hide_index=True)
    elif b.kind == "figure":
        st.image(b.png, caption=b.text)
