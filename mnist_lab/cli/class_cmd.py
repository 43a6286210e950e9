"""`python -m mnist_lab class ...`: a shared server's class, for a teacher at a terminal (the same as
the app's class pages). `class --out DIR` writes the class's progress and pooled tables as CSV;
`roster FILE` loads the roster (a CSV of 学号,姓名) and prints the one-time codes, `codes [ID...]`
prints new codes for students without a PIN, `reset ID` clears a PIN, `remove ID` takes a student
off the class (a new roster never does), `failures [--clear]` lists (or clears) the counted wrong
sign-in tries; `reports` writes every student's report as one zip, `export` the term's data, and
`end-term` exports, then deletes the class's data after a typed confirmation. Each with --db.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from mnist_lab import i18n
from mnist_lab.cli.common import db_help, lang, language
from mnist_lab.cli.common import gettext as _
from mnist_lab.cli.inspect_cmd import existing_store, out_folder
from mnist_lab.errors import ConfigError, shorten
from mnist_lab.i18n import N_
from mnist_lab.lab import classwork
from mnist_lab.paths import default_db_path
from mnist_lab.runs.store import ResultStore
from mnist_lab.service import class_jobs
from mnist_lab.service.identity import Accounts, class_roster, parse_roster, server_secret
from mnist_lab.service.queue import JobQueue

MAX_ROSTER_BYTES = 1 << 20  # a roster of 2,000 students is well under 100 KB
EXIT_STOPPED = 130  # as main's: Ctrl-C
NOTHING_TYPED = N_("Nothing was typed (the input ended): to end the term, type the number of students, {n}, at the "
                   "prompt, or give --confirm {n}.")


def _accounts(store: ResultStore) -> Accounts:
    return Accounts(store, server_secret(store.path))


def _print_codes(accounts: Accounts, codes: dict[str, str]) -> None:
    """The codes as a table to print and hand out: 学号, 姓名, code."""
    names = {entry.student_id: entry.name for entry in accounts.roster()}
    rows = [{_("student ID"): sid, _("student name"): names.get(sid, ""), _("one-time code"): code}
            for sid, code in sorted(codes.items())]
    if rows:
        print(pd.DataFrame(rows).to_string(index=False))
    print(_("{n} one-time codes: each works once, for that student's first sign-in, then they choose a PIN.")
          .format(n=len(rows)))


def cmd_roster(args) -> int:
    path = Path(args.file)
    try:
        if path.stat().st_size > MAX_ROSTER_BYTES:
            raise ValueError(_("The roster {file} is larger than 1 MB: is it the right file?").format(file=path))
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValueError(_("The roster {file} is not UTF-8 text: save it from the spreadsheet as CSV (UTF-8).")
                         .format(file=path)) from None
    except OSError as exc:
        raise ValueError(_("The roster {file} cannot be read ({why}).").format(
            file=path, why=shorten(exc.strerror or str(exc), quote=False))) from None
    parse_roster(text)  # checked whole before the database is opened (or created)
    store = ResultStore(args.db or default_db_path())
    accounts = _accounts(store)
    _print_codes(accounts, accounts.import_roster(text))
    return 0


def cmd_codes(args) -> int:
    accounts = _accounts(existing_store(args.db))
    _print_codes(accounts, accounts.issue_codes(args.ids or None))
    return 0


def cmd_reset(args) -> int:
    accounts = _accounts(existing_store(args.db))
    _print_codes(accounts, {args.id: accounts.reset(args.id)})
    return 0


def cmd_remove(args) -> int:
    accounts = _accounts(existing_store(args.db))
    accounts.remove(args.id)
    print(_("removed {id} from the class: their runs stay").format(id=args.id))
    return 0


def cmd_failures(args) -> int:
    accounts = _accounts(existing_store(args.db))
    if args.clear:
        print(_("cleared {n} counts of wrong sign-in tries").format(n=accounts.clear_failures()))
        return 0
    rows = [{_("client or account"): f["key"], _("wrong tries"): f["failures"],
             _("last (UTC)"): datetime.fromtimestamp(f["last_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S")}
            for f in accounts.failures()]
    print(pd.DataFrame(rows).to_string(index=False) if rows else _("no wrong sign-in tries counted"))
    return 0


def cmd_tables(args) -> int:
    """`class --out DIR`: progress.csv, pooled_grid.csv and pooled_compare.csv, and a short summary."""
    if args.out is None:
        raise ValueError(_("Give --out DIR for the class's tables, or a command (see class --help)."))
    store = existing_store(args.db)
    roster = class_roster(store)
    with out_folder(args.out):
        paths = classwork.write_class_tables(store, roster, args.out)
    runs = classwork.class_runs(store)
    progress = classwork.progress_table(runs, roster)
    print(_("{n} students, {done} of them finished lab 5 (requirements 1 to 3)").format(
        n=len(progress), done=int(progress["lab5_done"].sum()) if len(progress) else 0))
    grids = classwork.pooled_grids(runs)
    if grids:
        grid = grids[0]
        print(_("the largest pooled depth × kernel set: {cells} cells, {runs} runs of {students} students ({settings})")
              .format(cells=len(grid.cells), runs=len(grid.runs), students=grid.students,
                      settings=i18n.render(classwork.settings_text(grid.settings), lang())))
    print(_("wrote {files}").format(files=", ".join(str(p) for p in paths.values())))
    return 0


def _bar(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, file=sys.stderr, disable=quiet, dynamic_ncols=True)


def _target(args, name: str) -> Path:
    """--out/name, refused (before anything is written) when --out is missing or the zip is there
    already: an earlier export is never overwritten (end-term twice into one folder would leave an
    export of an emptied class)."""
    if args.out is None:
        raise ValueError(_("Give --out DIR for the zip (class --out DIR {command}, or class {command} --out DIR).")
                         .format(command=args.class_command))
    target = args.out / name
    if target.exists() or target.is_symlink():
        raise ValueError(_("{file} is already there: move it away or choose another --out (nothing was written).")
                         .format(file=target))
    return target


def _zip(args, store: ResultStore, name: str, build) -> Path | None:
    """Build one zip into --out with a progress bar; None when Ctrl-C stopped it (no zip left)."""
    target = _target(args, name)
    with out_folder(args.out):
        bar = _bar(0, args.quiet)
        try:
            def on_done(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)
            build(store, target, on_done, args.cancel)
        except class_jobs.Stopped:
            print(_("stopped: no zip was written"), file=sys.stderr)
            return None
        finally:
            bar.close()
    print(_("wrote {files}").format(files=target))
    return target


def cmd_reports(args) -> int:
    _target(args, "class_reports.zip")
    store = existing_store(args.db)
    students = class_jobs.class_students(store)
    if not students:
        raise ConfigError("students", 0, class_jobs.NO_STUDENTS)
    _zip(args, store, "class_reports.zip", lambda store, target, on_done, cancel: class_jobs.reports_zip(
        store, students, args.report_lang, target, on_done, cancel))
    return 0


def _export(args, store: ResultStore) -> Path | None:
    return _zip(args, store, "class_export.zip", lambda store, target, on_done, cancel: class_jobs.export_zip(
        store, class_roster(store), lang(), target, on_done, cancel))


def cmd_export(args) -> int:
    _target(args, "class_export.zip")
    _export(args, existing_store(args.db))
    return 0


def _typed_number(n: int, cancel: threading.Event) -> int | None:
    """The number of students typed at the prompt; None when Ctrl-C aborted it. The input ended
    (EOF) or anything but ASCII digits: ConfigError."""
    previous = None
    if threading.current_thread() is threading.main_thread():  # Ctrl-C interrupts the prompt, not after it
        previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        typed = input(_("{n} students: their runs, weights, jobs and sign-ins will be deleted. Type the number of "
                        "students to confirm: ").format(n=n)).strip()
    except KeyboardInterrupt:
        return None
    except EOFError:
        raise ConfigError("confirm", "", NOTHING_TYPED, n=n) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if cancel.is_set():
        return None
    if not (typed.isascii() and typed.isdigit()) or len(typed) > 9:  # '²' and '٣' are digits to str.isdigit
        raise ConfigError("confirm", shorten(typed), class_jobs.WRONG_CONFIRM, n=n)
    return int(typed)


def cmd_end_term(args) -> int:
    """The export first, then the number of students typed (or --confirm), then the deletion of
    what the export holds (end_term refuses if the class changed since its snapshot)."""
    _target(args, "class_export.zip")
    store = existing_store(args.db)
    n = len(class_jobs.class_students(store))
    if args.confirm is not None and args.confirm != n:  # refused before anything is written
        raise ConfigError("confirm", args.confirm, class_jobs.WRONG_CONFIRM, n=n)
    class_jobs.check_term_ready(store, args.confirm)  # a job still training: no export to throw away
    snapshot = class_jobs.class_snapshot(store)  # before the export reads the store
    if (exported := _export(args, store)) is None:
        return 0
    confirm = args.confirm
    if confirm is None:
        confirm = _typed_number(n, args.cancel)
        if confirm is None:
            print("\n" + _("aborted: nothing was deleted (the export is in {file})").format(file=exported),
                  file=sys.stderr)
            return EXIT_STOPPED
    cleared = class_jobs.end_term(store, JobQueue(store), _accounts(store), confirm, snapshot=snapshot)
    print(_("deleted {runs} runs, {jobs} jobs, {students} students, {sessions} sessions and {files} files").format(
        runs=cleared.runs, jobs=cleared.jobs, students=cleared.students, sessions=cleared.sessions,
        files=cleared.files))
    return 0


def add_parser(sub, parents=()) -> None:
    """Register `class` (roster, codes, reset, remove, failures) on the main parser's subcommands."""
    text = _("a shared server's class: progress and pooled tables (--out), roster, one-time codes, PIN resets, "
             "wrong sign-in tries, every report, the term's export and its end")
    group = sub.add_parser("class", help=text, description=text, parents=list(parents))
    group.add_argument("--db", type=Path, help=db_help())
    group.add_argument("--out", type=Path, help=_("directory for progress.csv, pooled_grid.csv and pooled_compare.csv"))
    group.set_defaults(func=cmd_tables)
    what = group.add_subparsers(dest="class_command")

    def command(name: str, help: str):
        p = what.add_parser(name, help=help, description=help, parents=list(parents))
        # `class --db X roster F` and `class roster F --db X` both: no default here overrides the class's
        p.add_argument("--db", type=Path, default=argparse.SUPPRESS, help=db_help())
        return p

    p = command("roster", _("load the roster (a CSV file: 学号,姓名 or student_id,name) and print the one-time codes"))
    p.add_argument("file", help=_("the roster's CSV file (UTF-8)"))
    p.set_defaults(func=cmd_roster)
    p = command("codes", _("print new one-time codes for students without a PIN (all of them, or those named)"))
    p.add_argument("ids", nargs="*", metavar="ID", help=_("student IDs (default: every student without a PIN)"))
    p.set_defaults(func=cmd_codes)
    p = command("reset", _("clear a student's PIN, sign them out and print their new one-time code"))
    p.add_argument("id", metavar="ID", help=_("the student ID"))
    p.set_defaults(func=cmd_reset)
    p = command("remove", _("take a student off the class (their PIN, code and sessions); their runs stay"))
    p.add_argument("id", metavar="ID", help=_("the student ID"))
    p.set_defaults(func=cmd_remove)
    p = command("failures", _("list the counted wrong sign-in tries (per client and per account)"))
    p.add_argument("--clear", action="store_true", help=_("forget them all"))
    p.set_defaults(func=cmd_failures)

    def zip_command(name: str, help: str):
        p = command(name, help)
        # `class --out DIR export` and `class export --out DIR` both: no default here overrides the class's
        p.add_argument("--out", type=Path, default=argparse.SUPPRESS, help=_("directory for the zip"))
        p.add_argument("--quiet", action="store_true", help=_("no progress bar"))
        return p

    p = zip_command("reports", _("every student's report (.docx, with their name and student ID) in one zip"))
    p.add_argument("--report-lang", type=language, default="zh_CN", help=_("the reports' language: zh (default) or en"))
    p.set_defaults(func=cmd_reports)
    p = zip_command("export", _("the term's data in one zip: students, progress, pooled tables, runs, epochs, "
                                "iterations, jobs"))
    p.set_defaults(func=cmd_export)
    p = zip_command("end-term", _("export the term's data, then delete the class's runs, weights, jobs and sign-ins "
                                  "(the teacher's own runs stay)"))
    p.add_argument("--confirm", type=int, metavar="N", help=_("the number of students, instead of typing it"))
    p.set_defaults(func=cmd_end_term)
