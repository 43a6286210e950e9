"""What every command of the CLI shares: its one gettext (`_`, in the language of `--lang` or the
environment), the exit codes, the one-line refusals, the checks of --out and --data-dir, the
progress bar, the CSV export and Ctrl-C. Command modules import these; none imports another's.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from mnist_lab import i18n
from mnist_lab.data.datasets import DATASETS, CacheRebuiltWarning
from mnist_lab.i18n import N_
from mnist_lab.lab.experiments import diverged_runs, run_verdict
from mnist_lab.lab.verdicts import NOT_LEARNED, chance, loss_bar
from mnist_lab.paths import default_db_path
from mnist_lab.runs.store import ResultStore
from mnist_lab.service import executors
from mnist_lab.service.jobs import JobSpec
from mnist_lab.training.events import EpochEnded, Event, Iterations
from mnist_lab.training.loop import RunResult

_lang = i18n.DEFAULT  # this run's language, 'en' or 'zh_CN' (set_language)


def gettext(message: str) -> str:
    """`message` in this run's language (the CLI's one `_`)."""
    return i18n.translator(_lang).gettext(message)


_ = gettext


def lang() -> str:
    return _lang


def set_language(code: str) -> None:
    """This run's words: our messages, and argparse's (which looks its `_` up at each call)."""
    global _lang
    _lang = code
    argparse._ = gettext
    argparse.ngettext = i18n.translator(code).ngettext


def db_help() -> str:
    return _("SQLite results database (default {path})").format(path=default_db_path())


EXIT_BAD_INPUT = 2  # a bad command line, unusable data, database or output folder: nothing (more) trained
EXIT_DIVERGED = 3  # a run's loss became NaN or infinite: it is kept as 'diverged', the tables are written
EXIT_STOPPED = 130  # Ctrl-C

# argparse's own words (its 'usage: ', section titles and refusals), worded through our catalog too.
ARGPARSE_WORDS = (N_("usage: "), N_("positional arguments"), N_("options"), N_("show this help message and exit"),
                  N_("the following arguments are required: %s"), N_("unrecognized arguments: %s"),
                  N_("invalid choice: %(value)r (choose from %(choices)s)"), N_("invalid %(type)s value: %(value)r"),
                  N_("argument %(argument_name)s: %(message)s"), N_("expected one argument"),
                  N_("expected at least one argument"), N_("ambiguous option: %(option)s could match %(matches)s"))


def lang_of(argv: list[str]) -> str:
    """The language a command line asks for (`--lang X` or `--lang=X` anywhere), else the
    environment's; read before argparse so that its help is in that language."""
    value = None
    for i, arg in enumerate(argv):
        if arg == "--lang" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--lang="):
            value = arg.split("=", 1)[1]
    try:
        return i18n.resolve_lang(value)
    except ValueError:
        return i18n.resolve_lang(None)  # argparse then refuses the value, in the environment's language


def language(value: str) -> str:
    try:
        return i18n.resolve_lang(value)
    except ValueError:
        raise argparse.ArgumentTypeError(_("Unknown language '{value}': choose zh or en.")
                                         .format(value=value)) from None


class Parser(argparse.ArgumentParser):
    """argparse, with its refusal as one `error:` line like every other refusal (no usage block),
    and no abbreviated flags: `lesson --seed 3` must not quietly mean --seeds 3 (every command's
    parser is this class, so each refuses a flag it does not have)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, _("error: {message} (see {prog} --help)").format(message=message, prog=self.prog)
                  + "\n")


def add_executor_flags(p: argparse.ArgumentParser) -> None:
    """--executor and --ray-address (train, sweep, compare, lesson, worker)."""
    g = p.add_argument_group(_("executor"))
    g.add_argument("--executor", choices=executors.EXECUTORS,
                   help=_("where the runs train: local (this process) or ray (the Ray cluster, this process its "
                          "driver); default: MNIST_LAB_EXECUTOR, else local"))
    g.add_argument("--ray-address", help=_("the Ray cluster's head, HOST:PORT (with --executor ray; default: "
                                           "MNIST_LAB_RAY_ADDRESS, else Ray's own lookup)"))


def executor_of(args) -> executors.Execute:
    """What trains this command's job: the executor its flags (else the environment) choose, a Ray
    cluster joined now, so that a refusal comes before anything is written. Sets args.executor to
    the name chosen."""
    args.executor = executors.choose(args.executor)
    executors.check_address(args.executor, args.ray_address)
    execute = executors.executor(args.executor, args.ray_address)
    executors.connect(args.executor, args.ray_address)
    return execute


def check_out(out: Path | None) -> list[Path]:
    """--out must be a directory this process can write, checked before anything trains. Returns
    the folders it created (the innermost last), for a later refusal to remove."""
    if out is None:
        return []
    if out.exists() and not out.is_dir():
        raise ValueError(_("--out {out} is a file, not a directory: name a directory (it is created if missing).")
                         .format(out=out))
    created = [p for p in (out, *out.parents) if not p.exists()][::-1]
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        remove_folders(created)
        raise ValueError(_("--out {out} cannot be written ({why}): choose a directory you can write to.")
                         .format(out=out, why=exc.strerror or exc)) from None
    return created


def remove_folders(created: list[Path]) -> None:
    """Remove the (still empty) folders a refused command created, innermost first."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except OSError:
            return


