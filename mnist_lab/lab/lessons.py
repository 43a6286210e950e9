"""The course's week-2 questions as ready experiments ("lessons"). A lesson is data: a title and a
question (English msgids), variants made from a base network and training with
`dataclasses.replace`, a number of seeds and the metrics to compare. `run_lesson` trains every
variant over the seeds through `run_many`; `summarize_lesson` gives mean ± sd per variant and
`read_lesson` a reading computed from those numbers with the findings' direction rule
(`findings.judge`), as message templates with their values, which the CLI, the Week 2 page and
the lab report word. Never imports streamlit.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import pandas as pd

from mnist_lab.data.datasets import DATASETS, DataConfig
from mnist_lab.errors import ConfigError, failure_reason, need_bool, need_choice, need_int
from mnist_lab.i18n import N_, Message, Worded
from mnist_lab.lab.experiments import (
    MAX_SEEDS,
    EventFn,
    Runner,
    run_many,
    run_verdict,
    stored_verdict,
    summarize_over_seeds,
)
from mnist_lab.lab.verdicts import CHANCE_MARGIN, FLAT_ACC, Comparison, chance, judge, loss_bar
from mnist_lab.nets.model import ModelConfig
from mnist_lab.nets.presets import PRESETS, cnn_config
from mnist_lab.runs.store import ResultStore  # read: the report's stored lessons
from mnist_lab.training.loop import MAX_EPOCHS, CancelFlag, RunResult, TrainConfig, new_run_id
from mnist_lab.training.preflight import preflight

EXPERIMENT = "lesson"  # the runs' `experiment` in the store; their group_id is "lesson:NAME:ID"


# ------------------------------------------------------------------------------------ lessons as data

@dataclass(frozen=True)
class Change:
    """One variant of a lesson: what differs from the lesson's base, applied with `replace`."""

    label: str  # English msgid, e.g. "same order every epoch"
    # None: the base network; "name": that preset's network; {field: value}: replace() on the base;
    # ("cnn", {kwargs}): models.cnn_config(**kwargs)
    model: str | Mapping | tuple | None = None
    train: Mapping = field(default_factory=dict)  # TrainConfig fields to replace
    data: Mapping = field(default_factory=dict)  # DataConfig fields to replace
    hurts: bool = False  # meant to stop the network learning: its "did not learn" is the lesson's finding


@dataclass(frozen=True)
class Lesson:
    name: str  # the CLI's NAME
    title: str  # msgid
    question: str  # msgid: the course notes' question
    changes: tuple[Change, ...]  # the first is the baseline every other variant is compared with
    preset: str = "lab5"  # base network and its optimiser, batch size and normalisation
    base_train: Mapping = field(default_factory=dict)  # TrainConfig fields replaced on the preset's
    datasets: tuple[str, ...] = ("mnist", "fashion-mnist")  # where it makes sense; the first is the default
    # test_acc (always read), train_loss (final training loss, read too), seconds, iterations: what is shown
    metrics: tuple[str, ...] = ("test_acc",)
    seeds: int = 3
    # quick settings (at most about 90 s per lesson on an idle 2-core CPU: bench/bench_lessons.py);
    # "full settings" train every image
    epochs: int = 1
    train_limit: int | None = 10000  # training images
    test_limit: int | None = None  # test images evaluated (None: all)
    full_epochs: int = 3
    why: str = ""  # msgid: why the effect happens, in one or two sentences of the course's words


_SEQ = dict(optimizer="adam", lr=0.001, momentum=0.0)  # the lessons whose nets train poorly with SGD 0.01

