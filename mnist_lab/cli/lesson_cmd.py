"""`python -m mnist_lab lesson NAME`: one of the week-2 lessons (mnist_lab/lab/lessons.py) trained in
this process as a job of the local workspace, then its table (mean ± sd per variant) and its
reading, worded through the gettext catalogs (--lang). `lesson --list` lists the lessons.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from mnist_lab.cli.common import (
    EXIT_BAD_INPUT,
    ProgressBar,
    add_executor_flags,
    db_help,
    executor_of,
    export_tables,
    lang,
    note,
    open_store,
    report_diverged,
)
from mnist_lab.cli.common import gettext as _
from mnist_lab.data.datasets import DataUnavailableError
from mnist_lab.i18n import mean_sd_texts, render
from mnist_lab.i18n import seconds as i18n_seconds
from mnist_lab.lab.lessons import LESSONS, LessonConfig, datasets_for, loss_texts, plan
from mnist_lab.service import executors
from mnist_lab.service.jobs import lesson_spec
from mnist_lab.training.engines import ENGINE_NAMES


def add_parser(sub, parents=()) -> None:
    """Register the `lesson` subcommand on the main parser's subparsers; `parents` brings the
    shared --lang."""
    text = _("a week-2 question as a ready experiment over seeds (--list: which ones)")
    p = sub.add_parser("lesson", help=text, description=text, parents=list(parents))
    p.add_argument("name", nargs="?", help=_("the lesson: {names}").format(names=", ".join(LESSONS)))
    p.add_argument("--list", action="store_true", help=_("list the lessons"))
    p.add_argument("--dataset", help=_("mnist, fashion-mnist or cifar10 (default: the lesson's own)"))
    p.add_argument("--seeds", type=int, help=_("runs per variant (default: the lesson's, usually 3)"))
    p.add_argument("--full", action="store_true", help=_("the lab's full settings: every image, more epochs"))
    p.add_argument("--epochs", type=int, help=_("override the lesson's epochs"))
    p.add_argument("--train-limit", type=int, help=_("override the lesson's number of training images"))
    p.add_argument("--test-limit", type=int, help=_("override the lesson's number of test images"))
    p.add_argument("--device", default="auto", help=_("auto (CUDA if present), cpu, cuda"))
    p.add_argument("--engine", choices=ENGINE_NAMES, default="auto",
                   help=_("training path (as for train; auto: the fastest)"))
    p.add_argument("--data-dir", help=_("datasets in torchvision's layout"))
    p.add_argument("--out", type=Path, help=_("directory for the CSV tables"))
    p.add_argument("--db", type=Path, help=db_help())
    p.add_argument("--quiet", action="store_true", help=_("no progress bar"))
    add_executor_flags(p)
    p.set_defaults(func=cmd_lesson)


def _list() -> int:
    """The lessons, their datasets and seeds."""
    rows = [dict(name=name, title=_(lesson.title), datasets=", ".join(datasets_for(lesson)) or "—",
                 seeds=lesson.seeds) for name, lesson in LESSONS.items()]
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def cmd_lesson(args) -> int:
    from mnist_lab.service.estimate import estimate_seconds
    from mnist_lab.service.jobs import run_inline
    from mnist_lab.training.preflight import resolve_device

    if args.list:
        return _list()
    if not args.name:
        raise ValueError(_("Name a lesson (one of: {names}), or use --list.").format(names=", ".join(LESSONS)))
    cfg = LessonConfig(args.name, dataset=args.dataset or "", seeds=args.seeds, full=args.full, epochs=args.epochs,
                       train_limit=args.train_limit, test_limit=args.test_limit)
    spec = lesson_spec(cfg, device=args.device, engine=args.engine, data_dir=args.data_dir)
    variants, skipped = plan(cfg, spec.train, spec.data)
    execute = executor_of(args)  # a Ray cluster joined (or refused) before anything is written or measured
    lesson = cfg.lesson
    print(f"{_(lesson.title)}: {_(lesson.question)}")
    for s in skipped:
        note(args, _("Skipped {label}: {reason}").format(label=_(s.label), reason=render(s.why or s.reason, lang())),
             prefix=False)
    if args.executor == "local":
        seconds = estimate_seconds(spec, resolve_device(spec.train.device).type, now=True)  # the machine now
        print(_("{runs} runs ({variants} variants × {seeds} seeds) on {dataset}, about {time} here.").format(
            runs=spec.runs_total(), variants=len(variants), seeds=cfg.n_seeds(), dataset=spec.data.dataset,
            time=i18n_seconds(seconds, _)))
    else:  # the cluster's device (a GPU if a node has one), its idle figures: its nodes' load is not seen here
        device = executors.device_type(spec.train.device, args.executor, args.ray_address)
        seconds = estimate_seconds(spec, device)
        print(_("{runs} runs ({variants} variants × {seeds} seeds) on {dataset}: about {time} of training on the "
                "Ray cluster's {device}, its nodes training runs side by side.").format(
            runs=spec.runs_total(), variants=len(variants), seeds=cfg.n_seeds(), dataset=spec.data.dataset,
            time=i18n_seconds(seconds, _), device="GPU" if device == "cuda" else "CPU"))
    try:
        store = open_store(args, spec)  # the data first: without it, nothing is written
    except DataUnavailableError as exc:  # how to get the files, then where the lesson runs without them
        print(_("error: {message}").format(message=render(exc, lang())), file=sys.stderr)
        others = [d for d in datasets_for(lesson) if d != spec.data.dataset]
        if others:
            print(_("This lesson also runs on {datasets}: add --dataset {first}.").format(
                datasets=", ".join(others), first=others[0]), file=sys.stderr)
        return EXIT_BAD_INPUT
    steps = sum(-(-v.data.n_train() // v.train.batch_size) * v.train.epochs for v in variants)
    bar = ProgressBar(steps * cfg.n_seeds(), args.quiet)
    try:
        result = run_inline(spec, store, args.cancel, on_progress=bar, executor=execute)
    finally:
        bar.close()
    table = result.summary.assign(variant=[_(v) for v in result.summary["variant"]],
                                  text=mean_sd_texts(result.summary, _), loss=loss_texts(result.summary))
    columns = {"variant": _("variant"), "n": _("runs"), "text": _("test accuracy, mean ± sd"),
               **({"loss": _("final training loss, mean ± sd")} if "train_loss" in lesson.metrics else {}),
               "params": _("parameters"), "seconds": _("seconds per run")}
    if "iterations" in lesson.metrics:
        columns["iterations"] = _("iterations per run")
    print(table[list(columns)].rename(columns=columns).to_string(index=False))
    for line in result.reading.render(_):
        print(line)
    print(_("Why: {why}").format(why=_(lesson.why)))
    export_tables(store, args.out, list(result.table["run_id"]), {f"lesson_{cfg.name}": result.table})
    return report_diverged(result.results)
