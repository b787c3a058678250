"""vCard (3.0 and 4.0; 2.1 best effort) as Contacts.

Cards are edited line by line like iCalendar items (see ical.py): unchanged lines and what
the model leaves out (PHOTO, X- properties, item1.X-ABLabel groups) keep their bytes.
vobject splits the lines and decodes the values.
"""

from __future__ import annotations

import dataclasses
import quopri
import re
import uuid
from collections.abc import Callable
from datetime import date

from vobject.base import backslashEscape, dquoteEscape, parseLine
from vobject.icalendar import stringToTextValues
from vobject.vcard import splitFields

from crmsync.errors import FormatError
from crmsync.formats.contentlines import (
    KEPT_ID,
    PRODID,
    Line,
    dump_component,
    guard,
    read_component,
    reuse,
)
from crmsync.model import Address, Contact, Phone

__all__ = ["parse_contact", "render_contact"]

Params = dict[str, list[str]]

_ENCODINGS = {"QUOTED-PRINTABLE", "BASE64", "B", "8BIT", "7BIT"}
# Parameters a rewritten line must not carry over: they describe the old value
_STALE = {"PREF", "ENCODING", "CHARSET", "VALUE"}
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})(?:T.*)?$")
_RAW_FIELD = re.compile(r"((?:[^\\;]|\\.)*)(;|$)", re.S)
_PHONE_TYPES = {"fax": {"fax"}, "cell": {"cell", "mobile", "iphone"}, "work": {"work"},
                "home": {"home"}}


def _split(line: Line) -> tuple[Params, str]:
    """Parameters by upper-case name and the still escaped value, quoted-printable decoded."""
    if line.cache is None:
        _, plist, value, _ = parseLine(line.text)
        params: Params = {}
        for name, *values in plist:
            key = name.upper()
            if not values:  # vCard 2.1 writes TEL;CELL and NOTE;QUOTED-PRINTABLE
                key, values = ("ENCODING" if key in _ENCODINGS else "TYPE"), [name]
            params.setdefault(key, []).extend(v for vs in values for v in vs.split(","))
        if "QUOTED-PRINTABLE" in (v.upper() for v in params.get("ENCODING", [])):
            charset = params.get("CHARSET", ["utf-8"])[0]
            # Line breaks in the text are CRLF on the wire; a record keeps them as "\n",
            # as an escaped "\n" of vCard 3.0 and 4.0 reads.
            value = quopri.decodestring(value.encode()).decode(charset).replace("\r\n", "\n")
        line.cache = params, value
    return line.cache


def _unescape(value: str) -> str:
    # a sloppy writer's unescaped comma splits the text: join it back. A bare CR inside
    # a line is a line break, as it is written back (vCard has no escape for CR)
    return ",".join(stringToTextValues(value)).replace("\r\n", "\n").replace("\r", "\n")


def _types(line: Line) -> set[str]:
    return {t.lower() for t in _split(line)[0].get("TYPE", [])}


def _fields(line: Line | None, count: int) -> list[str]:
    """The components of a structured value (N, ORG, ADR), decoded."""
    values = splitFields(_split(line)[1]) if line else []
    out = [",".join(v) if isinstance(v, list) else v for v in values]
    return out + [""] * (count - len(out))


def _raw_fields(line: Line | None, count: int) -> list[str]:
    """The components of a structured value as written, to carry unmodeled ones over."""
    out: list[str] = []
    for match in _RAW_FIELD.finditer(_split(line)[1] if line else ""):
        out.append(match[1])
        if not match[2]:
            break
    return out + [""] * (count - len(out))


def _pref(line: Line) -> int | None:
    """How preferred a line is (1 most); None when not marked."""
    params = _split(line)[0]
    if "PREF" in params:
        rank = params["PREF"][0]
        return int(rank) if rank.isdigit() else 1
    return 1 if "pref" in _types(line) else None


def _phone_type(types: set[str]) -> str:
    return next((kind for kind, names in _PHONE_TYPES.items() if types & names), "other")


def _address_type(types: set[str]) -> str:
    return "home" if "home" in types else "work" if "work" in types else "other"


