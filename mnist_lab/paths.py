"""Where the project's files go on this machine: the cache (decoded datasets, built kernels,
downloads), the default results database and the server's secret beside it, each movable by an
environment variable; and how every output file is written (whole or not at all: `write_files`)."""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Mapping
from pathlib import Path

CACHE_DIR_ENV = "MNIST_LAB_CACHE_DIR"
DB_ENV = "MNIST_LAB_DB"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "mnist_lab")


def default_db_path() -> Path:
    return Path(os.environ.get(DB_ENV) or default_cache_dir() / "results.sqlite")


def secret_path(db: str | Path) -> Path:
    """The server's signing secret beside the results database `db` (`<db>.secret`: sessions
    signed with it stay valid across restarts and every server process on that database)."""
    db = Path(db)
    return db.with_name(f"{db.name}.secret")


def write_files(contents: Mapping[str | Path, bytes | str]) -> list[Path]:
    """Write every file of `contents` (path -> bytes, or text as UTF-8), never leaving a 0-byte or
    half file: each goes to a temporary name of its own (pid and a random part: concurrent writers
    never share one) in its own folder, flushed to disk, and only when all are written are they
    renamed into place, one by one. A failure while writing (a full disk, a read-only folder) is
    all or nothing: the temporary files are removed, every existing file is left as it was. A
    rename that fails after others succeeded (rare: the name became a folder, the folder lost its
    write permission) leaves the files renamed so far new and the rest as they were, each file
    whole. Raises the OSError; returns the paths written."""
    staged: list[tuple[Path, Path]] = []
    try:
        for path, data in contents.items():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            staged.append((tmp, path))
            with open(tmp, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return [path for _, path in staged]


def write_file(path: str | Path, data: bytes | str) -> Path:
    """One file, written as `write_files` writes (a temporary name, then renamed)."""
    return write_files({path: data})[0]


# ------------------------------------------------------------------------------ CSV for a person
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet reads a cell starting so as a formula


def no_formula(value: object) -> object:
    """A text cell as a spreadsheet shows it, never runs it: one starting with = + - @ TAB or CR
    (a student's name '=HYPERLINK(...)') gets a leading ' (OWASP's CSV injection advice). Numbers
    and missing values stay as they are (a negative number is a number)."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def csv_text(frame, header: bool = True) -> str:
    """`frame` (a pandas DataFrame) as the CSV text pandas writes (no index), every text cell
    through `no_formula`: what every CSV written for a person (an export, a download) holds."""
    text = frame.select_dtypes(include=["object", "string"]).columns  # numbers are never formulas
    return frame.assign(**{c: frame[c].map(no_formula) for c in text}).to_csv(index=False, header=header)
