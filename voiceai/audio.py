"""PCM16 audio: conversion, resampling, WAV files, and checking the format a client declares."""

from __future__ import annotations

import io
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
    """Resamples a stream chunk by chunk without clicks at chunk borders."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        self.passthrough = from_hz == to_hz
        self._rs = None if self.passthrough else soxr.ResampleStream(from_hz, to_hz, 1, dtype="float32")

    def process(self, samples: np.ndarray, last: bool = False) -> np.ndarray:
        if self._rs is None:
            return samples
        return self._rs.resample_chunk(samples.astype(np.float32, copy=False), last=last)


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