def _birthday(text: str) -> str | None:
    match = _DATE.match(text.strip())
    if match is None:
        return text or None  # vCard 4 forms without a year (--1231) or free text
    try:
        return date(*map(int, match.groups())).isoformat()
    except ValueError:
        raise FormatError(f"BDAY: bad date {text!r}") from None


class _Card:
    """One vCard being read or edited, and the syntax its VERSION wants."""

    def __init__(self, raw: str) -> None:
        self.comp, self.eol = read_component(raw, "VCARD", qp=True)
        self.version = self.text("VERSION").strip() or "3.0"

    def text(self, name: str) -> str:
        line = self.comp.first(name)
        return _unescape(_split(line)[1]) if line else ""

    def emails(self) -> list[tuple[str, Line]]:
        """In file order, except that the preferred address comes first."""
        out = [(_unescape(_split(line)[1]), line) for line in self.comp.props("EMAIL")]
        ranked = [(rank, i) for i, (_, line) in enumerate(out) if (rank := _pref(line))]
        if ranked:
            out.insert(0, out.pop(min(ranked)[1]))
        return out

    def phones(self) -> list[tuple[Phone, Line]]:
        out = []
        for line in self.comp.props("TEL"):
            value = _unescape(_split(line)[1])
            value = value[4:] if value[:4].lower() == "tel:" else value
            out.append((Phone(value, _phone_type(_types(line))), line))
        return out

    def addresses(self) -> list[tuple[Address, Line]]:
        out = []
        for line in self.comp.props("ADR"):
            _, _, street, city, region, code, country = _fields(line, 7)[:7]
            kind = _address_type(_types(line))
            out.append((Address(kind, street, city, region, code, country), line))
        return out

    def contact(self) -> Contact:
        family, given = _fields(self.comp.first("N"), 2)[:2]
        return Contact(
            uid=self.text("UID"),
            crm_id=self.text(KEPT_ID),
            full_name=self.text("FN"),
            given_name=given,
            family_name=family,
            emails=[e for e, _ in self.emails()],
            phones=[p for p, _ in self.phones()],
            company=_fields(self.comp.first("ORG"), 1)[0],
            title=self.text("TITLE"),
            addresses=[a for a, _ in self.addresses()],
            birthday=_birthday(self.text("BDAY")),
            note=self.text("NOTE"),
            categories=[
                c for line in self.comp.props("CATEGORIES")
                for c in stringToTextValues(_split(line)[1]) if c
            ],
        )

    def line(self, name: str, value: str, params: Params | None = None,
             group: str | None = None) -> Line:
        """A new line in this card's dialect; ``value`` is escaped already."""
        params = dict(params or {})
        if self.version == "2.1" and not value.isascii():
            params |= {"CHARSET": ["UTF-8"], "ENCODING": ["QUOTED-PRINTABLE"]}
            value = quopri.encodestring(value.encode()).replace(b"=\n", b"").decode()
        chunks = [name if group is None else f"{group}.{name}"]
        for key, values in params.items():
            if key == "TYPE":
                values = [v.lower() if self.version == "4.0" else v.upper() for v in values]
                if self.version == "2.1":
                    chunks += values
                    continue
            chunks.append(f"{key}={','.join(map(dquoteEscape, values))}")
        return Line.new(";".join(chunks) + ":" + value)

    def relined(self, old: Line | None, name: str, value: str,
                types: list[str] | None = None) -> Line:
        """``value`` with the old line's group and parameters (but no preference mark);
        ``types`` replace its TYPE when given."""
        params: Params = {}
        if old is not None:
            for key, values in _split(old)[0].items():
                if key == "TYPE":
                    values = [v for v in values if v.lower() != "pref"]
                if key not in _STALE and values:
                    params[key] = values
        if types is not None:
            params.pop("TYPE", None)
            if types:
                params["TYPE"] = types
        return self.line(name, value, params, None if old is None else old.group)

    def set_text(self, name: str, value: str, required: bool = False) -> None:
        lines = [self.line(name, backslashEscape(value))] if value or required else []
        self.comp.replace(name, lines)


# --- writers, one per group of Contact fields ----------------------------------------------


def _write_name(card: _Card, contact: Contact) -> None:
    old = card.comp.first("N")
    rest = _raw_fields(old, 5)[2:]  # additional names, prefix, suffix
    value = ";".join([backslashEscape(contact.family_name), backslashEscape(contact.given_name),
                      *rest])
    card.comp.replace("N", [card.relined(old, "N", value)])


