"""Text helpers shared by the cloud engines: sentence splitting and the service's way of
counting characters."""

from __future__ import annotations

import re
import unicodedata

# A sentence ends at . ! ? ; … (and their full-width forms) followed by space, or at a
# full-width end mark or a line break, which need no space after them.
_SENTENCE_END = re.compile(r"(?<=[.!?;…])\s+|(?<=[。！？；])\s*|\n+")
_SOFT_BREAK = re.compile(r"(?<=[,:，、：])\s*|\s+")


def billed(text: str, *, ssml: bool = False) -> int:
    """The characters the service bills for `text`: its weight, SSML tags not counted."""
    if ssml:
        from .ssml import ssml_text  # the markup parser, only for SSML

        text = ssml_text(text)
    return weight(text)


def normalize_text(text: str) -> str:
    """Whitespace differences do not change speech; nothing else is touched."""
    return re.sub(r"\s+", " ", text).strip()


def weight(text: str) -> int:
    """Characters as DashScope counts them: a CJK ideograph (Chinese, Kanji, Hanja) counts
    two, anything else one."""
    return sum(2 if unicodedata.name(c, "").startswith("CJK") else 1 for c in text)


def split_sentences(text: str, max_weight: int = 2000) -> list[str]:
    """The text as consecutive pieces, each ending at a sentence end and none heavier than
    `max_weight`; `"".join(pieces) == text`. A sentence too heavy is cut at commas, then at
    spaces, then anywhere."""
    pieces: list[str] = []
    for sentence in _split_keep(text, _SENTENCE_END):
        if weight(sentence) <= max_weight:
            pieces.append(sentence)
            continue
        part = ""
        for word in _split_keep(sentence, _SOFT_BREAK):
            while weight(word) > max_weight:  # no break at all: cut it
                if part:
                    pieces.append(part)
                    part = ""
                cut = max(1, _fit(word, max_weight))  # one character is the least piece
                pieces.append(word[:cut])
                word = word[cut:]
            if part and weight(part) + weight(word) > max_weight:
                pieces.append(part)
                part = ""
            part += word
        if part:
            pieces.append(part)
    return _merge_blank([p for p in pieces if p])


_ENDS_A_SENTENCE = re.compile(r"(?:[.!?;…]\s+|[。！？；]\s*|\n+)$")


class SentenceStream:
    """Text that arrives in pieces (a model still writing), handed on sentence by sentence:
    `feed` returns the sentences the text so far has completed, `close` the rest. Joined,
    what comes out is exactly what went in."""

    def __init__(self, max_weight: int = 2000) -> None:
        self._max_weight = max_weight
        self._pending = ""

    def feed(self, text: str) -> list[str]:
        self._pending += text
        if not self._pending.strip():
            return []  # nothing to say yet: blanks go with the next words
        pieces = split_sentences(self._pending, self._max_weight)
        if pieces and not _ENDS_A_SENTENCE.search(pieces[-1]):
            self._pending = pieces.pop()  # the sentence still being written
        else:
            self._pending = ""
        return pieces

    def close(self) -> list[str]:
        rest, self._pending = self._pending, ""
        return [rest] if rest.strip() else []


def _merge_blank(pieces: list[str]) -> list[str]:
    """A piece of only white space joins the next one (or the last), so none is empty to
    the service."""
    out: list[str] = []
    carry = ""
    for piece in pieces:
        if not piece.strip():
            carry += piece
            continue
        out.append(carry + piece)
        carry = ""
    if carry:
        if out:
            out[-1] += carry
        else:
            out.append(carry)
    return out


def _split_keep(text: str, pattern: re.Pattern[str]) -> list[str]:
    """Split after each match of `pattern`, keeping the matched separator with the piece
    before it."""
    pieces, start = [], 0
    for m in pattern.finditer(text):
        if m.end() > start:
            pieces.append(text[start : m.end()])
            start = m.end()
    if start < len(text):
        pieces.append(text[start:])
    # A separator at the very start belongs to nothing before it.
    return [p for p in pieces if p]


def _fit(text: str, budget: int) -> int:
    """How many leading characters of `text` weigh at most `budget`."""
    total = 0
    for i, c in enumerate(text):
        total += weight(c)
        if total > budget:
            return i
    return len(text)
