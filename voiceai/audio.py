"""PCM16 audio: conversion, resampling, WAV files, and checking the format a client declares."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from voiceai.serving import InvalidArgument

MODEL_RATE_HZ = 16000


def pcm16_to_float(pcm: bytes) -> np.ndarray:
    """Little-endian int16 bytes to float32 in [-1, 1)."""
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def float_to_pcm16(samples: np.ndarray) -> bytes:
    """float32 in [-1, 1] to little-endian int16 bytes (clipped)."""
    clipped = np.clip(samples, -1.0, 32767 / 32768)
    return (clipped * 32768.0).astype("<i2").tobytes()


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality); a no-op when the rates match."""
    if from_hz == to_hz or samples.size == 0:
        return samples.astype(np.float32, copy=False)
    return soxr.resample(samples, from_hz, to_hz, quality="HQ").astype(np.float32, copy=False)


class StreamResampler:
    """Resamples a stream chunk by chunk without clicks at chunk borders.

    Small rational ratios (8 <-> 16 kHz, 48 <-> 16 kHz, 24 -> 16 kHz: what callers send) use
    ``FirResampler``, which hands out every sample a chunk determines at once: soxr's streaming mode
    releases output in blocks of up to ~100 ms at 8 kHz, and the caller's end of speech would reach
    the VAD that much later. Other ratios (TTS voices at 22.05 kHz) use soxr HQ."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        self.passthrough = from_hz == to_hz
        self._fir: FirResampler | None = None
        self._rs = None
        if not self.passthrough:
            if FirResampler.suits(from_hz, to_hz):
                self._fir = FirResampler(from_hz, to_hz)
            else:
                self._rs = soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32")

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._fir is not None:
            return self._fir.process(samples, last)
        if self._rs is None:
            return samples
        return self._rs.resample_chunk(samples.astype(np.float32, copy=False), last=last)


class FirResampler:
    """Streaming rational resampler (up by L, low-pass, down by M) with a Kaiser-windowed sinc filter.

    The filter passes up to 90% of the lower Nyquist frequency and stops (~70 dB) from 110% of it, so
    nothing above what the lower rate can hold is imaged (upsampling) or folded back (downsampling).
    It is causal: each chunk yields all the output it determines, delayed only by the filter's group
    delay (about 2.7 ms for 8 -> 16 kHz and 48 -> 16 kHz)."""

    MAX_FACTOR = 6
    ATTENUATION_DB = 70.0

    @classmethod
    def suits(cls, from_hz: int, to_hz: int) -> bool:
        g = math.gcd(from_hz, to_hz)
        return from_hz // g <= cls.MAX_FACTOR and to_hz // g <= cls.MAX_FACTOR

    def __init__(self, from_hz: int, to_hz: int) -> None:
        g = math.gcd(from_hz, to_hz)
        self.up, self.down = to_hz // g, from_hz // g
        high_hz = from_hz * self.up
        nyquist = min(from_hz, to_hz) / 2
        transition = 0.2 * nyquist / high_hz  # 0.9 to 1.1 of the lower Nyquist, in cycles per high-rate sample
        taps = math.ceil((self.ATTENUATION_DB - 7.95) / (14.36 * transition)) | 1
        beta = 0.1102 * (self.ATTENUATION_DB - 8.7)
        cutoff = nyquist / high_hz
        n = np.arange(taps) - (taps - 1) / 2
        self.taps = (2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(taps, beta) * self.up).astype(np.float64)
        self.group_delay_s = (taps - 1) / 2 / high_hz
        self._keep = math.ceil((taps + self.down) / self.up)  # input samples of history each output needs
        self._history = np.zeros(self._keep, dtype=np.float64)
        self._consumed = 0  # input samples seen
        self._produced = 0  # output samples handed out

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        chunk = np.asarray(samples, dtype=np.float64)
        if last:  # let the filter's tail out
            chunk = np.concatenate([chunk, np.zeros(math.ceil(len(self.taps) / 2 / self.up))])
        if chunk.size == 0:
            return np.zeros(0, dtype=np.float32)
        segment = np.concatenate([self._history, chunk])
        first = self._consumed - self._keep  # input index of segment[0]
        stuffed = np.zeros(segment.size * self.up)
        stuffed[::self.up] = segment
        filtered = np.convolve(stuffed, self.taps)[:stuffed.size]
        self._consumed += chunk.size
        end = (self._consumed * self.up - 1) // self.down + 1  # outputs whose inputs have all arrived
        picks = np.arange(self._produced, end) * self.down - first * self.up
        self._produced = end
        self._history = segment[-self._keep:]
        return filtered[picks].astype(np.float32)


def read_wav(path: str | Path, target_rate_hz: int | None = MODEL_RATE_HZ) -> tuple[np.ndarray, int]:
    """Reads a sound file as mono float32, resampled to ``target_rate_hz`` unless it is None."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise ValueError(f"{path}: not a readable audio file ({err})") from err
    mono = data.mean(axis=1)
    if target_rate_hz and rate != target_rate_hz:
        return resample(mono, rate, target_rate_hz), target_rate_hz
    return mono, rate


def write_wav(path: str | Path, samples: np.ndarray | bytes, rate_hz: int) -> None:
    """Writes mono PCM16 WAV from float samples or PCM16 bytes."""
    if isinstance(samples, bytes | bytearray):
        samples = pcm16_to_float(bytes(samples))
    sf.write(str(path), samples, rate_hz, subtype="PCM_16", format="WAV")


def wav_bytes(samples: np.ndarray, rate_hz: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate_hz, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def check_format(fmt, allowed_rates_hz: tuple[int, int] | frozenset[int]) -> int:
    """Validates a ``voiceai.common.v1.AudioFormat``; returns the sample rate.

    ``allowed_rates_hz`` is either an inclusive (low, high) range or a set of exact rates.
    """
    from voiceai.common.v1 import audio_pb2

    if fmt.encoding != audio_pb2.AUDIO_ENCODING_PCM16LE:
        name = audio_pb2.AudioEncoding.Name(fmt.encoding) if fmt.encoding in audio_pb2.AudioEncoding.values() \
            else str(fmt.encoding)
        raise InvalidArgument("bad_encoding", f"encoding {name} is not supported; send AUDIO_ENCODING_PCM16LE")
    if fmt.channels not in (0, 1):
        raise InvalidArgument("bad_channels", f"{fmt.channels} channels sent; only mono (1) is accepted")
    rate = fmt.sample_rate_hz
    if isinstance(allowed_rates_hz, tuple):
        low, high = allowed_rates_hz
        ok = low <= rate <= high
        allowed = f"{low}..{high} Hz"
    else:
        ok = rate in allowed_rates_hz
        allowed = " or ".join(f"{r} Hz" for r in sorted(allowed_rates_hz))
    if not ok:
        raise InvalidArgument("bad_sample_rate", f"sample_rate_hz={rate} is not supported; use {allowed}")
    return rate


class Pcm16Assembler:
    """Joins PCM16 byte chunks that may split a sample across messages."""

    def __init__(self) -> None:
        self._carry = b""

    def push(self, chunk: bytes) -> np.ndarray:
        data = self._carry + chunk
        whole = len(data) - (len(data) % 2)
        self._carry = data[whole:]
        return pcm16_to_float(data[:whole])

    @property
    def pending_bytes(self) -> int:
        return len(self._carry)
