"""The lab report: `findings` worded through the gettext catalogs (zh_CN or en), laid out under the
lab sheet's own headings, and written as self-contained HTML, a Word document, a Markdown zip,
findings.json and the chosen run's every-iteration CSV. Every sentence is a msgid with values;
which sentence is said follows from the findings' directions, never from what a lab expects.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
import textwrap
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

from mnist_lab.data.datasets import MNIST
from mnist_lab.errors import ConfigError, writing
from mnist_lab.i18n import Message, integer, number, pct, render_stored, resolve_lang, translator, word
from mnist_lab.lab import figures
from mnist_lab.lab.architecture import build_diagram
from mnist_lab.lab.findings import Finding, Findings, compute_findings, model_from_row, moving_mean, sweep_grid
from mnist_lab.lab.sweep_reading import (
    accuracy,
    best_cell,
    comparison,
    depth_analysis,
    highest,
    kernel_analysis,
    level_name,
    overall,
    settings,
)
from mnist_lab.lab.verdicts import DOWN, FLAT, UNCLEAR, UP, Comparison, Group
from mnist_lab.nets.model import ModelConfig
from mnist_lab.paths import write_files
from mnist_lab.runs.store import ResultStore


def N_(message: str) -> str:
    """Mark a msgid for extraction; it is translated where it is shown."""
    return message


TITLE = N_("Lab 5: classifying the MNIST dataset with a convolutional neural network")
SUBTITLE = N_("Lab report")
H_CONTENT = N_("【Lab content and summary】")
H_RESULTS = N_("1. Give the results the lab requirements ask for.")
H_REQ1 = N_("Requirement 1: train the network on MNIST and record the loss of every iteration.")
H_REQ2 = N_("Requirement 2: change the number of convolution and pooling layers and observe the test accuracy; "
            "think about how the number of layers affects accuracy.")
H_REQ3 = N_("Requirement 3: change the kernel size and observe the test accuracy; think about how the kernel size "
            "affects accuracy.")
H_CONVPOOL = N_("2. Analyse how the convolution and pooling layers affect the network.")
H_KERNEL = N_("3. Analyse how the kernel size affects the network.")
H_SUMMARY = N_("4. Summarise the traits of convolutional neural networks and explain the role of the loss "
               "function in training.")
H_REFLECT = N_("Reflections")  # the lab sheet's 实验心得体会, left for the student
H_SETUP = N_("Setup")
H_RULE = N_("How a direction is decided")
H_LESSONS = N_("Week 2: the notes' questions as experiments")
H_APPENDIX = N_("Appendix: the network's code")
LAB_PRESET = "lab5"  # the lab's own network: requirement 1's run is one of it on the full training set
COVER_LIMIT = 60  # characters in a cover field
COVER = {"name": N_("Name"), "student_id": N_("Student ID"), "class_name": N_("Class")}
DIRECTIONS = {UP: N_("up"), DOWN: N_("down"), FLAT: N_("flat"), UNCLEAR: N_("not distinguishable")}
PIXELS = {"normal": N_("normal pixels"), "permuted": N_("permuted pixels")}
PAGES = (N_("Train"), N_("Sweep: depth × kernel"), N_("FC vs CNN"))  # findings.TODO's pages, as the app names them
FILES = ("report.html", "report.docx", "report_md.zip", "findings.json", "iterations.csv")


@dataclass
class Block:
    kind: str  # "h1", "h2", "h3", "p", "list", "table", "figure", "code", "note"
    text: str = ""  # heading, paragraph, caption, code
    items: list[str] = field(default_factory=list)  # list items
    header: list[str] = field(default_factory=list)  # table
    rows: list[list[str]] = field(default_factory=list)
    counts: bool = False  # table: a grid of counts after a name column (the confusion matrix), set to fit the page
    png: bytes = b""  # figure
    name: str = ""  # figure file name


@dataclass
class Report:
    lang: str
    blocks: list[Block]
    findings: Findings
    iterations_csv: str  # the chosen run's every-iteration losses
    warnings: list[str] = field(default_factory=list)
    detail: bool = True  # its reader may see the server's detail (else findings.json names no server path either)

    @property
    def title(self) -> str:
        return self.blocks[0].text

    def figures(self) -> list[Block]:
        return [b for b in self.blocks if b.kind == "figure"]


@dataclass(frozen=True)
class Cover:
    """Who hands the report in, printed on its cover: text a person typed (kept with the session in
    the app, given on the command line), so checked and shown as text, never as code."""

    name: str = ""
    student_id: str = ""
    class_name: str = ""

    def validate(self) -> Cover:
        for key in COVER:
            value = getattr(self, key)
            if not isinstance(value, str):
                raise ConfigError(key, value, "{field} must be text.", field=COVER[key])
            if len(value) > COVER_LIMIT:
                raise ConfigError(key, value, "{field} is too long: at most {limit} characters.",
                                  field=COVER[key], limit=COVER_LIMIT)
            if not value.isprintable():
                raise ConfigError(key, value, "{field} may hold only printable characters (no line breaks or "
                                  "control characters).", field=COVER[key])
        return self

    def clean(self) -> Cover:
        """The same cover with every field stripped of surrounding spaces."""
        return Cover(*(getattr(self, key).strip() for key in COVER))


def is_lab_run(row) -> bool:
    """A finished run of the lab's own network (the lab5 preset) on the full MNIST training set."""
    from mnist_lab.nets.presets import PRESETS

    if row["status"] != "finished" or row["dataset"] != "mnist" or bool(row["permute_pixels"] == 1):
        return False
    if not (row["train_limit"] is None or pd.isna(row["train_limit"]) or int(row["train_limit"]) == 0):
        return False
    try:
        return model_from_row(row) == PRESETS[LAB_PRESET].model
    except (ValueError, TypeError):  # a row the codec cannot read is not the lab's network
        return False


