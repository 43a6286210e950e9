"""`python -m mnist_lab class ...`: a shared server's class, for a teacher at a terminal (the same as
the app's teacher page). `roster FILE` loads the roster (a CSV of 学号,姓名) and prints the one-time
codes, `codes [ID...]` prints new codes for students without a PIN, `reset ID` clears a PIN,
`remove ID` takes a student off the class (a new roster never does), `failures [--clear]` lists
(or clears) the counted wrong sign-in tries. Each with --db.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from mnist_lab.cli.common import db_help
from mnist_lab.cli.common import gettext as _
from mnist_lab.cli.inspect_cmd import existing_store
from mnist_lab.errors import shorten
from mnist_lab.paths import default_db_path
from mnist_lab.runs.store import ResultStore
from mnist_lab.service.identity import Accounts, parse_roster, server_secret

MAX_ROSTER_BYTES = 1 << 20  # a roster of 2,000 students is well under 100 KB


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


def add_parser(sub, parents=()) -> None:
    """Register `class` (roster, codes, reset, remove, failures) on the main parser's subcommands."""
    text = _("a shared server's class: roster, one-time codes, PIN resets, wrong sign-in tries")
    group = sub.add_parser("class", help=text, description=text, parents=list(parents))
    what = group.add_subparsers(dest="class_command", required=True)

    def command(name: str, help: str):
        p = what.add_parser(name, help=help, description=help, parents=list(parents))
        p.add_argument("--db", type=Path, help=db_help())
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
