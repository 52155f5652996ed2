"""Barge-in policy: caller speech pauses the bot at once; only real speech interrupts it.

A cough or a click pauses the bot for its length and the bot goes on. A backchannel
("mm-hmm", "اها") has words but no intent to take the turn: the bot goes on after its transcript
arrives. Anything else interrupts: the reply is cut and the caller has the turn.
"""

from __future__ import annotations

from enum import StrEnum

from media_bridge.config import InterruptionConfig
from media_bridge.endpointing import normalise


class Verdict(StrEnum):
    WAIT = "wait"  # keep the bot paused, not decided yet
    RESUME = "resume"  # not an interruption: the bot goes on
    INTERRUPT = "interrupt"


class BargeInPolicy:
    def __init__(self, cfg: InterruptionConfig) -> None:
        self.cfg = cfg
        self._backchannels = {normalise(b) for b in cfg.backchannels}

    def is_backchannel(self, text: str) -> bool:
        norm = normalise(text)
        if not norm:
            return True  # no words at all: noise
        words = norm.split()
        return norm in self._backchannels or all(w in self._backchannels for w in words)

    def while_speaking(self, speech_ms: float) -> Verdict:
        """The caller is still speaking, ``speech_ms`` so far."""
        if speech_ms >= self.cfg.confirm_speech_ms:
            return Verdict.INTERRUPT
        return Verdict.WAIT

    def speech_ended(self, speech_ms: float) -> Verdict:
        """The caller's speech ended after ``speech_ms``; the transcript is not in yet."""
        if speech_ms < self.cfg.min_speech_ms:
            return Verdict.RESUME
        if speech_ms >= self.cfg.confirm_speech_ms:
            return Verdict.INTERRUPT
        return Verdict.WAIT

    def transcript(self, text: str) -> Verdict:
        """The transcript of a short burst of caller speech arrived."""
        return Verdict.RESUME if self.is_backchannel(text) else Verdict.INTERRUPT