def requirement1_run(runs: pd.DataFrame) -> tuple[str | None, bool]:
    """Requirement 1's default run: the newest finished run of the lab's own network on the full
    training set; without one, the newest finished run, with `fallback` True (the report says so).
    (None, False) without a finished run."""
    done = runs[runs["status"] == "finished"].sort_values("started_at", ascending=False)
    if done.empty:
        return None, False
    for _, row in done.iterrows():
        if is_lab_run(row):
            return str(row["run_id"]), False
    return str(done.iloc[0]["run_id"]), True


SERVER_FOLDER = N_("(a folder on the server)")
# an absolute path (POSIX, or a Windows drive's) in a sentence; not a URL's path nor a relative one
SERVER_PATH = re.compile(r"(?<![\w.:/~])/(?:[\w.+-]+/)*[\w.+-]+/?|\b[A-Za-z]:\\[^\s,;()]*")


class _Writer:
    """Builds the blocks in one language; `say` is gettext then str.format with the values."""

    def __init__(self, lang: str, cjk_figures: bool, detail: bool = True):
        self.lang = lang
        self.detail = detail  # the reader may see the server's own detail (its files' paths)
        self.t = translator(lang)
        self.fig_t = self.t if cjk_figures or lang == "en" else translator("en")
        self.cjk = cjk_figures and lang != "en"
        self.blocks: list[Block] = []

    def _(self, msgid: str) -> str:
        return self.t.gettext(msgid)

    def word(self, message: Message) -> str:
        return word(message, self.lang)

    def say(self, msgid: str, **values) -> str:
        return self.t.gettext(msgid).format(**values)

    def add(self, kind: str, text: str = "", **kw) -> None:
        self.blocks.append(Block(kind, text, **kw))

    def para(self, msgid: str, **values) -> None:
        self.add("p", self.say(msgid, **values))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.add("figure", caption, png=png, name=name)

    def source(self, stored: object, english: object) -> str:
        """Where a run's data came from (its stored message, else its English) in this language; for
        a reader who may not see the server's detail, every absolute path in it as "(a folder on the
        server)" (a run whose data came from MNIST_LAB_DATA_DIR says 'directory /srv/...')."""
        text = render_stored(stored, self.lang, english)
        return text if self.detail else SERVER_PATH.sub(self._(SERVER_FOLDER), text)


# ------------------------------------------------------------------------------ shared sentences

def _acc(g: Group, w: _Writer | None = None) -> str:
    """sweep_reading.accuracy in the writer's language; without a writer, the bare numbers."""
    return str(accuracy(g, verdict=False)) if w is None else w.word(accuracy(g))


def _comparison(w: _Writer, c: Comparison, a: str, b: str, ma: float, mb: float,
                learned: tuple[bool, bool] = (True, True)) -> str:
    """sweep_reading.comparison between two groups named `a` and `b` (already in the writer's language)."""
    return w.word(comparison(c, Message.verbatim(a), Message.verbatim(b), ma, mb, learned))


def _todo(w: _Writer, f: Finding) -> None:
    for todo in f.todo:
        if todo.why == "missing":
            w.para("Not enough runs for this yet: run the experiment on the “{page}” page, or on the command line:",
                page=w._(todo.page))
        else:
            w.para("Each setting here has a single seed, so a difference cannot be told from seed-to-seed noise: "
                "repeat it with 3 seeds on the “{page}” page, or on the command line:", page=w._(todo.page))
        w.add("code", todo.command)


def _cost(w: _Writer, f: Finding) -> None:
    n = len(f.run_ids)
    w.add("p", w.t.ngettext("Cost: {n} run, up to {params} parameters, {seconds} s of training in total.",
                            "Cost: {n} runs, up to {params} parameters, {seconds} s of training in total.", n)
          .format(n=n, params=integer(f.params), seconds=number(f.seconds, 1)))


def _direction_table(w: _Writer, steps: list[Comparison], names: dict[str, str],
                     learned: dict[str, bool] | None = None) -> None:
    ok = learned or {}
    w.add("table", header=[w._("from"), w._("to"), w._("difference (points)"), w._("spread sd A + sd B (points)"),
                           w._("direction")],
          rows=[[names.get(c.a, c.a), names.get(c.b, c.b), f"{100 * c.diff:+.2f}", f"{100 * c.spread:.2f}",
                 w._(DIRECTIONS[c.direction]) if ok.get(c.a, True) and ok.get(c.b, True) else w._("did not learn")]
                for c in steps])


# ------------------------------------------------------------------------------ sections

def local_now(tz: str | None) -> str:
    """Now in time zone `tz` (an IANA name, e.g. the browser's), named; 'UTC' when unknown."""
    try:
        zone, name = ZoneInfo(tz), tz
    except (ValueError, TypeError, OSError, KeyError):  # None, '', an unknown or malformed name
        zone, name = timezone.utc, "UTC"
    return f"{datetime.now(zone).strftime('%Y-%m-%d %H:%M')} {name}"


def _cover(w: _Writer, cover: Cover) -> None:
    for key in COVER:  # a blank field stays a line to fill in by hand
        w.para("{field}: {value}", field=w._(COVER[key]), value=getattr(cover, key) or "_" * 16)


