"""Command line for looking inside a kept run: `inspect RUN_ID --out DIR` (confusion.csv,
per_class.csv, misclassified.csv), `predict RUN_ID IMAGE...` (top-3 per image) and
`export RUN_ID --out DIR` (the zip with the weights, the standalone script and, with the onnx
extra, model.onnx). Refusals are
ValueErrors, printed by cli.main as one `error:` line.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from mnist_lab import i18n
from mnist_lab.cli.common import check_out, db_help, lang, remove_folders
from mnist_lab.cli.common import gettext as _
from mnist_lab.errors import WeightsError, writing
from mnist_lab.paths import default_db_path, write_files
from mnist_lab.runs.store import ResultStore
from mnist_lab.runs.weights import NONFINITE, nonfinite_warning
from mnist_lab.service.access import LOCAL, may


def existing_store(db: Path | None) -> ResultStore:
    """The results database --db names, or the default one: it must exist already (looking inside
    runs never creates a database, not even the default one)."""
    path = Path(db) if db is not None else default_db_path()
    if not path.is_file():
        raise ValueError(_("No results database at {db}: train something first, or pass the right --db.")
                         .format(db=path))
    return ResultStore(path)


def _open_run(args):
    """The run the line names, loaded; a run without weights, or whose weights file is refused, is a
    WeightsError (in the reader's language)."""
    from mnist_lab.lab.inspection import load_run

    store = existing_store(args.db)
    owners = store.run_workspaces([args.run_id])
    if args.run_id not in owners or not may(LOCAL, "see", owners[args.run_id]):  # the CLI is the local user
        raise ValueError(_("No run {run_id} in {db}: copy a run id from `runs.csv` or the Runs page.")
                         .format(run_id=args.run_id, db=store.path))
    try:
        return load_run(store, args.run_id)
    except WeightsError:  # NoWeightsError among them (also an OSError)
        raise
    except OSError as exc:  # reading it failed (a permission, an I/O error): not "could not be written"
        raise ValueError(_("The weights file of run {run_id} cannot be read ({why}): check that you may read {path}.")
                         .format(run_id=args.run_id, why=exc.strerror or exc, path=exc.filename)) from None


@contextlib.contextmanager
def out_folder(out: Path) -> Iterator[None]:
    """check_out(out), then the command's work: a refusal or failure inside (the data unavailable,
    a refused export, a full disk) removes the folders the check created."""
    created = check_out(out)
    try:
        yield
    except BaseException:
        remove_folders(created)
        raise


def cmd_inspect(args) -> int:
    from mnist_lab.lab.inspection import confusion, evaluated_images

    run = _open_run(args)  # a refused run id (or weights file) leaves no --out folder behind
    with out_folder(args.out):  # nor does missing data or a failed write
        warning = nonfinite_warning(run.saved)
        conf = confusion(run, *evaluated_images(run))
        names = run.class_names
        counts = pd.DataFrame(conf.counts, index=pd.Index(names, name="true"), columns=names)
        paths = [args.out / "confusion.csv", args.out / "per_class.csv", args.out / "misclassified.csv"]
        with writing(args.out):  # the three files or none (a full disk, a read-only folder: said so)
            write_files({paths[0]: counts.to_csv(), paths[1]: conf.per_class().to_csv(index=False),
                         paths[2]: conf.misclassified().to_csv(index=False)})
    if warning is not None:  # instead of an accuracy that means nothing
        _warn(warning)
    else:
        print(_("run {run_id}: test accuracy {acc:.2f}% on {n:,} images; most confused:").format(
            run_id=run.run_id, acc=100 * conf.accuracy, n=conf.n))
        pairs = conf.confused_pairs(5)
        if len(pairs):
            print(pairs[["true_name", "predicted_name", "count"]].to_string(index=False))
    print(_("wrote {paths}").format(paths=", ".join(str(p) for p in paths)))
    return 0


def cmd_predict(args) -> int:
    from mnist_lab.lab.inspection import check_size, decode_image, predict, prepare_upload

    run = _open_run(args)
    if run.saved.nonfinite:  # its probabilities would all be NaN
        raise WeightsError(run.run_id, NONFINITE, names=", ".join(run.saved.nonfinite))
    for path in args.images:
        if not path.is_file():
            raise ValueError(_("{path} is not a file: give image files (PNG, JPEG).").format(path=path))
        check_size(path.stat().st_size, str(path))  # before reading it
        image = prepare_upload(decode_image(path.read_bytes(), name=str(path)), run)
        top = predict(run, image).top
        print(f"{path}: " + ", ".join(f"{name} {i18n.pct(p)}" for _c, name, p in top))
    return 0


def cmd_export(args) -> int:
    from mnist_lab.lab.export import export_run

    run = _open_run(args)  # a refused run id (or weights file) leaves no --out folder behind
    notes: list[i18n.Message] = []  # why model.onnx is not in the zip (the onnx extra missing), said after it
    with out_folder(args.out):  # nor does a run the exporter refuses, or a failed write
        path = export_run(run, args.out, on_note=notes.append)
    # NaN weights are exported, with the warning: the script and settings reproduce the divergence,
    # and the weights are what the run left (its run.json says 'diverged')
    warning = nonfinite_warning(run.saved)
    if warning is not None:
        _warn(warning)
    for note in notes:
        _warn(note)
    print(_("wrote {path}").format(path=path))
    return 0


def _warn(message: i18n.Message) -> None:
    print(_("warning: {message}").format(message=i18n.word(message, lang())), file=sys.stderr)


def add_inspect_commands(sub, parents=()) -> None:
    """Register inspect, predict and export on the main parser's subcommands; `parents` brings
    the shared --lang."""
    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, description=text, parents=list(parents))
        p.add_argument("run_id", help=_("a run id from runs.csv or the Runs page"))
        return p

    p = command("inspect", _("confusion matrix, per-class accuracy, misclassified test images of a run"))
    p.add_argument("--out", type=Path, required=True, help=_("directory for confusion.csv, per_class.csv, "
                                                             "misclassified.csv"))
    p.add_argument("--db", type=Path, help=db_help())
    p.set_defaults(func=cmd_inspect)

    p = command("predict", _("a run's top-3 classes for image files (a digit on paper or screen)"))
    p.add_argument("images", type=Path, nargs="+", help=_("image files (PNG, JPEG)"))
    p.add_argument("--db", type=Path, help=db_help())
    p.set_defaults(func=cmd_predict)

    p = command("export", _("a run as a zip: weights, a standalone PyTorch script and model.onnx (for Netron)"))
    p.add_argument("--out", type=Path, required=True, help=_("directory for run_<id>.zip"))
    p.add_argument("--db", type=Path, help=db_help())
    p.set_defaults(func=cmd_export)
