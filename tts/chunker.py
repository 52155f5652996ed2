"""Cuts text into speakable phrases, so that audio can start before the whole text is rendered.

A phrase ends at a sentence end (``. ! ? ؟ ۔ …``), at ``; ؛ : ،`` or at a line break. A sentence
longer than the limit is cut at its last comma (or dash) within the limit, else at its last space.
Fragments shorter than ``min_phrase_chars`` ("1.", "Yes.") are merged with the next phrase, because
a synthesiser speaks them with odd prosody. The first phrase has a lower limit than the rest: it
decides how soon the caller hears something.

``PhraseChunker`` is incremental (``push`` deltas as an LLM streams them, ``flush`` at the end);
``split_phrases`` is the one-shot form.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from tts.config import ChunkerConfig

# Punctuation that ends a phrase when whitespace (or the end of the text) follows it.
_HARD_ENDS = frozenset(".!?؟۔…;؛:،")
# Closing quotes and brackets stay with the phrase they close.
_CLOSERS = frozenset("\"'”’»)]}")
# Where a too-long sentence is preferably cut.
_SOFT_ENDS = frozenset(",،、—–")
# A period after these words does not end a sentence ("Dr. Smith", "e.g. this").
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "approx", "inc", "ltd",
     "dept", "ext"}
)
_SPACES = re.compile(r"[^\S\n]+")
_LINE_BREAKS = re.compile(r"\s*\n\s*")


def _speakable(text: str) -> bool:
    """Whether the text has anything to say (a phrase of bare punctuation has not)."""
    return any(ch.isalnum() for ch in text)


def _tidy(text: str) -> str:
    return " ".join(text.split())


class PhraseChunker:
    """Incremental phrase splitter; one instance per utterance (the first phrase is special)."""

    def __init__(self, options: ChunkerConfig | None = None) -> None:
        self._options = options or ChunkerConfig()
        self._buffer = ""
        self._emitted = 0

    def push(self, text_delta: str) -> list[str]:
        """Adds text; returns the phrases that are now complete (possibly none)."""
        # Normalising as text arrives keeps buffer indices equal to phrase lengths.
        text = (self._buffer + text_delta).replace("\r", "\n")
        self._buffer = _LINE_BREAKS.sub("\n", _SPACES.sub(" ", text))
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """Returns every phrase still buffered, the last one possibly unterminated."""
        phrases = self._drain(final=True)
        rest, self._buffer = _tidy(self._buffer), ""
        if _speakable(rest):
            phrases.append(rest)
            self._emitted += 1
        return phrases

    # ---- internals ----------------------------------------------------------------------------

    def _drain(self, final: bool) -> list[str]:
        phrases: list[str] = []
        while (cut := self._next_cut(final)) is not None:
            phrase = _tidy(self._buffer[:cut])
            self._buffer = self._buffer[cut:]
            if _speakable(phrase):
                phrases.append(phrase)
                self._emitted += 1
        return phrases

    def _limit(self) -> int:
        o = self._options
        return o.first_phrase_max_chars if self._emitted == 0 else o.max_phrase_chars

    def _next_cut(self, final: bool) -> int | None:
        """Index where the next phrase ends, or None when more text is needed to decide."""
        stripped = self._buffer.lstrip()
        if not stripped:
            self._buffer = ""
            return None
        offset = len(self._buffer) - len(stripped)
        limit, minimum = self._limit(), self._options.min_phrase_chars
        chosen: int | None = None
        settled = False  # a boundary past the short candidate was seen, so it need not wait
        for end in self._hard_ends(final):
            length = end - offset
            if length > limit:
                settled = True
                break
            chosen = end
            if len(_tidy(self._buffer[:end])) >= minimum:
                settled = True
                break
        if chosen is not None:
            if settled or final or len(stripped) > limit:
                return chosen
            return None  # a short fragment waits for the phrase it will be merged with
        if len(stripped) > limit:
            return offset + self._soft_cut(stripped, limit)
        return len(self._buffer) if final else None

    def _hard_ends(self, final: bool) -> Iterator[int]:
        """Yields, in order, the end index of every phrase boundary in the buffer."""
        buf = self._buffer
        i = 0
        while i < len(buf):
            ch = buf[i]
            if ch == "\n":
                yield i + 1
                i += 1
                continue
            if ch not in _HARD_ENDS:
                i += 1
                continue
            j = i + 1
            while j < len(buf) and (buf[j] in _HARD_ENDS or buf[j] in _CLOSERS):
                j += 1
            # "3.5", "10:30" and "example.com" are not boundaries: whitespace must follow.
            followed = j < len(buf) and buf[j].isspace()
            if (followed or (final and j == len(buf))) and not self._is_abbreviation(i):
                yield j
            i = j
        if final and buf.strip():
            yield len(buf)

    def _is_abbreviation(self, dot: int) -> bool:
        if self._buffer[dot] != ".":
            return False
        start = dot
        while start > 0 and not self._buffer[start - 1].isspace():
            start -= 1
        return self._buffer[start:dot].lower().lstrip("\"'(") in _ABBREVIATIONS

    def _soft_cut(self, text: str, limit: int) -> int:
        """Where to cut a text longer than ``limit`` that has no phrase boundary within it."""
        minimum = max(1, self._options.min_phrase_chars)
        window = text[: limit + 1]
        for i in range(len(window) - 2, minimum - 2, -1):
            if window[i] in _SOFT_ENDS and window[i + 1].isspace():
                return i + 1
        space = window.rfind(" ", minimum)
        if space > 0:
            return space
        return limit  # one very long token (a URL, digits): cut it anyway


def split_phrases(text: str, options: ChunkerConfig | None = None) -> list[str]:
    """Splits a whole text into phrases."""
    chunker = PhraseChunker(options)
    return [*chunker.push(text), *chunker.flush()]