def tested_on(fs: Findings) -> str:
    """The test images behind the accuracies: one count, or the range when runs saw different ones."""
    counts = fs.test_images or [MNIST.test_count]
    return integer(counts[0]) if len(counts) == 1 else f"{integer(counts[0])}–{integer(counts[-1])}"


def _setup(w: _Writer, fs: Findings, db: str, tz: str | None) -> None:
    """The report's setup: where its runs come from (`db`: the database's file name, '' for a student)."""
    w.add("h2", w._(H_SETUP))
    date = local_now(tz)
    values = dict(date=date, n=integer(fs.runs_considered), devices=", ".join(fs.devices) or "—",
                  sources=", ".join(dict.fromkeys(w.source(m, e) for e, m in fs.data_sources)) or "—")
    if db:
        w.para("Generated on {date} from the {n} finished runs in the results database {db}. Devices: {devices}. "
               "Data: {sources}.", db=db, **values)
    else:  # a student's report names no file of the server
        w.para("Generated on {date} from your {n} finished runs on this server. Devices: {devices}. Data: {sources}.",
               **values)
    w.add("h3", w._(H_RULE))
    w.para("Accuracy is the share of the {n} test images classified correctly. A difference between two settings "
        "counts only when it is larger than the sum of their standard deviations over seeds (sd A + sd B); with "
        "one seed per setting there is no spread, so it cannot be distinguished. A change that counts but is "
        "under 0.1 points is called flat.", n=tested_on(fs))


def _loss(w: _Writer, f: Finding, store: ResultStore, fallback: bool = False) -> str:
    w.add("h3", w._(H_REQ1))
    if fallback and f.available:
        w.add("note", w.say("There is no finished run of the lab's own network (the {preset} preset) on the full "
                            "training set yet, so this section reads the newest finished run instead. For the "
                            "lab's answer, train it on the “{page}” page, or on the command line:",
                            preset=LAB_PRESET, page=w._("Train")))
        w.add("code", f"python -m mnist_lab train --preset {LAB_PRESET} --epochs 3")
    if not f.available:
        _todo(w, f)
        return ""
    n, s = f.numbers, f.numbers["settings"]
    lr, momentum = f"{s['lr']:g}", f"{s['momentum']:g}"
    w.para("Run {run_id}: {label}; {epochs} epoch(s), batch size {batch}, {optimizer}, learning rate {lr}, momentum "
        "{momentum}, random seed {seed}; trained on {device} ({engine} engine); data: {dataset} from {source}.",
        run_id=n["run_id"], label=render_stored(s.get("label_msg"), w.lang, s["label"]), epochs=s["epochs"],
        batch=s["batch_size"], optimizer=s["optimizer"],
        lr=lr, momentum=momentum, seed=s["seed"], device=s["device"] or "—",
        engine=s["engine"] or "—", dataset=s["dataset"],
        source=w.source(s.get("data_source_msg"), s["data_source"]) or "—")
    if not n.get("learned", True):
        w.para("This run did not learn: {acc} test accuracy, under chance + 10 points, or a final training loss that "
               "stayed near a uniform guess's. Train longer (more epochs or more training images) or try another "
               "learning rate, and report a run that learned.", acc=pct(n["final_test_acc"]))
    w.para("The loss of every one of its {n} iterations is recorded: the full table is iterations.csv (columns "
        "run_id, epoch, iteration, loss).", n=integer(n["iterations"]))
    values = dict(w=n["window"], first=number(n["first_mean"]), last=number(n["last_mean"]),
                  frac=pct(abs(n["fell_frac"]), 1))  # a share of the loss, pinned by test_report
    if f.direction == DOWN:
        w.para("The moving mean of the loss over {w} iterations fell from {first} to {last}, {frac} lower.", **values)
    elif f.direction == UP:
        w.para("The moving mean of the loss over {w} iterations rose from {first} to {last}: training diverged; lower "
            "the learning rate.", **values)
    elif f.direction == FLAT:
        w.para("The moving mean of the loss over {w} iterations stayed flat, {first} → {last} (a change under 0.01): "
               "the network had already learned what it could with these settings.", **values)
    else:
        w.para("The moving mean of the loss over {w} iterations went from {first} to {last}, a change no larger than "
            "the iteration-to-iteration noise: the network did not learn in these iterations.", **values)
    if n["level_off_iteration"] is not None:
        w.para("It levelled off after iteration {it} of {n} ({frac} of the training): from there on the moving mean "
            "stays within {band} of its final value (10% of its total fall).", it=integer(n["level_off_iteration"]),
            n=integer(n["iterations"]), frac=pct(n["level_off_frac"], 0), band=number(n["band"]))
        if n["level_off_frac"] > 0.9:
            w.para("That is late in the training, so the loss was still falling at the end: more epochs would "
                "probably lower it further.")
    iters = store.iterations([n["run_id"]])
    its, losses = [int(i) for i in iters["iteration"]], [float(x) for x in iters["loss"]]
    w.figure("loss.png", figures.loss_figure(its, losses, moving_mean(losses, n["window"]), n["window"],
                                             n["level_off_iteration"], n["steps_per_epoch"], w.fig_t.gettext, w.cjk),
             w.say("Figure: the loss of every iteration of run {run_id} and its moving mean.", run_id=n["run_id"]))
    epochs = n["per_epoch"]
    if epochs:
        w.add("table", header=[w._("epoch"), w._("train loss"), w._("test loss"), w._("test accuracy")],
              rows=[[str(e["epoch"]), number(e["train_loss"]), number(e["test_loss"]), pct(e["test_acc"])]
                    for e in epochs])
        w.para("Test accuracy after the last epoch: {acc}.", acc=pct(epochs[-1]["test_acc"]))
    if len(epochs) > 1:
        w.figure("accuracy_per_epoch.png",
                 figures.epoch_figure([e["epoch"] for e in epochs], [e["test_acc"] for e in epochs], w.fig_t.gettext,
                                      w.cjk), w._("Figure: test accuracy after each epoch."))
    _confusion(w, n.get("confusion"))
    _cost(w, f)
    return iters.to_csv(index=False)


