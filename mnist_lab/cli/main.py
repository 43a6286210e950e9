"""Command line: `python -m mnist_lab presets | train | sweep | compare | lesson | worker | data | examples`,
writing the same CSV tables as the app. train / sweep / compare train in this process, listed as jobs of the
local workspace (so the app's Runs page can stop them); `worker` serves the app's queued jobs.
Bad input ends with one `error:` line and exit code 2 before anything trains, never a
traceback; a run whose loss became NaN or infinite ends with exit code 3. Help and messages are in
the language of `--lang zh|en` (any command) or LANGUAGE / LC_ALL / LANG, through the catalogs.
"""
from __future__ import annotations

import argparse
import errno
import math
import signal
import sqlite3
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pandas as pd

from mnist_lab import i18n
from mnist_lab.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_STOPPED,
    Parser,
    ProgressBar,
    add_executor_flags,
    db_help,
    executor_of,
    export_tables,
    lang,
    lang_of,
    language,
    note,
    open_store,
    report_diverged,
    report_not_learned,
    set_language,
    stop_on_ctrl_c,
    warnings_as_notes,
)
from mnist_lab.cli.common import gettext as _
from mnist_lab.data.datasets import DATASETS, NORMALIZATIONS, DataConfig, DataUnavailableError
from mnist_lab.errors import ConfigError, OutputError, StoreError, output_error
from mnist_lab.lab.experiments import CompareConfig, SweepConfig, read_compare, summarize_over_seeds
from mnist_lab.nets.model import ModelConfig, count_params
from mnist_lab.nets.presets import PRESETS, get_preset
from mnist_lab.paths import default_db_path
from mnist_lab.service import executors
from mnist_lab.service.access import LOCAL
from mnist_lab.service.jobs import JobSpec, check_run, run_inline
from mnist_lab.training.engines import ENGINE_NAMES
from mnist_lab.training.loop import TrainConfig, fallback_reasons
from mnist_lab.training.preflight import resolve_device

MAX_SLOT = 1023  # worker slots: one per GPU, so a few in practice
MAX_SECONDS = 7 * 24 * 3600  # a week: any time limit beyond is a mistake, not a setting
MAX_PID = 2**22  # Linux's highest possible process id (pid_max's ceiling)
MAX_JOBS = 10**6  # --max-jobs (tests, benchmarks): a bound, so no huge number reaches the loop

def _add_training_flags(p: argparse.ArgumentParser, epochs: int | None = None) -> None:
    g = p.add_argument_group(_("training"))
    g.add_argument("--epochs", type=int, default=epochs, help=_("passes over the training images"))
    g.add_argument("--batch-size", type=int, help=_("images per iteration"))
    g.add_argument("--lr", type=float, help=_("learning rate"))
    g.add_argument("--momentum", type=float, help=_("momentum (SGD)"))
    g.add_argument("--optimizer", choices=["sgd", "adam"], help=_("optimiser"))
    g.add_argument("--seed", type=int, help=_("random seed: initial weights and batch order (default 0)"))
    g.add_argument("--no-shuffle", action="store_true", help=_("same batch order every epoch"))
    g.add_argument("--augment", action="store_true", help=_("random shifts (and flips for colour images) per batch"))
    g.add_argument("--sort-by-label", action="store_true",
                   help=_("train on the images in label order (with --no-shuffle)"))
    g.add_argument("--device", default="auto", help=_("auto (CUDA if present), cpu, cuda"))
    g.add_argument("--engine", choices=ENGINE_NAMES, default="auto",
                   help=_("training path: auto (the fastest measured: CUDA graphs on a GPU, C++ conv kernels on the "
                          "CPU), plain (the reference loop), cuda-graph, stacked (sweep/compare: a cell's seeds as "
                          "one network), cpu-native"))
    d = p.add_argument_group(_("data"))
    d.add_argument("--train-limit", type=int, help=_("use only the first N training images"))
    d.add_argument("--dataset", choices=list(DATASETS), help=_("default: the preset's (mnist for the lab's nets)"))
    d.add_argument("--normalize", choices=list(NORMALIZATIONS), help=_("pixel normalisation"))
    d.add_argument("--permute-pixels", action="store_true", help=_("shuffle pixels by one fixed permutation"))
    d.add_argument("--permutation-seed", type=int, help=_("which fixed permutation (default 0)"))
    d.add_argument("--data-dir", help=_("datasets in torchvision's layout (ROOT/MNIST/raw, ROOT/FashionMNIST/raw, "
                                        "ROOT/cifar-10-batches-py or ROOT/cifar-10-python.tar.gz)"))
    o = p.add_argument_group(_("output"))
    o.add_argument("--out", type=Path, help=_("directory for the CSV tables"))
    o.add_argument("--db", type=Path, help=db_help())
    o.add_argument("--quiet", action="store_true", help=_("no progress bar"))
    add_executor_flags(p)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(_("architecture (overrides the preset)"))
    g.add_argument("--preset", choices=list(PRESETS), help=_("start from one of the lab's networks"))
    g.add_argument("--kind", choices=["cnn", "fc"], help=_("convolutional or fully connected"))
    g.add_argument("--conv-channels", type=int, nargs="+", help=_("channels of each conv block, e.g. 10 20"))
    g.add_argument("--kernel-size", type=int, help=_("side of each conv kernel, in pixels"))
    g.add_argument("--padding", choices=["valid", "same"],
                   help=_("valid: no padding, each conv shrinks the image by k-1; same: the conv keeps the size"))
    g.add_argument("--pool-before-relu", action="store_true", default=None, help=_("the Lab-5 order"))
    g.add_argument("--batch-norm", action="store_true", default=None, help=_("BatchNorm after each conv"))
    g.add_argument("--dropout", type=float, help=_("dropout probability before each FC layer"))
    g.add_argument("--hidden", type=int, nargs="*", help=_("widths of hidden FC layers (none: --hidden)"))
    g.add_argument("--softmax-before-loss", action="store_true", default=None,
                   help=_("the course notes' mistake: softmax before CrossEntropyLoss"))


