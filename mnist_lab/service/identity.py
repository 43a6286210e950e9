"""Who is signed in to a shared server: the class's students (a roster the teacher loads, or ids
claimed on a server without one), their one-time codes and PINs, the teacher's sign-in, a demo's
anonymous visitors, the signed sessions a browser's cookie names, and the throttle that slows
wrong tries (never locks anyone out). Every table lives in the results database (schema 5), so
every server process on it shares them; every secret is compared with hmac.compare_digest.
Never imports streamlit: the app reads and writes the cookie (app_lib/session.py).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import io
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mnist_lab.errors import ConfigError, shorten
from mnist_lab.i18n import N_
from mnist_lab.paths import secret_path
from mnist_lab.runs.store import ResultStore, explained

ROLES = ("student", "teacher", "visitor")
SESSION_COOKIE = "mnist_lab_session"
SESSION_MAX_AGE_S = 12 * 3600  # a class day
SESSION_HOURS_ENV = "MNIST_LAB_SESSION_HOURS"  # overrides SESSION_MAX_AGE_S (session_max_age_s)
SECRET_ENV = "MNIST_LAB_SECRET"  # the server's signing secret; else a file beside the database
SECRET_BYTES = 32
MIN_SECRET_CHARS = 32  # of MNIST_LAB_SECRET

TEACHER_WORKSPACE = "teacher"
STUDENT_PREFIX = "student:"
VISITOR_PREFIX = "visitor:"

# A roster: a CSV with the header 学号,姓名 (or student_id,name) and one student a row.
ROSTER_HEADERS = (("学号", "姓名"), ("student_id", "name"))
MAX_ROSTER = 2000  # students in one roster
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_NAME = 40  # characters of a name
PIN_PATTERN = re.compile(r"[0-9]{6,12}")
# One-time codes: 8 characters a person reads off paper without mixing up (no 0/O, 1/I/L).
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
CODE_LENGTH = 8

# The throttle slows wrong tries and never locks anyone out. Three counts, each a row of
# signin_failures, forgotten WINDOW_S after its last failure:
# - pair `pair:<client>|<account key>` (one computer guessing one account): counted BEFORE the
#   secret is checked, in one transaction with the throttle's check (tries sent at once wait their
#   turn), cleared by that pair's success. PAIR_FREE_TRIES free, then 1, 2, 4 ... s after the last
#   one, capped at ACCOUNT_CAP_S.
# - account `account:<student id>` or `token:teacher` (every computer guessing one account): counted
#   after a wrong check only, never cleared by a success. It delays only clients that have failed
#   on this account themselves (their pair count >= 1), by f(max(pair, account failures)) capped
#   at ACCOUNT_CAP_S: the owner typing the right PIN from their own browser is never delayed.
# - client `client:<ip>` (one computer spraying many accounts): counted after a wrong check only,
#   never cleared by a success (its own or another account's); CLIENT_FREE_TRIES free (a classroom
#   behind one NAT address makes typos), then 1, 2, 4 ... s, capped at CLIENT_CAP_S.
PAIR_FREE_TRIES = 3
CLIENT_FREE_TRIES = 10
FREE_TRIES = PAIR_FREE_TRIES  # of a pair or an account
WINDOW_S = 15 * 60
CLIENT_CAP_S = 60.0  # a client that keeps guessing
ACCOUNT_CAP_S = 30.0  # a pair or an account: a classmate's flood delays nobody else, and no one longer than this
TEACHER_KEY = "token:teacher"  # the teacher token's account key (no student id holds a ':')

# scrypt for PINs (hashlib's, RFC 7914): n=2**14, r=8, p=1 takes ~50 ms and 16 MiB a try
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1

# What a person reads (msgids; zh_CN in the catalog)
WRONG_SIGN_IN = N_("The student ID, name or PIN is wrong: check them and try again.")
THROTTLED = N_("Too many wrong tries from here or for this account: wait {seconds} s, then try again.")
BAD_ID = N_("A student ID is 1 to 32 letters, digits, - or _: check yours.")
NOT_ON_ROSTER = N_("This student ID is not on the class's roster: check it, or ask your teacher.")
BAD_NAME = N_("Give your name: 1 to 40 printable characters.")
BAD_PIN = N_("Choose a PIN of 6 to 12 digits (only 0-9).")
WRONG_TOKEN = N_("The teacher token is wrong.")
NO_TEACHER = N_("This server has no teacher token: the teacher cannot sign in here.")


@dataclass(frozen=True)
class Identity:
    """Who a session is: its role (ROLES), the workspace its runs belong to, and a student's 学号
    and 姓名 (the teacher's and a visitor's are '')."""

    role: str
    workspace: str
    student_id: str = ""
    name: str = ""


@dataclass(frozen=True)
class RosterEntry:
    """A student as the teacher's page lists them."""

    student_id: str
    name: str
    on_roster: bool  # loaded by the teacher (else claimed on a server without a roster)
    pin_set: bool
    code_pending: bool  # a one-time code was issued and not used yet


