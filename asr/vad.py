"""Silero VAD on ONNX Runtime, and the per-stream speech segmenter built on it.

The model is shared by every stream of a process (an ONNX Runtime session is safe to call from
several threads); each stream keeps its own recurrent state and context. One window is 512 samples
at 16 kHz (256 at 8 kHz), i.e. 32 ms, and costs a fraction of a millisecond on CPU, so the media
bridge runs it in-process on every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asr.api import VadEvent
from asr.config import VadConfig
from voiceai.serving import InvalidArgument

SUPPORTED_RATES_HZ = frozenset({8000, 16000})
_WINDOW = {16000: 512, 8000: 256}
_CONTEXT = {16000: 64, 8000: 32}
_INLINE_WINDOWS = 8


class SileroVadModel:
    """The Silero VAD network (v5/v6 ONNX: inputs ``input``, ``state``, ``sr``)."""

    def __init__(self, model_path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self._session = ort.InferenceSession(str(model_path), sess_options=opts,
                                             providers=["CPUExecutionProvider"])

    def __call__(self, window_with_context: np.ndarray, state: np.ndarray,
                 sample_rate_hz: int) -> tuple[float, np.ndarray]:
        """One window; returns the speech probability and the next recurrent state."""
        out, new_state = self._session.run(
            None,
            {"input": window_with_context[None, :], "state": state,
             "sr": np.array(sample_rate_hz, dtype=np.int64)},
        )
        return float(out[0, 0]), new_state


@dataclass(frozen=True)
class SegmenterOptions:
    """Thresholds of one stream, resolved from config and per-stream overrides."""

    sample_rate_hz: int = 16000
    threshold: float = 0.5
    neg_threshold: float = 0.35
    min_speech_ms: int = 150
    min_silence_ms: int = 300
    emit_probabilities: bool = False

    @classmethod
    def resolve(cls, cfg: VadConfig, sample_rate_hz: int, threshold: float = 0.0,
                min_silence_ms: int = 0, min_speech_ms: int = 0,
                emit_probabilities: bool = False) -> SegmenterOptions:
        if sample_rate_hz not in SUPPORTED_RATES_HZ:
            raise InvalidArgument("bad_sample_rate",
                                  f"sample_rate_hz={sample_rate_hz} is not supported; use 8000 or 16000 Hz")
        if threshold and not 0.05 <= threshold <= 0.95:
            raise InvalidArgument("bad_threshold", f"threshold={threshold} is outside 0.05..0.95")
        thr = threshold or cfg.threshold
        return cls(
            sample_rate_hz=sample_rate_hz,
            threshold=thr,
            neg_threshold=min(cfg.neg_threshold, thr - 0.05),
            min_speech_ms=min_speech_ms or cfg.min_speech_ms,
            min_silence_ms=min_silence_ms or cfg.min_silence_ms,
            emit_probabilities=emit_probabilities,
        )


class SpeechSegmenter:
    """Turns audio into speech start/end events for one stream.

    Hysteresis: speech starts once windows stay above ``threshold`` for ``min_speech_ms`` (the
    event carries the onset time), continues while they stay above ``neg_threshold``, and ends
    after ``min_silence_ms`` below it (the event carries the end of the last speech window).
    ``silence_since_ms`` exposes a silence that has begun but not yet ended the speech, so the
    ASR can start decoding early.
    """

    def __init__(self, model: SileroVadModel, options: SegmenterOptions) -> None:
        self.model = model
        self.options = options
        rate = options.sample_rate_hz
        self.window = _WINDOW[rate]
        self._ms_per_window = self.window * 1000 / rate
        self._context = np.zeros(_CONTEXT[rate], dtype=np.float32)
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self.samples_seen = 0  # samples fed through the model
        self.in_speech = False
        self._onset_ms: float | None = None  # candidate start not yet confirmed
        self._speech_start_ms = 0.0
        self._last_speech_end_ms = 0.0
        self.silence_since_ms: float | None = None
        self.last_probability = 0.0

    @property
    def now_ms(self) -> float:
        return self.samples_seen * 1000 / self.options.sample_rate_hz

    def process(self, samples: np.ndarray) -> list[VadEvent]:
        """Feeds float32 samples (any length); returns the events they complete."""
        data = np.concatenate([self._pending, samples.astype(np.float32, copy=False)])
        n_windows = len(data) // self.window
        events: list[VadEvent] = []
        for i in range(n_windows):
            window = data[i * self.window:(i + 1) * self.window]
            prob, self._state = self.model(np.concatenate([self._context, window]), self._state,
                                           self.options.sample_rate_hz)
            self._context = window[-len(self._context):]
            start_ms = self.now_ms
            self.samples_seen += self.window
            self.last_probability = prob
            self._step(prob, start_ms, events)
        self._pending = data[n_windows * self.window:]
        return events

    async def process_async(self, samples: np.ndarray) -> list[VadEvent]:
        """``process`` for event-loop callers: a long chunk runs in a worker thread.

        One window costs ~0.15 ms here, less than handing it to a thread, so live 10-40 ms frames
        are processed inline; bulk audio (a file, a burst after a stall) goes to a thread.
        """
        if len(samples) + len(self._pending) < _INLINE_WINDOWS * self.window:
            return self.process(samples)
        import asyncio

        return await asyncio.to_thread(self.process, samples)

    def _step(self, prob: float, window_start_ms: float, events: list[VadEvent]) -> None:
        o = self.options
        window_end_ms = window_start_ms + self._ms_per_window
        if o.emit_probabilities:
            events.append(VadEvent("probability", int(window_start_ms), prob))
        if not self.in_speech:
            if prob >= o.threshold:
                if self._onset_ms is None:
                    self._onset_ms = window_start_ms
                if window_end_ms - self._onset_ms >= o.min_speech_ms:
                    self.in_speech = True
                    self._speech_start_ms = self._onset_ms
                    self._last_speech_end_ms = window_end_ms
                    self.silence_since_ms = None
                    events.append(VadEvent("speech_start", int(self._onset_ms), prob))
            elif prob < o.neg_threshold:
                self._onset_ms = None  # a blip shorter than min_speech_ms: dropped
            return
        if prob >= o.neg_threshold:
            if prob >= o.threshold or self.silence_since_ms is None:
                self._last_speech_end_ms = window_end_ms
                self.silence_since_ms = None
            return
        if self.silence_since_ms is None:
            self.silence_since_ms = window_start_ms
        if window_end_ms - self.silence_since_ms >= o.min_silence_ms:
            self.in_speech = False
            self._onset_ms = None
            self.silence_since_ms = None
            events.append(VadEvent("speech_end", int(self._last_speech_end_ms), prob,
                                   int(self._last_speech_end_ms - self._speech_start_ms)))

    def force_end(self) -> VadEvent | None:
        """Ends speech now (stream closed or utterance cut); None when not in speech."""
        if not self.in_speech:
            self._onset_ms = None
            return None
        end_ms = self._last_speech_end_ms if self.silence_since_ms is not None else self.now_ms
        self.in_speech = False
        self.silence_since_ms = None
        self._last_speech_end_ms = end_ms
        return VadEvent("speech_end", int(end_ms), self.last_probability, int(end_ms - self._speech_start_ms))

    @property
    def speech_start_ms(self) -> float:
        return self._speech_start_ms

    @property
    def last_speech_end_ms(self) -> float:
        return self._last_speech_end_ms
