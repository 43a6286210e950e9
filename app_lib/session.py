"""Who this browser is signed in as (shared mode: a student or the teacher; demo mode: an anonymous
visitor): a signed, expiring session cookie (mnist_lab.service.identity) read through
`st.context.cookies` when a browser session starts, and kept in `st.session_state` after (within
one session Streamlit's cookies stay as the page's first request sent them). No URL carries it.

The cookie is written by a few lines of script on the page itself (`st.html`, no iframe), so it
is `SameSite=Strict`, `Max-Age`, `Path=/` and, served over HTTPS, `Secure` as we say; a cookie
set from JavaScript cannot be HttpOnly, so it holds only a short-lived signed session id.
"""
from __future__ import annotations

import ipaddress
import os
import re
import time
from urllib.parse import urlsplit

import streamlit as st

from mnist_lab.paths import default_db_path
from mnist_lab.runs.store import ResultStore
from mnist_lab.service import identity
from mnist_lab.service.identity import SESSION_COOKIE, Accounts, Identity, server_secret, session_max_age_s
from mnist_lab.service.policy import ServerPolicy

KEY = "_session"  # session state: this browser session's cookie value ("" once signed out)
CHECKED = "_session_checked"  # session state: (what was checked, when, who it was): current() keeps it a moment
CHECK_KEPT_S = 5.0
PENDING = "_session_cookie"  # session state: (value, expires at) the browser must hold; every run writes it
KEEP_ON_SIGN_OUT = ("_lang", "lang_pick")  # the language outlives a sign-out; nothing of the person does
SECURE_ENV = "MNIST_LAB_SECURE_COOKIE"  # 1: always mark the cookie Secure (HTTPS that the app cannot see)
TRUST_PROXY_ENV = "MNIST_LAB_TRUST_PROXY"  # 1: the client is the last X-Forwarded-For entry (behind your own proxy)
MODE_ROLES = {"shared": ("student", "teacher"), "demo": ("visitor",)}  # who a session of each mode may be
COOKIE_SAFE = re.compile(r"[A-Za-z0-9._-]*")  # what identity.open_session's values are made of


@st.cache_resource
def _accounts(path: str) -> Accounts:
    return Accounts(ResultStore(path), server_secret(path))


def accounts() -> Accounts:
    """The server's students, sessions and sign-in throttle, in the result store's file."""
    return _accounts(str(default_db_path()))


def _text(value: object) -> str:
    """A request's header, cookie or address as text ('' when missing: AppTest has no browser request)."""
    return value if isinstance(value, str) else ""


def _on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def secure() -> bool:
    """Whether the browser reached us over HTTPS (then the cookie is Secure): the page's own URL,
    a proxy's X-Forwarded-Proto, or MNIST_LAB_SECURE_COOKIE=1."""
    forwarded = _text(st.context.headers.get("X-Forwarded-Proto")).split(",")[0].strip().lower()
    return _text(st.context.url).startswith("https:") or forwarded == "https" or _on(SECURE_ENV)


