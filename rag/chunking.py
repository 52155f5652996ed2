"""Splits a parsed document into retrieval chunks of a bounded token size.

A chunk never crosses a section: a citation then names one heading path, and the answer it supports
cannot silently mix the rules of two products. Inside a section, chunks end on sentence boundaries and
repeat the tail of the previous chunk (the overlap), so a fact stated across a boundary is still whole
in one of them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rag.loaders import ParsedDocument, Section
from rag.normalize import is_arabic_letter, strip_arabic_marks

__all__ = ["Chunk", "TokenCounter", "chunk_document", "chunk_sections", "estimate_tokens"]

TokenCounter = Callable[[str], int]

# Subword tokenizers (XLM-R/bge-m3, e5) split Arabic words into more pieces than English ones because
# of attached clitics and a smaller share of the vocabulary; these rates err on the high side so that a
# chunk sized by the estimate also fits the real tokenizer's limit.
ARABIC_WORD_TOKENS = 1.6
OTHER_WORD_TOKENS = 1.3

# A section under this many tokens (a heading with a line or nothing under it) is too small to be a
# useful retrieval unit on its own; its text joins the next section instead.
TINY_SECTION_TOKENS = 20

_PIECE_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+|(?:[^\w\s]|_)+")
# A sentence ends at . ! ? ؟ ۔ followed by space (so "2.5" and "www.bank.ae" stay whole) or at a newline,
# which also keeps table rows and list items as separate units.
_SENTENCE_END_RE = re.compile(r"[.!?؟۔]+[\"')\]»”]*(?=\s|$)|\n")
_WORD_RE = re.compile(r"\S+")

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One retrieval unit: original text for display plus the heading path it came from."""

    index: int  # position in the document, from 0
    section: str  # heading path, e.g. "Cards > Fees"; "" for text before the first heading
    text: str  # original script and spelling, not normalised


def estimate_tokens(text: str) -> int:
    """A conservative subword-token estimate used until the embedding model's tokenizer is passed in.

    About 1.6 tokens per Arabic word, 1.3 per other word and 1 per number or punctuation group.
    """
    total = 0.0
    for match in _PIECE_RE.finditer(strip_arabic_marks(text)):
        piece = match.group()
        if piece[0].isalpha():
            total += ARABIC_WORD_TOKENS if is_arabic_letter(piece[0]) else OTHER_WORD_TOKENS
        else:
            total += 1
    return math.ceil(total)


def chunk_document(
    doc: ParsedDocument,
    *,
    max_tokens: int = 512,
    overlap: int = 128,
    count_tokens: TokenCounter = estimate_tokens,
) -> list[Chunk]:
    """Chunks every section of a document; see `chunk_sections`."""
    return chunk_sections(doc.sections, max_tokens=max_tokens, overlap=overlap, count_tokens=count_tokens)


def chunk_sections(
    sections: Sequence[Section],
    *,
    max_tokens: int = 512,
    overlap: int = 128,
    count_tokens: TokenCounter = estimate_tokens,
) -> list[Chunk]:
    """Chunks sections so that each chunk's text is at most `max_tokens` by `count_tokens`.

    Consecutive chunks of one section share up to `overlap` tokens, whole sentences where one fits,
    else the last words. Sizes are measured on the joined chunk text, never summed per sentence, so a
    real tokenizer's merges across sentence boundaries cannot push a chunk over the limit.
    """
    if max_tokens < 1 or not 0 <= overlap < max_tokens:
        raise ValueError(f"need max_tokens >= 1 and 0 <= overlap < max_tokens, got {max_tokens}, {overlap}")
    chunks: list[Chunk] = []
    for section in _merge_tiny_sections(sections, count_tokens):
        packer = _Packer(section.text, count_tokens, max_tokens, overlap)
        for text in packer.chunks():
            chunks.append(Chunk(index=len(chunks), section=section.heading, text=text))
    return chunks


def _merge_tiny_sections(sections: Sequence[Section], count_tokens: TokenCounter) -> list[Section]:
    """Folds sections under TINY_SECTION_TOKENS into the section that follows them.

    The merged text keeps the tiny section's own heading line unless that heading is already in the
    next heading path (a parent heading with a short intro), so nothing read in the chunk is unexplained.
    """
    merged: list[Section] = []
    pending: Section | None = None
    for section in sections:
        if pending is not None:
            section = Section(section.heading, _join_into(pending, section))
            pending = None
        if count_tokens(section.text) < TINY_SECTION_TOKENS:
            pending = section
        else:
            merged.append(section)
    if pending is not None and pending.text.strip():
        merged.append(pending)
    return merged


def _join_into(tiny: Section, nxt: Section) -> str:
    text = tiny.text.strip()
    if not text:
        return nxt.text
    is_parent = tiny.heading == "" or nxt.heading == tiny.heading or nxt.heading.startswith(tiny.heading + " > ")
    if not is_parent:
        text = f"{tiny.heading.rsplit(' > ', 1)[-1]}\n{text}"
    return f"{text}\n\n{nxt.text.strip()}"