def _confusion(w: _Writer, c: dict | None) -> None:
    """The run's confusion matrix (rows: true class, columns: predicted) and its most confused pairs."""
    if not c:
        return
    names = c["class_names"]
    w.para("Confusion matrix of this run on its {n} test images (rows: the true class; columns: the predicted "
           "class; the diagonal is what it got right, {acc} in all):", n=integer(c["n"]), acc=pct(c["accuracy"]))
    w.add("table", header=[w._("true / predicted"), *names],
          rows=[[names[t], *(integer(v) for v in row)] for t, row in enumerate(c["counts"])], counts=True)
    if c["pairs"]:
        w.para("The pairs it confused most: {pairs}.", pairs=w._("; ").join(
            w.say("{true} taken for {pred} {count} times ({share} of the {true}s)", true=p["true_name"],
                  pred=p["predicted_name"], count=integer(p["count"]), share=pct(p["share"]))
            for p in c["pairs"]))


def _level_name(w: _Writer, factor: str, level: str) -> str:
    return w.word(level_name(factor, level))


def _reading(w: _Writer, blocks: list) -> None:
    """sweep_reading's blocks: a Message is a paragraph, a list of them a list."""
    for block in blocks:
        if isinstance(block, list):
            w.add("list", items=[w.word(m) for m in block])
        else:
            w.add("p", w.word(block))


def _factor_results(w: _Writer, f: Finding, heading: str, factor: str) -> None:
    w.add("h3", w._(heading))
    if not f.available:
        _todo(w, f)
        return
    n = f.numbers
    w.add("p", w.word(settings(f, factor)))
    names = {g.level: _level_name(w, factor, g.level) for g in f.groups}
    w.add("table", header=[w._("setting"), w._("runs (seeds)"), w._("test accuracy, mean ± sd"), w._("parameters"),
                           w._("seconds per run"), w._("last feature map")],
          rows=[[names[g.level], str(g.n), _acc(g, w), integer(g.params), number(g.seconds, 1),
                 f"{n['feature_map'][g.level]}×{n['feature_map'][g.level]}"] for g in f.groups])
    w.add("p", w.word(overall(f, factor)))
    if len(f.groups) > 2:
        _direction_table(w, f.steps, names, {g.level: g.learned for g in f.groups})
    w.add("p", w.word(highest(f, factor)))
    xlabel = w.fig_t.gettext("conv+pool layers") if factor == "conv_layers" else w.fig_t.gettext("kernel size")
    w.figure(f"accuracy_vs_{factor}.png",
             figures.levels_figure([g.level for g in f.groups], [g.values for g in f.groups],
                                   [g.mean for g in f.groups], [g.sd for g in f.groups], xlabel, w.fig_t.gettext,
                                   w.cjk),
             w._("Figure: test accuracy (mean ± sd over seeds, each dot one seed) against the number of conv+pool "
                 "layers.") if factor == "conv_layers" else
             w._("Figure: test accuracy (mean ± sd over seeds, each dot one seed) against the kernel size."))
    _todo(w, f)
    _cost(w, f)


def _depth_analysis(w: _Writer, f: Finding) -> None:
    w.add("h2", w._(H_CONVPOOL))
    w.para("A convolution layer slides small kernels, the same weights at every position, over its input and responds "
        "to local patterns such as strokes and corners; a 2×2 max-pooling layer keeps the strongest response in "
        "each window, halving the feature map, which makes the features tolerant of small shifts and cuts the "
        "cost of later layers.")
    if not f.available:
        w.para("Without sweep runs over the number of layers, the report cannot say how depth changed accuracy here "
            "(see requirement 2).")
        return
    _reading(w, depth_analysis(f))


def _kernel_analysis(w: _Writer, f: Finding) -> None:
    w.add("h2", w._(H_KERNEL))
    w.para("The kernel size sets how much of the image one convolution sees at once (its receptive field) and how many "
        "weights it has: a k×k kernel has k² weights per input and output channel.")
    if not f.available:
        w.para("Without sweep runs over the kernel size, the report cannot say how it changed accuracy here (see "
            "requirement 3).")
        return
    _reading(w, kernel_analysis(f))


