"""Command line: `python -m mnist_lab presets | train | sweep | compare | worker`, writing the
same CSV tables as the app. train / sweep / compare train in this process, listed as jobs of the
local workspace (so the app's Runs page can stop them); `worker` serves the app's queued jobs.
Bad input ends with one `error:` line and exit code 2 before anything trains, never a
traceback; a run whose loss became NaN or infinite ends with exit code 3.
"""
from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import tempfile
import threading
from dataclasses import replace
from pathlib import Path

import pandas as pd

from .data import DATASETS, NORMALIZATIONS, DataConfig, DataUnavailableError, check_model_fits
from .errors import ConfigError, StoreError
from .experiments import CompareConfig, SweepConfig, diverged_runs, summarize_over_seeds
from .jobs import JobSpec, run_inline
from .models import PRESETS, ModelConfig, count_params, get_preset
from .store import ResultStore, default_db_path
from .train import ENGINES, Progress, RunResult, TrainConfig, fallback_reason, resolve_device

EXIT_BAD_INPUT = 2  # a bad command line, unusable data, database or output folder: nothing (more) trained
EXIT_DIVERGED = 3  # a run's loss became NaN or infinite: it is kept as 'diverged', the tables are written
EXIT_STOPPED = 130  # Ctrl-C


class _Parser(argparse.ArgumentParser):
    """argparse, with its refusal as one `error:` line like every other refusal (no usage block)."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def _check_out(out: Path | None) -> None:
    """--out must be a directory this process can write, checked before anything trains."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory: name a directory (it is created if missing).")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ValueError(f"--out {out} cannot be written ({exc.strerror or exc}): choose a directory you can "
                         "write to.") from None


def _check_data_dir(data_dir: str | None) -> None:
    if data_dir is not None and not Path(data_dir).is_dir():
        what = "is a file, not a directory" if Path(data_dir).exists() else "does not exist"
        raise ValueError(f"--data-dir {data_dir} {what}: give the folder that holds MNIST/raw, or leave --data-dir "
                         "out to use the offline package.")


def _open(args) -> ResultStore:
    """Every output checked before training: --out, --data-dir, then the database (opened and checked)."""
    _check_out(args.out)
    _check_data_dir(args.data_dir)
    return ResultStore(args.db)


def _report_diverged(results: list[RunResult]) -> int:
    """One stderr line per diverged run; the exit code."""
    bad = diverged_runs(results)
    for r in bad:
        print(f"diverged: run {r.run_id}: {r.message}", file=sys.stderr)
    if bad and len(results) > 1:
        print(f"{len(bad)} of {len(results)} runs diverged; the summaries count finished runs only.", file=sys.stderr)
    return EXIT_DIVERGED if bad else 0


class _Bar:
    """A tqdm bar on stderr fed by training progress events (iterations across all runs)."""

    def __init__(self, total: int, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="it", file=sys.stderr, disable=quiet, dynamic_ncols=True)

    def __call__(self, event: Progress) -> None:
        if event.kind == "iterations":
            self.bar.update(len(event.losses))
        elif event.kind == "epoch" and event.metrics is not None:
            m = event.metrics
            self.bar.set_postfix_str(f"epoch {m.epoch} test acc {100 * m.test_acc:.2f}%")

    def close(self) -> None:
        self.bar.close()


