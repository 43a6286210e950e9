"""Refusals the core raises, as data: which config field, the value given, and the message as a
template with its values (so a UI can render it through a gettext catalog); str() is the English
sentence. Also the small checks every config's `validate()` is written with.
"""
from __future__ import annotations

import contextlib
import errno
import math
from collections.abc import Iterator, Sequence
from typing import Any

from mnist_lab.i18n import N_, Message, from_stored

SQLITE_INT_MAX = 2**63 - 1  # seeds are stored as SQLite's signed 64-bit INTEGER


class ConfigError(ValueError):
    """A config field that cannot be used. `field` is the dataclass field (e.g. 'batch_size'),
    `value` what was given, `template` the English message with `{name}` placeholders and
    `params` their values (`value` among them). The template is ConfigError's 3rd argument, a
    pybabel keyword (i18n.KEYWORDS); one built elsewhere is marked with i18n.N_."""

    def __init__(self, field: str, value: Any, template: str, /, **params: Any):
        self.field, self.value, self.template = field, value, template
        self.params = {"value": value, **params}
        super().__init__(template.format(**self.params))


# What can be wrong with the results database, each with what to do. Only a damaged file is to be
# moved aside: a full disk or a read-only place leaves a healthy database that must be kept.
STORE_DAMAGED = N_("The results database {path} cannot be used ({detail}). Move it aside "
                   "(mv {path} {path}.broken) and run again: a new, empty one is created; "
                   "or choose another file with --db or MNIST_LAB_DB.")
STORE_FULL = N_("The results database {path} cannot be written: the disk is full ({detail}). Free some space on "
                "that disk, or choose another file with --db or MNIST_LAB_DB; the database itself is not damaged.")
STORE_READ_ONLY = N_("The results database {path} is read-only here ({detail}): the file or its folder cannot be "
                     "written. Make them writable, or choose another file with --db or MNIST_LAB_DB; the database "
                     "itself is not damaged.")
STORE_NOT_A_FILE = N_("The results database {path} is not a regular file ({detail}): give the name of a database "
                      "file with --db or MNIST_LAB_DB, e.g. results.sqlite in a folder of yours.")
STORE_UNUSABLE = N_("The results database {path} cannot be used ({detail}): check the file and its folder, or "
                    "choose another file with --db or MNIST_LAB_DB.")
# The folder beside the database that keeps each run's weights (<db>.weights/): its own messages,
# for a healthy database whose weights folder cannot be written.
WEIGHTS_FULL = N_("The weights folder {path} cannot be written: the disk is full ({detail}). Free some space on "
                  "that disk, or choose another database with --db or MNIST_LAB_DB (its weights go beside it).")
WEIGHTS_READ_ONLY = N_("The weights folder {path} is read-only here ({detail}): make it writable, or choose another "
                       "database with --db or MNIST_LAB_DB (its weights go beside it); the database is not damaged.")
WEIGHTS_UNUSABLE = N_("The weights folder {path} cannot be written ({detail}): check it, or choose another database "
                      "with --db or MNIST_LAB_DB (its weights go beside it).")
# A run (or a job) that a full disk cut short: its stored reason, the same whoever records it.
DISK_FULL_REASON = N_("disk full: the results database could not take more rows")
# Why a run or a job ended, when the results database (or its weights folder) failed: stored with
# the run and shown to every reader, so without the file's path (a server's, in shared mode).
STORE_REASONS = {
    STORE_FULL: DISK_FULL_REASON,
    STORE_READ_ONLY: N_("the results database became read-only"),
    STORE_NOT_A_FILE: N_("the results database is not a regular file"),
    STORE_UNUSABLE: N_("the results database could not be used"),
    STORE_DAMAGED: N_("the results database is damaged"),
    WEIGHTS_FULL: N_("disk full: the run's weights could not be saved"),
    WEIGHTS_READ_ONLY: N_("the weights folder is read-only: the run's weights could not be saved"),
    WEIGHTS_UNUSABLE: N_("the run's weights could not be saved"),
}
OUT_OF_MEMORY = N_("Out of memory: use a smaller training subset, batch size or network.")

# ------------------------------------------------------------------------------ public forms
# A refusal that names the server's own files, folders or commands (the database's path and `mv`, the
# data folder and `curl`) has a public form: what a student or visitor of a shared or demo server reads
# in its place, without them, saying what they can do. The teacher and a local user read the detail.
# An exception says its own as a `public` Message (StoreError here, DataError in mnist_lab/data, ...).
PUBLIC = "public"  # the param of a stored failure (failure_reason) that keeps its public form beside the detail
PUBLIC_FAILED = N_("Something went wrong on the server. Try again later; if it happens again, tell your teacher.")
PUBLIC_STORE = {
    STORE_DAMAGED: N_("The results database of this server is damaged: runs cannot be shown or saved now. Tell your "
                      "teacher: the server's log says what is wrong and what to do."),
    STORE_FULL: N_("The server's disk is full: nothing new can be saved now. Tell your teacher, and try again "
                   "later."),
    WEIGHTS_FULL: N_("The server's disk is full: nothing new can be saved now. Tell your teacher, and try again "
                     "later."),
}
PUBLIC_STORE_UNUSABLE = N_("The server cannot use its results database right now. Tell your teacher, and try again "
                           "later.")