LESSONS: dict[str, Lesson] = {lesson.name: lesson for lesson in (
    Lesson("shuffle", N_("Shuffle on or off"),
           N_("Does a new random batch order every epoch (shuffle=True) train better than the same order every "
              "epoch, and what does an order sorted by label do?"),
           (Change(N_("shuffled every epoch")),
            Change(N_("same order every epoch"), train={"shuffle": False}),
            Change(N_("sorted by label"), train={"shuffle": False, "sort_by_label": True}, hurts=True)),
           epochs=2,
           why=N_("shuffle=True gives every epoch a new random order: more randomness in the updates, less "
                  "overfitting. Batches sorted by label hold one class each, so every update pulls the network "
                  "toward that class and it forgets the others: it does not learn.")),
    Lesson("normalize", N_("Normalisation"),
           N_("Does it matter how the pixels are normalised: not at all, with mean 0.5 and std 0.5, or with the "
              "dataset's own mean and standard deviation?"),
           (Change(N_("no normalisation (pixels in [0, 1])"), data={"normalize": "none"}),
            Change(N_("mean 0.5, std 0.5"), data={"normalize": "half"}),
            Change(N_("the dataset's mean and std"), data={"normalize": "dataset"})),
           epochs=2, datasets=("mnist", "fashion-mnist", "cifar10"),
           why=N_("Normalising centres the pixels near 0 with a similar scale, so the first layer's gradients are "
                  "well sized and training converges faster and more steadily.")),
    Lesson("epoch-batch", N_("Epoch vs batch"),
           N_("One epoch shows the network every training image once; the batch size decides how many iterations "
              "that takes. With the same images, how do iterations, wall time and accuracy change?"),
           (Change(N_("batch size 16"), train={"batch_size": 16}),
            Change(N_("batch size 64"), train={"batch_size": 64}),
            Change(N_("batch size 256"), train={"batch_size": 256})),
           epochs=2, train_limit=20000, metrics=("test_acc", "seconds", "iterations"),
           why=N_("An epoch is one pass over every training image. A smaller batch makes more, noisier updates per "
                  "epoch (more iterations, more time); a larger batch makes fewer, smoother ones.")),
    Lesson("head", N_("1×1 convolution vs a fully-connected head"),
           N_("A 1×1 convolution keeps the spatial layout and changes the number of channels; a fully-connected "
              "head flattens the feature map and loses it. How do parameters and accuracy compare?"),
           (Change(N_("flatten → fully-connected head"),
                   model=("cnn", dict(conv_layers=2, kernel_size=3, base_channels=16, head="fc"))),
            Change(N_("1×1 convolution → global average pooling head"),
                   model=("cnn", dict(conv_layers=2, kernel_size=3, base_channels=16, head="gap")))),
           base_train=dict(_SEQ, lr=0.01), epochs=2,  # the GAP head reached 35% in 1 epoch at lr 0.001
           why=N_("A 1×1 convolution keeps the spatial layout and only changes the number of channels; with global "
                  "average pooling after it, the head needs far fewer parameters than a fully-connected layer on "
                  "the flattened feature map.")),
    Lesson("residual", N_("Residual learning"),
           N_("Does a deep CNN train better with shortcut connections (residual blocks) than the same depth "
              "without them?"),
           (Change(N_("plain deep CNN"), model="plain-small"),
            Change(N_("the same depth with shortcuts"), model="resnet-small")),
           preset="resnet-small",
           # 13 convs: slow. Batch 32 (157 iterations): at 128 (16 iterations on 2,000 images) both stayed at chance
           # At this budget the test accuracy of a 13-conv net still swings from seed to seed (plain 66-89%,
           # shortcuts 76-94%); the final training loss is steady (0.75-0.89 plain, 0.63-0.72 shortcuts), and
           # it is what shortcuts change: how well a deep network trains. So it is read too.
           base_train=dict(batch_size=32), datasets=("mnist", "fashion-mnist", "cifar10"), train_limit=5000,
           test_limit=1000, metrics=("test_acc", "train_loss"),
           why=N_("A shortcut adds a block's input to its output, so the block only learns the residual F(x) = "
                  "H(x) − x; the gradient flows back through the shortcut unchanged, which is why a deep network "
                  "with shortcuts trains where the same depth without them struggles.")),
    Lesson("softmax", N_("Softmax before CrossEntropyLoss"),
           N_("What happens to accuracy when a softmax is put before CrossEntropyLoss, which already applies "
              "log-softmax?"),
           (Change(N_("logits into CrossEntropyLoss")),
            Change(N_("softmax before CrossEntropyLoss"), model={"softmax_before_loss": True}, hurts=True)),
           why=N_("CrossEntropyLoss already applies log-softmax to the logits. A softmax before it squashes the "
                  "outputs into [0, 1], so the loss saturates, its gradients become tiny and accuracy drops.")),
    Lesson("batchnorm", N_("BatchNorm on or off"),
           N_("Does BatchNorm after each convolution raise accuracy?"),
           (Change(N_("without BatchNorm")),
            Change(N_("BatchNorm after each convolution"), model={"batch_norm": True})),
           why=N_("BatchNorm normalises each convolution's outputs over the batch to mean 0 and variance 1 (then "
                  "scales and shifts them), so later layers see a steadier input; training converges faster.")),
    Lesson("augment", N_("Data augmentation"),
           N_("Does augmenting the training images (small random shifts; crops and flips on CIFAR-10) raise test "
              "accuracy?"),
           (Change(N_("no augmentation")),
            Change(N_("augmentation on"), train={"augment": True})),
           epochs=2, datasets=("mnist", "fashion-mnist", "cifar10"),
           why=N_("Augmentation shows the network slightly shifted (on CIFAR-10, cropped and flipped) copies of the "
                  "training images: more varied data, less overfitting. Its gain shows over many epochs; a short run "
                  "may not show it.")),
    Lesson("cifar-nets", N_("The course's CIFAR-10 net vs LeNet vs VGG16"),
           N_("The notes' CIFAR-10 net reaches 62% after 10 epochs; how do LeNet and a VGG16 with BatchNorm "
              "compare on the same images?"),
           (Change(N_("the course's CIFAR-10 net"), model="cifar-course"),
            Change(N_("LeNet"), model="lenet-cifar"),
            Change(N_("VGG16 with BatchNorm"), model="vgg16-cifar")),
           preset="cifar-course",
           # VGG16 is most of the time on CIFAR-10 (about 13 ms a training image, 4 ms a test image on 2 CPU
           # cores): 1,000 + 500 images keep the lesson near 60 s; SGD 0.01 stayed at chance on the MNIST
           # fallback in 63 iterations, Adam 0.001 left the course's net at the learning bar
           datasets=("cifar10", "mnist", "fashion-mnist"), seeds=2, train_limit=1000, test_limit=500,
           epochs=2, base_train=dict(_SEQ, lr=0.003),
           full_epochs=10, metrics=("test_acc", "seconds"),
           why=N_("A deeper network with more channels (VGG16, with BatchNorm) can learn richer features than the "
                  "course's net or LeNet, but it has far more parameters and needs more epochs and time to show it.")),
)}