def check_data_dir(data_dir: str | None) -> None:
    if data_dir is not None and not Path(data_dir).is_dir():
        template = (_("--data-dir {dir} is a file, not a directory: give the folder that holds MNIST/raw, or leave "
                      "--data-dir out to use the offline package.") if Path(data_dir).exists() else
                    _("--data-dir {dir} does not exist: give the folder that holds MNIST/raw, or leave --data-dir out "
                      "to use the offline package."))
        raise ValueError(template.format(dir=data_dir))


def open_store(args, spec: JobSpec | None = None) -> ResultStore:
    """Every input checked before anything is written: --data-dir and the data `spec` trains on
    (loaded, so a machine without it leaves no job row; with --executor ray the nodes load theirs),
    --out, then the database (opened and checked); then the line's adjustments said. A refusal
    leaves no folder behind."""
    check_data_dir(args.data_dir)
    if spec is not None and getattr(args, "executor", None) != "ray":
        spec.load_data()
    created = check_out(args.out)
    try:
        store = ResultStore(args.db)
    except BaseException:
        remove_folders(created)
        raise
    for line in getattr(args, "notes", ()):
        print(line, file=sys.stderr)
    return store


def note(args, message: str, prefix: bool = True) -> None:
    """How the command line was adjusted (`note: ` + message, or the line as it is), said on stderr
    by `open_store` once the whole line is accepted: a refused line prints its one error line only."""
    args.notes = [*getattr(args, "notes", ()), _("note: {warning}").format(warning=message) if prefix else message]


@contextlib.contextmanager
def warnings_as_notes() -> Iterator[None]:
    """While a command runs, a warning the core words for its reader (CacheRebuiltWarning: the
    data cache was rebuilt) is one `note: ` line on stderr in this run's language, when it happens;
    any other warning is shown as Python shows it."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if isinstance(message, CacheRebuiltWarning):
            print(_("note: {warning}").format(warning=i18n.render(message, lang())), file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores showwarning (and the filters) afterwards
        warnings.showwarning = show
        yield


def report_not_learned(results: list[RunResult]) -> None:
    """The runs that finished without learning (lab/verdicts.py's rule), with what to change: one
    line naming a single run's numbers, or a count over several."""
    bad = [r for r in results if run_verdict(r) == NOT_LEARNED]
    if len(results) == 1 and bad:
        r, n_classes = bad[0], DATASETS[bad[0].data_cfg.dataset].n_classes
        print(_("did not learn: run {id}: {acc} test accuracy (chance is {chance}) and a final training loss of "
                "{loss:.3f} (a run that learned is below {bar:.3f}). Train longer (more epochs or more training "
                "images) or try another learning rate.").format(
            id=r.run_id, acc=i18n.pct(r.epochs[-1].test_acc), chance=i18n.pct(chance(n_classes)),
            loss=r.epochs[-1].train_loss, bar=loss_bar(n_classes)))
    elif bad:
        print(_("{n} of {total} runs did not learn: test accuracy under chance + 10 points or a final training "
                "loss near a uniform guess's. Train longer (more epochs or more training images) or try "
                "another learning rate.").format(n=len(bad), total=len(results)))


def report_diverged(results: list[RunResult]) -> int:
    """One stderr line per diverged run; the exit code."""
    bad = diverged_runs(results)
    for r in bad:
        message = i18n.render_stored(r.message_msg, lang(), r.message)
        print(_("diverged: run {id}: {message}").format(id=r.run_id, message=message), file=sys.stderr)
    if bad and len(results) > 1:
        print(_("{n} of {total} runs diverged; the summaries count finished runs only.").format(
            n=len(bad), total=len(results)), file=sys.stderr)
    return EXIT_DIVERGED if bad else 0


class ProgressBar:
    """A tqdm bar on stderr fed by training progress events (iterations across all runs)."""

    def __init__(self, total: int, quiet: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="it", file=sys.stderr, disable=quiet, dynamic_ncols=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Iterations):
            self.bar.update(len(event.losses))
        elif isinstance(event, EpochEnded):
            m = event.metrics
            self.bar.set_postfix_str(_("epoch {epoch} test accuracy {acc}").format(epoch=m.epoch,
                                                                                     acc=i18n.pct(m.test_acc)))

    def close(self) -> None:
        self.bar.close()


def export_tables(store: ResultStore, out: Path | None, run_ids: list[str], extra: dict[str, pd.DataFrame]) -> None:
    if out is None:
        return
    paths = store.export_csv(out, run_ids, extra)  # every table or none (an OutputError says why)
    print(_("wrote {files}").format(files=", ".join(str(p) for p in paths.values())))


def stop_on_ctrl_c(stop: threading.Event):
    """First Ctrl-C: finish the current iteration, keep and write everything done ('stopped').
    Second Ctrl-C: abort at once. Returns the previous handler (None off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        print("\n" + _("stopping after this iteration; what finished is kept (Ctrl-C again to abort)"), file=sys.stderr)
    return signal.signal(signal.SIGINT, handler)