class SignInError(ValueError):
    """A sign-in refused: `template` (an English msgid) and its `params`, worded in the reader's
    language by `i18n.render`, as the core's other refusals."""

    def __init__(self, template: str, /, **params):
        self.template, self.params = template, params
        super().__init__(template.format(**params))


class Throttled(SignInError):
    """Too many wrong tries for this client or account: try again after `wait_s` seconds."""

    def __init__(self, wait_s: float):
        self.wait_s = wait_s
        super().__init__(THROTTLED, seconds=max(int(-(-wait_s // 1)), 1))


# ------------------------------------------------------------------------------ secrets
def hash_pin(pin: str) -> str:
    """A PIN as stored: scrypt with a random 16-byte salt, "scrypt$n$r$p$<salt hex>$<hash hex>"."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(pin.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_pin(pin: str, stored: str | None) -> bool:
    """Whether `pin` is the one `stored` (hash_pin's form) was made from; False for anything else."""
    try:
        name, n, r, p, salt, digest = (stored or "").split("$")
        n, r, p = int(n), int(r), int(p)
        if name != "scrypt" or n > 2 ** 20 or r > 16 or p > 4:  # a stored row never asks for more
            return False
        got = hashlib.scrypt(str(pin).encode("utf-8"), salt=bytes.fromhex(salt), n=n, r=r, p=p,
                             dklen=len(bytes.fromhex(digest)), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(got, bytes.fromhex(digest))


# scrypt of a PIN nobody has: checked when the id has none, so a missing account costs the same time
_DUMMY_HASH = "scrypt$16384$8$1$" + "00" * 16 + "$" + "00" * 32


def same_secret(given: str, expected: str) -> bool:
    """Constant time, whatever the lengths: the SHA-256 digests are compared, not the texts."""
    return hmac.compare_digest(hashlib.sha256(given.encode("utf-8")).digest(),
                               hashlib.sha256(expected.encode("utf-8")).digest())


def server_secret(db_path: str | Path, environ: Mapping[str, str] | None = None) -> bytes:
    """The key that signs session cookies: $MNIST_LAB_SECRET (at least 32 characters), else 32
    random bytes in a file beside the database (paths.secret_path), created 0600 on first use,
    atomically (a process that reads it never sees it half written). Never shown."""
    env = os.environ if environ is None else environ
    given = env.get(SECRET_ENV, "")
    if given:
        if len(given) < MIN_SECRET_CHARS:
            raise ConfigError(SECRET_ENV, len(given), N_("{field} is too short ({value} characters): give at least "
                              "{least} random characters."), field=SECRET_ENV, least=MIN_SECRET_CHARS)
        return given.encode("utf-8")
    path = secret_path(db_path)
    with contextlib.suppress(FileNotFoundError):
        secret = path.read_bytes()
        if len(secret) >= SECRET_BYTES:
            return secret
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(SECRET_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # never replaces one another process made first
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: the name, whole, if still free
            with contextlib.suppress(FileExistsError):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(tmp.read_bytes())
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def session_max_age_s(environ: Mapping[str, str] | None = None) -> int:
    """How long a session lasts: $MNIST_LAB_SESSION_HOURS (1 to 24 * 30), else SESSION_MAX_AGE_S."""
    env = os.environ if environ is None else environ
    given = env.get(SESSION_HOURS_ENV, "")
    if not given:
        return SESSION_MAX_AGE_S
    try:
        hours = float(given)
    except ValueError:
        hours = -1.0
    if not 1 <= hours <= 24 * 30:
        raise ConfigError(SESSION_HOURS_ENV, shorten(given), N_("{field} must be a number of hours from 1 to 720; "
                          "it is {value}."), field=SESSION_HOURS_ENV)
    return int(hours * 3600)


def class_roster(store: ResultStore) -> list[tuple[str, str]]:
    """(学号, 姓名) of every student on the roster, by 学号: read without the server's secret (the
    class's tables and exports need no signing)."""
    with contextlib.closing(sqlite3.connect(store.path, timeout=30)) as conn:
        return conn.execute("SELECT student_id, name FROM students WHERE COALESCE(on_roster, 0) = 1 "
                            "ORDER BY student_id").fetchall()


def throttle_wait(failures: int, last_at: float, cap: float, now: float, free: int = FREE_TRIES) -> float:
    """Seconds a key with `failures` wrong tries, the last at `last_at`, must still wait: none for
    the first `free`, then 1, 2, 4 ... up to `cap` after the last one; none once WINDOW_S passed."""
    if failures < free or now - last_at > WINDOW_S:
        return 0.0
    return max(last_at + min(2.0 ** (failures - free), cap) - now, 0.0)


def student_workspace(student_id: str) -> str:
    return STUDENT_PREFIX + student_id


def _same_name(a: str, b: str) -> bool:
    """Names compared as a person means them: case and spaces do not count."""
    return "".join(a.split()).casefold() == "".join(b.split()).casefold()


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and 1 <= len(name.strip()) <= MAX_NAME and name.strip().isprintable()


def _valid_pin(pin: object) -> bool:
    return isinstance(pin, str) and PIN_PATTERN.fullmatch(pin) is not None


def _new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def _normal_code(code: str) -> str:
    """A code as typed: case, spaces and hyphens do not count."""
    return re.sub(r"[\s-]", "", str(code)).upper()


# ------------------------------------------------------------------------------ roster CSV
def parse_roster(csv_text: str) -> list[tuple[str, str]]:
    """The roster `csv_text` checked whole: [(student_id, name), ...] in its order, or a
    ConfigError naming the row (its line in a spreadsheet: the header is row 1) and what to change."""
    if not isinstance(csv_text, str):
        raise ConfigError("roster", type(csv_text).__name__, N_("The roster must be text (a CSV file)."))
    text = csv_text.removeprefix("\ufeff")  # Excel's UTF-8 files begin with a BOM
    try:
        lines = csv.reader(io.StringIO(text), strict=True)  # a stray quote is refused, not read on
        rows = [(n, [cell.strip() for cell in row]) for n, row in enumerate(lines, start=1)]
    except csv.Error as exc:
        raise ConfigError("roster", shorten(str(exc), quote=False), N_("The roster cannot be read as CSV ({value}): "
                          "save it from the spreadsheet as CSV (UTF-8).")) from None
    rows = [(n, row) for n, row in rows if any(row)]  # blank lines
    if not rows:
        raise ConfigError("roster", "", N_("The roster is empty: give a CSV file whose first line is 学号,姓名 (or "
                                           "student_id,name), then one student a line."))
    header_row, header = rows[0]
    if tuple(cell.casefold() for cell in header) not in ROSTER_HEADERS:
        raise ConfigError("roster", shorten(",".join(header)), N_("The roster's first line must be the header "
                          "学号,姓名 (or student_id,name); it is {value}."))
    students = rows[1:]
    if not students:
        raise ConfigError("roster", "", N_("The roster has a header but no students: add one line per student."))
    if len(students) > MAX_ROSTER:
        raise ConfigError("roster", len(students), N_("The roster has {value} students; at most {limit} fit in one: "
                          "split it."), limit=MAX_ROSTER)
    first: dict[str, int] = {}
    out = []
    for n, row in students:
        if len(row) != 2:
            raise ConfigError("roster", len(row), N_("Row {row} of the roster has {value} columns: give exactly two, "
                              "the student ID and the name."), row=n)
        student_id, name = row
        if not ID_PATTERN.fullmatch(student_id):
            raise ConfigError("roster", shorten(student_id), N_("Row {row} of the roster: the student ID {value} may "
                              "hold only letters, digits, - and _ (1 to 32 of them)."), row=n)
        if not _valid_name(name):
            raise ConfigError("roster", shorten(name), N_("Row {row} of the roster: the name {value} must be 1 to "
                              "{limit} printable characters."), row=n, limit=MAX_NAME)
        if student_id in first:
            raise ConfigError("roster", shorten(student_id), N_("Row {row} of the roster repeats the student ID "
                              "{value} of row {first}: keep one of them."), row=n, first=first[student_id])
        first[student_id] = n
        out.append((student_id, name))
    return out


# ------------------------------------------------------------------------------ accounts
STUDENT_COLUMNS = ["student_id", "name", "on_roster", "code_hash", "pin_hash", "created_at", "pin_set_at"]
SESSION_COLUMNS = ["session_id", "role", "workspace", "student_id", "name", "client", "created_at", "expires_at"]
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_COOKIE = re.compile(r"([0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{64})")


_writes = 0  # write transactions on accounts and sessions by this process (see writes())


def writes() -> int:
    """How many times this process has written accounts or sessions (a sign-in, a reset, a sign-out):
    a reader that keeps a session's check for a moment (app_lib/session.py) checks again once this
    changes, so an ending made in this process counts at once; one made by another process (the CLI)
    within that moment."""
    return _writes


class Accounts:
    """The class's accounts and sessions in the results database `store` opened (schema 5), with
    `secret` (server_secret) signing cookies and keying one-time codes; `clock` gives the time
    (seconds since the epoch: tests pass a fake one). Safe to share between threads; every write
    is its own transaction, so every server process on the file sees the same accounts, sessions
    and throttle."""

    @explained
    def __init__(self, store: ResultStore, secret: bytes, clock: Callable[[], float] = time.time):
        if len(secret) < 16:
            raise ValueError("the signing secret is too short (at least 16 bytes)")
        self.store = store
        self.path = store.path
        self.secret = secret
        self.clock = clock
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._conn.isolation_level = None  # transactions are explicit (_transaction)

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: no other process writes between its reads and writes)."""
        global _writes
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            finally:
                _writes += 1

    @explained
    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _student(self, student_id: str) -> dict | None:
        rows = self._rows(f"SELECT {', '.join(STUDENT_COLUMNS)} FROM students WHERE student_id = ?", (student_id,))
        return dict(zip(STUDENT_COLUMNS, rows[0])) if rows else None

    def _code_hash(self, student_id: str, code: str) -> str:
        """A one-time code as stored: keyed with the server's secret (a copy of the database alone
        gives no code), fast enough for a roster of thousands."""
        mac = hmac.new(self.secret, f"code:{student_id}:{_normal_code(code)}".encode(), hashlib.sha256)
        return "hmac-sha256$" + mac.hexdigest()

    def _issue(self, conn: sqlite3.Connection, student_ids: list[str]) -> dict[str, str]:
        codes = {student_id: _new_code() for student_id in student_ids}
        conn.executemany("UPDATE students SET code_hash = ? WHERE student_id = ?",
                         [(self._code_hash(sid, code), sid) for sid, code in codes.items()])
        return codes

    # -------------------------------------------------------------------------- roster (teacher)
    @explained
    def import_roster(self, csv_text: str) -> dict[str, str]:
        """Load the class's roster (parse_roster: checked whole; nothing is written on a refusal):
        each student is added, or their name updated, on the roster. A student new to the roster
        (unknown, or an id claimed before there was one) gets a one-time code and loses a PIN they
        set themselves (the roster, not whoever claimed the id first, says who it is); a student
        already on it keeps their PIN, and a code already handed out stays valid (a re-import
        voids no slip); a claimed id left off it is signed out. A re-import never removes anyone
        (Accounts.remove does). Returns {student_id: code} for the codes issued now, to students of
        the roster with neither a PIN nor a pending code: the only place plain codes exist
        (issue_codes replaces lost ones)."""
        students = parse_roster(csv_text)
        now = self.clock()
        with self._transaction() as conn:
            known = {sid: on for sid, on in conn.execute("SELECT student_id, COALESCE(on_roster, 0) FROM students")}
            newcomers = [sid for sid, _ in students if sid in known and not known[sid]]
            for sid in newcomers:
                conn.execute("DELETE FROM sessions WHERE student_id = ?", (sid,))
            conn.executemany("UPDATE students SET pin_hash = NULL, pin_set_at = NULL, code_hash = NULL "
                             "WHERE student_id = ?", [(sid,) for sid in newcomers])
            conn.executemany("INSERT INTO students (student_id, name, on_roster, created_at) VALUES (?, ?, 1, ?) "
                             "ON CONFLICT (student_id) DO UPDATE SET name = excluded.name, on_roster = 1",
                             [(sid, name, now) for sid, name in students])
            # ids claimed before any roster and left off it can sign in no more: their sessions end too
            conn.execute("DELETE FROM sessions WHERE role = 'student' AND student_id IN "
                         "(SELECT student_id FROM students WHERE COALESCE(on_roster, 0) = 0)")
            ids = [sid for sid, _ in students]
            waiting = {sid for (sid,) in conn.execute("SELECT student_id FROM students WHERE pin_hash IS NULL "
                                                      "AND code_hash IS NULL")}
            return self._issue(conn, [sid for sid in ids if sid in waiting])

    def roster(self) -> list[RosterEntry]:
        """Every student (on the roster or not), by student id."""
        rows = self._rows("SELECT student_id, name, COALESCE(on_roster, 0), pin_hash IS NOT NULL, "
                          "code_hash IS NOT NULL FROM students ORDER BY student_id")
        return [RosterEntry(sid, name, bool(on), bool(pin), bool(code)) for sid, name, on, pin, code in rows]

    def has_roster(self) -> bool:
        """Whether the teacher loaded a roster: then a first sign-in needs a one-time code."""
        return bool(self._rows("SELECT 1 FROM students WHERE on_roster = 1 LIMIT 1"))

    @explained
    def reset(self, student_id: str) -> str:
        """Clear a student's PIN and end their sessions; returns their new one-time code."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM students WHERE student_id = ?", (student_id,)).fetchone() is None:
                raise ConfigError("student_id", shorten(student_id), N_("There is no student {value}: check the "
                                  "student ID."))
            conn.execute("UPDATE students SET pin_hash = NULL, pin_set_at = NULL WHERE student_id = ?", (student_id,))
            conn.execute("DELETE FROM sessions WHERE student_id = ?", (student_id,))
            return self._issue(conn, [student_id])[student_id]

    @explained
    def remove(self, student_id: str) -> None:
        """Take a student off the class: their row (PIN, code, place on the roster) and their
        sessions go; their runs and jobs stay, shown with the 学号 and 姓名 they were made with.
        ConfigError for an unknown id."""
        with self._transaction() as conn:
            if conn.execute("DELETE FROM students WHERE student_id = ?", (student_id,)).rowcount == 0:
                raise ConfigError("student_id", shorten(student_id), N_("There is no student {value}: check the "
                                  "student ID."))
            conn.execute("DELETE FROM sessions WHERE role = 'student' AND student_id = ?", (student_id,))

    @explained
    def issue_codes(self, student_ids: list[str] | None = None) -> dict[str, str]:
        """New one-time codes (replacing earlier ones) for the students among `student_ids` (None:
        every student who can sign in: those on the roster, if there is one) who have no PIN; an
        unknown id refuses them all."""
        with self._transaction() as conn:
            without_pin = {sid for (sid,) in conn.execute("SELECT student_id FROM students WHERE pin_hash IS NULL")}
            if student_ids is None:
                on_roster = {sid for (sid,) in conn.execute("SELECT student_id FROM students WHERE on_roster = 1")}
                wanted = sorted(without_pin & on_roster if on_roster else without_pin)
            else:
                known = {sid for (sid,) in conn.execute("SELECT student_id FROM students")}
                unknown = [sid for sid in student_ids if sid not in known]
                if unknown:
                    raise ConfigError("student_id", shorten(unknown[0]), N_("There is no student {value}: check the "
                                      "student ID."))
                wanted = [sid for sid in dict.fromkeys(student_ids) if sid in without_pin]
            return self._issue(conn, wanted)

    # -------------------------------------------------------------------------- sign-in (student)
    def step(self, student_id: str, client: str = "") -> str:
        """What the sign-in form must ask for `student_id`: "pin" (it has one), "code" (its first
        sign-in: the teacher's one-time code, then a new PIN) or "new_pin" (no roster: an id nobody
        has claims it). SignInError for a malformed id, or one not on the roster. Counts nothing,
        but Throttled while `client` itself must wait (a sprayer learns the roster no faster than
        it may guess)."""
        wait = self.wait_seconds(client, None) if client else 0.0
        if wait > 0:
            raise Throttled(wait)
        if not isinstance(student_id, str) or not ID_PATTERN.fullmatch(student_id.strip()):
            raise SignInError(BAD_ID)
        row = self._student(student_id.strip())
        roster = self.has_roster()
        if roster and not (row and row["on_roster"]):
            raise SignInError(NOT_ON_ROSTER)
        if row and row["pin_hash"]:
            return "pin"
        if row and row["code_hash"]:
            return "code"
        return "new_pin"

    def sign_in(self, student_id: str, name: str, secret: str, client: str, new_pin: str | None = None) -> Identity:
        """A student signs in with 学号, 姓名 and `secret`: their PIN, or on a first sign-in the
        one-time code with `new_pin` (6 to 12 digits), which becomes their PIN (the code is used
        up). Without a roster an unknown id claims it with `name` and `new_pin`. Throttled first
        (raised without looking at the secret: see the throttle's constants); a wrong id, name or
        secret is one SignInError, counted for the pair, the account and `client`. A success clears
        only its pair's count (never the client's or the account's)."""
        student_id = student_id.strip() if isinstance(student_id, str) else ""
        name = name.strip() if isinstance(name, str) else ""
        secret = secret if isinstance(secret, str) else ""
        well_formed = ID_PATTERN.fullmatch(student_id) is not None
        wait = self.wait_seconds(client, student_id if well_formed else None)
        if wait > 0:
            raise Throttled(wait)
        row = self._student(student_id) if well_formed else None
        roster = self.has_roster()
        if row is not None and roster and not row["on_roster"]:
            row = None  # an id claimed before the roster: not this class's any more
        way = ("pin" if row is not None and row["pin_hash"] else "code" if row is not None and row["code_hash"]
               else "claim" if not roster and well_formed else "none")
        # the form's own mistakes, before any secret is looked at: nothing learnt, nothing counted
        if way == "claim" and not _valid_name(name):
            raise SignInError(BAD_NAME)
        if way in ("code", "claim") and not _valid_pin(new_pin):
            raise SignInError(BAD_PIN)
        # the pair's try counted before it is checked, in one transaction with the throttle's check:
        # tries sent at once from many tabs or processes wait their turn like tries sent one by one
        account = _account_key(student_id) if well_formed else None
        self._count_try(client, account)
        if way == "pin":
            ok = check_pin(secret, row["pin_hash"]) and _same_name(name, row["name"])
            who = self._signed_in(student_id, row["name"]) if ok else None
        elif way == "code":
            code_ok = hmac.compare_digest(self._code_hash(student_id, secret), row["code_hash"])
            who = self._set_pin(student_id, row["name"], new_pin, row["code_hash"]) \
                if code_ok and _same_name(name, row["name"]) else None
        elif way == "claim":  # no roster: the id is free to claim
            who = self._claim(student_id, name, new_pin)
        else:
            check_pin(secret, _DUMMY_HASH)  # as long as a wrong PIN takes: no account is told apart
            who = None
        if who is None:
            self._count_failure(client, account)
            raise SignInError(WRONG_SIGN_IN)
        self._count_success(client, account)
        return who

    def _signed_in(self, student_id: str, name: str) -> Identity:
        return Identity("student", student_workspace(student_id), student_id, name)

    @explained
    def _set_pin(self, student_id: str, name: str, pin: str, code_hash: str) -> Identity | None:
        """Use up the one-time code `code_hash` and set the PIN; None if another try used it first."""
        pin_hash = hash_pin(pin)
        with self._transaction() as conn:
            done = conn.execute("UPDATE students SET pin_hash = ?, pin_set_at = ?, code_hash = NULL WHERE "
                                "student_id = ? AND code_hash = ? AND pin_hash IS NULL",
                                (pin_hash, self.clock(), student_id, code_hash)).rowcount
        return self._signed_in(student_id, name) if done else None

    @explained
    def _claim(self, student_id: str, name: str, pin: str) -> Identity | None:
        """A server without a roster: the id becomes `name`'s, with `pin`; None if someone claimed it first."""
        pin_hash, now = hash_pin(pin), self.clock()
        with self._transaction() as conn:
            done = conn.execute("INSERT INTO students (student_id, name, on_roster, pin_hash, created_at, pin_set_at) "
                                "VALUES (?, ?, 0, ?, ?, ?) ON CONFLICT (student_id) DO UPDATE SET "
                                "name = excluded.name, pin_hash = excluded.pin_hash, pin_set_at = excluded.pin_set_at "
                                "WHERE students.pin_hash IS NULL AND students.code_hash IS NULL",
                                (student_id, name, pin_hash, now, now)).rowcount
        return self._signed_in(student_id, name) if done else None

    def sign_in_teacher(self, token: str, teacher_token: str, client: str) -> Identity:
        """The teacher signs in with the server's token (compared in constant time, throttled as a
        student's PIN is, under its own account key TEACHER_KEY, which no student id can take)."""
        if not teacher_token:
            raise SignInError(NO_TEACHER)
        wait = self.wait_seconds(client, None, account=TEACHER_KEY)
        if wait > 0:
            raise Throttled(wait)
        self._count_try(client, TEACHER_KEY)
        if not same_secret(token if isinstance(token, str) else "", teacher_token):
            self._count_failure(client, TEACHER_KEY)
            raise SignInError(WRONG_TOKEN)
        self._count_success(client, TEACHER_KEY)
        return Identity("teacher", TEACHER_WORKSPACE)

    def visitor(self, client: str) -> Identity:
        """A demo's visitor: a new anonymous workspace (22 random characters)."""
        return Identity("visitor", VISITOR_PREFIX + secrets.token_urlsafe(16))

    # -------------------------------------------------------------------------- throttle
    def _waits(self, conn: sqlite3.Connection, client: str, account: str | None, now: float) -> float:
        """How long a try from `client` for the account key `account` must wait now (the
        throttle's rules: see its constants). An unknown client ('': no address, e.g. a proxy that
        hides it and MNIST_LAB_TRUST_PROXY unset) has no client or pair count of its own, since it
        would be everyone's behind that proxy; its tries count for the account, before the check,
        and the account's wait applies to it whoever sent the flood: behind such a proxy the owner
        waits out a classmate's flood (at most ACCOUNT_CAP_S) and a sprayer of many accounts is not
        slowed per computer. Give the app each browser's address (MNIST_LAB_TRUST_PROXY=1)."""

        def count(key: str) -> tuple[int, float]:
            row = conn.execute("SELECT failures, last_at FROM signin_failures WHERE key = ?", (key,)).fetchone()
            return (0, 0.0) if row is None or now - row[1] > WINDOW_S else (int(row[0]), float(row[1]))

        wait = 0.0
        if client:
            n_client, last_client = count(_client_key(client))
            wait = throttle_wait(n_client, last_client, CLIENT_CAP_S, now, free=CLIENT_FREE_TRIES)
        if account:
            n_account, last_account = count(account)
            if not client:
                wait = max(wait, throttle_wait(n_account, last_account, ACCOUNT_CAP_S, now))
            else:
                n_pair, last_pair = count(_pair_key(client, account))
                if n_pair >= 1:  # the account's failures delay only those who failed on it themselves
                    wait = max(wait, throttle_wait(max(n_pair, n_account), max(last_pair, last_account),
                                                   ACCOUNT_CAP_S, now))
        return wait

    def wait_seconds(self, client: str, student_id: str | None, account: str | None = None) -> float:
        """How long before the next try from `client` for `student_id` (or `account`, a key such
        as TEACHER_KEY) is looked at (0: now); with neither, the client's own wait (a sprayer's)."""
        account = account or (_account_key(student_id) if student_id else None)
        with self._lock:
            return self._waits(self._conn, client, account, self.clock())

    @staticmethod
    def _bump(conn: sqlite3.Connection, key: str, now: float, by: int = 1) -> None:
        """Add `by` to `key`'s count (a count older than the window starts again)."""
        conn.execute("INSERT INTO signin_failures (key, failures, first_at, last_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT (key) DO UPDATE SET "
                     "failures = CASE WHEN ? - last_at > ? THEN excluded.failures ELSE failures + excluded.failures "
                     "END, first_at = CASE WHEN ? - last_at > ? THEN excluded.first_at ELSE first_at END, "
                     "last_at = excluded.last_at", (key, by, now, now, now, WINDOW_S, now, WINDOW_S))

    @explained
    def _count_try(self, client: str, account: str | None) -> None:
        """Before a secret is checked: Throttled if the try must wait (nothing counted), else the
        try counted as wrong for its pair (an unknown client: for its account), in the same
        transaction, so tries at the same moment from several tabs or server processes are counted
        one after another. _count_success takes it back, _count_failure adds the rest."""
        now = self.clock()
        with self._transaction() as conn:
            conn.execute("DELETE FROM signin_failures WHERE last_at < ?", (now - WINDOW_S,))  # forgotten ones
            wait = self._waits(conn, client, account, now)
            if wait > 0:
                raise Throttled(wait)
            if account:
                self._bump(conn, _pair_key(client, account) if client else account, now)

    @explained
    def _count_failure(self, client: str, account: str | None) -> None:
        """After a wrong check: the account's and the client's counts (the pair's was counted before)."""
        now = self.clock()
        with self._transaction() as conn:
            if account and client:
                self._bump(conn, account, now)
            if client:
                self._bump(conn, _client_key(client), now)

    @explained
    def _count_success(self, client: str, account: str | None) -> None:
        """After a right check: the pair's count is cleared (an unknown client's own try taken back
        from the account); the client's and the account's counts stay."""
        with self._transaction() as conn:
            if client:
                conn.execute("DELETE FROM signin_failures WHERE key = ?", (_pair_key(client, account),))
            else:
                conn.execute("UPDATE signin_failures SET failures = failures - 1 WHERE key = ? AND failures > 0",
                             (account,))

    def failures(self) -> list[dict]:
        """The counted wrong tries (key 'client:<ip>', 'account:<id>', 'token:teacher' or
        'pair:<ip>|<account key>', failures, first_at, last_at), the most recent first: the teacher's page.
        A key whose only tries were taken back (they succeeded) is no wrong try and is not listed."""
        rows = self._rows("SELECT key, failures, first_at, last_at FROM signin_failures WHERE failures > 0 "
                          "ORDER BY last_at DESC")
        return [dict(zip(("key", "failures", "first_at", "last_at"), row)) for row in rows]

    @explained
    def clear_failures(self, key: str | None = None) -> int:
        """Forget the wrong tries of `key` (None: all); how many keys were cleared."""
        with self._transaction() as conn:
            if key is None:
                return conn.execute("DELETE FROM signin_failures").rowcount
            return conn.execute("DELETE FROM signin_failures WHERE key = ?", (key,)).rowcount

    @explained
    def clear_class(self) -> dict[str, int]:
        """The end of term: every student (roster, codes, PINs), the sessions of students and
        visitors, and every counted wrong sign-in go; the teacher's sessions stay. Returns how many
        rows of each went: {"students", "sessions", "failures"}."""
        with self._transaction() as conn:
            return {"students": conn.execute("DELETE FROM students").rowcount,
                    "sessions": conn.execute("DELETE FROM sessions WHERE COALESCE(role, '') != 'teacher'").rowcount,
                    "failures": conn.execute("DELETE FROM signin_failures").rowcount}

    # -------------------------------------------------------------------------- sessions
    def _signature(self, session_id: str, expires: int) -> str:
        return hmac.new(self.secret, f"{session_id}.{expires}".encode(), hashlib.sha256).hexdigest()

    def _token_mac(self, teacher_token: str) -> str:
        """The teacher token as a session row keeps it: an HMAC keyed with the server's secret."""
        return hmac.new(self.secret, f"teacher-token:{teacher_token}".encode(), hashlib.sha256).hexdigest()

    @explained
    def open_session(self, who: Identity, client: str, max_age_s: int = SESSION_MAX_AGE_S,
                     teacher_token: str | None = None) -> str:
        """Start a session for `who`; returns the cookie's value, "<session id>.<expires>.<signature>"
        (the session id is random, the signature an HMAC-SHA256 with the server's secret). A
        teacher's session keeps an HMAC of `teacher_token` (the token it signed in with), so that
        changing MNIST_LAB_TEACHER_TOKEN ends it (session()). Expired sessions are removed on the way."""
        if who.role not in ROLES:
            raise ValueError(f"Unknown role '{who.role}'; choose one of {', '.join(ROLES)}.")
        now = self.clock()
        session_id, expires = secrets.token_hex(16), int(now + max_age_s)
        token_mac = self._token_mac(teacher_token) if who.role == "teacher" and teacher_token else None
        with self._transaction() as conn:
            conn.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
            conn.execute(f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}, token_mac) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (session_id, who.role, who.workspace, who.student_id, who.name, client, now, expires,
                          token_mac))
        return f"{session_id}.{expires}.{self._signature(session_id, expires)}"

    def _session_id(self, cookie: object) -> str | None:
        """The session id of a well-formed, correctly signed, unexpired cookie value; else None."""
        if not isinstance(cookie, str) or len(cookie) > 200:
            return None
        found = _COOKIE.fullmatch(cookie)
        if found is None:
            return None
        session_id, expires, signature = found.group(1), int(found.group(2)), found.group(3)
        if not hmac.compare_digest(self._signature(session_id, expires), signature):
            return None
        return session_id if expires > self.clock() else None

    def session(self, cookie: str | None, teacher_token: str | None = None) -> Identity | None:
        """Who the cookie value `cookie` signs in: None unless its form, signature and expiry are
        right and its session still exists (not signed out, not revoked by a PIN reset). Given the
        server's `teacher_token` ('' : none now), a teacher's session also needs the token it was
        opened with to be that one still (compared in constant time): a changed token signs the
        teacher out everywhere. None checks no token (the CLI, tests)."""
        session_id = self._session_id(cookie)
        if session_id is None:
            return None
        rows = self._rows("SELECT role, workspace, COALESCE(student_id, ''), COALESCE(name, ''), "
                          "COALESCE(token_mac, '') FROM sessions WHERE session_id = ? AND expires_at > ?",
                          (session_id, self.clock()))
        if not rows or rows[0][0] not in ROLES:
            return None
        role, workspace, student_id, name, token_mac = rows[0]
        if role == "teacher" and teacher_token is not None:
            expected = self._token_mac(teacher_token) if teacher_token else ""
            # both sides always hashed and compared: no early exit tells a missing mac from a wrong one
            if not (same_secret(token_mac, expected) and expected):
                return None
        return Identity(role, workspace, student_id, name)

    @explained
    def close_session(self, cookie: str | None) -> None:
        """Sign out: the session the cookie names ends (a cookie not ours ends nothing)."""
        session_id = self._session_id(cookie)
        if session_id is not None:
            with self._transaction() as conn:
                conn.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))

    @explained
    def close_sessions(self, student_id: str | None = None, everyone: bool = False, keep: str | None = None) -> int:
        """Sign out a person (`student_id`: every session of theirs) or, with `everyone`, every
        session except the one the cookie `keep` names (the teacher's own, when given). How many
        sessions ended."""
        with self._transaction() as conn:
            if everyone:
                kept = self._session_id(keep) or ""
                return conn.execute("DELETE FROM sessions WHERE session_id != ?", (kept,)).rowcount
            if student_id is None:
                return 0
            return conn.execute("DELETE FROM sessions WHERE role = 'student' AND student_id = ?",
                                (student_id,)).rowcount

    def sessions(self) -> list[dict]:
        """The live sessions, newest first (the teacher's "who is signed in"), without their ids."""
        columns = SESSION_COLUMNS[1:]
        rows = self._rows(f"SELECT {', '.join(columns)} FROM sessions WHERE expires_at > ? ORDER BY created_at DESC",
                          (self.clock(),))
        return [dict(zip(columns, row)) for row in rows]


def key_parts(key: str) -> tuple[str, str, str]:
    """A throttle key (Accounts.failures) read back: (kind, client, student id), kind one of
    "client" ('client:<ip>'), "account" ('account:<id>'), "teacher" ('token:teacher') and "pair"
    ('pair:<ip>|account:<id>' or 'pair:<ip>|token:teacher': then the student id is '' for the
    teacher's token). For the teacher's page; an unknown key is ("", "", "")."""
    kind, _sep, rest = key.partition(":")
    if kind == "client":
        return "client", rest, ""
    if kind == "account":
        return "account", "", rest
    if key == TEACHER_KEY:
        return "teacher", "", ""
    if kind == "pair":
        client, _sep, account = rest.rpartition("|")
        _kind, _client, student_id = key_parts(account)
        return ("pair", client, student_id) if _kind in ("account", "teacher") else ("", "", "")
    return "", "", ""


def _pair_key(client: str, account: str) -> str:
    return f"pair:{client}|{account}"


def _client_key(client: str) -> str:
    return f"client:{client}"


def _account_key(student_id: str) -> str:
    return f"account:{student_id}"
