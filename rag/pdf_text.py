"""The text layer of PDF pages as lines in logical (reading) order, with the font size of each line.

PDFs position glyphs; they do not store sentences. Arabic is usually stored in visual order (left to
right as drawn), and pypdf's plain extraction turns each right-to-left run back into logical order by
reversing it, but it keeps the runs of a line in drawing order and treats Arabic-Indic digits as
right-to-left letters. For a PDF made with fpdf2 and HarfBuzz shaping that gives, for an Arabic line
"الرسوم ١٠٠ درهم وتطبق على Visa Platinum":

    "Visa Platinum الرسوم ٠٠١ درهم وتطبق على"    (Latin run first, digits reversed)

The repair works on the pieces pypdf reports to a visitor (one per direction run or text operation,
each already in logical order inside): in a line that is mostly Arabic the pieces are read from the
rightmost, the spaces and brackets pypdf glued to the edge of a run against the line's direction are
handed back to the line, and numbers in Arabic-Indic digits are reversed again. Pieces are joined
exactly, so no space is invented or lost. Ligatures stay whole because pypdf keeps a glyph's text
together (a lam-alef glyph maps to "لا", never reversed), which its layout mode does not.

PDFs whose producer stored Arabic in logical order (no shaping) come out of pypdf reversed instead;
that is detected per document from letters that only occur at one end of a word, and undone.
Presentation forms (ﻻ, ﺍﻟ...) are folded to base letters with NFKC after reordering.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pypdf import PageObject

from rag.normalize import detect_language

__all__ = ["PdfLine", "pdf_lines"]

_ARABIC_LETTERS = "\u0620-\u064a\u066e-\u06d3"
# What pypdf itself treats as right-to-left (Hebrew to Arabic Extended, presentation forms), digits included.
_RTL_RE = re.compile("[\u0590-\u08ff\ufb1d-\ufdff\ufe70-\ufefe]")
# A piece's direction-neutral edges: spaces and punctuation, but not the signs that stick to a number
# ("2.5%", "$5", "+971") and so take the number's direction.
_NEUTRAL = r"[^\w%‰$£€#+°]"
_EDGES_RE = re.compile(f"({_NEUTRAL}*)(.*?)({_NEUTRAL}*)", re.S)
_ARABIC_WORD_RE = re.compile(f"[{_ARABIC_LETTERS}]{{3,}}")
_INDIC_DIGIT = "\u0660-\u0669\u06f0-\u06f9"
# A number in Arabic-Indic digits, with its decimal (٫ or .) and thousands (٬ or ,) separators.
_INDIC_NUMBER_RE = re.compile(f"[{_INDIC_DIGIT}](?:[{_INDIC_DIGIT}\u066b\u066c.,]*[{_INDIC_DIGIT}])?")
_PRESENTATION_FORMS_RE = re.compile("[\ufb50-\ufdff\ufe70-\ufefe]+")


@dataclass(frozen=True, slots=True)
class PdfLine:
    """One line of text in reading order and the font size most of its characters are set in."""

    text: str
    size_pt: float  # effective size on the page (font size times text and graphics scaling), 0.5 pt steps


@dataclass(frozen=True, slots=True)
class _Piece:
    text: str
    size_pt: float


def pdf_lines(pages: Sequence[PageObject]) -> list[list[PdfLine]]:
    """Lines of each page in logical order; empty lists for pages without a text layer."""
    raw = [_raw_lines(page) for page in pages]
    stored_logical = _looks_reversed(piece.text for page in raw for line in page for piece in line)
    return [[_assemble(line, stored_logical) for line in page] for page in raw]


def _raw_lines(page: PageObject) -> list[list[_Piece]]:
    """pypdf's pieces grouped into lines; pieces are in drawing order, each internally logical."""
    lines: list[list[_Piece]] = [[]]

    def visit(text: Any, cm: Any, tm: Any, font: Any, font_size: Any) -> None:
        if not isinstance(text, str) or not text:
            return
        size = _effective_size(font_size, cm, tm)
        first, *rest = text.split("\n")
        if first:
            lines[-1].append(_Piece(first, size))
        for part in rest:
            lines.append([_Piece(part, size)] if part else [])

    page.extract_text(visitor_text=visit)
    return [line for line in lines if any(piece.text.strip() for piece in line)]


def _effective_size(font_size: Any, cm: Any, tm: Any) -> float:
    """Font size as drawn: many producers set `Tf 1` and scale the text matrix instead."""
    try:
        size = float(font_size)
        c = tm[2] * cm[0] + tm[3] * cm[2]
        d = tm[2] * cm[1] + tm[3] * cm[3]
        scale = math.hypot(c, d)
    except (TypeError, ValueError, IndexError):
        return 0.0
    return round(size * (scale or 1.0) * 2) / 2


def _looks_reversed(texts: Iterable[str]) -> bool:
    """True when the Arabic words read backwards, i.e. the PDF stored them in logical order.

    Taa marbuta (ة) and alef maqsura (ى) only end Arabic words, and "ال" very often starts them;
    reversed text shows the mirror image.
    """
    forward = backward = 0
    for text in texts:
        for word in _ARABIC_WORD_RE.findall(text):
            forward += word.startswith("ال") + (word[-1] in "ةى")
            backward += word.endswith("لا") + (word[0] in "ةى")
    return backward > forward


def _assemble(pieces: Sequence[_Piece], stored_logical: bool) -> PdfLine:
    texts = [piece.text for piece in pieces]
    if stored_logical:
        text = "".join(t[::-1] if _RTL_RE.search(t) else t for t in texts)
    else:
        text = _logical_order(texts)
        text = _INDIC_NUMBER_RE.sub(lambda match: match.group()[::-1], text)
    text = _PRESENTATION_FORMS_RE.sub(lambda match: unicodedata.normalize("NFKC", match.group()), text)
    return PdfLine(" ".join(text.split()), _dominant_size(pieces))


def _logical_order(texts: Sequence[str]) -> str:
    """Reading order of one line from pypdf's pieces (drawing order, each piece internally logical).

    pypdf glues the spaces and brackets at a run's edge to the run, but the bidi algorithm gives
    them the line's direction: in "رسوم [Visa]" the brackets belong to the Arabic line, not to "Visa".
    So a piece against the line's direction has its edges swapped back; then a right-to-left line
    is read from its rightmost piece.
    """
    rtl_line = detect_language("".join(texts)) == "ar"
    ordered = [_swap_edges(t) if bool(_RTL_RE.search(t)) != rtl_line else t for t in texts]
    if not rtl_line:
        return "".join(ordered)
    return "".join(reversed(ordered))


def _swap_edges(text: str) -> str:
    match = _EDGES_RE.fullmatch(text)
    if match is None or not match.group(2):
        return text
    lead, core, trail = match.groups()
    return trail[::-1] + core + lead[::-1]


def _dominant_size(pieces: Sequence[_Piece]) -> float:
    weights: Counter[float] = Counter()
    for piece in pieces:
        weights[piece.size_pt] += len(piece.text.strip())
    return weights.most_common(1)[0][0] if weights else 0.0
