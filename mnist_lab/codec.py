"""The one codec for config dataclasses (ModelConfig with its block list, TrainConfig, DataConfig,
the experiments' and lessons' configs, JobSpec): to and from a dict, JSON text and a results-store
row. Decoding is strict: a wrong type, a wrong nesting or an unknown field is a ConfigError that
names the field (`model.blocks[2].channels`), never another exception.
"""
from __future__ import annotations

import dataclasses
import json
import math
import operator
import types
import typing
from collections.abc import Mapping
from functools import cache, reduce
from typing import Any, TypeVar

from mnist_lab.errors import ConfigError, is_int, shorten
from mnist_lab.i18n import N_

T = TypeVar("T")

_NOT_OBJECT = N_("{where} must be an object of settings (JSON {{...}}); got {value}. It was written by another "
                 "program, or damaged: write it again.")
_UNKNOWN = N_("{where} has no setting {names} (its settings: {known}); leave it out. It may have been written by "
              "another version of mnist_lab.")
_WRONG_TYPE = N_("{where} must be {kind}; got {value}. Write it as {kind}.")
_MISSING = N_("{where} lacks the setting(s) {names}, which have no default; it was written by another program, "
              "or damaged.")
_NO_TYPE = N_("{where} must name its block type as one of {options}; got {value}.")
_NOT_JSON = N_("{where} is not JSON text ({detail}); it was written by another program, or damaged.")

_TOO_LONG = N_("{where} is {n:,} characters of JSON, and a config is at most {high:,}; it was written by another "
               "program, or damaged.")
MAX_JSON_CHARS = 1_000_000  # the largest spec (VGG16's block list) is about 3 kB

_KINDS = {int: N_("a whole number"), float: N_("a number"), bool: N_("true or false"), str: N_("text")}


# ------------------------------------------------------------------------------------ encode

def to_dict(cfg: Any) -> dict[str, Any]:
    """Every field of a config dataclass (nested ones too, a block's `type` included), as
    `dataclasses.asdict` gives it: tuples stay tuples, json.dumps writes them as lists."""
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    """JSON text of `to_dict(cfg)`, keys sorted (the form job specs and weights files store)."""
    return json.dumps(to_dict(cfg), sort_keys=True)