def _configs(args, default_preset: str = "lab5") -> tuple[ModelConfig, TrainConfig, DataConfig]:
    """The run's three configs from the flags over the preset's, checked whole (preflight), then
    every flag this run would not use refused by name, never silently dropped."""
    preset = get_preset(getattr(args, "preset", None) or default_preset)
    model = preset.model
    overrides = {k: getattr(args, k, None) for k in ("kind", "kernel_size", "padding", "pool_before_relu",
                                                     "batch_norm", "dropout", "softmax_before_loss")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if getattr(args, "conv_channels", None) is not None:
        overrides["conv_channels"] = tuple(args.conv_channels)
    if getattr(args, "hidden", None) is not None:
        overrides["hidden"] = tuple(args.hidden)
    if overrides.get("kind") == "fc" and "conv_channels" not in overrides:
        overrides["conv_channels"] = ()
    family = sorted(overrides.keys() & {"conv_channels", "kernel_size", "padding", "pool_before_relu", "batch_norm"})
    if model.blocks and family:  # those flags shape the sliders' family, not a block list
        raise ConfigError(family[0], overrides[family[0]], "Preset {preset!r} is a list of blocks, so --{flag} does "
                          "not apply to it; leave the flag out, or start from a preset such as lab5.",
                          preset=preset.name, flag=family[0].replace("_", "-"))
    model = replace(model, **overrides)
    pick = lambda value, fallback: fallback if value is None else value  # noqa: E731
    train_cfg = TrainConfig(epochs=pick(args.epochs, 1), batch_size=pick(args.batch_size, preset.batch_size),
                            optimizer=pick(args.optimizer, preset.optimizer), lr=pick(args.lr, preset.lr),
                            momentum=pick(args.momentum, preset.momentum), seed=pick(args.seed, 0),
                            device=args.device, shuffle=not (args.no_shuffle or args.sort_by_label),
                            engine=args.engine, augment=args.augment, sort_by_label=args.sort_by_label)
    data_cfg = DataConfig(dataset=pick(args.dataset, preset.dataset),
                          normalize=pick(args.normalize, preset.normalize),
                          train_limit=args.train_limit,
                          permute_pixels=args.permute_pixels, permutation_seed=pick(args.permutation_seed, 0),
                          data_dir=args.data_dir)
    # before loading anything: each value, then the flags together (with Ray, the device is the node's to check)
    check_run(model, train_cfg, data_cfg, remote=executors.choose(getattr(args, "executor", None)) == "ray")
    _refuse_unused_flags(args, preset.name, model, train_cfg)
    if args.sort_by_label and not args.no_shuffle:
        note(args, _("--sort-by-label trains on the images in label order, which shuffling would undo: training with "
               "--no-shuffle."))
    return model, train_cfg, data_cfg


def _refuse_unused_flags(args, preset: str, model: ModelConfig, train_cfg: TrainConfig) -> None:
    """A flag the run would ignore is refused, naming it and why, before anything is opened."""
    if model.kind == "fc":  # --batch-norm and --conv-channels are the ModelConfig's own refusals
        given = [f for f in ("kernel_size", "padding", "pool_before_relu") if getattr(args, f, None) is not None]
        if given:
            raise ConfigError(given[0], getattr(args, given[0]), "Preset {preset!r} with kind 'fc' is a fully "
                              "connected network with no conv blocks, so --{flag} does not apply to it; leave the "
                              "flag out, or train a CNN (--kind cnn, or a preset such as lab5).", preset=preset,
                              flag=given[0].replace("_", "-"))
    if args.momentum is not None and train_cfg.optimizer == "adam":
        raise ConfigError("momentum", args.momentum, "--momentum {value!r} does nothing with the Adam optimiser (it "
                          "keeps its own running averages); leave --momentum out, or use --optimizer sgd.")
    if args.command in ("sweep", "compare"):
        if args.seed is not None:
            raise ConfigError("seed", args.seed, "{command} trains each network with seeds 0 to {last} (--seeds "
                              "{n}), so --seed does not apply; leave it out, and choose how many seeds with --seeds.",
                              command=args.command, last=args.seeds - 1, n=args.seeds)
    if args.command == "compare":
        if args.permute_pixels:
            raise ConfigError("permute_pixels", True, "compare trains every network on normal and on permuted "
                              "pixels already, so --permute-pixels does not apply; leave it out (--permutation-seed "
                              "picks the permutation).")
    elif args.permutation_seed is not None and not args.permute_pixels:
        raise ConfigError("permutation_seed", args.permutation_seed, "--permutation-seed picks the permutation of "
                          "--permute-pixels, which is not given, so it would change nothing; add --permute-pixels, "
                          "or leave --permutation-seed out.")


def _distinct(args, flag: str) -> tuple[int, ...]:
    """A sweep's values once each, in the order given; a repeat is dropped and said (it would train the
    same networks again and count them as more seeds)."""
    values = list(getattr(args, flag.replace("-", "_")))
    distinct = tuple(dict.fromkeys(values))
    if len(distinct) < len(values):
        note(args, _("--{flag} lists a value more than once: training {values} once each.").format(
            flag=flag, values=" ".join(map(str, distinct))))
    return distinct


def _steps(train_cfg: TrainConfig, data_cfg: DataConfig) -> int:
    return -(-data_cfg.n_train() // train_cfg.batch_size) * train_cfg.epochs


def cmd_presets(args) -> int:
    rows = [dict(name=p.name, params=count_params(p.model), optimizer=f"{p.optimizer} lr {p.lr:g}",
                 batch=p.batch_size, description=p.description) for p in PRESETS.values()]
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def cmd_train(args) -> int:
    model, train_cfg, data_cfg = _configs(args)
    spec = JobSpec("train", train_cfg, data_cfg, model=model)
    execute = executor_of(args)
    store = open_store(args, spec)
    bar = ProgressBar(_steps(train_cfg, data_cfg), args.quiet)
    try:
        result = run_inline(spec, store, args.cancel, on_progress=bar, executor=execute)
    finally:
        bar.close()
    if not result.run_id:  # stopped before its run began (on a cluster, while queued): nothing trained, no run
        print(_("stopped before the run began: nothing was trained"))
        return 0
    table = pd.DataFrame([dict(epoch=m.epoch, train_loss=round(m.train_loss, 4), test_loss=round(m.test_loss, 4),
                               test_acc=f"{100 * m.test_acc:.2f}%", seconds=round(m.seconds, 2))
                          for m in result.epochs])
    print(_("run {id}: {status}, {params} parameters, {n} iterations on {device} ({engine} engine), {seconds} s")
          .format(id=result.run_id, status=_(result.status), params=i18n.integer(result.params), n=len(result.losses),
                  device=result.device, engine=result.engine, seconds=f"{result.seconds:.1f}"))
    if args.executor == "local" and (reasons := fallback_reasons(model, train_cfg, resolve_device(train_cfg.device))):
        why = "; ".join(_("{engine}: {reason}").format(engine=name, reason=i18n.word(reason, lang()))
                        for name, reason in reasons)
        print(_("note: the plain loop ran because {why}").format(why=why))
    if len(table):
        print(table.to_string(index=False))
    report_not_learned([result])
    export_tables(store, args.out, [result.run_id], {})
    return report_diverged([result])


def cmd_sweep(args) -> int:
    sweep = SweepConfig(conv_layers=_distinct(args, "conv-layers"), kernel_sizes=_distinct(args, "kernel-sizes"),
                        hidden_units=_distinct(args, "hidden-units"), seeds=args.seeds,
                        base_channels=args.base_channels, padding=args.sweep_padding)
    cells, skipped = sweep.cells()  # validates: the sweep's own values first
    train_cfg, data_cfg = _configs(args)[1:]
    for s in skipped:
        note(args, _("skipped {layers} conv × k{k}: {why}").format(layers=s["conv_layers"], k=s["kernel_size"],
                                                                   why=i18n.render(s["error"], lang())), prefix=False)
    spec = JobSpec("sweep", train_cfg, data_cfg, sweep=sweep, label=f"sweep of {len(cells)} networks")
    execute = executor_of(args)
    store = open_store(args, spec)
    bar = ProgressBar(_steps(train_cfg, data_cfg) * len(cells) * sweep.seeds, args.quiet)
    try:
        result = run_inline(spec, store, args.cancel, on_progress=bar, executor=execute)
    finally:
        bar.close()
    summary = summarize_over_seeds(result.table, ["conv_layers", "kernel_size", "hidden_units"])
    summary = summary.assign(text=i18n.mean_sd_texts(summary, _))
    print(summary[["conv_layers", "kernel_size", "hidden_units", "n", "diverged", "text"]]
          .rename(columns={"text": _("test accuracy (mean ± sd)")}).to_string(index=False))
    report_not_learned(result.results)
    export_tables(store, args.out, list(result.table["run_id"]), {"sweep": result.table})
    return report_diverged(result.results)


def cmd_compare(args) -> int:
    compare = CompareConfig(cnn=get_preset(args.cnn_preset).model, seeds=args.seeds,
                            permutation_seed=args.permutation_seed or 0)
    compare.validate()  # the comparison's own values first
    train_cfg, data_cfg = _configs(args, default_preset=args.cnn_preset)[1:]  # its optimiser and batch
    spec = JobSpec("compare", train_cfg, data_cfg, compare=compare, label="FC vs CNN")
    execute = executor_of(args)
    store = open_store(args, spec)
    print(" vs ".join(_("{name}: {n} parameters").format(name=name, n=i18n.integer(count_params(cfg)))
                      for name, cfg in compare.models().items()))
    bar = ProgressBar(_steps(train_cfg, data_cfg) * 4 * compare.seeds, args.quiet)
    try:
        result = run_inline(spec, store, args.cancel, on_progress=bar, executor=execute)
    finally:
        bar.close()
    pivot = (result.summary.assign(text=i18n.mean_sd_texts(result.summary, _))
             .pivot(index="model", columns="pixels", values="text").reindex(["FC", "CNN"]))
    print(_("test accuracy, mean ± sd over {n} seed(s):").format(n=compare.seeds))
    print(pivot.to_string())
    print(read_compare(result.summary, lang()))
    report_not_learned(result.results)
    export_tables(store, args.out, list(result.table["run_id"]),
            {"compare": result.table[["model", "pixels", "seed", "params", "test_acc", "run_id"]]})
    return report_diverged(result.results)


def cmd_worker(args) -> int:
    from mnist_lab.service.executors import check_address, choose
    from mnist_lab.service.worker import Worker, WorkerConfig

    if not 0 <= args.slot <= MAX_SLOT:
        raise ValueError(_("--slot must be 0 to {high}; got {value}.").format(high=MAX_SLOT, value=args.slot))
    for flag, value in (("--max-job-seconds", args.max_job_seconds), ("--idle-exit", args.idle_exit)):
        if value is not None and not (math.isfinite(value) and 0 < value <= MAX_SECONDS):
            raise ValueError(_("{flag} must be a number of seconds above 0 and at most {high}; got {value}. Leave it "
                               "out for no limit.").format(flag=flag, high=MAX_SECONDS, value=value))
    if not 0 <= args.nice <= 19:
        raise ValueError(_("--nice must be 0 to 19; got {value}.").format(value=args.nice))
    for flag, value, high in (("--max-jobs", args.max_jobs, MAX_JOBS), ("--parent-pid", args.parent_pid, MAX_PID)):
        if value is not None and not 1 <= value <= high:
            raise ValueError(_("{flag} must be 1 to {high}; got {value}. Leave it out for none.")
                             .format(flag=flag, high=high, value=value))
    executor = choose(args.executor)
    check_address(executor, args.ray_address)
    if executor == "local":
        resolve_device(args.device)  # a device this machine lacks is refused before the database is opened
    elif args.device != "auto":
        raise ConfigError("device", args.device, "--device {value!r} is for the local executor: a Ray worker's runs "
                          "train on the device their node picks (auto); leave --device out.")
    return Worker(WorkerConfig(db=str(args.db) if args.db else None, device=args.device, slot=args.slot,
                               parent_pid=args.parent_pid, idle_exit_s=args.idle_exit,
                               max_job_s=args.max_job_seconds, warm=not args.no_warm, nice=args.nice,
                               executor=executor, ray_address=args.ray_address,
                               fresh_process=True)).run(max_jobs=args.max_jobs)


def local_zone() -> str | None:
    """This machine's time zone as an IANA name (TZ, else /etc/localtime's link); None: UTC."""
    import os

    zone = os.environ.get("TZ", "").lstrip(":")
    if not zone:
        try:
            zone = str(Path("/etc/localtime").resolve()).split("zoneinfo/", 1)[1]
        except (OSError, IndexError):
            return None
    return zone


def cmd_report(args) -> int:
    from mnist_lab.cli.inspect_cmd import existing_store, out_folder
    from mnist_lab.lab.report import FILES, Cover, build_report, write_report

    cover = Cover(args.name, args.student_id, args.class_name).validate()  # before anything is opened
    store = existing_store(args.db)  # never a new database, not even the default one
    report = build_report(store, lang(), run_id=args.run, workspace=LOCAL.scope, cover=cover,
                          tz=local_zone())  # the local user's
    with out_folder(args.out):  # a file named as --out is refused, after the database; a failed write leaves no folder
        paths = write_report(report, args.out)
    for warning in report.warnings:
        print(_("note: {warning}").format(warning=warning), file=sys.stderr)
    print(_("wrote {files}").format(files=", ".join(str(paths[name]) for name in FILES if name in paths)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser, its help in this run's language (main sets it first)."""
    lang_flag = argparse.ArgumentParser(add_help=False)  # --lang on every command, before or after its name
    lang_flag.add_argument("--lang", type=language, default=argparse.SUPPRESS, metavar="{zh,en}",
                      help=_("language of help and messages: zh or en (default: from LANGUAGE / LC_ALL / LANG)"))
    parser = Parser(prog="python -m mnist_lab", description=_("MNIST CNN Lab, headless."), parents=[lang_flag],
                     epilog=_("Exit codes: 0 done, 2 bad input (nothing trained), 3 a run diverged (its loss became "
                              "NaN or infinite), 130 stopped by Ctrl-C."))
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[lang_flag])

    command("presets", _("the lab's networks with their parameter counts")).set_defaults(func=cmd_presets)

    p = command("train", _("train one network"))
    _add_model_flags(p)
    _add_training_flags(p)
    p.set_defaults(func=cmd_train)

    p = command("sweep", _("conv layers × kernel sizes (× hidden units) × seeds"))
    p.add_argument("--conv-layers", type=int, nargs="+", default=[1, 2, 3], help=_("numbers of conv+pool blocks"))
    p.add_argument("--kernel-sizes", type=int, nargs="+", default=[3, 5, 7], help=_("kernel sizes"))
    p.add_argument("--hidden-units", type=int, nargs="+", default=[0], help=_("one hidden FC layer; 0 = none"))
    p.add_argument("--seeds", type=int, default=3, help=_("random seeds per cell"))
    p.add_argument("--base-channels", type=int, default=16, help=_("first block's channels, doubling per block"))
    p.add_argument("--sweep-padding", choices=["valid", "same"], default="same", help=_("padding of every cell"))
    _add_training_flags(p, epochs=1)
    p.set_defaults(func=cmd_sweep)

    p = command("compare", _("FC vs CNN with equal parameters, normal vs permuted pixels"))
    p.add_argument("--seeds", type=int, default=3, help=_("random seeds per network and pixel order"))
    p.add_argument("--cnn-preset", choices=[n for n, v in PRESETS.items() if v.model.kind == "cnn"],
                   default="tiny-cnn", help=_("the CNN; the FC net is matched to its parameter count"))
    _add_training_flags(p, epochs=1)
    p.set_defaults(func=cmd_compare)

    from mnist_lab.cli.lesson_cmd import add_parser as add_lesson_parser

    add_lesson_parser(sub, parents=[lang_flag])

    p = command("report", _("the lab report from the stored runs: HTML, Word, Markdown, findings.json"))
    p.add_argument("--out", type=Path, required=True, help=_("directory for the report's files"))
    p.add_argument("--db", type=Path, help=db_help())
    p.add_argument("--run", help=_("run for requirement 1, the loss of every iteration (default: the newest finished "
                                   "run of the lab's own network on the full training set)"))
    p.add_argument("--name", default="", help=_("your name, printed on the report's cover"))
    p.add_argument("--student-id", default="", help=_("your student ID, printed on the report's cover"))
    p.add_argument("--class", dest="class_name", default="", help=_("your class, printed on the report's cover"))
    p.set_defaults(func=cmd_report)

    p = command("worker", _("train the app's queued jobs (one worker per GPU; the app starts one itself)"))
    p.add_argument("--db", type=Path, help=_("SQLite results database to serve (default {path})")
                   .format(path=default_db_path()))
    p.add_argument("--device", default="auto", help=_("auto (CUDA if present), cpu, cuda, cuda:1, ..."))
    p.add_argument("--slot", type=int, default=0, help=_("worker number, 0 .. workers-1 (one per GPU)"))
    p.add_argument("--max-job-seconds", type=float, help=_("stop a job that trains longer than this (timed out)"))
    p.add_argument("--idle-exit", type=float, help=_("exit after this many seconds without a job"))
    p.add_argument("--no-warm", action="store_true", help=_("do not load MNIST and warm the device up first"))
    p.add_argument("--nice", type=int, default=0, help=_("lower the worker's CPU priority by this much (0-19)"))
    p.add_argument("--max-jobs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # the app's server: end with it
    add_executor_flags(p)
    p.set_defaults(func=cmd_worker)

    from mnist_lab.cli.inspect_cmd import add_inspect_commands  # inspect, predict, export

    add_inspect_commands(sub, parents=[lang_flag])

    from mnist_lab.cli.data_cmd import add_parser as add_data_parser  # data idx

    add_data_parser(sub, parents=[lang_flag])

    from mnist_lab.cli.class_cmd import add_parser as add_class_parser  # class roster/codes/reset/failures

    add_class_parser(sub, parents=[lang_flag])

    from mnist_lab.cli.examples_cmd import add_parser as add_examples_parser  # the public demo's example runs

    add_examples_parser(sub, parents=[lang_flag])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    set_language(lang_of(argv))
    try:
        return _main(argv)
    finally:
        set_language("en")  # argparse's words back to English for whoever parses next in this process


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or argparse's refusal (2, its error line already printed)
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    args.cancel = threading.Event()
    previous = stop_on_ctrl_c(args.cancel)
    try:
        with warnings_as_notes():
            code = args.func(args)
        return EXIT_STOPPED if args.cancel.is_set() else code
    except (ValueError, DataUnavailableError, StoreError, OutputError) as exc:
        print(_("error: {message}").format(message=i18n.render(exc, lang())), file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        if exc.filename and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):  # a full or read-only disk
            print(_("error: {message}").format(message=i18n.render(output_error(exc.filename, exc), lang())),
                  file=sys.stderr)
        else:
            print(_("error: {message} (check the --out and --db paths)").format(message=exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except sqlite3.Error as exc:
        print(_("error: {message} (check the --out and --db paths)").format(message=exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(_("aborted: finished iterations and epochs are kept in the results database"), file=sys.stderr)
        return EXIT_STOPPED
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