def _loopback(address: str) -> bool:
    """Whether the connection comes from this machine (where the server's own proxy runs); an
    unknown address (None or '': a unix socket, AppTest) counts as this machine."""
    if not address:
        return True
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _key(address: str) -> str:
    """The throttle's key of an address: an IPv6 client by its /64 (one machine can hold the whole
    /64 and take a new address for every try), IPv4 as it is."""
    try:
        ip = ipaddress.ip_address(address.strip().split("%")[0])
    except ValueError:
        return address.strip()[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def client() -> str:
    """The browser's address for the sign-in throttle ('' when unknown, e.g. on localhost), an IPv6
    one as its /64: behind a trusted proxy (MNIST_LAB_TRUST_PROXY=1) the last X-Forwarded-For entry
    (the one that proxy added: the entries before it are whatever the browser sent, so a guesser
    could forge a new address for every try), read only when the connection itself comes from this
    machine (a browser connecting straight to the server could forge the header); else the
    connection's."""
    own = _text(st.context.ip_address)
    if _on(TRUST_PROXY_ENV) and _loopback(own):
        forwarded = _text(st.context.headers.get("X-Forwarded-For")).split(",")[-1].strip()
        if forwarded:
            return _key(forwarded)
    return _key(own) if own else ""


def app_address() -> str:
    """The app's own address for the slips: the scheme, host and Streamlit's base path of the URL this
    page was opened at (never the page's path /teacher, its query or fragment)."""
    parts = urlsplit(st.context.url or "")
    if not parts.scheme or not parts.netloc:
        return ""
    base = str(st.get_option("server.baseUrlPath") or "").strip("/")
    return f"{parts.scheme}://{parts.netloc}/" + (f"{base}/" if base else "")


def current() -> Identity | None:
    """This session's signed-in person, or None (always on a local install). Checked against the
    store on every call, so a session the teacher ended (a PIN reset) or one that expired ends here too."""
    policy = ServerPolicy.from_env()
    if not policy.shared:
        return None
    if KEY not in st.session_state:  # the session's first run: the cookie its page was opened with
        st.session_state[KEY] = _text(st.context.cookies.get(SESSION_COOKIE))
    value = st.session_state[KEY]
    # A page's run asks several times, and a class's pages poll every few seconds: the check is kept
    # for CHECK_KEPT_S unless this process changed accounts since (a reset or a sign-out here counts
    # at once; one by the CLI within CHECK_KEPT_S), so 30 pages do not queue on the accounts' database.
    stamp = (value, policy.teacher_token, policy.mode, identity.writes())
    kept = st.session_state.get(CHECKED)
    if kept is not None and kept[0] == stamp and time.monotonic() - kept[1] < CHECK_KEPT_S:
        who = kept[2]
    else:  # a teacher's session holds only while the server's token is the one it was opened with
        who = accounts().session(value, teacher_token=policy.teacher_token) if value else None
        st.session_state[CHECKED] = (stamp, time.monotonic(), who)
    if who is None or who.role not in MODE_ROLES["demo" if policy.demo else "shared"]:
        return None  # e.g. a visitor's cookie after the server turned from demo to shared: a stranger, not a student
    return who


def sign_in_as(who: Identity) -> None:
    """Open a session for `who` and have the browser keep its cookie (written on the next run)."""
    age = session_max_age_s()  # $MNIST_LAB_SESSION_HOURS, else a class day
    # a teacher's session keeps (a MAC of) the token it signed in with: a new MNIST_LAB_TEACHER_TOKEN ends it
    value = accounts().open_session(who, client(), age, teacher_token=ServerPolicy.from_env().teacher_token or None)
    st.session_state[KEY] = value
    st.session_state[PENDING] = (value, int(time.time()) + age)


def sign_out() -> None:
    """End the session here and in the store, forget everything of its person in this browser
    session (the language stays), and delete the cookie."""
    accounts().close_session(st.session_state.get(KEY) or None)
    for key in list(st.session_state):
        if key not in KEEP_ON_SIGN_OUT:
            del st.session_state[key]
    st.session_state[KEY] = ""
    st.session_state[PENDING] = ("", 0)


def write_cookie() -> None:
    """Write (or, Max-Age=0, delete) the session cookie of this session's last sign-in or sign-out.
    Written by every run after it, not once: a run cut short by a rerun (a sign-in's own, a fragment's)
    can leave its element unrendered, and a student who opens another address at once would then
    find no cookie. Max-Age is what is left of the session; once the session ended elsewhere (another
    tab signed out, the teacher reset the PIN) nothing is written, so no tab brings back a dead cookie.
    A sign-out's deletion is written once: that run draws the sign-in page, which no rerun cuts short,
    and a later sign-in in another tab must not lose its cookie to this one."""
    pending = st.session_state.get(PENDING)
    if pending is None:
        return
    value, expires = pending
    if not value:
        st.session_state.pop(PENDING, None)
    elif current() is None:  # ended meanwhile (signed out in another tab, reset, expired): keep quiet
        st.session_state.pop(PENDING, None)
        return
    if not COOKIE_SAFE.fullmatch(value):  # never quote anything else into a script
        raise ValueError("not a session cookie value")
    age = max(0, int(expires) - int(time.time())) if value else 0
    attrs = f"Max-Age={age}; Path=/; SameSite=Strict" + ("; Secure" if secure() else "")
    # value: "<id>.<expiry>.<hex>" from identity.open_session, cookie-safe characters only
    st.html(f"<script>document.cookie = '{SESSION_COOKIE}={value}; {attrs}';</script>",
            unsafe_allow_javascript=True)