class StoreError(RuntimeError):
    """The results database cannot be read or written; the message names the file and what to do
    (`template` with `params` path and detail, as ConfigError). `disk_full`: the disk (or the
    database's page limit) was full, so the file is healthy and a run cut short says so."""

    def __init__(self, path: Any, detail: str, template: str | None = None):
        self.path, self.detail = str(path), detail
        self.template = template or STORE_DAMAGED
        self.params = {"path": self.path, "detail": detail}
        super().__init__(self.template.format(**self.params))

    @property
    def disk_full(self) -> bool:
        return self.template in (STORE_FULL, WEIGHTS_FULL)

    @property
    def reason(self) -> str:
        """Why a run or job it cut short ended, without the path (a msgid of STORE_REASONS)."""
        return STORE_REASONS.get(self.template, N_("the results database could not be used"))

    @property
    def public(self) -> Message:
        """What a student of a shared server reads: no path, no command (the teacher reads the detail)."""
        return Message(PUBLIC_STORE.get(self.template, PUBLIC_STORE_UNUSABLE))


class OutputError(RuntimeError):
    """A file the user asked for (--out: CSV tables, the report, an exported run) could not be
    written; as StoreError, `template` with `params` path and detail. Nothing half-written is left
    (paths.write_files)."""

    def __init__(self, path: Any, detail: str, template: str):
        self.path, self.detail, self.template = str(path), detail, template
        self.params = {"path": self.path, "detail": detail}
        super().__init__(template.format(**self.params))

    @property
    def public(self) -> Message:
        return Message(PUBLIC_OUTPUT)


PUBLIC_OUTPUT = N_("The file could not be written on the server. Try again later; if it happens again, tell your "
                   "teacher.")


def output_error(path: Any, exc: OSError) -> OutputError:
    """The OSError of writing under `path` (a folder the user named), named as what it is: a full
    disk, a read-only place, a file where a folder should be, or the system's own words."""
    detail = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(path, detail, N_("{path} could not be written: the disk is full ({detail}). Free some "
                                            "space there or choose another folder; no file was left half-written."))
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputError(path, detail, N_("{path} could not be written: it is read-only ({detail}). Choose a "
                                            "folder you can write to."))
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        return OutputError(path, detail, N_("{path} is a file, not a folder ({detail}): name a folder for the "
                                            "output (it is created if missing)."))
    return OutputError(path, detail, N_("{path} could not be written ({detail}): choose another folder."))


@contextlib.contextmanager
def writing(path: Any) -> Iterator[None]:
    """Any OSError while writing output under `path` becomes one OutputError naming its cause."""
    try:
        yield
    except OSError as exc:
        raise output_error(path, exc) from None


class _Shown(str):
    """Text `shorten` made: already a repr, so `{value!r}` shows it as it is (no second pair of
    quotes) and `shorten` of it is itself. Stored (i18n.to_stored) it is a plain str again, so a
    template fed shortened text says `{value}`."""

    def __repr__(self) -> str:
        return str(self)


def shorten(value: Any, limit: int = 80, *, quote: bool = True) -> str:
    """Someone else's value (a crafted file's entry, a link's text, an exception's words) as a
    message shows it: its repr, so newlines, ANSI escapes, bidi overrides and every other
    unprintable character are escaped (one line that reads as it is), cut to `limit` characters
    with "…". `quote=False` drops a text's quotes (a name, a detail), still escaped. Text it made
    is kept as it is (only cut), never quoted twice."""
    if isinstance(value, _Shown):
        text = str(value)
    else:
        text = repr(value)
        if not quote and isinstance(value, str):
            text = text[1:-1]
        # An object's own repr may hold raw control characters (a str's never does); a huge one is
        # cut before it is looked at.
        cut = len(text) > limit
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
        if cut:
            text += "…"
    return _Shown(text if len(text) <= limit else text[:limit - 1] + "…")


# ------------------------------------------------------------------------------------ checks
# Types only; each config's validate() then checks ranges with its own sentence.

def is_int(value: Any) -> bool:
    """A whole number: a Python int, not a bool (True would mean 1) and not a float."""
    return isinstance(value, int) and not isinstance(value, bool)


def need_int(field: str, value: Any, name: str, example: Any) -> int:
    if not is_int(value):
        raise ConfigError(field, value, "{name} must be a whole number; got {value!r}. Use a whole number such "
                          "as {example!r}.", name=name, example=example)
    return value