def _summary(w: _Writer, f: Finding, loss: Finding) -> None:
    w.add("h2", w._(H_SUMMARY))
    n = f.numbers
    if "compare" in n:
        c = n["compare"]
        g = {grp.level: grp for grp in f.groups}
        cells = [("FC", "normal"), ("CNN", "normal"), ("FC", "permuted"), ("CNN", "permuted")]
        names = {"FC / normal": w._("the FC net on normal pixels"), "CNN / normal": w._("the CNN on normal pixels"),
                 "FC / permuted": w._("the FC net on permuted pixels"),
                 "CNN / permuted": w._("the CNN on permuted pixels"),
                 "FC drop": w._("the FC net's loss from shuffling"), "CNN drop": w._("the CNN's loss from shuffling")}
        seeds = sorted({seed for grp in f.groups for seed in grp.seeds})
        w.para("Evidence from the equal-parameter experiment ({epochs} epoch(s), random seeds {seeds}): a CNN with "
               "{cnn} parameters ({cnn_arch}) against a fully-connected net with {fc} ({fc_arch}), each on normal "
               "digits and on digits whose pixels are shuffled by one fixed permutation.",
               epochs=c["epochs"], seeds=", ".join(map(str, seeds)), cnn=integer(c["cnn"]["params"]),
               cnn_arch=c["cnn"]["architecture"], fc=integer(c["fc"]["params"]), fc_arch=c["fc"]["architecture"])
        w.add("table", header=[w._("network"), w._("pixels"), w._("runs (seeds)"), w._("test accuracy, mean ± sd"),
                               w._("parameters")],
              rows=[[w._("CNN") if m == "CNN" else w._("FC net"), w._(PIXELS[p]), str(g[f"{m} / {p}"].n),
                     _acc(g[f"{m} / {p}"], w), integer(g[f"{m} / {p}"].params)] for m, p in cells])
        w.figure("fc_vs_cnn.png", figures.compare_figure(
            {(m, p): (g[f"{m} / {p}"].mean, g[f"{m} / {p}"].sd) for m, p in cells}, w.fig_t.gettext, w.cjk),
            w._("Figure: FC net and CNN with about the same number of parameters, on normal and on permuted pixels "
                "(mean ± sd over seeds)."))
        for cmp in f.steps[:4]:
            w.add("p", _comparison(w, cmp, names[cmp.a], names[cmp.b], g[cmp.a].mean, g[cmp.b].mean,
                                   (g[cmp.a].learned, g[cmp.b].learned)))
        gap = f.steps[4]
        values = dict(gap=f"{100 * abs(gap.diff):.2f}", spread=f"{100 * gap.spread:.2f}")
        if gap.direction == UP:
            w.para("Locality: shuffling the pixels cost the CNN {gap} points more than the FC net. Convolution "
                "and pooling rely on neighbouring pixels belonging together; one fixed permutation destroys that, "
                "while the FC net, which treats every pixel as an unrelated input, hardly notices.", **values)
        elif gap.direction == DOWN:
            w.para("Shuffling the pixels cost the FC net {gap} points more than the CNN here, the opposite of what "
                "locality predicts: check these runs, or repeat them with more seeds.", **values)
        else:
            w.para("How much the CNN and the FC net lose from shuffling cannot be told apart here (difference {gap} "
                "points, spread {spread} points): repeat with more seeds or epochs before reading locality into it.",
                **values)
        ws = c["weight_sharing"]
        w.para("Weight sharing: the first convolution {layer} has {params} parameters ({formula}) and yet "
            "produces {outputs} outputs; a fully-connected layer from the same {inputs} inputs to as many outputs "
            "would need {dense} parameters ({dense_formula}), {ratio} times as many.", layer=ws["layer"],
            params=integer(ws["params"]), formula=ws["formula"], outputs=integer(ws["outputs"]),
            inputs=integer(ws["inputs"]), dense=integer(ws["dense_params"]),
            dense_formula=ws["dense_formula"], ratio=integer(ws["ratio"]))
        w.add("table", header=[w._("network"), w._("layer"), w._("parameters"), w._("formula")],
              rows=[[w._("CNN"), r["layer"], integer(r["params"]), r["formula"]] for r in c["cnn"]["formulas"]]
              + [[w._("FC net"), r["layer"], integer(r["params"]), r["formula"]] for r in c["fc"]["formulas"]])
    w.para("The traits of a CNN, as these experiments show them:")
    w.add("list", items=[
        w._("locality: each output looks at a small neighbourhood of its input, so nearby pixels are "
            "combined first;"),
        w._("weight sharing: one kernel is used at every position, so a convolution needs far fewer "
            "parameters than a fully-connected layer with the same inputs and outputs;"),
        w._("translation invariance: the same kernel finds a pattern wherever it is, and pooling makes "
            "the result tolerant of small shifts;"),
        w._("a hierarchy of features: stacked conv+pool blocks build strokes into parts and parts into digits."),
    ])
    w.para("The role of the loss function: cross-entropy measures how far the predicted class probabilities are from "
           "the true label (minus the log of the probability given to the right class); its gradient is the only "
           "signal back-propagation uses to change the weights, so training is the search for weights that make it "
           "small.")
    if loss.available:
        if loss.direction == DOWN:
            w.para("In requirement 1 the loss fell from {first} to {last} while the weights were adjusted, and test "
                "accuracy reached {acc}.", first=number(loss.numbers["first_mean"]),
                last=number(loss.numbers["last_mean"]), acc=pct(loss.numbers["final_test_acc"]))
        else:
            w.para("In requirement 1 the loss did not fall ({first} → {last}), and test accuracy stayed at {acc}.",
                first=number(loss.numbers["first_mean"]), last=number(loss.numbers["last_mean"]),
                acc=pct(loss.numbers["final_test_acc"]))
    if "softmax" in n:
        sm = n["softmax"]
        without, with_sm = Group(**sm["without"]), Group(**sm["with_softmax"])
        cmp = Comparison(**sm["comparison"])
        w.add("p", _comparison(w, cmp, w._("the network without softmax"), w._("the same network with a softmax "
                                                                              "before CrossEntropyLoss"),
                               without.mean, with_sm.mean, (without.learned, with_sm.learned)))
        if cmp.direction == DOWN:
            w.para("The softmax before the loss hurt: CrossEntropyLoss already applies log-softmax, so the outputs are "
                "squashed twice, the gradients shrink and training slows down.")
        elif cmp.direction in (UP, FLAT):
            w.para("The softmax before the loss did not hurt in these runs, which is unusual: CrossEntropyLoss already "
                "applies log-softmax, so a second softmax usually shrinks the gradients; check the runs' settings.")
        else:
            w.para("With these runs the effect of the softmax before the loss cannot be told from seed noise; with "
                   "more seeds or epochs it usually shows as lower accuracy, since CrossEntropyLoss already applies "
                   "log-softmax.")
    _todo(w, f)
    if f.available:
        _cost(w, f)


