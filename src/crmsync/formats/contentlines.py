"""The content-line syntax iCalendar (RFC 5545) and vCard (RFC 6350) share.

An item is read into a tree of content lines that remembers every line exactly as it was
written; a format edits only the properties whose modeled value changed, so everything
else (X- properties, unknown parameters, even folding and order) keeps its bytes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from icalendar.parser import Contentline

from crmsync.errors import FormatError

PRODID = "-//crmsync//crmsync//EN"
# The property a groupware item keeps its CRM record's Id in (Record.crm_id).
KEPT_ID = "X-CRMSYNC-CRM-ID"

_FOLD = re.compile(rb"\r?\n[ \t]")


def decode(data: bytes) -> str:
    """An item's bytes as text (UTF-8, as both RFCs require).

    Some writers fold lines inside a multi-byte character (RFC 5545 3.1 counts octets):
    such text only decodes once unfolded, so it is unfolded first, then decoded.
    Raises UnicodeDecodeError when the bytes are not UTF-8 either way.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        try:
            return _FOLD.sub(b"", data).decode("utf-8")
        except UnicodeDecodeError:
            raise exc from None  # where the item's own bytes go wrong


P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
N = TypeVar("N", "Line", "Component")


def guard(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Report any failure to read or write an item as a FormatError: the run skips the item
    and says why, whatever library raised."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @wraps(fn)
        def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except FormatError:
                raise
            except Exception as exc:
                raise FormatError(f"bad {what}: {exc}") from exc

        return guarded

    return wrap


# --- content lines -----------------------------------------------------------------------

_NEWLINE = re.compile(r"\r?\n")
_HEAD = re.compile(r"(?:([A-Za-z0-9_-]+)\.)?([A-Za-z0-9_-]+)[;:]")
_LABELS = {"VCALENDAR": "iCalendar", "VCARD": "vCard"}


class Line:
    """A property: its unfolded text and the physical lines it was read from."""

    __slots__ = ("group", "name", "text", "raw", "head", "cache")

    def __init__(self, text: str, raw: list[str], head: re.Match[str]) -> None:
        self.group: str | None = head[1]
        self.name = head[2].upper()
        self.text = text
        self.raw = raw
        self.head = head.end() - 1  # index of the ";" or ":" after the name
        self.cache: Any = None  # the format's decoding of the line, made once

    @classmethod
    def new(cls, text: str) -> Line:
        head = _HEAD.match(text)
        assert head is not None, text
        if len(text.encode()) < 75:
            return cls(text, [text], head)  # icalendar folds char by char, even short lines
        return cls(text, Contentline(text).to_ical().decode().split("\r\n"), head)


class Component:
    """BEGIN:NAME .. END:NAME with its properties and subcomponents in file order."""

    __slots__ = ("name", "begin", "end", "items", "_index")

    def __init__(self, name: str, begin: list[str], items: list[Line | Component]) -> None:
        self.name = name
        self.begin = begin
        self.end = [f"END:{name}"]
        self.items = items
        self._index: dict[str, list[Line]] | None = None

    @classmethod
    def new(cls, name: str, items: list[Line | Component]) -> Component:
        return cls(name, [f"BEGIN:{name}"], items)

    def props(self, name: str) -> list[Line]:
        if self._index is None:
            self._index = {}
            for item in self.items:
                if isinstance(item, Line):
                    self._index.setdefault(item.name, []).append(item)
        return self._index.get(name, [])

    def first(self, name: str) -> Line | None:
        found = self.props(name)
        return found[0] if found else None

    def subs(self, name: str) -> list[Component]:
        return [c for c in self.items if isinstance(c, Component) and c.name == name]

    def swap(self, old: Iterable[Line | Component], new: Iterable[Line | Component]) -> None:
        """Put ``new`` where the first of ``old`` was (else after the properties); drop ``old``."""
        old, new = list(old), list(new)
        if not old and not new:
            return
        gone = {id(item) for item in old}
        # without old nodes, new ones go after the properties, before any subcomponent
        found = (i for i, item in enumerate(self.items)
                 if (id(item) in gone if old else isinstance(item, Component)))
        at = next(found, len(self.items))
        self.items = [
            *(item for item in self.items[:at] if id(item) not in gone),
            *new,
            *(item for item in self.items[at:] if id(item) not in gone),
        ]
        self._index = None

    def replace(self, name: str, lines: Iterable[Line]) -> None:
        self.swap(self.props(name), lines)

    def dump(self, out: list[str]) -> None:
        out += self.begin
        for item in self.items:
            if isinstance(item, Line):
                out += item.raw
            else:
                item.dump(out)
        out += self.end


def _logical_lines(raw: str, qp: bool) -> Iterator[tuple[int, str, list[str]]]:
    """(line number, unfolded text, physical lines) for each content line."""
    phys: list[str] = []
    parts: list[str] = []
    start = 0
    for number, line in enumerate(_NEWLINE.split(raw), 1):
        if not line:
            continue
        if phys and line[0] in " \t":
            phys.append(line)
            parts.append(line[1:])
            continue
        # vCard 2.1 quoted-printable values break lines with a trailing "=" instead
        if qp and phys and parts[-1].endswith("=") and "QUOTED-PRINTABLE" in phys[0].upper():
            phys.append(line)
            parts.append("\n" + line)
            continue
        if phys:
            yield start, "".join(parts), phys
        phys, parts, start = [line], [line], number
    if phys:
        yield start, "".join(parts), phys


def read_component(raw: str, kind: str, *, qp: bool = False) -> tuple[Component, str]:
    """Read one BEGIN:``kind`` object; returns it and the line ending it was written with."""
    label = _LABELS.get(kind, kind)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    if not isinstance(raw, str):
        raise FormatError(f"not {label} text: got {type(raw).__name__}")
    raw = raw.removeprefix("\ufeff")
    stack: list[Component] = []
    top: Component | None = None
    for number, text, phys in _logical_lines(raw, qp):
        head = _HEAD.match(text)
        if head is None or text.find(":", head.end() - 1) < 0:
            raise FormatError(f"{label} line {number} is not a content line: {text[:60]!r}")
        name = head[2].upper()
        if top is None and not (name == "BEGIN" and text[head.end():].strip().upper() == kind):
            raise FormatError(f"not {label}: expected BEGIN:{kind}, found {text[:60]!r}")
        if top is not None and not stack:
            raise FormatError(f"{label}: more after END:{kind} (one object expected)")
        if name in ("BEGIN", "END") and head[1] is None:
            value = text[text.index(":") + 1 :].strip().upper()
            if name == "BEGIN":
                comp = Component(value, phys, [])
                if stack:
                    stack[-1].items.append(comp)
                top = top or comp
                stack.append(comp)
            elif not stack or stack[-1].name != value:
                raise FormatError(f"{label} line {number}: END:{value} closes nothing open")
            else:
                stack.pop().end = phys
        else:
            stack[-1].items.append(Line(text, phys, head))
    if top is None:
        raise FormatError(f"not {label}: empty")
    if stack:
        raise FormatError(f"{label} is cut short: END:{stack[-1].name} missing")
    return top, "\r\n" if "\r\n" in raw else "\n"


def dump_component(comp: Component, eol: str) -> str:
    out: list[str] = []
    comp.dump(out)
    return eol.join(out) + eol


def reuse(
    old: Iterable[tuple[T, N]],
    new: Iterable[T],
    build: Callable[[T, N | None], N],
    same: Callable[[T, T], bool] = lambda a, b: True,
) -> list[N]:
    """The nodes for the ``new`` values in order. A value already present keeps its node
    untouched; another is built over a spare old node it is the ``same`` as, so the node's
    unmodeled parts (parameters, sub-fields) survive the edit."""
    spare = list(old)
    out: list[N | None] = []
    todo: list[tuple[int, T]] = []
    for value in new:
        hit = next((i for i, (v, _) in enumerate(spare) if v == value), None)
        if hit is None:
            todo.append((len(out), value))
        out.append(None if hit is None else spare.pop(hit)[1])
    for at, value in todo:
        hit = next((i for i, (v, _) in enumerate(spare) if same(v, value)), None)
        out[at] = build(value, None if hit is None else spare.pop(hit)[1])
    return [node for node in out if node is not None]
