"""Finding things in a member's own thread: SQLite FTS5 over the messages (`messages_fts`).

A member's words are never FTS5's query language: each term they type is quoted as an FTS5
string (a prefix of a word, so "pasta" finds "pastas"), and all of them must match. So no query
is a syntax error; an empty or too long one is refused (InvalidInput, 400). Only the caller's
own thread is searched (their account in their family), never another member's, nor the
family's Home thread.

A match's snippet marks the words found: FTS5 marks them with two control characters, read back
here into parts (text, found or not), so the words themselves are only ever text; `snippet_html`
is those parts escaped, each found part in <mark>.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from typing import Any

from markupsafe import escape

from sudo_core.accounts import InvalidInput
from sudo_core.db import Database

QUERY_MAX = 200
TERMS_MAX = 16
MATCHES_MAX = 100
SNIPPET_WORDS = 16
_START, _END = "\x02", "\x03"
"""What FTS5 puts around each word found (a message may hold them too: they only ever mark)."""


@dataclass(frozen=True)
class Match:
    id: str
    n: int
    role: str
    sender: str
    created_at: float
    parts: tuple[tuple[str, bool], ...]
    """The snippet, in parts: (text, whether it is a word found)."""

    @property
    def snippet(self) -> str:
        return "".join(text for text, _ in self.parts)

    @property
    def snippet_html(self) -> str:
        return "".join(f"<mark>{escape(t)}</mark>" if found else str(escape(t)) for t, found in self.parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "n": self.n,
            "role": self.role,
            "sender": self.sender,
            "created_at": self.created_at,
            "snippet": self.snippet,
            "snippet_html": self.snippet_html,
        }


def fts_query(text: str) -> str:
    """The member's words as an FTS5 query: every term a quoted prefix, all of them required."""
    text = text.replace("\x00", " ").strip()  # SQLite would end the query at a NUL
    if not text:
        raise InvalidInput("type a word to search for")
    if len(text) > QUERY_MAX:
        raise InvalidInput(f"a search is at most {QUERY_MAX} characters")
    terms = text.split()
    if len(terms) > TERMS_MAX:
        raise InvalidInput(f"a search is at most {TERMS_MAX} words")
    return " ".join('"' + term.replace('"', '""') + '"*' for term in terms)


def _parts(snippet: str) -> tuple[tuple[str, bool], ...]:
    parts: list[tuple[str, bool]] = []
    found, text = False, ""
    for char in snippet:
        if char in (_START, _END):
            if text:
                parts.append((text, found))
            found, text = char == _START, ""
        else:
            text += char
    if text:
        parts.append((text, found))
    return tuple(parts)


def search(db: Database, family: uuid.UUID, member: uuid.UUID, text: str, limit: int = 20) -> list[Match]:
    """The member's own messages that hold every term of `text`, newest first (on the db thread)."""
    query = fts_query(text)
    try:
        rows = db.query(
            "SELECT m.id, m.n, m.role, m.sender, m.created_at,"
            " snippet(messages_fts, 0, ?, ?, '…', ?) AS snippet"
            " FROM messages_fts JOIN messages m ON m.n = messages_fts.rowid"
            " WHERE messages_fts MATCH ? AND m.family_id = ? AND m.account_id = ?"
            " ORDER BY m.n DESC LIMIT ?",
            (_START, _END, SNIPPET_WORDS, query, str(family), str(member), min(limit, MATCHES_MAX)),
        )
    except sqlite3.OperationalError as exc:
        if str(exc).startswith("fts5:"):  # not expected of quoted terms: still the query's fault
            raise InvalidInput(f"this search cannot be read: {exc}") from None
        raise
    return [
        Match(r["id"], r["n"], r["role"], r["sender"], r["created_at"], _parts(r["snippet"])) for r in rows
    ]