def _lesson_acc(w: _Writer, row: dict) -> str:
    text = f"{pct(row['mean'])} ± {pct(row['sd'])[:-1]}"
    return text if row.get("learned", True) else w.say("{text}: did not learn", text=text)


def _lessons(w: _Writer, stored: list) -> None:
    """Each week-2 lesson's newest runs: the question, the settings, mean ± sd per variant, the reading."""
    from mnist_lab.lab.lessons import LESSONS, loss_texts

    w.add("h2", w._(H_LESSONS))
    if not stored:
        w.para("No lesson has been run yet: run one on the “Week 2” page, or on the command line:")
        w.add("code", "python -m mnist_lab lesson --list")
        return
    for item in stored:
        lesson = LESSONS[item.name]
        w.add("h3", w._(lesson.title))
        w.add("p", w._(lesson.question))
        w.add("p", w._(lesson.why))
        w.para("Dataset {dataset}, {epochs} epoch(s), {images} training images; command: "
               "python -m mnist_lab lesson {name}.", dataset=item.dataset, epochs=item.epochs, name=item.name,
               images=integer(item.train_limit) if item.train_limit else w._("all"))
        loss = "train_loss" in lesson.metrics  # the lesson reads the final training loss too
        w.add("table", header=[w._("variant"), w._("runs (seeds)"), w._("test accuracy, mean ± sd"),
                               *([w._("final training loss, mean ± sd")] if loss else []),
                               w._("parameters"), w._("seconds per run")],
              rows=[[w._(r["variant"]), str(r["n"]), _lesson_acc(w, r),
                     *(loss_texts(pd.DataFrame([r])) if loss else []),
                     integer(r["params"]), number(r["seconds"], 2)] for r in item.summary])
        labels = ["\n".join(textwrap.wrap(w.fig_t.gettext(r["variant"]), 22)) for r in item.summary]
        w.figure(f"lesson_{item.name}.png", figures.levels_figure(
            labels, item.values, [r["mean"] for r in item.summary], [r["sd"] for r in item.summary], "",
            w.fig_t.gettext, w.cjk, line=False),
            w.say("Figure: {title}, the test accuracy of each variant (mean ± sd over "
                  "seeds, one dot per seed).", title=w._(lesson.title)))
        for text in item.reading.render(w._):
            w.add("p", text)


def _grid(w: _Writer, grid: dict | None) -> None:
    """Requirements 2 and 3 whole: every (conv+pool layers, kernel size) cell of the sweep."""
    if grid is None:
        return
    fx = grid["fixed"]
    w.para("The whole sweep ({padding} padding, {epochs} epoch(s), random seeds {seeds}): test accuracy, mean ± sd "
           "over seeds, for every number of conv+pool layers (rows) and kernel size (columns); — where a setting "
           "was not run.", padding=fx["padding"], epochs=fx["epochs"], seeds=", ".join(map(str, fx["seeds"])))
    cells = grid["cells"]
    w.add("table", header=[w._("conv+pool layers"), *(w.say("kernel size {k}×{k}", k=k) for k in grid["kernels"])],
          rows=[[str(a), *(_acc(cells[a, k]) if (a, k) in cells else "—" for k in grid["kernels"])]
                for a in grid["layers"]])
    w.add("p", w.word(best_cell(grid)))


def _appendix(w: _Writer, store: ResultStore, runs: pd.DataFrame, run_id: str | None) -> None:
    """The requirement-1 run's network as PyTorch code, as the export writes it (built on the meta
    device: no weights needed, no memory, no random numbers drawn)."""
    if run_id is None or run_id not in set(runs["run_id"]):
        return
    import torch

    from mnist_lab.lab.export import module_source
    from mnist_lab.nets.model import build_model

    try:
        cfg = model_from_row(runs[runs["run_id"] == run_id].iloc[0])
        with torch.device("meta"):
            source = module_source(cfg, build_model(cfg), run_id)
    except (ValueError, TypeError):  # a row the codec cannot read: no code to show
        return
    w.add("h2", w._(H_APPENDIX))
    _network_drawn(w, cfg, run_id)
    w.para("The network of run {run_id} as PyTorch code, as python -m mnist_lab export writes it:", run_id=run_id)
    w.add("code", source, name="python")


@lru_cache(maxsize=16)
def _network_png(cfg: ModelConfig, lang: str, cjk: bool) -> bytes:
    """The network's figure (0.3-0.7 s of matplotlib), kept: a class's reports mostly draw the same few nets."""
    return figures.architecture_figure(build_diagram(cfg), translator(lang).gettext, cjk, lang)