def get_lesson(name: str) -> Lesson:
    if name not in LESSONS:
        raise ConfigError("lesson", name, "Unknown lesson {value!r}. Choose one of: {options}.",
                          options=", ".join(LESSONS))
    return LESSONS[name]


def datasets_for(lesson: Lesson) -> list[str]:
    """The lesson's datasets that this build knows (their files may still be missing)."""
    return [d for d in lesson.datasets if d in DATASETS]


# ------------------------------------------------------------------------------------ what to train

@dataclass(frozen=True)
class LessonConfig:
    """What a student picks for a lesson: which one, on which dataset, how many seeds, quick or full."""

    name: str = "shuffle"  # a key of LESSONS
    dataset: str = ""  # "" : the lesson's default dataset
    seeds: int | None = None  # None: the lesson's default
    full: bool = False  # the lab's full settings: every image, more epochs
    # overrides of the quick or full settings (None: the lesson's): tests, tiny demos, a bigger run
    epochs: int | None = None
    train_limit: int | None = None  # training images
    test_limit: int | None = None  # test images evaluated

    @property
    def lesson(self) -> Lesson:
        return get_lesson(self.name)

    def resolved_dataset(self) -> str:
        return self.dataset or (datasets_for(self.lesson) or [self.lesson.datasets[0]])[0]

    def n_seeds(self) -> int:
        return self.lesson.seeds if self.seeds is None else self.seeds

    def validate(self) -> None:
        """Raise ConfigError (a ValueError) naming the field, the value and what to change."""
        need_choice("name", self.name, "Lesson", tuple(LESSONS), "Unknown lesson {value!r}. Choose one of: {options}.")
        lesson = self.lesson
        if self.dataset:
            need_choice("dataset", self.dataset, "Dataset", lesson.datasets,
                        "The lesson does not run on {value!r}; choose one of: {options}.")
        if self.seeds is not None:
            need_int("seeds", self.seeds, "Seeds", 3)
            if not 1 <= self.seeds <= MAX_SEEDS:
                raise ConfigError("seeds", self.seeds, "A lesson needs 1 to {high} seeds per variant; got {value!r}. "
                                  "Use 3, say.", high=MAX_SEEDS)
        need_bool("full", self.full, "Full settings")
        for name, example in (("epochs", 1), ("train_limit", 5000), ("test_limit", 1000)):
            value = getattr(self, name)
            if value is not None and need_int(name, value, name, example) < 1:
                raise ConfigError(name, value, "{name} must be at least 1 (got {value!r}); leave it out for the "
                                  "lesson's own setting.", name=name)
        if self.epochs is not None and self.epochs > MAX_EPOCHS:
            raise ConfigError("epochs", self.epochs, "A lesson trains 1 to {high} epochs; got {value!r}. Leave it out "
                              "for the lesson's own setting.", high=MAX_EPOCHS)
        spec = DATASETS[self.resolved_dataset()]
        for name, total in (("train_limit", spec.train_count), ("test_limit", spec.test_count)):
            value = getattr(self, name)
            if value is not None and value > total:
                raise ConfigError(name, value, "{name} is {value!r}, but {title} has {total:,} images in that split: "
                                  "choose at most {total:,}, or leave it out for the lesson's own setting.",
                                  name=name, title=spec.title, total=total)


