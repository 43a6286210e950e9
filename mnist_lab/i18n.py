"""gettext catalogs: English msgids in the code, `locale/<lang>/LC_MESSAGES/mnist_lab.po` read
with Babel and compiled in memory (no .mo is committed), the language from `--lang` or the
environment, and number formats that are the same in every language (98.91%, 1,234).
"""
from __future__ import annotations

import gettext
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

DOMAIN = "mnist_lab"
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DEFAULT = "en"  # the msgids' language: its catalog is the identity
LANGUAGES = {"en": "English", "zh_CN": "简体中文"}  # what a page offers, by locale code
_ENV = ("LANGUAGE", "LC_ALL", "LC_MESSAGES", "LANG")  # gettext's own order


def catalog_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / f"{DOMAIN}.po"


def resolve_lang(value: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """'zh_CN' or 'en' from a --lang value ('zh', 'zh_CN', 'zh-cn', 'en', ...) or, without one,
    from LANGUAGE / LC_ALL / LC_MESSAGES / LANG (zh* -> zh_CN; anything else, or nothing, -> en)."""
    if value:
        code = value.strip().replace("-", "_").lower()
        if code.startswith("zh"):
            return "zh_CN"
        if code.startswith("en"):
            return "en"
        raise ValueError(f"Unknown language '{value}': choose zh or en.")
    env = os.environ if environ is None else environ
    for name in _ENV:
        setting = env.get(name, "")
        if setting:  # LANGUAGE may list several ('zh_CN:en'); the first decides
            return "zh_CN" if setting.split(":")[0].lower().startswith("zh") else "en"
    return DEFAULT


@cache
def _load(lang: str) -> gettext.NullTranslations:
    if lang == DEFAULT:
        return gettext.NullTranslations()
    from babel.messages.mofile import write_mo
    from babel.messages.pofile import read_po

    with open(catalog_path(lang), "rb") as f:
        catalog = read_po(f, locale=lang, domain=DOMAIN)
    buffer = io.BytesIO()
    write_mo(buffer, catalog)  # fuzzy entries are left out, as msgfmt does
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


def translator(lang: str | None = None) -> gettext.NullTranslations:
    """A gettext translations object (`gettext`, `ngettext`) for `lang` (resolved as above)."""
    return _load(resolve_lang(lang))


# ------------------------------------------------------------------------------ numbers
# One format in both languages: Chinese uses the same digits, grouping comma and decimal point.

def pct(fraction: float, digits: int = 2) -> str:
    """0.9891 -> '98.91%'."""
    return f"{100 * fraction:.{digits}f}%"


def points(fraction: float, digits: int = 2) -> str:
    """A difference of accuracies in percentage points, signed: -0.0123 -> '-1.23'."""
    return f"{100 * fraction:+.{digits}f}"


def integer(n: float) -> str:
    """1234 -> '1,234'."""
    return f"{int(round(n)):,}"


def number(x: float, digits: int = 3) -> str:
    return f"{x:,.{digits}f}"


def seconds(x: float, gettext=None) -> str:
    """A duration as a person reads it: one decimal under a minute ('7.8 s'), then whole minutes and
    seconds ('2 min 05 s'). Worded by `gettext` (English without one)."""
    _ = gettext or (lambda s: s)
    d = duration(x)
    return _(d.template).format(**d.params)


def duration(x: float) -> Message:
    """`seconds(x)` as a Message, for the core's sentences (worded by each reader)."""
    if x < 59.95:  # what rounds to 60.0 s is shown as a minute
        return Message(N_("{s} s"), {"s": f"{max(x, 0.0):.1f}"})
    total = int(round(x))
    return Message(N_("{min} min {s} s"), {"min": f"{total // 60:,}", "s": f"{total % 60:02d}"})


def mean_sd(mean: float, sd: float, n: int, diverged: int = 0, gettext=None, not_learned: int = 0) -> str:
    """An accuracy over seeds as a person reads it: '98.12% ± 0.21' (sd in points), or
    '98.12% (1 run, no spread)'; with the group's diverged runs, which are not in the mean, and
    its runs that did not learn (lab/verdicts.py's rule). Worded by `gettext` (English without one)."""
    _ = gettext or (lambda s: s)
    text = f"{pct(mean)} ± {100 * sd:.2f}" if n > 1 else _(N_("{acc} (1 run, no spread)")).format(acc=pct(mean))
    if not_learned and not_learned >= n:
        text = _(N_("{text}: did not learn")).format(text=text)
    elif not_learned:
        text = _(N_("{text}, {n} of {total} did not learn")).format(text=text, n=not_learned, total=n)
    if diverged:
        text = _(N_("{text}, {n} diverged (not counted)")).format(text=text, n=diverged)
    return text


def mean_sd_texts(summary, gettext=None) -> list[str]:
    """`mean_sd` of each row of a `summarize_over_seeds` frame (mean, sd, n, diverged, not_learned)."""
    learned = summary["not_learned"] if "not_learned" in summary else [0] * len(summary)
    return [mean_sd(m, s, n, d, gettext, int(x)) for (m, s, n, d), x in
            zip(summary[["mean", "sd", "n", "diverged"]].itertuples(index=False), learned)]


# ------------------------------------------------------------------------------ messages
# Where pybabel and the catalog test find msgids: gettext's own names, the report's `say`/`para`,
# `N_` (a msgid kept in a table), and the core's refusals, whose template is a positional argument
# (ConfigError's 3rd, StoreError's 3rd) and whose `name` argument (the need_* checks' 3rd) is a
# field's English name, translated when the message is rendered; need_choice's own template, when
# it is given one, is its 5th (Babel's per-arity spec: pybabel's `-k need_choice:5,5t`).
KEYWORDS = {"_": None, "gettext": None, "ngettext": (1, 2), "N_": None, "say": None, "para": None,
            "ConfigError": (3,), "StoreError": (3,), "need_int": (3,), "need_float": (3,), "need_bool": (3,),
            "need_choice": {4: (3,), 5: (5,)}, "need_ints": (3,), "need_seed": (3,),
            "WeightsError": (2,), "DataError": (1,), "DataFileError": (1,), "DataUnavailableError": (1,)}
# params shown as given, never looked up in the catalog: a refusal's `value` (the user's own input),
# a verbatim `text` (Message.verbatim: a sentence with no template, a name a person gave)
_UNTRANSLATED = ("value", "text")


@dataclass(frozen=True)
class Message:
    """A sentence as data: its English `template` (a msgid with named placeholders) and the
    `params` to format it with (numbers already formatted; a param that is itself a msgid, a
    Message or a stored message is worded with it). The core returns these; `render(msg, lang)`
    words them; str() is English."""
    template: str
    params: dict = field(default_factory=dict)
    plural: str = ""  # the plural msgid of a counted sentence (Message.ngettext; never stored)

    def __str__(self) -> str:
        english = self.plural if self.plural and self.params.get("n") != 1 else self.template
        return english.format(**{k: _param(k, v, DEFAULT) for k, v in self.params.items()})

    @classmethod
    def ngettext(cls, singular: str, plural: str, n: int, **params) -> Message:
        """A counted sentence: `singular` or `plural` by `n` (and the catalog's plural rule), `n` among
        its params. Named so that pybabel and the catalog test extract both msgids."""
        return cls(singular, {"n": n, **params}, plural)

    @classmethod
    def verbatim(cls, text: str) -> Message:
        """Text with no template of its own (the core's plain ValueError, a label a person typed):
        shown as it is in every language."""
        return cls("{text}", {"text": str(text)})


class Worded(str):
    """English text worded from messages, one per line, that keeps them (`parts`): as a param it
    formats as that English (str.format), is stored by `to_stored` as the messages themselves, and
    `render` / `word` word them in the reader's language (a data error's list of sources tried)."""

    parts: tuple[Message, ...]

    def __new__(cls, parts):
        parts = tuple(parts)
        text = super().__new__(cls, "\n".join(str(part) for part in parts))
        text.parts = parts
        return text

    def __getnewargs__(self):  # pickle and copy build it again from its messages, not from its letters
        return (self.parts,)


# ------------------------------------------------------------------------------ stored messages
# What the core stores for a person to read (a stop reason, an error, a run's label) is a code:
# JSON of one Message, {"template": msgid, "params": {...}}, or of a list of them (a label's parts,
# shown joined by SEPARATOR). Each reader renders it in their language. Text that is not such
# JSON (written before messages were stored as codes) is shown as it is; it is never parsed.
SEPARATOR = " · "


def to_stored(message: Message | Sequence[Message]) -> str:
    """The stored form of a Message, or of a label's parts (a list)."""
    if isinstance(message, Message):
        return json.dumps({"template": message.template, "params": _storable(message.params)}, ensure_ascii=False)
    return json.dumps([{"template": m.template, "params": _storable(m.params)} for m in message], ensure_ascii=False)


def _storable(params: dict) -> dict:
    """A Worded param is stored as its messages (a stored list), a Message param as a stored one:
    both worded again by each reader."""
    return {k: to_stored(list(v.parts)) if isinstance(v, Worded) else to_stored(v) if isinstance(v, Message) else v
            for k, v in params.items()}


def _message(item: object) -> Message | None:
    if (isinstance(item, dict) and set(item) == {"template", "params"} and isinstance(item["template"], str)
            and isinstance(item["params"], dict)):
        return Message(item["template"], item["params"])
    return None


def from_stored(text: object) -> list[Message] | None:
    """The Message parts `to_stored` wrote; None for anything else (empty, or an earlier version's
    English sentence)."""
    if not isinstance(text, str) or not text.startswith(("{", "[")):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    items = data if isinstance(data, list) else [data]
    parts = [_message(item) for item in items]
    return parts if parts and all(p is not None for p in parts) else None


def _param(key: str, value: object, lang: str | None) -> object:
    """A param as `lang` shows it: a Message, or a stored one (`to_stored`; a list of them is one per
    line), worded; other text translated if it is a msgid; the user's own (`_UNTRANSLATED`) as given."""
    if key in _UNTRANSLATED:
        return value
    if isinstance(value, Worded):
        return "\n".join(word(part, lang) for part in value.parts)
    if isinstance(value, Message):
        return word(value, lang)
    if not (isinstance(value, str) and value):
        return value
    nested = from_stored(value)
    if nested is not None:
        return "\n".join(word(part, lang) for part in nested)
    return translator(lang).gettext(value)


def word(message: Message, lang: str | None = None) -> str:
    """One Message in `lang`: its template and its msgid params translated (never the ones in
    _UNTRANSLATED); a template without params is not formatted (a label may hold braces); a
    translation that does not format gives the English; English that does not format, the template."""
    t = translator(lang)
    if not message.params:
        return t.gettext(message.template)
    params = {k: _param(k, v, lang) for k, v in message.params.items()}
    own = (t.ngettext(message.template, message.plural, int(message.params.get("n", 0))) if message.plural
           else t.gettext(message.template))
    for words in (lambda: own.format(**params), lambda: str(message)):
        try:
            return words()
        except (KeyError, IndexError, ValueError, AttributeError):
            continue
    return message.template


def render_stored(text: object, lang: str | None = None, english: object = "") -> str:
    """A stored message (`to_stored`) in `lang`. Anything else is an earlier version's English,
    shown as it is: `text` itself, or where there is no text (None, NaN, ''), `english` (the
    English column beside an empty code column)."""
    if not (isinstance(text, str) and text):
        text = english
    parts = from_stored(text)
    if parts is None:
        return text if isinstance(text, str) else ""
    return SEPARATOR.join(word(part, lang) for part in parts)


def N_(message: str) -> str:
    """Marks a msgid kept in a table or passed on as data (extracted by pybabel, translated
    where it is shown): returns it unchanged."""
    return message


def render(err: BaseException | Message, lang: str | None = None) -> str:
    """An exception (or a Message) as a sentence in `lang`: its `.template` translated through the
    catalog and formatted with its `.params` (ConfigError, StoreError, DataUnavailableError, ...),
    each param that is itself a msgid (a field's name, a detail) or a Message translated too; the user's own
    `value` is shown as given. An exception without a template, or whose translation does not
    format, gives its English str()."""
    if isinstance(err, Message) and err.plural:  # a counted sentence
        return word(err, lang)
    template = getattr(err, "template", None)
    if not isinstance(template, str) or not template:
        return str(err)
    t = translator(lang)
    # a Message param: a refusal that carries another's (a weights file's bad setting); a stored one:
    # a data source, the sources tried
    params = {key: _param(key, value, lang) for key, value in (getattr(err, "params", None) or {}).items()}
    try:
        return t.gettext(template).format(**params)
    except (KeyError, IndexError, ValueError, AttributeError):
        return str(err)
