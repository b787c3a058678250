"""Items kept as JSON documents (Salesforce records, Microsoft Graph resources).

An item's raw text is its system's JSON with the record under one key; it is written
compactly with sorted keys, so equal documents have equal text (and equal versions).
"""

from __future__ import annotations

import json
from typing import Any

from crmsync.errors import FormatError

Doc = dict[str, Any]


def load(raw: str, key: str, system: str) -> Doc:
    """The document in ``raw``, which must hold an object under ``key``."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise FormatError(f"not a {system} JSON document: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get(key), dict):
        raise FormatError(f"a {system} {key} document needs a {key!r} object")
    return doc


def dump(doc: Doc) -> str:
    return json.dumps(doc, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