@dataclass(frozen=True)
class Variant:
    label: str  # msgid
    model: ModelConfig
    train: TrainConfig
    data: DataConfig


@dataclass(frozen=True)
class Skipped:
    label: str  # msgid
    reason: str  # English text: the network's geometry refusal
    why: Message | None = None  # the same refusal as a message, worded in the reader's language (i18n.render)


def fit(model: ModelConfig, dataset: str) -> ModelConfig:
    """The network for the dataset's images: its channels, size and number of classes."""
    spec = DATASETS[dataset]
    return replace(model, in_channels=spec.channels, image_size=spec.image_size, n_classes=spec.n_classes)


def _normalize(name: str) -> str:
    """A preset's 'mnist' (MNIST's mean/std, the older name) becomes 'dataset': the same numbers on
    MNIST, and each other dataset's own mean/std there."""
    return "dataset" if name == "mnist" else name


def base_configs(cfg: LessonConfig, device: str = "auto", engine: str = "auto",
                 data_dir: str | None = None) -> tuple[TrainConfig, DataConfig]:
    """The lesson's base training and data settings (quick or full) every variant starts from."""
    cfg.validate()
    lesson, dataset = cfg.lesson, cfg.resolved_dataset()
    preset = PRESETS[lesson.preset]
    epochs = cfg.epochs or (lesson.full_epochs if cfg.full else lesson.epochs)
    train = TrainConfig(epochs=epochs, batch_size=preset.batch_size,
                        optimizer=preset.optimizer, lr=preset.lr, momentum=preset.momentum, device=device,
                        engine=engine)
    train = replace(train, **lesson.base_train)
    data = DataConfig(dataset=dataset, normalize=_normalize(preset.normalize),
                      train_limit=cfg.train_limit or (None if cfg.full else lesson.train_limit),
                      test_limit=cfg.test_limit or (None if cfg.full else lesson.test_limit), data_dir=data_dir)
    return train, data


def _model(change: Change, base: ModelConfig) -> ModelConfig:
    if change.model is None:
        return base
    if isinstance(change.model, str):
        return PRESETS[change.model].model
    if isinstance(change.model, tuple):
        _, kwargs = change.model
        return cnn_config(**kwargs)
    return replace(base, **change.model)


def plan(cfg: LessonConfig, train: TrainConfig, data: DataConfig) -> tuple[list[Variant], list[Skipped]]:
    """The lesson's variants built from `train` and `data` with `replace`, and those that cannot
    run here (a network that does not fit the dataset's images)."""
    cfg.validate()
    lesson = cfg.lesson
    base = PRESETS[lesson.preset].model
    variants, skipped = [], []
    for change in lesson.changes:
        try:
            model = fit(_model(change, base), data.dataset)
            model.validate()
        except ValueError as exc:
            skipped.append(Skipped(change.label, str(exc), failure_reason(exc)))
            continue
        vdata = replace(data, **change.data)
        vdata = replace(vdata, normalize=_normalize(vdata.normalize))
        variants.append(Variant(change.label, model, replace(train, **change.train), vdata))
    return variants, skipped


# ------------------------------------------------------------------------------------ running

LESSON_COLUMNS = ["variant", "seed", "params", "batch_size", "test_acc", "test_loss", "seconds", "iterations",
                  "run_id", "status", "train_loss", "verdict"]


@dataclass
class LessonResult:
    config: LessonConfig
    results: list[RunResult]
    table: pd.DataFrame  # LESSON_COLUMNS, one row per run
    summary: pd.DataFrame  # see summarize_lesson
    reading: Reading
    skipped: list[Skipped] = field(default_factory=list)
    status: str = "finished"  # or "stopped"