def need_float(field: str, value: Any, name: str, example: Any) -> float:
    """A finite real number (an int is fine: lr=1 means 1.0); never a bool, None or NaN."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) or not math.isfinite(value):
        raise ConfigError(field, value, "{name} must be a finite number; got {value!r}. Use a number such as "
                          "{example!r}.", name=name, example=example)
    return value


def need_bool(field: str, value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(field, value, "{name} is a yes/no setting; got {value!r}. Use True or False.", name=name)
    return value


def need_choice(field: str, value: Any, name: str, options: Sequence[str], template: str | None = None) -> str:
    """One of `options`; `template` may word the refusal (placeholders value, name, options)."""
    if not isinstance(value, str) or value not in options:
        raise ConfigError(field, value, template or "{name} must be one of {options}; got {value!r}. Pick one "
                          "of those.", name=name, options=", ".join(options))
    return value


def need_ints(field: str, value: Any, name: str, example: tuple[int, ...]) -> tuple[int, ...]:
    """A tuple of whole numbers (a list would be stored wrongly, a lone int is not a tuple)."""
    if not isinstance(value, tuple) or not all(is_int(v) for v in value):
        raise ConfigError(field, value, "{name} must be a tuple of whole numbers; got {value!r}. Write it like "
                          "{example!r}.", name=name, example=example)
    return value


def need_seed(field: str, value: Any, name: str) -> int:
    """A seed: a whole number that fits SQLite's signed 64-bit INTEGER and torch's generator."""
    need_int(field, value, name, 0)
    if not 0 <= value <= SQLITE_INT_MAX:
        raise ConfigError(field, value, "{name} must be between 0 and 2**63 - 1; got {value!r}. Choose a "
                          "smaller, non-negative seed such as 0.", name=name)
    return value


class WeightsError(ValueError):
    """A run's weights file that cannot be used as it is: damaged, or crafted (runs/weights.py
    says each way). `run_id` names the run, never the file's path; `template` and `params` as
    ConfigError (a param may be an i18n.Message, the bad setting's own refusal). Its public form
    says only that the file cannot be used (what is inside a server's file is the teacher's)."""

    def __init__(self, run_id: str, template: str, /, **params: Any):
        self.run_id, self.template = run_id, template
        self.params = {"run_id": run_id, **params}
        super().__init__(template.format(**self.params))

    @property
    def public(self) -> Message:
        return Message(PUBLIC_WEIGHTS, {"run_id": self.run_id})


PUBLIC_WEIGHTS = N_("The saved weights of run {run_id} cannot be used: the file is damaged or was altered. Delete "
                    "the run and train it again; if it happens again, tell your teacher.")


def public_form(item: object) -> Message | None:
    """What a student or visitor of a shared server reads in place of `item`, or None where `item`
    names nothing of the server (a refusal of their own settings: shown as it is). `item` is an
    exception (its `public`; a crash that is no refusal: PUBLIC_FAILED), a failure_reason Message,
    or such a Message stored (i18n.to_stored): their public form is their PUBLIC param."""
    if isinstance(item, BaseException):
        public = getattr(item, "public", None)
        if public is None and not isinstance(item, ValueError) and not getattr(item, "template", None):
            return Message(PUBLIC_FAILED)  # the server's own failure: its words are the teacher's
    elif isinstance(item, Message):
        public = item.params.get(PUBLIC)
    else:
        parts = from_stored(item)
        public = parts[0].params.get(PUBLIC) if parts and len(parts) == 1 else None
    if isinstance(public, str):  # stored with its message
        parts = from_stored(public)
        public = parts[0] if parts and len(parts) == 1 else None
    return public if isinstance(public, Message) else None


def failure_reason(exc: BaseException) -> Message:
    """What went wrong, as the message stored with a run (its stop reason) and with its job (its
    error): never empty. The one place an exception becomes such a message.

    A database or weights-folder failure says what it was without the file's path (readers of a
    shared server see it); a second Ctrl-C and running out of memory are named; a refusal keeps its
    template and values (a value that is not plain data is kept as its repr, if the English stays the
    same), else its English words; anything else is named with its type and its own words. Where
    those name the server's files or commands, the public form (`public_form`) is kept beside them
    as the PUBLIC param (str() and the English column stay the detail)."""
    if isinstance(exc, StoreError):
        return Message(exc.reason)
    if isinstance(exc, KeyboardInterrupt):
        return Message(N_("aborted with a second Ctrl-C"))
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":  # torch's is a RuntimeError
        return Message(OUT_OF_MEMORY)
    message = _reason(exc)
    public = public_form(exc)
    if public is not None:  # kept beside the detail, so each reader words the form that is theirs
        message = Message(message.template, {**message.params, PUBLIC: public})
    return message


def _reason(exc: BaseException) -> Message:
    """failure_reason's detail: the refusal's template and values, else its words."""
    template, params = getattr(exc, "template", None), getattr(exc, "params", None)
    if isinstance(template, str) and template and isinstance(params, dict):
        message = Message(template, {k: v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)
                                     for k, v in params.items()})
        with contextlib.suppress(Exception):  # a template that does not format with the repr'd values
            if str(message) == str(exc):  # its values survive storing (a tuple, an object may not)
                return message
        return Message.verbatim(str(exc))
    text = str(exc).strip()
    if isinstance(exc, ValueError) and text:  # the core's own refusal: its words are the message
        return Message.verbatim(text)
    return Message.verbatim(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
