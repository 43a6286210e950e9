"""gettext catalogs: English msgids in the code, `locale/<lang>/LC_MESSAGES/mnist_lab.po` read
with Babel and compiled in memory (no .mo is committed), the language from `--lang` or the
environment, and number formats that are the same in every language (98.91%, 1,234).
"""
from __future__ import annotations

import gettext
import io
import os
from functools import lru_cache
from pathlib import Path
from typing import Mapping

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


@lru_cache(maxsize=None)
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
