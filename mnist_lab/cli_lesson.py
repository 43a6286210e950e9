"""`python -m mnist_lab lesson NAME`: one of the week-2 lessons (mnist_lab/lessons.py) trained in
this process as a job of the local workspace, then its table (mean ± sd per variant) and its
reading, worded through the gettext catalogs (--lang). `lesson --list` lists the lessons.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from .data import DataUnavailableError
from .i18n import mean_sd_texts, resolve_lang, translator
from .lessons import LESSONS, LessonConfig, datasets_for, lesson_spec, plan, unavailable
from .store import default_db_path
from .train import ENGINES


def add_parser(sub, parents=(), gettext=lambda s: s) -> None:
    """Register the `lesson` subcommand on the main parser's subparsers; `parents` brings the
    shared --lang, `gettext` words the help in this run's language."""
    _ = gettext
    text = _("a week-2 question as a ready experiment over seeds (--list: which ones)")
    p = sub.add_parser("lesson", help=text, description=text, parents=list(parents))
    p.add_argument("name", nargs="?", help=_("the lesson: {names}").format(names=", ".join(LESSONS)))
    p.add_argument("--list", action="store_true", help=_("list the lessons and whether this build can run them"))
    p.add_argument("--dataset", help=_("mnist, fashion-mnist or cifar10 (default: the lesson's own)"))
    p.add_argument("--seeds", type=int, help=_("runs per variant (default: the lesson's, usually 3)"))
    p.add_argument("--full", action="store_true", help=_("the lab's full settings: every image, more epochs"))
    p.add_argument("--epochs", type=int, help=_("override the lesson's epochs"))
    p.add_argument("--train-limit", type=int, help=_("override the lesson's number of training images"))
    p.add_argument("--test-limit", type=int, help=_("override the lesson's number of test images"))
    p.add_argument("--device", default="auto", help=_("auto (CUDA if present), cpu, cuda"))
    p.add_argument("--engine", choices=ENGINES, default="auto")
    p.add_argument("--data-dir", help=_("datasets in torchvision's layout"))
    if not parents:
        p.add_argument("--lang", help=_("zh or en (default: from LANG / LC_ALL)"))
    p.add_argument("--out", type=Path, help=_("directory for the CSV tables"))
    p.add_argument("--db", type=Path, help=_("SQLite results database (default {path})").format(path=default_db_path()))
    p.add_argument("--quiet", action="store_true", help=_("no progress bar"))
    p.set_defaults(func=cmd_lesson)


def _list(_) -> int:
    """The lessons, their datasets and whether this build can run them; `_` is gettext."""
    rows = []
    for name, lesson in LESSONS.items():
        lost = unavailable(lesson)
        available = _("yes") if not lost else _("not available in this build") + f" ({', '.join(lost)})"
        rows.append(dict(name=name, title=_(lesson.title), datasets=", ".join(datasets_for(lesson)) or "—",
                         seeds=lesson.seeds, available=available))
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def cmd_lesson(args) -> int:
    from .cli import EXIT_BAD_INPUT, _Bar, _check_data_dir, _check_out, _export, _report_diverged
    from .jobs import run_inline
    from .policy import estimate_seconds
    from .store import ResultStore
    from .train import resolve_device

    _ = translator(resolve_lang(getattr(args, 'lang', None))).gettext
    if args.list:
        return _list(_)
    if not args.name:
        raise ValueError("Name a lesson (one of: " + ", ".join(LESSONS) + "), or use --list.")
    cfg = LessonConfig(args.name, dataset=args.dataset or "", seeds=args.seeds, full=args.full, epochs=args.epochs,
                       train_limit=args.train_limit, test_limit=args.test_limit)
    spec = lesson_spec(cfg, device=args.device, engine=args.engine, data_dir=args.data_dir)
    variants, skipped = plan(cfg, spec.train, spec.data)
    lesson = cfg.lesson
    print(f"{_(lesson.title)}: {_(lesson.question)}")
    for s in skipped:
        print(_("Skipped {label}: {reason}").format(label=_(s.label), reason=s.reason), file=sys.stderr)
    seconds = estimate_seconds(spec, resolve_device(spec.train.device).type)
    print(_("{runs} runs ({variants} variants × {seeds} seeds) on {dataset}, about {seconds:.0f} s here.").format(
        runs=spec.runs_total(), variants=len(variants), seeds=cfg.n_seeds(), dataset=spec.data.dataset,
        seconds=seconds))
    _check_out(args.out)
    _check_data_dir(args.data_dir)
    store = ResultStore(args.db)
    steps = sum(-(-v.data.n_train() // v.train.batch_size) * v.train.epochs for v in variants)
    bar = _Bar(steps * cfg.n_seeds(), args.quiet)
    try:
        result = run_inline(spec, store, args.cancel, on_progress=bar)
    except DataUnavailableError as exc:  # how to get the files, then where the lesson runs without them
        print(f"error: {exc}", file=sys.stderr)
        others = [d for d in datasets_for(lesson) if d != spec.data.dataset]
        if others:
            print(_("This lesson also runs on {datasets}: add --dataset {first}.").format(
                datasets=", ".join(others), first=others[0]), file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        bar.close()
    table = result.summary.assign(variant=[_(v) for v in result.summary["variant"]],
                                  text=mean_sd_texts(result.summary, _))
    columns = {"variant": _("variant"), "n": _("runs"), "text": _("test accuracy, mean ± sd"),
               "params": _("parameters"), "seconds": _("seconds per run")}
    if "iterations" in lesson.metrics:
        columns["iterations"] = _("iterations per run")
    print(table[list(columns)].rename(columns=columns).to_string(index=False))
    for line in result.reading.render(_):
        print(line)
    _export(store, args.out, list(result.table["run_id"]), {f"lesson_{cfg.name}": result.table})
    return _report_diverged(result.results)
