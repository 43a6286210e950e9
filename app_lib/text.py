"""Text from outside the code (a URL, a form, the result store, an exception message) made safe
for Streamlit's markdown, which st.markdown, st.caption, st.error, st.warning and st.info all
render: shown as the characters it is, never as a link, an image or formatting. No streamlit here."""
from __future__ import annotations

import string

_PUNCTUATION = frozenset(string.punctuation)  # CommonMark lets a backslash escape any of these


def plain(text: object) -> str:
    """`text` as markdown that renders to exactly its characters: every ASCII punctuation mark
    is backslash-escaped, so no link, image, emphasis, code span, HTML, entity, autolink
    ('https\\://...'), icon (':material/x:') or LaTeX survives."""
    return "".join("\\" + c if c in _PUNCTUATION else c for c in str(text))
