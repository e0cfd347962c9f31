"""What the search queries share: every word must match first; when nothing does, any word may (ranked).

"ACME Srl" must still find "ACME Logistics SpA" and "gestione reso" a page about "gestire i resi": a model
searches with the words a person used, and an empty answer makes it conclude the thing does not exist.
Words that match many rows weigh less (an inverse document frequency over a capped count), so the rare word
('acme') decides the order rather than the common one ('srl').
"""

from __future__ import annotations

import re
from typing import Any, Literal, NamedTuple

Match = Literal["all", "any"]

MAX_WORDS = 8
"""Words of a query considered by the any-word fallback (each costs an index probe)."""
MIN_WORD = 3
"""Shorter words ('di', 'e', 'la') match nearly everything by trigram and are left out of the fallback."""
FREQUENT = 500
"""A word found in this many rows counts as common: its weight is the lowest."""


class Found(NamedTuple):
    rows: list[dict[str, Any]]
    match: Match
    """'all': the rows match every word (or nothing matched at all); 'any': nothing had every word, and these
    match some of them, most first."""

    @classmethod
    def some_words(cls, rows: list[dict[str, Any]]) -> Found:
        return cls(rows, "any" if rows else "all")


def fallback_words(text: str) -> list[str]:
    """The distinct words of `text` worth a fallback, in order (the caller lower-cases and unaccents in SQL)."""
    words: list[str] = []
    for word in re.findall(r"\w+", text.lower()):
        if len(word) >= MIN_WORD and word not in words:
            words.append(word)
    return words[:MAX_WORDS]


def tsquery_literal(lexemes: list[str], prefix: set[str] | None = None) -> str:
    """Lexemes quoted for a tsquery (quotes and backslashes escaped), as alternatives of one group."""
    def quoted(word: str) -> str:
        return "'" + word.replace("\\", "\\\\").replace("'", "''") + "'" + (":*" if prefix and word in prefix else "")

    return "(" + " | ".join(quoted(w) for w in sorted(set(lexemes))) + ")"


def prefix_tsquery(text: str, joiner: str = " & ") -> str | None:
    """The words of `text` as prefixes ('offer' finds 'offerta'), joined by AND (or ' | ' for any word), for
    `to_tsquery('simple', lower(f_unaccent(...)))` over 'simple' tsvectors of lower-cased, unaccented text.
    None when `text` has no words."""
    words = [w for w in re.findall(r"\w+", text.lower()) if w.strip("_")]
    return joiner.join(f"{w.strip('_')}:*" for w in dict.fromkeys(words[:MAX_WORDS * 2])) or None


def search_both(run: Any, text: str) -> Found:
    """`run(tsquery)` with every word, then, when that finds nothing and there are several words, with any."""
    every = prefix_tsquery(text)
    if every is None:
        return Found([], "all")
    rows = run(every)
    if rows or " & " not in every:
        return Found(rows, "all")
    return Found.some_words(run(prefix_tsquery(text, " | ")))
