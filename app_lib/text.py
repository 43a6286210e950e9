"""Text from outside the code (a URL, a form, the result store, an exception message) made safe
for Streamlit's markdown, which st.markdown, st.caption, st.error, st.warning and st.info all
render: shown as the characters it is, never as a link, an image or formatting; and the few
formats a person reads (percentages, local times). No streamlit here."""
from __future__ import annotations

import re
import string

from mnist_lab.i18n import pct

_PUNCTUATION = frozenset(string.punctuation)  # CommonMark lets a backslash escape any of these


# GFM's literal autolinks (https://..., www...., user@host) ignore backslash escapes in the
# browser's renderer: an invisible word joiner inside the trigger keeps them text.
_JOINER = "\u2060"
_AUTOLINK_TRIGGERS = re.compile(r"(?i)(https?|ftp|mailto)(?=:)|\b(www)(?=\.)|(?=@)")


def plain(text: object) -> str:
    """`text` as markdown that renders to exactly its characters: every ASCII punctuation mark
    is backslash-escaped, so no link, image, emphasis, code span, HTML, entity, icon
    (':material/x:') or LaTeX survives, and a word joiner (invisible) breaks the literal
    autolinks ('https://...', 'www.', 'a@b') that a browser would otherwise still link."""
    text = _AUTOLINK_TRIGGERS.sub(lambda m: (m.group(1) or m.group(2) or "") + _JOINER, str(text))
    return "".join("\\" + c if c in _PUNCTUATION else c for c in text)


def percent(fraction: object) -> str:
    """An accuracy stored as a fraction, as a person reads it: '97.12%' ('' when missing)."""
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        return ""
    return "" if value != value else pct(value)


def local_times(iso_utc, tz: str):
    """ISO timestamps in UTC (as the store keeps them) as 'YYYY-MM-DD HH:MM:SS' in time zone `tz`
    (an IANA name such as the browser reports; UTC when it is unknown)."""
    import pandas as pd

    times = pd.to_datetime(pd.Series(iso_utc), utc=True, errors="coerce", format="ISO8601")
    try:
        times = times.dt.tz_convert(tz)
    except Exception:  # noqa: BLE001 - an unknown zone name: keep UTC
        pass
    return times.dt.strftime("%Y-%m-%d %H:%M:%S").fillna("")


def epoch_times(seconds, tz: str):
    """Unix times (as the job queue and the sign-ins keep them; None for none) as local_times words them."""
    import pandas as pd

    when = pd.to_datetime(pd.Series(seconds, dtype="float64"), unit="s", utc=True)
    return local_times(when.map(lambda t: None if pd.isna(t) else t.isoformat()), tz)
