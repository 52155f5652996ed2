"""Stable-prefix policy for interim transcripts (local agreement of consecutive hypotheses).

Each interim re-decodes the whole utterance so far, and Whisper may rewrite its tail. A word is
committed once two consecutive hypotheses agree on it and on everything before it; committed words
are never withdrawn within the utterance, so a caption that is already shown rarely changes. Only
the final hypothesis may differ from the committed prefix (and then it wins).
"""

from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def _key(word: str) -> str:
    """Comparison form: case, punctuation and Arabic diacritics do not break agreement."""
    stripped = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    return _PUNCT.sub("", stripped.casefold())


class StablePrefix:
    """Tracks one utterance's interims; ``update`` returns (stable_text, unstable_text)."""

    def __init__(self) -> None:
        self._committed: list[str] = []
        self._previous: list[str] = []

    def update(self, hypothesis: str) -> tuple[str, str]:
        words = hypothesis.split()
        agreed = 0
        for a, b in zip(self._previous, words, strict=False):
            if _key(a) != _key(b):
                break
            agreed += 1
        if agreed > len(self._committed):
            # Extend only: what was committed stays, the newly agreed words follow.
            self._committed = self._committed + words[len(self._committed):agreed]
        self._previous = words
        tail = self._tail(words)
        return " ".join(self._committed), " ".join(tail)

    def _tail(self, words: list[str]) -> list[str]:
        """The part of the new hypothesis after the committed prefix."""
        n = len(self._committed)
        if [_key(w) for w in words[:n]] == [_key(w) for w in self._committed]:
            return words[n:]
        # The hypothesis rewrote committed words; keep showing the committed ones, and only
        # what the hypothesis has beyond their length.
        return words[n:] if len(words) > n else []

    @property
    def committed(self) -> str:
        return " ".join(self._committed)

    def reset(self) -> None:
        self._committed, self._previous = [], []
