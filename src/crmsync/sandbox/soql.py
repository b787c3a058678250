"""A parser for the SOQL subset the sandbox answers (see /work/notes/sf-contract.md).

    SELECT field[, Rel.field][, (SELECT ... FROM ChildRelationship ...)] | COUNT()
    FROM Object
    [WHERE cond {AND cond} | cond {OR cond}]   cond: Field op literal | Field [NOT] IN (...)
                                               | Field LIKE 'pat%' | NOT cond | (cond ...)
    [ORDER BY Field [ASC|DESC] [NULLS FIRST|LAST][, ...]] [LIMIT n] [OFFSET n]

Like Salesforce, AND and OR are not mixed at one level without parentheses. Anything
outside the subset is a MALFORMED_QUERY error naming the unexpected token.
https://developer.salesforce.com/docs/atlas.en-us.soql_sosl.meta/soql_sosl/sforce_api_calls_soql_select.htm
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from crmsync.sandbox.db import parse_date, parse_datetime
from crmsync.sandbox.errors import malformed_query

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2}))
  | (?P<date>\d{4}-\d{2}-\d{2})(?![\w:])
  | (?P<number>-?\d+(?:\.\d+)?)(?![\w.])
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<op>!=|<>|<=|>=|=|<|>)
  | (?P<punct>[(),])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "'": "'", '"': '"',
            "\\": "\\", "%": "\\%", "_": "\\_"}
KEYWORDS = {"select", "from", "where", "and", "or", "not", "in", "like", "order", "by",
            "asc", "desc", "nulls", "first", "last", "limit", "offset", "null", "true",
            "false", "count"}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str
    value: Any = None

    @property
    def word(self) -> str:
        return self.text.lower() if self.kind == "name" else ""


@dataclass
class Condition:
    field: str
    op: str  # = != < <= > >= in notin like
    value: Any  # a literal, or a list of them for in/notin


@dataclass
class BoolOp:
    op: str  # and, or, not
    items: list[Any]


@dataclass
class Query:
    sobject: str
    fields: list[str] = field(default_factory=list)
    subqueries: list[Query] = field(default_factory=list)
    where: Condition | BoolOp | None = None
    order_by: list[tuple[str, bool, bool]] = field(default_factory=list)  # field, desc, nulls_last
    limit: int | None = None
    offset: int = 0
    count: bool = False


def _unescape(body: str) -> str:
    out, i = [], 0
    while i < len(body):
        ch = body[i]
        if ch == "\\":
            nxt = body[i + 1] if i + 1 < len(body) else ""
            if nxt not in _ESCAPES:
                raise malformed_query(f"Invalid string literal '{body}'. Illegal character "
                                      f"sequence '\\{nxt}' in string literal.")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise malformed_query(f"unexpected token: '{text[pos:pos + 20].split()[0]}'")
        pos = m.end()
        kind = m.lastgroup or ""
        raw = m.group()
        if kind == "ws":
            continue
        value: Any = None
        try:
            if kind == "string":
                value = _unescape(raw[1:-1])
            elif kind == "datetime":
                value = parse_datetime(raw)
            elif kind == "date":
                value = parse_date(raw)
            elif kind == "number":
                value = float(raw) if "." in raw else int(raw)
        except ValueError:
            raise malformed_query(f"value '{raw}' is not a valid literal") from None
        tokens.append(Token(kind, raw, value))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self, ahead: int = 0) -> Token | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def next(self) -> Token:
        tok = self.peek()
        if tok is None:
            raise malformed_query("unexpected end of query")
        self.pos += 1
        return tok

    def at(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.word in words

    def expect(self, word: str) -> Token:
        tok = self.next()
        if tok.word != word and tok.text != word:
            raise malformed_query(f"unexpected token: '{tok.text}' (expecting '{word}')")
        return tok

    def unexpected(self) -> Exception:
        tok = self.peek()
        return malformed_query(f"unexpected token: '{tok.text}'" if tok
                               else "unexpected end of query")

    # --- grammar ------------------------------------------------------------------------

    def query(self, nested: bool = False) -> Query:
        self.expect("select")
        fields, subqueries, count = [], [], False
        if self.at("count") and self.peek(1) and self.peek(1).text == "(":  # type: ignore[union-attr]
            self.next(), self.next(), self.expect(")")
            count = True
        else:
            while True:
                tok = self.peek()
                if tok is not None and tok.text == "(" and not nested:
                    self.next()
                    subqueries.append(self.query(nested=True))
                    self.expect(")")
                else:
                    fields.append(self.name())
                if not (self.peek() and self.peek().text == ","):  # type: ignore[union-attr]
                    break
                self.next()
        self.expect("from")
        query = Query(self.name(), fields, subqueries, count=count)
        if self.at("where"):
            self.next()
            query.where = self.disjunction()
        if self.at("order"):
            self.next()
            self.expect("by")
            query.order_by = self.order_list()
        if self.at("limit"):
            self.next()
            query.limit = self.integer()
        if self.at("offset"):
            self.next()
            query.offset = self.integer()
        tok = self.peek()
        if tok is not None and not (nested and tok.text == ")"):
            raise self.unexpected()
        return query

    def name(self) -> str:
        tok = self.next()
        if tok.kind != "name" or tok.word in KEYWORDS - {"first", "last", "count"}:
            raise malformed_query(f"unexpected token: '{tok.text}'")
        return tok.text

    def integer(self) -> int:
        tok = self.next()
        if tok.kind != "number" or not isinstance(tok.value, int) or tok.value < 0:
            raise malformed_query(f"unexpected token: '{tok.text}' (expecting a number)")
        return tok.value

    def disjunction(self) -> Condition | BoolOp:
        first = self.factor()
        if not self.at("and", "or"):
            return first
        op = self.peek().word  # type: ignore[union-attr]
        items = [first]
        while self.at("and", "or"):
            if self.peek().word != op:  # type: ignore[union-attr]
                raise malformed_query(f"unexpected token: '{self.peek().text}' (mixing AND "  # type: ignore[union-attr]
                                      "and OR needs parentheses)")
            self.next()
            items.append(self.factor())
        return BoolOp(op, items)

    def factor(self) -> Condition | BoolOp:
        tok = self.peek()
        if tok is None:
            raise self.unexpected()
        if tok.word == "not":
            self.next()
            return BoolOp("not", [self.factor()])
        if tok.text == "(":
            self.next()
            inner = self.disjunction()
            self.expect(")")
            return inner
        return self.condition()

    def condition(self) -> Condition:
        name = self.name()
        tok = self.next()
        if tok.kind == "op":
            op = "!=" if tok.text == "<>" else tok.text
            return Condition(name, op, self.literal())
        negate = False
        if tok.word == "not":
            negate, tok = True, self.next()
        if tok.word == "in":
            self.expect("(")
            values = [self.literal()]
            while self.peek() and self.peek().text == ",":  # type: ignore[union-attr]
                self.next()
                values.append(self.literal())
            self.expect(")")
            return Condition(name, "notin" if negate else "in", values)
        if tok.word == "like" and not negate:
            value = self.literal()
            if not isinstance(value, str):
                raise malformed_query("LIKE needs a string literal")
            return Condition(name, "like", value)
        raise malformed_query(f"unexpected token: '{tok.text}'")

    def literal(self) -> Any:
        tok = self.next()
        if tok.kind in ("string", "datetime", "date", "number"):
            return tok.value
        if tok.word in ("true", "false"):
            return tok.word == "true"
        if tok.word == "null":
            return None
        raise malformed_query(f"unexpected token: '{tok.text}'")

    def order_list(self) -> list[tuple[str, bool, bool]]:
        items = []
        while True:
            name, desc = self.name(), False
            if self.at("asc", "desc"):
                desc = self.next().word == "desc"
            nulls_last = desc  # Salesforce: nulls first ascending, last descending
            if self.at("nulls"):
                self.next()
                word = self.next().word
                if word not in ("first", "last"):
                    raise self.unexpected()
                nulls_last = word == "last"
            items.append((name, desc, nulls_last))
            if not (self.peek() and self.peek().text == ","):  # type: ignore[union-attr]
                return items
            self.next()


def parse(text: str) -> Query:
    """Parse one SOQL query; raises ApiError(MALFORMED_QUERY) outside the subset."""
    if not text or not text.strip():
        raise malformed_query("empty query")
    return _Parser(text).query()


Literal = str | int | float | bool | date | datetime | None