def _write_org(card: _Card, contact: Contact) -> None:
    old = card.comp.first("ORG")
    value = ";".join([backslashEscape(contact.company), *_raw_fields(old, 1)[1:]])
    card.comp.replace("ORG", [card.relined(old, "ORG", value)] if value.strip(";") else [])


def _write_emails(card: _Card, contact: Contact) -> None:
    new_types = [] if card.version == "4.0" else ["internet"]
    lines = reuse(card.emails(), contact.emails,
                  lambda e, old: card.relined(old, "EMAIL", backslashEscape(e),
                                              None if old else new_types))
    # Parsing moves a preferred address to the front: only the first may stay marked
    lines[1:] = [card.relined(line, "EMAIL", _split(line)[1]) if _pref(line) else line
                 for line in lines[1:]]
    card.comp.replace("EMAIL", lines)


def _write_phones(card: _Card, contact: Contact) -> None:
    def build(phone: Phone, old: Line | None) -> Line:
        kept = old is not None and _phone_type(_types(old)) == phone.type
        types = None if kept else [phone.type] if phone.type in _PHONE_TYPES else []
        return card.relined(old, "TEL", backslashEscape(phone.value), types)

    card.comp.replace("TEL", reuse(card.phones(), contact.phones, build))


def _write_addresses(card: _Card, contact: Contact) -> None:
    def build(address: Address, old: Line | None) -> Line:
        fields = (address.street, address.city, address.region, address.postal_code,
                  address.country)
        value = ";".join([*_raw_fields(old, 2)[:2], *map(backslashEscape, fields)])
        kept = old is not None and _address_type(_types(old)) == address.type
        types = None if kept else [address.type] if address.type in ("home", "work") else []
        return card.relined(old, "ADR", value, types)

    card.comp.replace("ADR", reuse(card.addresses(), contact.addresses, build))


def _write_birthday(card: _Card, contact: Contact) -> None:
    value = contact.birthday or ""
    match = _DATE.match(value)
    if match and card.version == "4.0":  # vCard 4 dates are ISO 8601 basic
        value = "".join(match.groups())
    card.set_text("BDAY", value)


def _write_categories(card: _Card, contact: Contact) -> None:
    value = ",".join(map(backslashEscape, contact.categories))
    card.comp.replace("CATEGORIES", [card.line("CATEGORIES", value)] if value else [])


_WRITERS: tuple[tuple[tuple[str, ...], Callable[[_Card, Contact], None]], ...] = (
    (("full_name",), lambda card, c: card.set_text("FN", c.full_name, required=True)),
    (("given_name", "family_name"), _write_name),
    (("emails",), _write_emails),
    (("phones",), _write_phones),
    (("company",), _write_org),
    (("title",), lambda card, c: card.set_text("TITLE", c.title)),
    (("addresses",), _write_addresses),
    (("birthday",), _write_birthday),
    (("note",), lambda card, c: card.set_text("NOTE", c.note)),
    (("categories",), _write_categories),
)


@guard("vCard contact")
def parse_contact(raw: str) -> Contact:
    """Read the contact a vCard holds."""
    return _Card(raw).contact()


@guard("vCard contact")
def render_contact(contact: Contact, template: str | None) -> str:
    """Write ``contact`` as a vCard, over ``template`` (the card's current text) if given."""
    contact = dataclasses.replace(contact)  # re-normalized, as parsing gives it
    if template is None:
        uid = backslashEscape(contact.uid or str(uuid.uuid4()))
        template = (f"BEGIN:VCARD\r\nVERSION:3.0\r\nPRODID:{PRODID}\r\nUID:{uid}\r\n"
                    "FN:\r\nN:;;;;\r\nEND:VCARD\r\n")
    card = _Card(template)
    old = card.contact()
    for attrs, write in _WRITERS:
        if any(getattr(contact, a) != getattr(old, a) for a in attrs):
            write(card, contact)
    if contact.uid and contact.uid != old.uid:
        card.set_text("UID", contact.uid)
    if contact.crm_id and contact.crm_id != old.crm_id:
        card.set_text(KEPT_ID, contact.crm_id)
    return dump_component(card.comp, card.eol)
