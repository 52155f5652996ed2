"""Arabic and English text normalisation for the index side of the knowledge base.

Everything here feeds embeddings and BM25 only. Users and the LLM always see the original text: the
folded forms (ه for ة, ي for ى, no harakat) are what makes a query typed without diacritics or with a
different alef match the document, but they are wrong Arabic to display.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = [
    "ARABIC_MARKS_RE",
    "detect_language",
    "fold_numbers",
    "is_arabic_letter",
    "normalize_text",
    "strip_arabic_marks",
    "tokenize",
]

# Harakat, tanween, shadda, sukun, maddah/hamza marks (U+064B-U+065F), superscript alef (U+0670),
# Quranic annotation signs (U+0610-U+061A, U+06D6-U+06ED) and tatweel (U+0640). None of them changes
# which word it is for search, and keyboards, OCR and PDFs disagree about all of them.
ARABIC_MARKS_RE = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")

# Arabic-Indic (٠-٩) and Eastern Arabic-Indic (Persian/Urdu, ۰-۹) digits and the Arabic decimal and
# thousands separators, as ASCII: "١٬٢٥٠٫٥" is 1,250.5.
_NUMBERS = {
    "٫": ".",
    "٬": ",",
    **{chr(0x0660 + d): str(d) for d in range(10)},
    **{chr(0x06F0 + d): str(d) for d in range(10)},
}

_FOLD = str.maketrans(
    {
        # Alef with hamza above/below, with madda, and alef wasla: users type bare ا for all of them.
        "أ": "ا",
        "إ": "ا",
        "آ": "ا",
        "ٱ": "ا",
        # Alef maqsura and taa marbuta are routinely written as ي / ه at the end of a word.
        "ى": "ي",
        "ة": "ه",
        # Hamza seats: the seat letter is what survives when the hamza is dropped.
        "ؤ": "و",
        "ئ": "ي",
        # Farsi yeh and keheh come from Persian keyboard layouts used to type Arabic.
        "ی": "ي",
        "ک": "ك",
        # The percent sign, so that with the numbers below "٢٫٥٪" reads as 2.5%.
        "٪": "%",
        **_NUMBERS,
    }
)
_NUMBER_FOLD = str.maketrans(_NUMBERS)

_SPACE_RE = re.compile(r"\s+")

# A number keeps its internal separators ("2.5", "1,000") so it stays one token; otherwise a run of
# letters/digits. Underscore is excluded so "card_fee" reads as two words, as a person would read it.
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+")
# "1,000" and "1000" are the same amount; only comma groups of exactly three digits are thousands.
_THOUSANDS_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")

# Definite-article prefixes, longest first so "وال" wins over "ال". Only the article is stripped:
# it is by far the most common reason the same noun misses in BM25 (البطاقة vs بطاقة), while a real
# light stemmer (suffixes, lone و/ب/ل/ف prefixes) conflates unrelated words without a lexicon. Dense
# embeddings cover the rest of Arabic morphology.
_ARTICLE_PREFIXES = ("وال", "بال", "فال", "كال", "لل", "ال")
_MIN_STEM_LETTERS = 2


def is_arabic_letter(char: str) -> bool:
    """True for letters of the Arabic script, including presentation forms and supplements."""
    code = ord(char)
    arabic_block = (
        0x0600 <= code <= 0x06FF
        or 0x0750 <= code <= 0x077F
        or 0x08A0 <= code <= 0x08FF
        or 0xFB50 <= code <= 0xFDFF
        or 0xFE70 <= code <= 0xFEFF
    )
    return arabic_block and char.isalpha()


def strip_arabic_marks(text: str) -> str:
    """Removes diacritics and tatweel; they change neither the word nor its token count much."""
    return ARABIC_MARKS_RE.sub("", text)


def fold_numbers(text: str) -> str:
    """Arabic-Indic digits and separators as ASCII; everything else untouched (the embedder's input)."""
    return text.translate(_NUMBER_FOLD)


def normalize_text(text: str) -> str:
    """Folds text to the form used for embedding and BM25 input; never for display.

    NFKC runs first because PDFs often hand back Arabic presentation forms (ﺍﻟﺒﻄﺎﻗﺔ), which NFKC maps
    to base letters that the letter folding below then understands.
    """
    folded = unicodedata.normalize("NFKC", text)
    folded = strip_arabic_marks(folded).translate(_FOLD)
    return _SPACE_RE.sub(" ", folded.lower()).strip()


def _strip_article(token: str) -> str:
    for prefix in _ARTICLE_PREFIXES:
        if token.startswith(prefix):
            stem = token[len(prefix):]
            if len(stem) >= _MIN_STEM_LETTERS and stem.isalpha():
                return stem
            # Too short a remainder: keep looking, a shorter prefix may still leave enough ("لل" vs "ال").
    return token


def tokenize(text: str) -> list[str]:
    """Word tokens for BM25: normalised, Latin lowercased, numbers kept, punctuation dropped.

    Arabic tokens also lose a leading definite article when at least two letters remain, so that
    "بالبطاقة" and "بطاقة" index alike while short words such as "الي" (إلى) are left intact.
    """
    return [_finish_token(token) for token in _TOKEN_RE.findall(normalize_text(text))]


def _finish_token(token: str) -> str:
    if is_arabic_letter(token[0]):
        return _strip_article(token)
    if _THOUSANDS_RE.fullmatch(token):
        return token.replace(",", "")
    return token


def detect_language(text: str) -> str:
    """"ar" when Arabic letters outnumber all other letters, else "en" (also for text with no letters).

    Counting letters rather than words keeps a Latin product name or an email address inside an
    Arabic paragraph from tipping the answer.
    """
    arabic = other = 0
    for char in text:
        if not char.isalpha():
            continue
        if is_arabic_letter(char):
            arabic += 1
        else:
            other += 1
    return "ar" if arabic > other else "en"
