"""The reading of a depth × kernel sweep (the lab's requirements 2 and 3) as sentences: data
(i18n.Message, numbers already formatted), worded by the report and the Sweep page alike in the
reader's language, so both say the same thing. The numbers come from findings.py; the rule is
verdicts.py's.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mnist_lab.data.datasets import MNIST
from mnist_lab.i18n import N_, Message, duration, integer, pct
from mnist_lab.lab.findings import Finding, factor_finding, sweep_grid
from mnist_lab.lab.verdicts import DOWN, FLAT, UP, Comparison, Group, compare_groups

Block = Message | list  # a paragraph, or a list of items (each a Message)


def level_name(factor: str, level: str) -> Message:
    """A level of the factor: '2 conv+pool layers', 'kernel size 5×5'."""
    if factor == "conv_layers":
        return Message.ngettext("{n} conv+pool layer", "{n} conv+pool layers", int(level))
    return Message(N_("kernel size {k}×{k}"), dict(k=level))


def accuracy(g: Group, verdict: bool = True) -> Message:
    """A group's test accuracy over seeds, '98.12% ± 0.21' (sd in points), '98.12%' with one run;
    with `verdict`, said to have not learned where most of its runs did not (verdicts.did_learn)."""
    text = f"{pct(g.mean)} ± {pct(g.sd)[:-1]}" if g.n > 1 else pct(g.mean)
    return Message.verbatim(text) if g.learned or not verdict else Message(N_("{text}: did not learn"),
                                                                            dict(text=text))


def comparison(c: Comparison, a: Message, b: Message, ma: float, mb: float,
               learned: tuple[bool, bool] = (True, True)) -> Message:
    """How test accuracy moved from group a to group b, and whether that counts; groups that did not
    learn are said to, not compared by the spread."""
    values = dict(a=a, b=b, diff=f"{100 * abs(c.diff):.2f}", signed=f"{100 * c.diff:+.2f}", ma=pct(ma), mb=pct(mb),
                  spread=f"{100 * c.spread:.2f}")
    if not any(learned):
        return Message(N_("From {a} to {b}, test accuracy moved {signed} points ({ma} → {mb}), but neither learned: "
                          "train longer (more epochs or more training images) before comparing them."), values)
    if not learned[1]:
        return Message(N_("From {a} to {b}, test accuracy fell by {diff} points ({ma} → {mb}): {b} did not learn."),
                       values)
    if not learned[0]:
        return Message(N_("From {a} to {b}, test accuracy rose by {diff} points ({ma} → {mb}): {a} did not learn."),
                       values)
    if c.direction == UP:
        return Message(N_("From {a} to {b}, test accuracy rose by {diff} points ({ma} → {mb}), more than the spread "
                          "over seeds ({spread} points)."), values)
    if c.direction == DOWN:
        return Message(N_("From {a} to {b}, test accuracy fell by {diff} points ({ma} → {mb}), more than the spread "
                          "over seeds ({spread} points)."), values)
    if c.direction == FLAT:
        return Message(N_("From {a} to {b}, test accuracy is flat: it moved {signed} points ({ma} → {mb}), beyond "
                          "the spread over seeds but under 0.1 points."), values)
    if c.reason == "one_seed":
        return Message(N_("From {a} to {b}, test accuracy moved {signed} points ({ma} → {mb}), but with 1 seed per "
                          "setting there is no spread, so the two cannot be distinguished."), values)
    return Message(N_("From {a} to {b}, test accuracy moved {signed} points ({ma} → {mb}), not more than the spread "
                      "over seeds ({spread} points): the two cannot be distinguished."), values)


# ------------------------------------------------------------------------------ one factor (requirement 2 or 3)

def settings(f: Finding, factor: str) -> Message:
    """Which sweep runs the factor's reading uses: what they share and what changes."""
    fx = f.fixed
    seeds = ", ".join(map(str, fx["seeds"]))
    if factor == "conv_layers":
        return Message(N_("Sweep runs with kernel size {k}, {padding} padding, {epochs} epoch(s), random seeds "
                          "{seeds}: only the number of conv+pool blocks changes (the channels double from block to "
                          "block)."), dict(k=fx["kernel_size"], padding=fx["padding"], epochs=fx["epochs"],
                                           seeds=seeds))
    return Message(N_("Sweep runs with {layers} conv+pool block(s) (channels {channels}), {padding} padding, {epochs} "
                      "epoch(s), random seeds {seeds}: only the kernel size changes."),
                   dict(layers=fx["conv_layers"], channels=fx["conv_channels"], padding=fx["padding"],
                        epochs=fx["epochs"], seeds=seeds))