def run_lesson(cfg: LessonConfig, train: TrainConfig, data: DataConfig, *, record: EventFn | None = None,
               on_progress: EventFn | None = None, cancel: CancelFlag | None = None,
               runner: Runner = run_many) -> LessonResult:
    """Every variant of the lesson, `cfg.n_seeds()` times (seeds 0 ..), variants that share their
    data settings trained together by `runner` (run_many: in this process); one table row per run."""
    variants, skipped = plan(cfg, train, data)
    if len(variants) < 2:
        raise ConfigError("name", cfg.name, "The lesson {value!r} cannot compare anything on {dataset}: {why}. "
                          "Choose another dataset.", dataset=data.dataset,
                          why=Worded(Message(N_("{label}: {reason}"), {"label": s.label, "reason": s.why or s.reason})
                                     for s in skipped) or N_("fewer than 2 variants"))
    for v in variants:  # every variant, before any data loads (run_many checks only its own group)
        preflight(v.model, v.train, v.data)
    group_id = f"{EXPERIMENT}:{cfg.name}:{new_run_id()}"
    by_data: OrderedDict[DataConfig, list[tuple[Variant, int]]] = OrderedDict()
    for v in variants:
        by_data.setdefault(v.data, []).extend((v, seed) for seed in range(cfg.n_seeds()))
    results, rows = [], []
    for data_cfg, keys in by_data.items():
        if cancel is not None and cancel.is_set():
            break
        jobs = [(v.model, replace(v.train, seed=seed), v.label) for v, seed in keys]
        done = runner(jobs, data_cfg, record=record, on_progress=on_progress, cancel=cancel, experiment=EXPERIMENT,
                        group_id=group_id)
        results += done
        for r, (v, seed) in zip(done, keys):
            last = r.epochs[-1] if r.epochs else None
            rows.append(dict(variant=v.label, seed=seed, params=r.params, batch_size=v.train.batch_size,
                             test_acc=last.test_acc if last else None, test_loss=last.test_loss if last else None,
                             seconds=r.seconds, iterations=len(r.losses), run_id=r.run_id, status=r.status,
                             train_loss=last.train_loss if last else None, verdict=run_verdict(r)))
    table = pd.DataFrame(rows, columns=LESSON_COLUMNS)
    expected = len(variants) * cfg.n_seeds()
    stopped = len(results) < expected or any(r.status == "stopped" for r in results)
    summary = summarize_lesson(table, [v.label for v in variants])
    return LessonResult(cfg, results, table, summary, read_lesson(cfg.lesson, summary, data.dataset), skipped,
                        "stopped" if stopped else "finished")