def _network_drawn(w: _Writer, cfg: ModelConfig, run_id: str) -> None:
    """The run's network drawn (lab.architecture, as the app draws it) beside its per-layer table."""
    diagram = build_diagram(cfg)
    lang = w.lang if w.fig_t is w.t else "en"  # the figure's own words: English without a CJK font
    w.figure("network.png", _network_png(cfg, lang, w.cjk),
             w.say("The network of run {run_id}: each box is a block's output (channels × height × width), with its "
                   "parameters; dotted arcs are residual shortcuts.", run_id=run_id))
    rows = []
    for before, box in zip(diagram.boxes, diagram.boxes[1:]):
        for r in box.rows:  # a layer's words ("ReLU", "no parameters", the flattening's) translated
            formula = (w.say("{product} = {n} features", product="×".join(map(str, before.shape)),
                             n=r.output_shape[0]) if r.name == "flatten" else w._(r.formula))
            rows.append([f"{r.name}: {w._(r.layer)}", " × ".join(map(str, r.output_shape)), integer(r.params), formula])
    w.add("table", header=[w._("layer"), w._("output shape"), w._("parameters"), w._("formula")], rows=rows)


def build_report(store: ResultStore, lang: str | None = None, run_id: str | None = None,
                 workspace: str | tuple[str, ...] | None = None, findings: Findings | None = None,
                 cover: Cover | None = None, tz: str | None = None, detail: bool | None = None) -> Report:
    """The whole report in `lang` ('zh', 'zh_CN' or 'en'; None: from the environment), from the
    runs of `workspace` (one, or a tuple: `access.Asker.scope`; None: every run). Requirement
    1 reads `run_id`, by default `requirement1_run`'s; `cover`: who hands it in; `tz`: the
    reader's time zone (an IANA name; None: UTC); `detail`: whether the reader may see the server's
    detail (the database's file, the data folders' paths, how to install fonts): the machine's own
    user and the teacher may, a student or visitor of a shared server not (None: only when the
    report reads every run, `workspace` None)."""
    cover = (cover or Cover()).validate().clean()
    lang = resolve_lang(lang)
    runs = store.visible_runs(workspace)
    fallback, picked = False, run_id is not None
    if run_id is None and findings is None:
        run_id, fallback = requirement1_run(runs)
    fs = findings or compute_findings(store, run_id=run_id, workspace=workspace, picked=picked)
    shown = fs.loss.numbers.get("run_id") if fs.loss.available else None
    cjk = figures.cjk_font() is not None
    own = workspace is None if detail is None else detail  # else a student, who is told no server detail
    w = _Writer(lang, cjk, own)
    w.add("h1", w._(TITLE))
    w.add("p", w._(SUBTITLE))
    _cover(w, cover)
    warnings = []
    if lang != "en" and not cjk:
        warnings.append(w._("No font with Chinese glyphs (Noto Sans CJK) was found, so the figures are labelled in "
                            "English; install fonts-noto-cjk (make fonts) for Chinese labels.") if own else
                        w._("No font with Chinese glyphs was found on this server, so the figures are labelled in "
                            "English; your teacher can add one."))
        w.add("note", warnings[-1])
    _setup(w, fs, store.path.name if own else "", tz)
    w.add("h2", w._(H_CONTENT))
    w.add("h2", w._(H_RESULTS))
    csv = _loss(w, fs.loss, store, fallback)
    _factor_results(w, fs.depth, H_REQ2, "conv_layers")
    _factor_results(w, fs.kernel, H_REQ3, "kernel_size")
    _grid(w, sweep_grid(runs))
    _depth_analysis(w, fs.depth)
    _kernel_analysis(w, fs.kernel)
    _summary(w, fs.analysis, fs.loss)
    _lessons(w, fs.lessons)
    w.add("h2", w._(H_REFLECT))
    w.para("(Your own thoughts: what surprised you, what you would change, what you would try next.)")
    _appendix(w, store, runs, shown)
    return Report(lang, w.blocks, fs, csv, warnings, own)


# ------------------------------------------------------------------------------ renderers

_CSS = """
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "PingFang SC", "Microsoft YaHei", sans-serif;
       max-width: 52em; margin: 2em auto; padding: 0 1em; line-height: 1.6; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.6em; } h3 { font-size: 1.1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
table.counts { font-size: 0.8em; } table.counts td + td { white-space: nowrap; text-align: right; }
figure { margin: 1em 0; } figure img { max-width: 100%; } figcaption { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 0.6em; white-space: pre-wrap; word-break: break-all; }
.note { border-left: 4px solid #e0a000; padding-left: 0.8em; }
@media print { body { margin: 0; max-width: none; } h2, h3 { page-break-after: avoid; }
  figure, table, pre { page-break-inside: avoid; } }
"""