def overall(f: Finding, factor: str) -> Message:
    """The first level against the last."""
    first, last = f.groups[0], f.groups[-1]
    return comparison(f.overall, level_name(factor, first.level), level_name(factor, last.level), first.mean,
                      last.mean, (first.learned, last.learned))


def highest(f: Finding, factor: str) -> Message:
    best = max(f.groups, key=lambda g: g.mean)
    return Message(N_("The highest mean test accuracy: {best} ({acc})."),
                   dict(best=level_name(factor, best.level), acc=accuracy(best, verdict=False)))


def depth_analysis(f: Finding) -> list[Block]:
    """What the number of conv+pool layers did in these runs, with the likely reasons when more did
    worse, and what the depth cost (an available finding only)."""
    first, last = f.groups[0], f.groups[-1]
    a, b = level_name("conv_layers", first.level), level_name("conv_layers", last.level)
    n = f.numbers
    out: list[Block] = []
    if f.direction == UP:
        out.append(Message(N_("In these runs more conv+pool layers helped ({a}: {ma}, {b}: {mb}): each further block "
                              "sees a larger part of the digit (a larger receptive field) and combines simpler "
                              "patterns into more abstract ones."),
                           dict(a=a, b=b, ma=accuracy(first), mb=accuracy(last))))
    elif f.direction == DOWN:
        out.append(Message(N_("In these runs more conv+pool layers did worse ({a}: {ma}, {b}: {mb}). Likely reasons, "
                              "from these runs' settings:"), dict(a=a, b=b, ma=accuracy(first), mb=accuracy(last))))
        reasons = []
        if n["epochs"] <= 2:
            reasons.append(Message(N_("only {epochs} epoch(s) of training: a deeper network has more to fit and "
                                      "usually needs more epochs to catch up;"), dict(epochs=n["epochs"])))
        size = n["feature_map"][last.level]
        if size <= 3:
            reasons.append(Message(N_("after {b} the feature map is only {size}×{size} pixels ({padding} padding, "
                                      "each pooling halves it), so little spatial layout is left for the "
                                      "classifier;"), dict(b=b, size=size, padding=n["padding"])))
        if not n["batch_norm"] and int(last.level) >= 3:
            reasons.append(Message(N_("without BatchNorm or residual connections the training signal weakens on its "
                                      "way back through more layers (vanishing gradients), so the first layers learn "
                                      "slowly;")))
        if not reasons:
            reasons.append(Message(N_("none of the usual causes (few epochs, tiny feature maps, no BatchNorm) applies "
                                      "here: compare the deep and the shallow runs' loss curves on the Runs page.")))
        out.append(reasons)
    else:
        out.append(Message(N_("In these runs the number of conv+pool layers made no distinguishable difference ({a}: "
                              "{ma}, {b}: {mb}): MNIST digits are simple enough that a shallow network already finds "
                              "the useful patterns; more seeds, more epochs or a harder dataset may separate them."),
                           dict(a=a, b=b, ma=accuracy(first), mb=accuracy(last))))
    out.append(Message(N_("What the extra depth cost: {pa} parameters and {sa} per run with {a}, {pb} parameters "
                          "and {sb} per run with {b}."),
                       dict(a=a, b=b, pa=integer(first.params), pb=integer(last.params), sa=duration(first.seconds),
                            sb=duration(last.seconds))))
    return out


def kernel_analysis(f: Finding) -> list[Block]:
    """What the kernel size did in these runs, with the likely reasons when larger did worse (an
    available finding only)."""
    first, last = f.groups[0], f.groups[-1]
    a, b = level_name("kernel_size", first.level), level_name("kernel_size", last.level)
    n = f.numbers
    values = dict(a=a, b=b, ma=accuracy(first), mb=accuracy(last), pa=integer(first.params),
                  pb=integer(last.params), sa=duration(first.seconds), sb=duration(last.seconds))
    if f.direction == UP:
        return [Message(N_("Larger kernels did better here ({a}: {ma}, {b}: {mb}): each convolution covers more of a "
                           "stroke at once, so the network sees larger shapes with the same number of layers."),
                        values)]
    if f.direction == DOWN:
        reasons = []
        if last.params > first.params:
            reasons.append(Message(N_("{b} has {pb} parameters against {pa} for {a}: more weights to fit in {epochs} "
                                      "epoch(s);"), dict(values, epochs=n["epochs"])))
        if n["padding"] == "valid":
            reasons.append(Message(N_("with valid padding each convolution cuts k−1 pixels, so larger kernels leave "
                                      "smaller feature maps ({sa_map}×{sa_map} against {sb_map}×{sb_map});"),
                                   dict(sa_map=n["feature_map"][first.level], sb_map=n["feature_map"][last.level])))
        if not reasons:
            reasons.append(Message(N_("none of the usual causes (more weights, smaller feature maps) applies here: "
                                      "compare the runs' loss curves on the Runs page.")))
        return [Message(N_("Larger kernels did worse here ({a}: {ma}, {b}: {mb}). Likely reasons, from these runs' "
                           "settings:"), values), reasons]
    return [Message(N_("Kernel size made no distinguishable difference here ({a}: {ma}, {b}: {mb}): on {size}×{size} "
                       "digits with pooling between the layers, even small kernels cover a whole stroke after a "
                       "block or two, while larger kernels mostly add parameters ({pa} → {pb}) and time ({sa} → "
                       "{sb} per run)."), dict(values, size=MNIST.image_size))]


