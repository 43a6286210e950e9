"""The page side of the languages: this session's language (the `lang` query parameter of a
shared link, else the browser's, then whatever the sidebar picks), kept in the URL, and `_()` /
`ngettext` / `render_error` bound to it. Usage on a page::

    from app_lib.lang import _, ngettext, render_error

    st.title(_("Train a network"))
    st.caption(ngettext("{n} run", "{n} runs", n).format(n=f"{n:,}"))
    except ValueError as exc:
        st.error(plain(render_error(exc)))

Cheap per rerun: one session-state lookup and a cached catalog (mnist_lab/i18n.py). Msgids are
English; see docs/I18N.md for adding one. No pages' words here beyond the picker's label."""
from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from mnist_lab.errors import public_form
from mnist_lab.i18n import LANGUAGES, N_, Message, render, render_stored, resolve_lang, translator, word

__all__ = ["_", "bound", "ngettext", "N_", "render_error", "render_said", "current", "language_picker", "keep_in_url",
           "QUERY"]

KEY = "_lang"  # session state: the session's language code, 'en' or 'zh_CN'
PICK = "lang_pick"  # the sidebar's picker
QUERY = "lang"  # ?lang=zh_CN|en


def code(value: str | None) -> str | None:
    """'zh_CN' / 'en' from a query value or a browser locale ('zh-CN', 'zh-Hans-CN', 'en-US'),
    None for anything else."""
    text = (value or "").strip().replace("-", "_").lower()
    if text.startswith("zh"):
        return "zh_CN"
    if text.startswith("en"):
        return "en"
    return None


def current() -> str:
    """This session's language: fixed on its first run from the link's `lang`, else the
    browser's locale (st.context.locale), else the server's LANGUAGE / LC_ALL / LANG; then
    changed only by the picker."""
    lang = st.session_state.get(KEY)
    if lang is None:
        lang = code(st.query_params.get(QUERY)) or code(st.context.locale) or resolve_lang()
        st.session_state[KEY] = lang
    return lang


def _(message: str) -> str:
    """`message` in the session's language ('' stays '': gettext would give the catalog's header)."""
    return translator(current()).gettext(message) if message else message


def bound() -> Callable[[str], str]:
    """The session's gettext bound now, for a widget's format_func (which AppTest, unlike a
    browser session, may call outside the page's run)."""
    gettext = translator(current()).gettext
    return lambda message: gettext(message) if message else message


def ngettext(singular: str, plural: str, n: int) -> str:
    return translator(current()).ngettext(singular, plural, n)


def render_error(err: BaseException | Message) -> str:
    """The core's refusal (or a Message) in this session's language (its template and values), else
    its str(). A student or visitor of a shared or demo server reads its public form instead where it
    names the server's files or commands (mnist_lab.errors.public_form; a crash: "something went
    wrong on the server"), and never an absolute path; the teacher and a local user read the detail.
    Plain text: wrap it with app_lib.text.plain before markdown shows it."""
    from app_lib import shared  # shared imports this module at its top: looked up when called

    if not shared.reads_public():
        return render(err, current())
    public = public_form(err)
    return shared.without_server_paths(render(err if public is None else public, current()))


def render_said(stored: object, english: object = "") -> str:
    """A stored message (a job's error, a run's stop reason or label: mnist_lab.i18n.to_stored) in
    this session's language, as `render_error` words a refusal: its public form for a student or
    visitor of a shared server where it keeps one. Without one (a run of an earlier version), its
    stored `english` as it is, with no server path in a student's browser."""
    from app_lib import shared

    if not shared.reads_public():
        return render_stored(stored, current(), english)
    public = public_form(stored)
    return shared.without_server_paths(render_stored(stored, current(), english) if public is None
                                       else word(public, current()))


def keep_in_url() -> None:
    """Mirror the language into the URL (every run: a page switch drops the query string)."""
    lang = current()
    if st.query_params.get(QUERY) != lang:
        st.query_params[QUERY] = lang


def _picked() -> None:
    st.session_state[KEY] = st.session_state[PICK]


def language_picker() -> None:
    """The sidebar's language switch (call it inside `with st.sidebar`); the page's other
    settings and query parameters stay as they are."""
    st.session_state[PICK] = current()
    st.selectbox("Language / 语言", list(LANGUAGES), format_func=LANGUAGES.get, key=PICK, on_change=_picked)
