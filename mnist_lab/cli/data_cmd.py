"""`python -m mnist_lab data idx --dataset mnist --out DIR`: the offline MNIST (or Fashion-MNIST)
copy written as the four IDX files in torchvision's layout (DIR/MNIST/raw/...), checked against the
published MD5s, for a run's exported script (`--data DIR --evaluate`) or any torchvision program.
"""
from __future__ import annotations

from pathlib import Path

from mnist_lab.cli.common import check_data_dir, check_out, remove_folders
from mnist_lab.cli.common import gettext as _
from mnist_lab.data.datasets import DATASETS
from mnist_lab.data.offline import idx_spec, write_idx


def cmd_idx(args) -> int:
    spec = idx_spec(args.dataset)  # CIFAR-10 (no IDX form) is refused before any folder is made
    check_data_dir(args.data_dir)
    created = check_out(args.out)
    try:
        copy = write_idx(spec, args.out, args.data_dir)
    except BaseException:
        remove_folders(created)
        raise
    if copy.written:
        print(_("wrote {title} to {folder}: 4 IDX files, each checked against its published MD5").format(
            title=spec.title, folder=copy.folder))
    else:
        print(_("{folder} already holds the original {title} files (each MD5 checked): nothing written").format(
            title=spec.title, folder=copy.folder))
    print(_("an exported run's script reads them with: --data {out}").format(out=args.out))
    return 0


def add_parser(sub, parents=()) -> None:
    """Register `data` (and its `idx`) on the main parser's subcommands; `parents` brings --lang."""
    text = _("the lab's offline datasets, written for other programs")
    data = sub.add_parser("data", help=text, description=text, parents=list(parents))
    what = data.add_subparsers(dest="data_command", required=True)
    text = _("write MNIST or Fashion-MNIST as IDX files in torchvision's layout (DIR/MNIST/raw/...), checked "
             "against the published MD5s")
    p = what.add_parser("idx", help=text, description=text, parents=list(parents))
    p.add_argument("--dataset", choices=list(DATASETS), default="mnist", help=_("mnist or fashion-mnist"))
    p.add_argument("--out", type=Path, required=True,
                   help=_("folder to write into (the files go to DIR/MNIST/raw or DIR/FashionMNIST/raw)"))
    p.add_argument("--data-dir", help=_("read the dataset from this torchvision-layout folder instead of the "
                                        "offline sources"))
    p.set_defaults(func=cmd_idx)