def to_row(cfg: Any, renamed: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A config's fields as results-store cells: a tuple of whole numbers as 'a-b' (the lab's
    channel and width lists), anything nested (a block list) as JSON text, plain values as they
    are; a field named in `renamed` goes under its new column name."""
    renamed = renamed or {}
    return {renamed.get(k, k): _cell(v) for k, v in to_dict(cfg).items()}


def _cell(value: Any) -> Any:
    if isinstance(value, tuple) and all(is_int(v) for v in value):
        return "-".join(str(v) for v in value)
    if isinstance(value, (tuple, list, dict)):
        return json.dumps(value)
    return value


# ------------------------------------------------------------------------------------ decode

def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """The `cls` instance `data` (a `to_dict` form) describes: lists become tuples, nested
    dicts the nested configs, a block list its typed blocks (by each one's `type`). A field
    left out takes its default; anything else that does not fit is a ConfigError. A `cls` that
    is a base class of config dataclasses (nets' `Block`) stands for the subclass `data['type']`
    names, so a new block type needs no change here."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise _refused(where, data, _NOT_OBJECT, where=where)
    if options := _variants(cls):  # a base class (Block): the subclass its 'type' names
        kind = data.get("type")
        if not isinstance(kind, str) or kind not in options:
            raise _refused(where, dict(data), _NO_TYPE, where=where, options=", ".join(options))
        cls = options[kind]
    hints = _hints(cls)
    settable = {f.name: f for f in dataclasses.fields(cls) if f.init}
    fixed = {f.name: f.default for f in dataclasses.fields(cls) if not f.init}
    unknown = sorted(str(k) for k in data if k not in settable and k not in fixed)
    if unknown:
        names = ", ".join(k if k.isidentifier() and len(k) <= 40 else shorten(k) for k in unknown[:5])
        raise ConfigError(where, dict(data), _UNKNOWN, where=where, names=names + (", …" if len(unknown) > 5 else ""),
                          known=", ".join(settable))
    for name, default in fixed.items():  # a block's 'type': it must say what the class is
        if name in data and data[name] != default:
            field = f"{where}.{name}"
            raise _refused(field, data[name], _WRONG_TYPE, where=field, kind=repr(default))
    missing = [name for name, f in settable.items() if name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(where, dict(data), _MISSING, where=where, names=", ".join(missing))
    values = {name: _value(hints[name], data[name], f"{where}.{name}") for name in settable if name in data}
    return cls(**values)


def _refused(field: str, value: Any, template: str, /, **params: Any) -> ConfigError:
    """A refusal whose message shows `value` as errors.shorten does (someone else's text, maybe
    huge or holding control characters); the ConfigError's `.value` keeps it whole."""
    return ConfigError(field, value, template, **params, value=shorten(value))


def from_json(cls: type[T], text: Any, where: str = "") -> T:
    """`from_dict` of JSON text; text that is not JSON is a ConfigError too."""
    where = where or cls.__name__
    if not isinstance(text, (str, bytes)):
        raise _refused(where, text, _WRONG_TYPE, where=where, kind=_KINDS[str])
    if len(text) > MAX_JSON_CHARS:  # refused before parsing: no time or memory spent on it
        raise ConfigError(where, shorten(text), _TOO_LONG, where=where, n=len(text), high=MAX_JSON_CHARS)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ConfigError(where, text, _NOT_JSON, where=where, detail=shorten(str(exc), quote=False)) from None
    return from_dict(cls, data, where)


def from_row(cls: type[T], row: Mapping[str, Any], renamed: Mapping[str, str] | None = None) -> T:
    """The config a results-store row holds (`to_row`'s form; a pandas row's NaN for a blank).
    A column that is NULL or missing (a database written before the field existed) gives the
    field's default, '' an empty tuple; a stored 1.0 is the whole number 1, a stored 0/1 a yes/no."""
    renamed = renamed or {}
    hints = _hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        cell = row.get(renamed.get(f.name, f.name))
        if hasattr(cell, "item") and not isinstance(cell, (str, bytes)):  # a numpy scalar from a pandas row
            cell = cell.item()
        if cell == "" and typing.get_origin(_without_none(hints[f.name])) is tuple:
            values[f.name] = []  # an empty tuple is stored as ''
            continue
        if _blank(cell):  # NULL: a column this database did not have yet
            continue
        values[f.name] = _from_cell(hints[f.name], cell, f"{cls.__name__}.{f.name}")
    return from_dict(cls, values)


def _blank(cell: Any) -> bool:
    return cell is None or cell == "" or (isinstance(cell, float) and math.isnan(cell))


def _from_cell(hint: Any, cell: Any, where: str) -> Any:
    """A cell back to the `to_dict` form of a field of type `hint`."""
    hint = _without_none(hint)
    origin = typing.get_origin(hint)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(cell, str) and item is int:
            try:
                return [int(v) for v in cell.split("-")]
            except ValueError:
                raise _refused(where, cell, _WRONG_TYPE, where=where, kind=N_("whole numbers joined by '-'")) \
                    from None
        if isinstance(cell, str):
            try:
                return json.loads(cell)
            except ValueError as exc:
                raise ConfigError(where, cell, _NOT_JSON, where=where, detail=shorten(str(exc), quote=False)) from None
        if is_int(cell):  # one number stored as a number: ('10',) read back by SQLite's type affinity
            return [cell]
        return cell
    if dataclasses.is_dataclass(hint) and isinstance(cell, str):
        try:
            return json.loads(cell)
        except ValueError as exc:
            raise ConfigError(where, cell, _NOT_JSON, where=where, detail=shorten(str(exc), quote=False)) from None
    if hint in (int, bool) and isinstance(cell, float) and cell.is_integer():
        cell = int(cell)
    if hint is bool and is_int(cell) and cell in (0, 1):
        return bool(cell)
    if hint is float and is_int(cell):
        return float(cell)
    return cell


def _variants(hint: Any) -> dict[str, type]:
    """{type name: class} of the config dataclasses below `hint` that carry a fixed 'type' field,
    when `hint` is a class that is not a config dataclass itself (a base such as nets' Block);
    else {}. Read afresh on each call: a block type module imported later counts too."""
    if not isinstance(hint, type) or typing.get_origin(hint) is not None or dataclasses.is_dataclass(hint):
        return {}
    found, todo = {}, list(hint.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo += cls.__subclasses__()
        fixed = {f.name: f.default for f in dataclasses.fields(cls) if not f.init} \
            if dataclasses.is_dataclass(cls) else {}
        if isinstance(fixed.get("type"), str):
            found.setdefault(fixed["type"], cls)
    return found


@cache
def _hints(cls: type) -> dict[str, Any]:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a config dataclass")
    return typing.get_type_hints(cls)


def _without_none(hint: Any) -> Any:
    """`X | None` -> X (a None value is handled before)."""
    args = typing.get_args(hint)
    if _is_union(hint) and type(None) in args:
        rest = tuple(a for a in args if a is not type(None))
        return rest[0] if len(rest) == 1 else reduce(operator.or_, rest)
    return hint


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _value(hint: Any, value: Any, where: str) -> Any:
    """One field's value of type `hint` from its `to_dict` form."""
    if value is None:
        if _is_union(hint) and type(None) in typing.get_args(hint):
            return None
        raise _refused(where, value, _WRONG_TYPE, where=where, kind=_kind(hint))
    hint = _without_none(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint) or (hint not in _KINDS and _variants(hint)):
        return from_dict(hint, value, where)
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _refused(where, value, _WRONG_TYPE, where=where, kind=_kind(hint))
        item = typing.get_args(hint)[0]
        return tuple(_value(item, v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = is_int(value)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif hint is str:
        ok = isinstance(value, str)
    else:
        raise TypeError(f"the codec cannot decode a field of type {hint!r} ({where})")
    if not ok:
        raise _refused(where, value, _WRONG_TYPE, where=where, kind=_kind(hint))
    return value


def _kind(hint: Any) -> str:
    hint = _without_none(hint)
    if typing.get_origin(hint) is tuple:
        return N_("a list")
    if dataclasses.is_dataclass(hint) or _is_union(hint) or (hint not in _KINDS and _variants(hint)):
        return N_("an object of settings")
    return _KINDS.get(hint, str(hint))