def factor_reading(f: Finding, factor: str) -> list[Block]:
    """Requirement 2 (`conv_layers`) or 3 (`kernel_size`) as the report reads it: which runs, the
    first level against the last, the highest mean, and the analysis; [] without the runs."""
    if not f.available:
        return []
    analysis = depth_analysis(f) if factor == "conv_layers" else kernel_analysis(f)
    return [settings(f, factor), overall(f, factor), highest(f, factor), *analysis]


# ------------------------------------------------------------------------------ the whole grid

def cell_name(layers: int, kernel: int) -> Message:
    return Message.ngettext("{n} conv+pool layer with a {k}×{k} kernel", "{n} conv+pool layers with a {k}×{k} kernel",
                            layers, k=kernel)


def best_cell(grid: dict | None) -> Message | None:
    """Which cell of the depth × kernel grid (findings.sweep_grid) is best: the highest mean among the
    cells that learned, and whether it is ahead of the runner-up by the direction rule
    (verdicts.compare_groups: more than sd A + sd B, at least 2 seeds each). None without a grid."""
    if grid is None:
        return None
    cells = grid["cells"]
    ranked = sorted((key for key in cells if cells[key].learned), key=lambda key: cells[key].mean, reverse=True)
    if not ranked:
        return Message(N_("No cell learned here: train longer (more epochs or more training images) before "
                          "comparing them."))
    best = ranked[0]
    values = dict(best=cell_name(*best), acc=accuracy(cells[best]))
    if len(ranked) == 1:
        return Message(N_("Best: {best} ({acc}), the only cell that learned."), values)
    runner = ranked[1]
    c = compare_groups(cells[runner], cells[best])
    values.update(runner=cell_name(*runner), racc=accuracy(cells[runner]), diff=f"{100 * c.diff:.2f}",
                  spread=f"{100 * c.spread:.2f}")
    if c.direction == UP:
        return Message(N_("Best: {best} ({acc}), ahead of the runner-up, {runner} ({racc}), by {diff} points, more "
                          "than the spread over seeds ({spread} points)."), values)
    if c.direction == FLAT:
        return Message(N_("Highest mean: {best} ({acc}), ahead of the runner-up, {runner} ({racc}), by {diff} "
                          "points: beyond the spread over seeds but under 0.1 points, so flat."), values)
    if c.reason == "one_seed":
        return Message(N_("Highest mean: {best} ({acc}); the runner-up, {runner} ({racc}), is {diff} points behind, "
                          "but with 1 seed per cell there is no spread, so the two cannot be distinguished."), values)
    return Message(N_("Highest mean: {best} ({acc}), but the runner-up, {runner} ({racc}), is only {diff} points "
                      "behind, not more than the spread over seeds ({spread} points): the two cannot be "
                      "distinguished."), values)


@dataclass
class SweepReading:
    """A sweep's reading: the best cell of the grid, and requirements 2 and 3 as the report reads them."""
    best: Message | None
    depth: list[Block]  # [] where the runs do not vary the number of layers
    kernel: list[Block]  # [] where they do not vary the kernel size


def read_sweep(runs: pd.DataFrame) -> SweepReading:
    """The reading of sweep runs (store rows with a `verdict`: findings.with_verdicts)."""
    return SweepReading(best_cell(sweep_grid(runs)),
                        factor_reading(factor_finding(runs, "depth", "conv_layers", "depth"), "conv_layers"),
                        factor_reading(factor_finding(runs, "kernel", "kernel_size", "kernel"), "kernel_size"))
