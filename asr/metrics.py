"""Word error rate for evaluating recognisers on Arabic and English (benchmarks and tests).

Words are compared after the same folding retrieval uses (Arabic marks, alef/yaa/taa-marbuta
forms, Arabic-Indic digits), so a transcript is not penalised for spelling variants the caller
cannot hear."""

from __future__ import annotations

import re

from rag.normalize import normalize_text

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    """Lower-cased, folded words of ``text``."""
    return _WORD.findall(normalize_text(text))


def word_errors(heard: list[str], said: list[str]) -> int:
    """Word-level edit distance (substitutions + insertions + deletions)."""
    row = list(range(len(said) + 1))
    for i, h in enumerate(heard, start=1):
        prev, row[0] = row[0], i
        for j, s in enumerate(said, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (h != s))
    return row[-1]


def wer(heard: str, said: str) -> float:
    """Word errors over the reference's word count (0.0 for two empty texts)."""
    reference = words(said)
    return word_errors(words(heard), reference) / max(1, len(reference))


def cer(heard: str, said: str) -> float:
    """Character errors over the reference's characters, spaces ignored (for Arabic, where a wrong word
    boundary or a clitic makes word errors of a nearly right transcript)."""
    reference = list(normalize_text(said).replace(" ", ""))
    return word_errors(list(normalize_text(heard).replace(" ", "")), reference) / max(1, len(reference))