def _add_training_flags(p: argparse.ArgumentParser, epochs: int | None = None) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=epochs)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float)
    g.add_argument("--momentum", type=float)
    g.add_argument("--optimizer", choices=["sgd", "adam"])
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-shuffle", action="store_true", help="same batch order every epoch")
    g.add_argument("--augment", action="store_true", help="random shifts (and flips for colour images) per batch")
    g.add_argument("--sort-by-label", action="store_true",
                   help="train on the images in label order (with --no-shuffle)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    g.add_argument("--engine", choices=ENGINES, default="auto",
                   help="training path: auto (the fastest measured: CUDA graphs on a GPU, C++ conv kernels on the "
                        "CPU), plain (the reference loop), cuda-graph, stacked (sweep/compare: a cell's seeds as "
                        "one network), cpu-native")
    d = p.add_argument_group("data")
    d.add_argument("--train-limit", type=int, help="use only the first N training images")
    d.add_argument("--dataset", choices=list(DATASETS), default=None)
    d.add_argument("--normalize", choices=list(NORMALIZATIONS))
    d.add_argument("--permute-pixels", action="store_true", help="shuffle pixels by one fixed permutation")
    d.add_argument("--permutation-seed", type=int, default=0)
    d.add_argument("--data-dir", help="datasets in torchvision's layout (ROOT/MNIST/raw, ROOT/FashionMNIST/raw, "
                                      "ROOT/cifar-10-batches-py or ROOT/cifar-10-python.tar.gz)")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="directory for the CSV tables")
    o.add_argument("--db", type=Path, help=f"SQLite results database (default {default_db_path()})")
    o.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("architecture (overrides the preset)")
    g.add_argument("--preset", choices=list(PRESETS), help="start from one of the lab's networks")
    g.add_argument("--kind", choices=["cnn", "fc"])
    g.add_argument("--conv-channels", type=int, nargs="+", help="channels of each conv block, e.g. 10 20")
    g.add_argument("--kernel-size", type=int)
    g.add_argument("--padding", choices=["valid", "same"])
    g.add_argument("--pool-before-relu", action="store_true", default=None)
    g.add_argument("--batch-norm", action="store_true", default=None)
    g.add_argument("--dropout", type=float)
    g.add_argument("--hidden", type=int, nargs="*", help="widths of hidden FC layers (none: --hidden)")
    g.add_argument("--softmax-before-loss", action="store_true", default=None)


def _configs(args, default_preset: str = "lab5") -> tuple[ModelConfig, TrainConfig, DataConfig]:
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
                            momentum=pick(args.momentum, preset.momentum), seed=args.seed,
                            device=args.device, shuffle=not args.no_shuffle, engine=args.engine,
                            augment=args.augment, sort_by_label=args.sort_by_label)
    data_cfg = DataConfig(dataset=pick(args.dataset, preset.dataset), normalize=pick(args.normalize, preset.normalize),
                          train_limit=args.train_limit,
                          permute_pixels=args.permute_pixels, permutation_seed=args.permutation_seed,
                          data_dir=args.data_dir)
    model.validate()
    data_cfg.validate()
    check_model_fits(model, data_cfg.spec)
    train_cfg.validate(n_train=data_cfg.n_train())  # before loading anything
    return model, train_cfg, data_cfg


