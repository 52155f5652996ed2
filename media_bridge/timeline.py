"""One clock per call, and the timings of each turn measured on it."""

from __future__ import annotations

import bisect
import time
from dataclasses import asdict, dataclass


class CallClock:
    """Milliseconds since the call started (monotonic), and a map from caller-audio time to it.

    Caller audio arrives in real time, but not exactly: the clock remembers when each piece of
    audio arrived, so a VAD timestamp (position in the caller's audio) converts to the moment the
    bridge had that audio.
    """

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._audio_ms: list[float] = []
        self._wall_ms: list[float] = []

    def now_ms(self) -> float:
        return (time.monotonic() - self._t0) * 1000

    def audio_received(self, audio_end_ms: float) -> None:
        """Records that caller audio up to ``audio_end_ms`` has arrived now."""
        self._audio_ms.append(audio_end_ms)
        self._wall_ms.append(self.now_ms())
        if len(self._audio_ms) > 3000:  # one minute of 20 ms frames is plenty of history
            del self._audio_ms[:1000], self._wall_ms[:1000]

    def at_audio(self, audio_ms: float) -> float:
        """Call-clock time at which the caller's audio position ``audio_ms`` arrived."""
        i = bisect.bisect_left(self._audio_ms, audio_ms)
        if i >= len(self._audio_ms):
            return self._wall_ms[-1] if self._wall_ms else self.now_ms()
        return self._wall_ms[i]


@dataclass
class TurnTimings:
    """Per-stage timestamps of one turn, in call-clock milliseconds (None: did not happen)."""

    speech_end_ms: float | None = None
    final_transcript_ms: float | None = None
    endpoint_ms: float | None = None
    llm_first_token_ms: float | None = None
    first_phrase_ms: float | None = None  # the first phrase of the reply went to the TTS
    tts_first_audio_ms: float | None = None
    first_audio_sent_ms: float | None = None

    @property
    def e2e_ms(self) -> float | None:
        if self.first_audio_sent_ms is None or self.speech_end_ms is None:
            return None
        return self.first_audio_sent_ms - self.speech_end_ms

    def as_dict(self) -> dict[str, float | None]:
        out = {k: (round(v, 1) if v is not None else None) for k, v in asdict(self).items()}
        e2e = self.e2e_ms
        out["e2e_ms"] = round(e2e, 1) if e2e is not None else None
        return out

    def stage_durations_ms(self) -> dict[str, float]:
        """Durations between consecutive stages, for the per-stage latency histograms."""
        marks = [("speech_end_ms", "final_transcript_ms", "asr_final"),
                 ("speech_end_ms", "endpoint_ms", "endpoint_wait"),
                 ("endpoint_ms", "llm_first_token_ms", "llm_first_token"),
                 ("endpoint_ms", "first_phrase_ms", "llm_first_phrase"),
                 ("first_phrase_ms", "tts_first_audio_ms", "tts_first_audio"),
                 ("tts_first_audio_ms", "first_audio_sent_ms", "playout"),
                 ("speech_end_ms", "first_audio_sent_ms", "e2e")]
        out = {}
        for start, end, name in marks:
            a, b = getattr(self, start), getattr(self, end)
            if a is not None and b is not None:
                out[name] = max(0.0, b - a)
        return out
