"""`python -m mnist_lab examples`: the public demo's example runs (service/examples.py) trained into
the results database as jobs of the local workspace, the examples every visitor of a demo sees;
`--check` only says whether the current set is there (exit 0) or not (exit 1), in one line.
"""
from __future__ import annotations

import time
from pathlib import Path

from mnist_lab import i18n
from mnist_lab.cli.common import EXIT_STOPPED, ProgressBar, check_data_dir, db_help
from mnist_lab.cli.common import gettext as _
from mnist_lab.paths import default_db_path
from mnist_lab.service.examples import SCALES, build_examples, example_specs, examples_ready, total_steps

EXIT_NOT_READY = 1  # --check: the set is missing, partial or of an older version


def add_parser(sub, parents=()) -> None:
    """Register `examples` on the main parser's subcommands; `parents` brings --lang."""
    text = _("the public demo's example runs: train them into the results database (--check: are they there?)")
    p = sub.add_parser("examples", help=text, description=text, parents=list(parents))
    p.add_argument("--db", type=Path, help=db_help())
    p.add_argument("--scale", choices=SCALES, default="full",
                   help=_("full: the demo's set (under 3 minutes on one CPU core); tiny: a few seconds, for tests"))
    p.add_argument("--check", action="store_true",
                   help=_("train nothing: exit 0 if the current set is there, else 1"))
    p.add_argument("--device", default="auto", help=_("auto (CUDA if present), cpu, cuda"))
    p.add_argument("--data-dir", help=_("datasets in torchvision's layout"))
    p.add_argument("--quiet", action="store_true", help=_("no progress bar"))
    p.set_defaults(func=cmd_examples)


def cmd_examples(args) -> int:
    if args.check:
        if examples_ready(args.db, args.scale):
            print(_("the demo's example runs are there ({scale} set)").format(scale=args.scale))
            return 0
        print(_("the demo's example runs are not there, or not all finished, or from an older version: train them "
                "with python -m mnist_lab examples"))
        return EXIT_NOT_READY
    check_data_dir(args.data_dir)
    if examples_ready(args.db, args.scale):
        print(_("the demo's example runs are there already ({scale} set): nothing to train").format(scale=args.scale))
        return 0
    bar = ProgressBar(total_steps(args.scale), args.quiet)
    start = time.perf_counter()
    try:
        job_ids = build_examples(args.db, args.scale, on_progress=bar, device=args.device, data_dir=args.data_dir,
                                 cancel=args.cancel)
    finally:
        bar.close()
    if args.cancel.is_set():
        print(_("stopped: the examples finished so far are kept; run the command again to train the rest"))
        return EXIT_STOPPED  # not 0: `examples && start` must not go on with a partial set
    runs = sum(e.spec.runs_total() for e in example_specs(args.scale))
    print(_("trained the demo's example runs ({scale} set): {jobs} jobs, {runs} runs, in {time}, into {db}").format(
        scale=args.scale, jobs=len(job_ids), runs=runs, time=i18n.seconds(time.perf_counter() - start, _),
        db=args.db or default_db_path()))
    return 0