def _steps(train_cfg: TrainConfig, data_cfg: DataConfig) -> int:
    return -(-data_cfg.n_train() // train_cfg.batch_size) * train_cfg.epochs


def _export(store: ResultStore, out: Path | None, run_ids: list[str], extra: dict[str, pd.DataFrame]) -> None:
    if out is None:
        return
    paths = store.export_csv(out, run_ids)
    for name, frame in extra.items():
        paths[name] = out / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def cmd_presets(args) -> int:
    rows = [dict(name=p.name, params=count_params(p.model), optimizer=f"{p.optimizer} lr {p.lr:g}",
                 batch=p.batch_size, description=p.description) for p in PRESETS.values()]
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def cmd_train(args) -> int:
    model, train_cfg, data_cfg = _configs(args)
    store = _open(args)
    bar = _Bar(_steps(train_cfg, data_cfg), args.quiet)
    try:
        result = run_inline(JobSpec("train", train_cfg, data_cfg, model=model), store, args.cancel, on_progress=bar)
    finally:
        bar.close()
    table = pd.DataFrame([dict(epoch=m.epoch, train_loss=round(m.train_loss, 4), test_loss=round(m.test_loss, 4),
                               test_acc=f"{100 * m.test_acc:.2f}%", seconds=round(m.seconds, 2))
                          for m in result.epochs])
    print(f"run {result.run_id}: {result.status}, {result.params:,} parameters, {len(result.losses)} iterations "
          f"on {result.device} ({result.engine} engine), {result.seconds:.1f} s")
    if why := fallback_reason(model, train_cfg, resolve_device(train_cfg.device)):
        print(f"note: the plain loop ran because {why}")
    if len(table):
        print(table.to_string(index=False))
    _export(store, args.out, [result.run_id], {})
    return _report_diverged([result])


def cmd_sweep(args) -> int:
    _, train_cfg, data_cfg = _configs(args)
    sweep = SweepConfig(conv_layers=tuple(args.conv_layers), kernel_sizes=tuple(args.kernel_sizes),
                        hidden_units=tuple(args.hidden_units), seeds=args.seeds,
                        base_channels=args.base_channels, padding=args.sweep_padding)
    cells, skipped = sweep.cells()
    for s in skipped:
        print(f"skipped {s['conv_layers']} conv × k{s['kernel_size']}: {s['reason']}", file=sys.stderr)
    store = _open(args)
    bar = _Bar(_steps(train_cfg, data_cfg) * len(cells) * sweep.seeds, args.quiet)
    try:
        result = run_inline(JobSpec("sweep", train_cfg, data_cfg, sweep=sweep, label=f"sweep of {len(cells)} networks"),
                            store, args.cancel, on_progress=bar)
    finally:
        bar.close()
    summary = summarize_over_seeds(result.table, ["conv_layers", "kernel_size", "hidden_units"])
    print(summary[["conv_layers", "kernel_size", "hidden_units", "n", "diverged", "text"]]
          .rename(columns={"text": "test acc (mean ± sd)"}).to_string(index=False))
    _export(store, args.out, list(result.table["run_id"]), {"sweep": result.table})
    return _report_diverged(result.results)


def cmd_compare(args) -> int:
    _, train_cfg, data_cfg = _configs(args, default_preset=args.cnn_preset)  # its optimiser and batch
    compare = CompareConfig(cnn=get_preset(args.cnn_preset).model, seeds=args.seeds,
                            permutation_seed=args.permutation_seed)
    models = compare.models()
    print(" vs ".join(f"{name}: {count_params(cfg):,} parameters" for name, cfg in models.items()))
    store = _open(args)
    bar = _Bar(_steps(train_cfg, data_cfg) * 4 * compare.seeds, args.quiet)
    try:
        result = run_inline(JobSpec("compare", train_cfg, data_cfg, compare=compare, label="FC vs CNN"), store,
                            args.cancel, on_progress=bar)
    finally:
        bar.close()
    pivot = result.summary.pivot(index="model", columns="pixels", values="text").reindex(["FC", "CNN"])
    print(f"test accuracy, mean ± sd over {compare.seeds} seed(s):")
    print(pivot.to_string())
    print(result.reading)
    _export(store, args.out, list(result.table["run_id"]),
            {"compare": result.table[["model", "pixels", "seed", "params", "test_acc", "run_id"]]})
    return _report_diverged(result.results)


def cmd_worker(args) -> int:
    from .worker import Worker, WorkerConfig

    if args.slot < 0:
        raise ValueError(f"--slot must be 0 or more; got {args.slot}.")
    if not 0 <= args.nice <= 19:
        raise ValueError(f"--nice must be 0 to 19; got {args.nice}.")
    return Worker(WorkerConfig(db=str(args.db) if args.db else None, device=args.device, slot=args.slot,
                               parent_pid=args.parent_pid, idle_exit_s=args.idle_exit,
                               max_job_s=args.max_job_seconds, warm=not args.no_warm,
                               nice=args.nice)).run(max_jobs=args.max_jobs)


def cmd_report(args) -> int:
    from .report import FILES, build_report, write_report

    if args.db is not None and not Path(args.db).is_file():
        raise ValueError(f"No results database at {args.db}: train something first, or pass the right --db.")
    report = build_report(ResultStore(args.db), args.lang, run_id=args.run)
    paths = write_report(report, args.out)
    for warning in report.warnings:
        print(f"note: {warning}", file=sys.stderr)
    print("wrote " + ", ".join(str(paths[name]) for name in FILES if name in paths))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m mnist_lab", description="MNIST CNN Lab, headless.",
                     epilog="Exit codes: 0 done, 2 bad input (nothing trained), 3 a run diverged (its loss became NaN "
                            "or infinite), 130 stopped by Ctrl-C.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("presets", help="the lab's networks with their parameter counts").set_defaults(func=cmd_presets)

    p = sub.add_parser("train", help="train one network")
    _add_model_flags(p)
    _add_training_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sweep", help="conv layers × kernel sizes (× hidden units) × seeds")
    p.add_argument("--conv-layers", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--kernel-sizes", type=int, nargs="+", default=[3, 5, 7])
    p.add_argument("--hidden-units", type=int, nargs="+", default=[0], help="one hidden FC layer; 0 = none")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--base-channels", type=int, default=16, help="first block's channels, doubling per block")
    p.add_argument("--sweep-padding", choices=["valid", "same"], default="same")
    _add_training_flags(p, epochs=1)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("compare", help="FC vs CNN with equal parameters, normal vs permuted pixels")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--cnn-preset", choices=[n for n, v in PRESETS.items() if v.model.kind == "cnn"],
                   default="tiny-cnn")
    _add_training_flags(p, epochs=1)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="the lab report from the stored runs: HTML, Word, Markdown, findings.json")
    p.add_argument("--out", type=Path, required=True, help="directory for the report's files")
    p.add_argument("--lang", help="zh or en (default: from LANG / LC_ALL)")
    p.add_argument("--db", type=Path, help=f"SQLite results database (default {default_db_path()})")
    p.add_argument("--run", help="run for requirement 1, the loss of every iteration (default: the newest finished)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("worker", help="train the app's queued jobs (one worker per GPU; the app starts one itself)")
    p.add_argument("--db", type=Path, help=f"SQLite results database to serve (default {default_db_path()})")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    p.add_argument("--slot", type=int, default=0, help="worker number, 0 .. workers-1 (one per GPU)")
    p.add_argument("--max-job-seconds", type=float, help="stop a job that trains longer than this (timed out)")
    p.add_argument("--idle-exit", type=float, help="exit after this many seconds without a job")
    p.add_argument("--no-warm", action="store_true", help="do not load MNIST and warm the device up first")
    p.add_argument("--nice", type=int, default=0, help="lower the worker's CPU priority by this much (0-19)")
    p.add_argument("--max-jobs", type=int, help=argparse.SUPPRESS)
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # the app's server: end with it
    p.set_defaults(func=cmd_worker)

    from .cli_inspect import add_inspect_commands  # inspect, predict, export

    add_inspect_commands(sub)
    return parser


def _stop_on_ctrl_c(stop: threading.Event):
    """First Ctrl-C: finish the current iteration, keep and write everything done ('stopped').
    Second Ctrl-C: abort at once. Returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\nstopping after this iteration; what finished is kept (Ctrl-C again to abort)", file=sys.stderr)
    return signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help (0) or argparse's refusal (2, its error line already printed)
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    args.cancel = threading.Event()
    previous = _stop_on_ctrl_c(args.cancel)
    try:
        code = args.func(args)
        return EXIT_STOPPED if args.cancel.is_set() else code
    except (ValueError, DataUnavailableError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, sqlite3.Error) as exc:
        print(f"error: {exc} (check the --out and --db paths)", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("aborted: finished iterations and epochs are kept in the results database", file=sys.stderr)
        return EXIT_STOPPED
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
