"""The report's static figures (matplotlib, Agg) as PNG bytes: the every-iteration loss, test
accuracy per epoch, accuracy against depth or kernel size, FC vs CNN, the network drawn
(lab.architecture's diagram). Chinese labels use Noto Sans CJK (or another CJK font) when one is
installed; `cjk_font()` says whether one is.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from contextlib import contextmanager
from functools import lru_cache

import matplotlib

matplotlib.use("Agg")  # files only, no display, safe in a server thread
from matplotlib import font_manager  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

from mnist_lab.i18n import word  # noqa: E402
from mnist_lab.lab.architecture import Diagram, shape_text  # noqa: E402

CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "Source Han Sans CN", "WenQuanYi Zen Hei",
             "Microsoft YaHei", "PingFang SC", "SimHei", "Noto Sans CJK JP", "Noto Sans CJK TC")
DPI = 150
BLUE, ORANGE, GREY = "#1f77b4", "#ff7f0e", "#7f7f7f"


@lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """The name of an installed font with Chinese glyphs, or None."""
    def known() -> str | None:
        names = {f.name for f in font_manager.fontManager.ttflist}
        return next((n for n in CJK_FONTS if n in names), None)

    found = known()
    if found is None:  # installed after matplotlib built its font cache: add the files directly
        for path in font_manager.findSystemFonts():
            if any(s in path.replace("-", "") for s in ("NotoSansCJK", "NotoSansSC", "SourceHanSans", "wqy-zenhei")):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError):
                    continue
        found = known()
    return found


@contextmanager
def _style(cjk: bool):
    rc = {"font.size": 9, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
          "axes.unicode_minus": False}  # CJK fonts often lack U+2212
    font = cjk_font() if cjk else None
    if font:
        rc.update({"font.family": "sans-serif", "font.sans-serif": [font, "DejaVu Sans"]})
    with matplotlib.rc_context(rc):
        yield


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def loss_figure(iterations: list[int], losses: list[float], moving: list[float], window: int,
                level_off: int | None, steps_per_epoch: int, _: Callable[[str], str], cjk: bool) -> bytes:
    """Every iteration's loss (thin), its moving mean, epoch boundaries and the level-off point."""
    with _style(cjk):
        fig = Figure(figsize=(7, 3.4))
        ax = fig.add_subplot()
        ax.plot(iterations, losses, color=BLUE, alpha=0.35, linewidth=0.7, label=_("loss of each iteration"))
        ax.plot(iterations[window - 1:], moving, color=BLUE, linewidth=1.8,
                label=_("moving mean over {w} iterations").format(w=window))
        if steps_per_epoch and iterations[-1] > steps_per_epoch:
            for boundary in range(steps_per_epoch, iterations[-1], steps_per_epoch):
                ax.axvline(boundary + 0.5, color=GREY, linewidth=0.6, linestyle=":")
        if level_off is not None:
            ax.axvline(level_off, color=ORANGE, linewidth=1.2, linestyle="--",
                       label=_("levelled off (iteration {it})").format(it=f"{level_off:,}"))
        ax.set_xlabel(_("iteration"))
        ax.set_ylabel(_("loss (cross-entropy)"))
        ax.legend(loc="upper right", frameon=False)
        return _png(fig)


def epoch_figure(epochs: list[int], test_acc: list[float], _: Callable[[str], str], cjk: bool) -> bytes:
    with _style(cjk):
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
        ax.plot(epochs, [100 * a for a in test_acc], marker="o", color=BLUE)
        for e, a in zip(epochs, test_acc):
            ax.annotate(f"{100 * a:.2f}%", (e, 100 * a), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=8)
        ax.set_xticks(epochs)
        ax.set_xlabel(_("epoch"))
        ax.set_ylabel(_("test accuracy (%)"))
        return _png(fig)


def levels_figure(levels: list[str], values: list[list[float]], means: list[float], sds: list[float],
                  xlabel: str, _: Callable[[str], str], cjk: bool, line: bool = True) -> bytes:
    """Mean ± sd of test accuracy per level, each seed's run as a dot; `line` joins the means
    (ordered levels such as depth; not for unordered variants)."""
    with _style(cjk):
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        x = list(range(len(levels)))
        for i, vs in enumerate(values):
            ax.scatter([i] * len(vs), [100 * v for v in vs], color=GREY, s=12, zorder=2,
                       label=_("one seed") if i == 0 else None)
        ax.errorbar(x, [100 * m for m in means], yerr=[100 * s for s in sds], color=BLUE, marker="o", capsize=4,
                    zorder=3, label=_("mean ± sd"), linestyle="-" if line else "none")
        ax.set_xticks(x, levels)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(_("test accuracy (%)"))
        ax.legend(frameon=False)
        return _png(fig)