def lesson_table(runs: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """LESSON_COLUMNS rows rebuilt from a lesson's stored runs and epochs (a worker's job, or a
    lesson reopened later): the variant is the run's label."""
    last = epochs.sort_values("epoch").groupby("run_id").last() if len(epochs) else pd.DataFrame()
    rows = []
    for r in runs.itertuples():
        end = last.loc[r.run_id] if r.run_id in last.index else None
        finished = r.status == "finished" and end is not None
        rows.append(dict(variant=r.label, seed=int(r.seed), params=int(r.params), batch_size=int(r.batch_size),
                         test_acc=float(end["test_acc"]) if finished else None,
                         test_loss=float(end["test_loss"]) if finished else None, seconds=float(r.seconds or 0.0),
                         iterations=int(r.steps_per_epoch or 0) * int(r.epochs_done or 0), run_id=r.run_id,
                         status=r.status, train_loss=float(end["train_loss"]) if end is not None else None,
                         verdict=stored_verdict(r.status, end["test_acc"] if end is not None else None,
                                                end["train_loss"] if end is not None else None, r.dataset)))
    return pd.DataFrame(rows, columns=LESSON_COLUMNS)


def summarize_lesson(table: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """Per variant, over its finished runs: n, test accuracy mean and sd (and `text`, mean ± sd),
    diverged runs, runs that did not learn and whether the variant learned (`learned`), parameters,
    median seconds (one run may pay a warm-up), mean iterations per run and the final training loss's
    mean and sd (`loss_mean`, `loss_sd`); in `order` if given."""
    acc = summarize_over_seeds(table, ["variant"])
    done = table[(table["status"] == "finished") & table["test_acc"].notna()]
    cost = done.groupby("variant", sort=False).agg(params=("params", "max"), seconds=("seconds", "median"),
                                                   iterations=("iterations", "mean"), loss_mean=("train_loss", "mean"),
                                                   loss_sd=("train_loss", "std")).reset_index()
    cost["loss_sd"] = cost["loss_sd"].fillna(0.0)
    out = acc.merge(cost, on="variant", how="left")
    if order is not None:
        rank = {label: i for i, label in enumerate(order)}
        out = out.assign(_rank=out["variant"].map(rank)).sort_values("_rank").drop(columns="_rank")
    return out.reset_index(drop=True)


def loss_texts(summary: pd.DataFrame) -> list[str]:
    """Each variant's final training loss as "mean ± sd" ('' where no run finished)."""
    return ["" if m != m else f"{m:.3f} ± {sd:.3f}" for m, sd in zip(summary["loss_mean"], summary["loss_sd"])]


# ------------------------------------------------------------------------------------ the reading

@dataclass(frozen=True)
class Line:
    """A sentence as a msgid and its values; values named in `terms` are msgids too (variant labels)."""

    msgid: str
    values: dict = field(default_factory=dict)
    terms: tuple[str, ...] = ()

    def render(self, gettext: Callable[[str], str] = lambda s: s) -> str:
        def word(v):  # a term, or a list of terms joined
            return ", ".join(gettext(x) for x in v) if isinstance(v, (list, tuple)) else gettext(v)
        values = {k: (word(v) if k in self.terms else v) for k, v in self.values.items()}
        return gettext(self.msgid).format(**values)


NEITHER_LEARNED, A_DID_NOT_LEARN, B_DID_NOT_LEARN = "neither learned", "baseline did not learn", "did not learn"


@dataclass(frozen=True)
class Contrast:
    """A variant against the lesson's baseline (the first variant with finished runs)."""

    baseline: str
    variant: str
    comparison: Comparison  # test accuracy, variant minus baseline, by the findings' rule
    mean_a: float  # test accuracy, fractions
    mean_b: float
    params_a: int
    params_b: int
    seconds_a: float  # median wall time per run
    seconds_b: float
    iterations_a: float  # mean iterations per run
    iterations_b: float
    learned_a: bool = True  # verdicts.did_learn, over the variant's runs (most of them learned)
    learned_b: bool = True

    @property
    def verdict(self) -> str:
        """The comparison's direction when both learned; else which one did not learn."""
        if self.learned_a and self.learned_b:
            return self.comparison.direction
        if not (self.learned_a or self.learned_b):
            return NEITHER_LEARNED
        return B_DID_NOT_LEARN if self.learned_a else A_DID_NOT_LEARN


@dataclass
class Reading:
    lesson: str
    contrasts: list[Contrast]
    best: str | None  # the variant ahead of every other by more than the spread, if one is
    lines: list[Line]

    def render(self, gettext: Callable[[str], str] = lambda s: s) -> list[str]:
        return [line.render(gettext) for line in self.lines]


def _accuracy_line(c: Contrast, n_classes: int) -> Line:
    cmp = c.comparison
    values = dict(a=c.baseline, b=c.variant, ma=100 * c.mean_a, mb=100 * c.mean_b, diff=100 * abs(cmp.diff),
                  signed=100 * cmp.diff, spread=100 * cmp.spread, n=cmp.n_min)
    if c.verdict == NEITHER_LEARNED:
        msgid = N_("{b}: {mb:.2f}% test accuracy against {ma:.2f}% for {a}, but neither learned (chance is "
                   "{chance:.2f}%): a difference between runs that did not learn says nothing, so they are not "
                   "compared.")
        values["chance"] = 100 * chance(n_classes)
    elif c.verdict == B_DID_NOT_LEARN:
        msgid = N_("{b}: {mb:.2f}% test accuracy against {ma:.2f}% for {a}, {diff:.2f} points lower: {b} did not "
                   "learn (chance is {chance:.2f}%), {a} did.")
        values["chance"] = 100 * chance(n_classes)
    elif c.verdict == A_DID_NOT_LEARN:
        msgid = N_("{b}: {mb:.2f}% test accuracy against {ma:.2f}% for {a}, {diff:.2f} points higher: {b} learned, "
                   "{a} did not (chance is {chance:.2f}%).")
        values["chance"] = 100 * chance(n_classes)
    elif cmp.direction == "up":
        msgid = N_("{b}: {mb:.2f}% test accuracy against {ma:.2f}% for {a}, {diff:.2f} points higher, more than "
                   "the spread over seeds ({spread:.2f} points).")
    elif cmp.direction == "down":
        msgid = N_("{b}: {mb:.2f}% test accuracy against {ma:.2f}% for {a}, {diff:.2f} points lower, more than "
                   "the spread over seeds ({spread:.2f} points).")
    elif cmp.direction == "flat":
        msgid = N_("{b}: {mb:.2f}% test accuracy against {ma:.2f}% for {a}, a difference of {signed:+.2f} points: "
                   "beyond the spread over seeds but under 0.1 points, so flat.")
    elif cmp.reason == "one_seed":
        msgid = N_("{b}: {mb:.2f}% test accuracy against {ma:.2f}% for {a} ({signed:+.2f} points), but with 1 seed "
                   "there is no spread: not distinguishable with 1 seed.")
    else:
        msgid = N_("{b}: {mb:.2f}% test accuracy against {ma:.2f}% for {a} ({signed:+.2f} points), within the "
                   "spread over seeds ({spread:.2f} points): not distinguishable with {n} seeds.")
    return Line(msgid, values, ("a", "b"))


LOSS_FLAT = 0.005  # final training losses closer than this are the same, whatever their spread


def _loss_line(a, b) -> Line:
    """The final training loss of variant row `b` against baseline row `a` by the findings' rule:
    lower means it trains better."""
    cmp = judge(a.variant, b.variant, float(b.loss_mean - a.loss_mean), float(a.loss_sd + b.loss_sd),
                min(int(a.n), int(b.n)), LOSS_FLAT)
    values = dict(a=a.variant, b=b.variant, la=float(a.loss_mean), lb=float(b.loss_mean), spread=cmp.spread,
                  n=cmp.n_min)
    if cmp.direction == "down":
        msgid = N_("{b}: final training loss {lb:.3f} against {la:.3f} for {a}, lower by more than the spread over "
                   "seeds ({spread:.3f}): it trains better.")
    elif cmp.direction == "up":
        msgid = N_("{b}: final training loss {lb:.3f} against {la:.3f} for {a}, higher by more than the spread over "
                   "seeds ({spread:.3f}): it trains worse.")
    else:
        msgid = N_("{b}: final training loss {lb:.3f} against {la:.3f} for {a}: no clear difference ({n} seed(s), "
                   "spread over seeds {spread:.3f}).")
    return Line(msgid, values, ("a", "b"))


def _cost_line(c: Contrast) -> Line:
    ratio = c.seconds_b / c.seconds_a if c.seconds_a > 0 else float("nan")
    return Line(N_("Cost of {b}: {pb:,} parameters against {pa:,} ({pdiff:+,}); {sb:.2f} s per run against "
                   "{sa:.2f} s ({ratio:.2f}×)."),
                dict(a=c.baseline, b=c.variant, pa=c.params_a, pb=c.params_b, pdiff=c.params_b - c.params_a,
                     sa=c.seconds_a, sb=c.seconds_b, ratio=ratio), ("a", "b"))


def _not_learned_line(change: Change | None, label: str, n_classes: int) -> Line:
    """What a variant that did not learn means: the lesson's finding, or what to change."""
    if change is not None and change.hurts:
        return Line(N_("{v} did not learn, and that is this lesson's finding: this change stops the network "
                       "learning."), dict(v=label), ("v",))
    return Line(N_("{v} did not learn: its test accuracy stayed below chance + {margin:.0f} points ({bar:.2f}%) or "
                   "its final training loss stayed above {loss:.2f}. Train longer (more epochs or more training "
                   "images) or try another learning rate before reading it."),
                dict(v=label, margin=100 * CHANCE_MARGIN, bar=100 * (chance(n_classes) + CHANCE_MARGIN),
                     loss=loss_bar(n_classes)), ("v",))


def read_lesson(lesson: Lesson, summary: pd.DataFrame, dataset: str | None = None) -> Reading:
    """The reading of a lesson's summary: every variant against the baseline by the findings'
    rule (|diff| > sd A + sd B, at least 2 seeds each) when both learned (verdicts.did_learn; a
    variant that did not learn is read as such, with what to change), its cost in parameters and
    seconds (and iterations where the lesson compares them), and the best variant if one is
    ahead of all. `dataset` (default: the lesson's first) gives the number of classes."""
    n_classes = DATASETS[dataset or lesson.datasets[0]].n_classes
    rows = [r for r in summary.itertuples() if r.n >= 1]
    if len(rows) < 2:
        return Reading(lesson.name, [], None, [Line(N_("Not enough finished runs to compare: at least two variants "
                                                        "need a finished run."))])
    learned = {r.variant: bool(getattr(r, "learned", True)) for r in rows}
    a = rows[0]
    contrasts = [Contrast(a.variant, b.variant, judge(a.variant, b.variant, b.mean - a.mean, a.sd + b.sd,
                                                      min(a.n, b.n), FLAT_ACC),
                          float(a.mean), float(b.mean), int(a.params), int(b.params), float(a.seconds),
                          float(b.seconds), float(a.iterations), float(b.iterations), learned[a.variant],
                          learned[b.variant]) for b in rows[1:]]
    lines = []
    for c in contrasts:
        lines.append(_accuracy_line(c, n_classes))
        b = next(r for r in rows if r.variant == c.variant)
        if "train_loss" in lesson.metrics and c.learned_a and c.learned_b and all(
                math.isfinite(getattr(r, "loss_mean", math.nan)) for r in (a, b)):
            lines.append(_loss_line(a, b))
        if "iterations" in lesson.metrics:
            lines.append(Line(N_("{b} takes {ib:,.0f} iterations per run against {ia:,.0f} for {a}, for the same "
                                 "training images."),
                              dict(a=c.baseline, b=c.variant, ia=c.iterations_a, ib=c.iterations_b), ("a", "b")))
        lines.append(_cost_line(c))
    changes = {c.label: c for c in lesson.changes}
    lines += [_not_learned_line(changes.get(r.variant), r.variant, n_classes) for r in rows if not learned[r.variant]]
    lines.append(_best_line(rows, learned, "train_loss" in lesson.metrics))
    best = lines[-1].values["best"] if lines[-1].msgid == BEST else None
    return Reading(lesson.name, contrasts, best, lines)


BEST = N_("Best here: {best}, ahead of every other variant by more than the spread over seeds.")


def _best_line(rows: list, learned: dict[str, bool], more_metrics: bool = False) -> Line:
    """Which variants lead, in words that agree with the contrasts: a variant that did not learn is
    behind every one that did; among those that learned, the direction rule decides (on test
    accuracy: `more_metrics` says so where the lesson read another measure too)."""
    ok = [r for r in rows if learned[r.variant]]
    if not ok:
        return Line(N_("No variant learned here: train longer (more epochs or more training images) before "
                       "comparing them."))

    def ahead(r, o) -> bool:  # r ahead of o beyond the spread
        return judge(o.variant, r.variant, r.mean - o.mean, r.sd + o.sd, min(r.n, o.n), FLAT_ACC).direction == "up"

    for r in ok:
        if all(ahead(r, o) for o in ok if o is not r):
            return Line(BEST, dict(best=r.variant), ("best",))
    top = [r.variant for r in ok if not any(ahead(o, r) for o in ok if o is not r)]
    if len(top) < len(rows):
        return Line(N_("Ahead of the rest, but not distinguishable from each other: {top}."), dict(top=top),
                    ("top",))
    n = min(int(r.n) for r in rows)
    if more_metrics:  # the lesson read another measure too: say which one this line is about
        return Line(N_("No variant is ahead of all the others in test accuracy by more than the spread over seeds "
                       "(at least {n} seed(s) per variant)."), dict(n=n))
    return Line(N_("No variant is ahead of all the others by more than the spread over seeds (at least "
                   "{n} seed(s) per variant)."), dict(n=n))


# ------------------------------------------------------------------------------------ from the store

@dataclass
class StoredLesson:
    """A lesson's newest group of runs in the store, summarised and read (the report's section)."""

    name: str
    group_id: str
    dataset: str
    epochs: int
    train_limit: int | None
    summary: list[dict]  # summarize_lesson's rows
    values: list[list[float]]  # each summary row's per-seed test accuracies, by seed
    reading: Reading


def group_lesson(group_id: str) -> str | None:
    """The lesson a group_id ('lesson:NAME:ID') belongs to, None for other groups."""
    parts = str(group_id or "").split(":")
    return parts[1] if len(parts) == 3 and parts[0] == EXPERIMENT and parts[1] in LESSONS else None


def stored_lessons(store: ResultStore, workspace: str | None = None) -> list[StoredLesson]:
    """Each lesson's newest stored group with a finished run, in LESSONS order."""
    runs = store.visible_runs(workspace)
    if not len(runs):
        return []
    runs = runs[runs["experiment"] == EXPERIMENT]
    out = []
    for name, lesson in LESSONS.items():
        mine = runs[runs["group_id"].map(group_lesson) == name]
        mine = mine[mine.groupby("group_id")["status"].transform(lambda s: (s == "finished").any())]
        if not len(mine):
            continue
        newest = mine.groupby("group_id")["started_at"].max().idxmax()
        part = mine[mine["group_id"] == newest]
        table = lesson_table(part, store.epochs(list(part["run_id"])))
        order = [c.label for c in lesson.changes]
        summary = summarize_lesson(table, order)
        first = part.iloc[0]
        limit = first["train_limit"]
        done = table.dropna(subset=["test_acc"]).sort_values("seed")
        values = [[float(v) for v in done.loc[done["variant"] == label, "test_acc"]] for label in summary["variant"]]
        out.append(StoredLesson(name, newest, str(first["dataset"]), int(first["epochs"]),
                                None if pd.isna(limit) else int(limit), summary.to_dict("records"), values,
                                read_lesson(lesson, summary)))
    return out