def _sentence_spans(text: str) -> list[Span]:
    spans: list[Span] = []
    start = 0
    for match in _SENTENCE_END_RE.finditer(text):
        _append_trimmed(text, start, match.end(), spans)
        start = match.end()
    _append_trimmed(text, start, len(text), spans)
    return spans


def _append_trimmed(text: str, start: int, end: int, spans: list[Span]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start < end:
        spans.append((start, end))


def _gallop(limit: int, ok: Callable[[int], bool]) -> int:
    """Largest m in [0, limit] with ok(m) true, assuming ok is true up to some point and false after.

    Doubling then bisecting costs O(log m) calls, each on text no longer than about twice the answer,
    instead of one call per sentence or word.
    """
    good, step = 0, 1
    probe = 1
    while probe <= limit and ok(probe):
        good = probe
        step *= 2
        probe = good + step
    bad = min(probe, limit + 1)
    while bad - good > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


class _Packer:
    """Packs one section's sentences into chunks; offsets index the section text throughout."""

    def __init__(self, text: str, count_tokens: TokenCounter, max_tokens: int, overlap: int) -> None:
        self.text = text
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.overlap = overlap

    def chunks(self) -> list[str]:
        units = self._units()
        ends = [end for _, end in units]
        out: list[str] = []
        first, start = 0, units[0][0] if units else 0
        while first < len(units):
            taken = self._fitting_ends(start, ends[first:], self.max_tokens)
            if taken == 0:
                # The overlap and the next sentence do not fit together: this chunk starts clean.
                start = units[first][0]
                # max(.., 1): only a counter that rejects single characters gets here; still progress.
                taken = max(self._fitting_ends(start, ends[first:], self.max_tokens), 1)
            last = first + taken
            out.append(self.text[start:ends[last - 1]].strip())
            if last < len(units):
                start = self._overlap_start(units, first, last, start)
            first = last
        return out

    def _within(self, start: int, end: int, limit: int) -> bool:
        return self.count_tokens(self.text[start:end].strip()) <= limit

    def _fitting_ends(self, start: int, ends: Sequence[int], limit: int) -> int:
        """How many of `ends` (ascending) close a span from `start` that is within `limit`."""
        return _gallop(len(ends), lambda m: self._within(start, ends[m - 1], limit))

    def _fitting_starts(self, starts: Sequence[int], end: int, limit: int) -> int:
        """How many of `starts` (descending) open a span up to `end` that is within `limit`."""
        return _gallop(len(starts), lambda m: self._within(starts[m - 1], end, limit))

    def _units(self) -> list[Span]:
        """Sentences, with any sentence over the limit cut on word (then character) boundaries.

        The cut pieces leave room for the overlap before them, so a long sentence's pieces still
        overlap; ordinary sentences are never cut, even when that makes a chunk start without overlap.
        """
        units: list[Span] = []
        piece_limit = self.max_tokens - self.overlap
        for start, end in _sentence_spans(self.text):
            if self._within(start, end, self.max_tokens):
                units.append((start, end))
            else:
                units.extend(self._split_words(start, end, piece_limit))
        return units

    def _split_words(self, start: int, end: int, limit: int) -> list[Span]:
        words = [(match.start(), match.end()) for match in _WORD_RE.finditer(self.text, start, end)]
        word_ends = [end for _, end in words]
        pieces: list[Span] = []
        i = 0
        while i < len(words):
            taken = self._fitting_ends(words[i][0], word_ends[i:], limit)
            if taken == 0:
                # A single "word" over the limit (a long URL, an encoded blob): cut it by characters.
                pieces.extend(self._split_chars(*words[i], limit))
                i += 1
            else:
                pieces.append((words[i][0], word_ends[i + taken - 1]))
                i += taken
        return pieces

    def _split_chars(self, start: int, end: int, limit: int) -> list[Span]:
        pieces: list[Span] = []
        while start < end:
            # max(.., 1): a counter that rejects even one character must still make progress.
            size = max(self._fitting_ends(start, range(start + 1, end + 1), limit), 1)
            pieces.append((start, start + size))
            start += size
        return pieces

    def _overlap_start(self, units: Sequence[Span], first: int, last: int, start: int) -> int:
        """Where the next chunk begins: the earliest offset whose tail to this chunk's end fits `overlap`.

        Whole sentences are preferred; if even the last sentence is too long, its last words are used.
        The tail never reaches back to this chunk's own start, so every chunk adds new text.
        """
        next_start = units[last][0]
        if self.overlap == 0:
            return next_start
        end = units[last - 1][1]
        starts = [s for s, _ in units[first:last] if s > start][::-1]
        taken = self._fitting_starts(starts, end, self.overlap)
        if taken:
            return starts[taken - 1]
        words = [m.start() for m in _WORD_RE.finditer(self.text, units[last - 1][0], end) if m.start() > start]
        words.reverse()
        taken = self._fitting_starts(words, end, self.overlap)
        return words[taken - 1] if taken else next_start
