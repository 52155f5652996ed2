"""Deciding that the caller's turn is over: VAD silence per language, shortened for short answers."""

from __future__ import annotations

import re
import unicodedata

from media_bridge.config import EndpointConfig

# Answers that are complete on their own; waiting the full silence after them only adds latency.
_SHORT_ANSWERS = frozenset({
    "yes", "no", "yeah", "yep", "nope", "sure", "okay", "ok", "correct", "right", "exactly", "thanks",
    "thank you", "that's right", "that's all", "no thanks", "no thank you", "yes please", "goodbye", "bye",
    "نعم", "لا", "اي", "ايوه", "ايوا", "أيوه", "صح", "صحيح", "تمام", "طيب", "شكرا", "مشكور", "لا شكرا",
    "نعم من فضلك", "اكيد", "أكيد", "مع السلامة", "خلاص", "اوكي",
})
_PUNCT = re.compile(r"[^\w\s']+", re.UNICODE)


def normalise(text: str) -> str:
    """Lower case, no punctuation, no Arabic diacritics or tatweel, one space between words."""
    stripped = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))
    stripped = stripped.replace("ـ", "")
    return " ".join(_PUNCT.sub(" ", stripped.casefold()).split())


class Endpointer:
    """Turns segment finals and silence into an end-of-turn deadline."""

    def __init__(self, cfg: EndpointConfig, language: str) -> None:
        self.cfg = cfg
        self.language = language

    def silence_ms(self, language: str | None = None) -> int:
        lang = language or self.language
        return self.cfg.silence_ms.get(lang, self.cfg.default_silence_ms)

    def is_short_answer(self, text: str) -> bool:
        norm = normalise(text)
        return bool(norm) and len(norm.split()) <= self.cfg.short_answer_max_words and norm in {
            normalise(a) for a in _SHORT_ANSWERS}

    def deadline_ms(self, speech_end_ms: float, turn_text: str, language: str | None = None) -> float:
        """Call-clock time at which the turn ends if the caller stays silent."""
        if self.is_short_answer(turn_text):
            return speech_end_ms  # the final is in: nothing to wait for
        return speech_end_ms + self.silence_ms(language)