def compare_figure(cells: dict[tuple[str, str], tuple[float, float]], _: Callable[[str], str], cjk: bool) -> bytes:
    """Bars: FC and CNN, on normal and on permuted pixels, mean ± sd."""
    with _style(cjk):
        fig = Figure(figsize=(5, 3.2))
        ax = fig.add_subplot()
        models = ["FC", "CNN"]
        for j, (pixels, color, name) in enumerate((("normal", BLUE, _("normal pixels")),
                                                   ("permuted", ORANGE, _("permuted pixels")))):
            means = [100 * cells[(m, pixels)][0] for m in models]
            sds = [100 * cells[(m, pixels)][1] for m in models]
            xs = [i + (j - 0.5) * 0.38 for i in range(len(models))]
            ax.bar(xs, means, width=0.36, yerr=sds, capsize=4, color=color, label=name)
            for xi, m in zip(xs, means):
                ax.annotate(f"{m:.2f}%", (xi, m), textcoords="offset points", xytext=(0, 3), ha="center", fontsize=8)
        low = min(100 * v[0] for v in cells.values())
        ax.set_ylim(max(0.0, low - 10), 100)
        ax.set_xticks(range(len(models)), [_("FC net"), _("CNN")])
        ax.set_ylabel(_("test accuracy (%)"))
        ax.legend(frameon=False, loc="best")
        return _png(fig)


def architecture_figure(diagram: Diagram, _: Callable[[str], str], cjk: bool, lang: str = "en") -> bytes:
    """The network drawn as the app draws it (app_lib/arch_chart.py), from lab.architecture's
    diagram: a box per block scaled to its output shape, what it does above, its shape and
    parameters below, residual shortcuts as arcs. `lang` words the diagram's Messages."""
    top = max(b.height for b in diagram.boxes) / 2
    with _style(cjk):
        fig = Figure(figsize=(max(5.0, min(12.0, 0.5 * diagram.width + 1.5)), 3.6))
        ax = fig.add_subplot()
        ax.grid(False)
        ax.set_axis_off()
        colours = {"input": "#c7c7c7", "block": "#9db4d8", "head": "#f5c08a"}
        # many boxes: every other box's notes go below its neighbours', so that they do not overlap
        stagger = 7 * max(len(b.notes) for b in diagram.boxes) if len(diagram.boxes) > 8 else 0
        for i, box in enumerate(diagram.boxes):
            half = box.height / 2
            ax.add_patch(Rectangle((box.x, -half), box.width, box.height, facecolor=colours[box.kind],
                                   edgecolor=BLUE, linewidth=0.8))
            if i:
                prev = diagram.boxes[i - 1]
                ax.annotate("", (box.x, 0), (prev.x + prev.width, 0),
                            arrowprops=dict(arrowstyle="->", color=GREY, linewidth=0.8))
            below = [word(box.label, lang), shape_text(box.shape)] + ([_("{n} parameters").format(n=f"{box.params:,}")]
                                                      if box.params else [])
            ax.annotate("\n".join(below), (box.centre, -half), xytext=(0, -3), textcoords="offset points",
                        ha="center", va="top", fontsize=6.5)
            if box.notes:  # under the shape and parameters (lines of 6.5 pt): the arcs have the space above
                ax.annotate("\n".join(word(m, lang) for m in box.notes), (box.centre, -half),
                            xytext=(0, -6 - 8 * len(below) - stagger * (i % 2)), textcoords="offset points",
                            ha="center", va="top",
                            fontsize=5.5, color="#444444")
        for arc in diagram.arcs:
            a, b = diagram.boxes[arc.start], diagram.boxes[arc.end]
            ax.add_patch(FancyArrowPatch((a.centre, a.height / 2), (b.centre, b.height / 2),
                                         connectionstyle=f"arc3,rad={-0.6 if a.height == b.height else -0.4}",
                                         arrowstyle="->", color=ORANGE, linestyle=":", linewidth=1.0,
                                         mutation_scale=8))
            ax.text((a.centre + b.centre) / 2, max(a.height, b.height) / 2 + 0.35 * (b.centre - a.centre),
                    word(arc.note, lang), ha="center", va="bottom", fontsize=5.5, color=ORANGE)
        ax.set_xlim(-0.6, diagram.width + 0.6)
        ax.set_ylim(-top - (3.6 if stagger else 2.6), top + (1.6 if diagram.arcs else 0.3))
        ax.set_title(_("The network: {n} parameters").format(n=f"{diagram.params:,}"), fontsize=9)
        return _png(fig)
