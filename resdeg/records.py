"""Typed records of everything resdeg stores as JSON (a run, its epochs, a probe, a benchmark),
with one schema-versioned reader/writer and one validator for all of them.

A record is a frozen dataclass. Reading checks the schema name and version, then every field
against its type annotation (the same code for every record), then the record's own
consistency rules (`check`). What fails is reported as a `CorruptRecord`, never used.
Writing validates by a round trip first: resdeg never writes what it could not read back.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from .atomic import atomic_write_json
from .errors import ResdegError


class CorruptRecord(ResdegError):
    """A stored file that is unreadable or fails validation: reported, never used."""


def require(cond: bool, what: str) -> None:
    if not cond:
        raise CorruptRecord(what)


def bounded(lo: float | None = None, hi: float | None = None, **kw):
    """A dataclass field whose value (each item of a list) must lie in [lo, hi] when read: the
    physical range of a time, a count or a fraction. A stored -1 s or -10 images is damage."""
    return dataclasses.field(metadata={"range": (lo, hi)}, **kw)


def _check_range(name: str, value, lo, hi) -> None:
    for v in value if isinstance(value, (list, tuple)) else (value,):
        if v is None:
            continue
        require((lo is None or v >= lo) and (hi is None or v <= hi),
                f"{name}: {v!r} is outside its range [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]")


def is_number(v, allow_none: bool = False) -> bool:
    if v is None:
        return allow_none
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# -- the one validator ------------------------------------------------------------------------------

def _convert(value, hint, where: str):
    """`value` (parsed JSON) as the annotated type `hint`, or CorruptRecord naming `where`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, where)
            except CorruptRecord as e:
                errors.append(str(e))
        raise CorruptRecord(errors[0] if errors else f"{where}: must not be null")
    if hint is float:
        require(is_number(value), f"{where}: {value!r} is not a finite number")
        return float(value)
    if hint is int:
        require(isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an integer")
        return value
    if hint in (str, bool):
        require(isinstance(value, hint), f"{where}: {value!r} is not a {hint.__name__}")
        return value
    if origin in (list, tuple) or hint in (list, tuple):
        require(isinstance(value, list), f"{where}: not a list")
        item = args[0] if args else Any
        out = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if (origin or hint) is tuple else out
    if origin is dict or hint is dict:
        require(isinstance(value, dict), f"{where}: not an object")
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(v, item, f"{where}.{k}") for k, v in value.items()}
    if isinstance(hint, type) and hasattr(hint, "from_dict"):
        require(isinstance(value, dict), f"{where}: not an object")
        try:
            return hint.from_dict(value)
        except CorruptRecord as e:
            raise CorruptRecord(f"{where}: {e}") from None
        except (ValueError, TypeError, ResdegError) as e:
            raise CorruptRecord(f"{where}: does not validate ({e})") from None
    raise TypeError(f"records: unsupported annotation {hint!r} at {where}")  # a bug in a record, not data


def _plain(value):
    """A record's value as JSON-ready data (tuples -> lists, nested records and configs -> dicts)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class Fields:
    """Mixin for a dataclass that is built from, and turned into, a JSON object field by field.
    A field made with `bounded` is checked against its range. `OPEN`: unknown keys are allowed
    (descriptive objects such as an environment, written by several versions and tools)."""
    OPEN: ClassVar[bool] = False

    @classmethod
    def from_dict(cls, d: dict):
        require(isinstance(d, dict), "not a JSON object")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise CorruptRecord(f"field {missing[0]!r} missing")
        unknown = sorted(set(d) - set(names) - getattr(cls, "IGNORED_KEYS", set()))
        if unknown and not cls.OPEN:
            raise CorruptRecord(f"unknown field {unknown[0]!r}")
        values = {n: _convert(d[n], hints[n], n) for n in names if n in d}
        for f in dataclasses.fields(cls):
            if "range" in f.metadata and f.name in values:
                _check_range(f.name, values[f.name], *f.metadata["range"])
        obj = cls(**values)
        obj.check()
        return obj

    @classmethod
    def check_object(cls, d, where: str) -> None:
        """Validate a stored object that readers keep as a plain dict (run.json's `data`)."""
        try:
            cls.from_dict(d)
        except CorruptRecord as e:
            raise CorruptRecord(f"{where}: {e}") from None

    def to_dict(self) -> dict:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def check(self) -> None:
        """The record's own consistency rules (beyond field types); raise CorruptRecord."""


class Record(Fields):
    """A top-level stored document: carries its schema name and version."""
    SCHEMA: ClassVar[str]
    VERSION: ClassVar[int]
    READS: ClassVar[tuple[int, ...]] = ()  # older versions this resdeg still reads, beside VERSION
    IGNORED_KEYS: ClassVar[set] = {"schema", "schema_version"}

    @classmethod
    def from_dict(cls, d: dict):
        require(isinstance(d, dict), "not a JSON object")
        require(d.get("schema") == cls.SCHEMA, f"schema is {d.get('schema')!r}, expected {cls.SCHEMA!r}")
        version = d.get("schema_version")
        if isinstance(version, int) and version > cls.VERSION:
            raise CorruptRecord(f"schema_version {version} was written by a newer resdeg (this one reads "
                                f"up to {cls.VERSION}); upgrade resdeg")
        require(version == cls.VERSION or version in cls.READS,
                f"schema_version {version!r} is not {cls.VERSION} (redo it with --force)")
        return super().from_dict(cls.upgrade(dict(d), version))

    @classmethod
    def upgrade(cls, d: dict, version: int) -> dict:
        """An older version's fields as this version's (only for versions listed in READS)."""
        return d

    def to_dict(self) -> dict:
        return {"schema": self.SCHEMA, "schema_version": self.VERSION, **super().to_dict()}


def read_record(path: str | Path, cls):
    """The validated record stored at `path`; CorruptRecord (one line) when missing or damaged."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptRecord(f"{path.name} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptRecord(f"{path.name} is not valid JSON ({e})") from None
    return cls.from_dict(doc)


def write_record(path: str | Path, record: Record) -> None:
    """Validate by a round trip, then write atomically."""
    doc = record.to_dict()
    type(record).from_dict(json.loads(json.dumps(doc)))
    atomic_write_json(path, doc)


def now_iso() -> str:
    """The time a record is written: UTC, to the second (every record's created/updated)."""
    return datetime.now(UTC).isoformat(timespec="seconds")