def to_html(report: Report) -> str:
    """One self-contained page: styles inline, figures as base64 PNG."""
    e = html.escape
    parts = []
    for b in report.blocks:
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind}>{e(b.text)}</{b.kind}>")
        elif b.kind == "p":
            parts.append(f"<p>{e(b.text)}</p>")
        elif b.kind == "note":
            parts.append(f'<p class="note">{e(b.text)}</p>')
        elif b.kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif b.kind == "code":
            parts.append(f"<pre><code>{e(b.text)}</code></pre>")
        elif b.kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b.rows)
            kind = ' class="counts"' if b.counts else ""  # a count never breaks across lines
            parts.append(f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b.kind == "figure":
            data = base64.b64encode(b.png).decode("ascii")
            parts.append(f'<figure><img alt="{e(b.text)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(b.text)}</figcaption></figure>")
    lang = "zh-CN" if report.lang == "zh_CN" else "en"
    return (f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8"><title>{e(report.title)}</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(report: Report) -> str:
    out = []
    for b in report.blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "note":
            out.append("> " + b.text)
        elif b.kind == "list":
            out.append("\n".join(f"- {i}" for i in b.items))
        elif b.kind == "code":
            out.append(f"```{b.name or 'bash'}\n{b.text}\n```")
        elif b.kind == "table":
            out.append("\n".join(["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                                  "|" + "---|" * len(b.header)]
                                 + ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]))
        elif b.kind == "figure":
            out.append(f"![{b.text}](figures/{b.name})\n\n*{b.text}*")
    return "\n\n".join(out) + "\n"


def to_markdown_zip(report: Report) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("report.md", to_markdown(report))
        for b in report.figures():
            z.writestr(f"figures/{b.name}", b.png)
    return buffer.getvalue()


def to_docx(report: Report) -> bytes:
    """A Word document (what students hand in): headings, paragraphs, tables, figures embedded."""
    from docx import Document
    from docx.oxml.ns import qn
    from docx.shared import Cm, Pt

    doc = Document()
    for style_name, east_asia in (("Normal", "SimSun"), ("Title", "SimHei"), ("Heading 1", "SimHei"),
                                  ("Heading 2", "SimHei"), ("Heading 3", "SimHei")):
        style = doc.styles[style_name]
        style.element.get_or_add_rPr().get_or_add_rFonts().set(qn("w:eastAsia"), east_asia)
    doc.styles["Normal"].font.size = Pt(10.5)
    for b in report.blocks:
        if b.kind == "h1":
            doc.add_heading(b.text, level=0)
        elif b.kind in ("h2", "h3"):
            doc.add_heading(b.text, level=int(b.kind[1]) - 1)
        elif b.kind in ("p", "note"):
            doc.add_paragraph(b.text)
        elif b.kind == "list":
            for item in b.items:
                doc.add_paragraph(item, style="List Bullet")
        elif b.kind == "code":
            run = doc.add_paragraph().add_run(b.text)
            run.font.name = "Consolas"
            run.font.size = Pt(9)
        elif b.kind == "table":
            table = doc.add_table(rows=1, cols=len(b.header))
            table.style = "Table Grid"
            for cell, text in zip(table.rows[0].cells, b.header):
                cell.text = text
            for row in b.rows:
                for cell, text in zip(table.add_row().cells, row):
                    cell.text = text
            if b.counts:
                section = doc.sections[-1]
                _fit_counts(table, section.page_width - section.left_margin - section.right_margin)
        elif b.kind == "figure":
            doc.add_picture(io.BytesIO(b.png), width=Cm(15))
            doc.add_paragraph(b.text, style="Caption")
    buffer = io.BytesIO()
    doc.save(buffer)
    return buffer.getvalue()


COUNT_PT = 8  # the confusion matrix's type size in the .docx: "1,127" and its cell margins fit a tenth of the page


def _fit_counts(table, text_width: int) -> None:
    """A grid of counts (the confusion matrix) in Word: small type, a fixed layout (Word would
    otherwise size the columns to the headers and break "1,127" inside its cell) with a name
    column and equal count columns filling the text width (EMU), no wrapping in a count."""
    from docx.enum.text import WD_ALIGN_PARAGRAPH
    from docx.oxml import OxmlElement
    from docx.shared import Pt, Twips

    table.autofit = False  # w:tblLayout fixed: the widths below hold
    k = len(table.columns) - 1
    twips = text_width // Twips(1)  # Word keeps widths in whole twips: their sum stays within the page
    first = twips * 4 // 25  # 16%: "true / predicted", "T-shirt/top"
    widths = [Twips(first), *([Twips((twips - first) // k)] * k)]
    for column, width in zip(table.columns, widths):
        column.width = width  # w:gridCol
    for r, row in enumerate(table.rows):
        for c, (cell, width) in enumerate(zip(row.cells, widths)):
            cell.width = width  # w:tcW, what Word reads
            for paragraph in cell.paragraphs:
                for run in paragraph.runs:
                    run.font.size = Pt(COUNT_PT)
                if r and c:
                    paragraph.alignment = WD_ALIGN_PARAGRAPH.RIGHT
            if r and c:  # python-docx has no call for it: the cell property as Word writes it
                cell._tc.get_or_add_tcPr().append(OxmlElement("w:noWrap"))


def _no_paths(value: object, folder: str) -> object:
    if isinstance(value, str):
        return SERVER_PATH.sub(folder, value)
    if isinstance(value, dict):
        return {k: _no_paths(v, folder) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_paths(v, folder) for v in value]
    return value


def findings_json(report: Report) -> str:
    found = dict(lang=report.lang, **report.findings.to_dict())
    if not report.detail:  # a student's: the data sources' folders (and any other path) as "(a folder on the server)"
        found = _no_paths(found, translator(report.lang).gettext(SERVER_FOLDER))
    return json.dumps(found, ensure_ascii=False, indent=2)


def write_report(report: Report, out_dir: str | Path) -> dict[str, Path]:
    """report.html, report.docx, report_md.zip, findings.json and (with a chosen run) iterations.csv."""
    out = Path(out_dir)
    contents = {"report.html": to_html(report).encode("utf-8"), "report.docx": to_docx(report),
                "report_md.zip": to_markdown_zip(report), "findings.json": findings_json(report).encode("utf-8")}
    if report.iterations_csv:
        contents["iterations.csv"] = report.iterations_csv.encode("utf-8")
    paths = {name: out / name for name in contents}
    with writing(out):  # all the files or none (a full disk, a read-only folder: an OutputError saying so)
        write_files({paths[name]: data for name, data in contents.items()})
    return paths
