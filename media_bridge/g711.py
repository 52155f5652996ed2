"""G.711 companding (ITU-T G.711): mu-law (PCMU, North America, Twilio) and A-law (PCMA, the rest of the
world, UAE trunks) between 8-bit codes and 16-bit linear PCM, vectorised with numpy.

Phone audio is 8 kHz G.711 in 20 ms packets (160 bytes). Decoding goes through a 256-entry table (exact);
encoding computes the segment and mantissa directly, matching the reference encoder bit for bit
(tested against the standard library's audioop where it still exists).
"""

from __future__ import annotations

import numpy as np

_BIAS = 0x84


def _ulaw_decode_table() -> np.ndarray:
    codes = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    codes = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (codes >> 4) & 0x07
    mantissa = codes & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(codes & 0x80, magnitude, -magnitude).astype(np.int16)


ULAW_TO_LINEAR = _ulaw_decode_table()
ALAW_TO_LINEAR = _alaw_decode_table()


def _pcm(pcm16: bytes) -> np.ndarray:
    if len(pcm16) % 2:
        raise ValueError(f"PCM16 needs an even number of bytes, got {len(pcm16)}")
    return np.frombuffer(pcm16, dtype="<i2").astype(np.int32)


def _segment(magnitude: np.ndarray, base_shift: int) -> np.ndarray:
    """Position of the highest set bit above ``base_shift`` (0-7): the G.711 segment (exponent)."""
    seg = np.zeros(magnitude.shape, dtype=np.int32)
    for bit in range(7, 0, -1):
        seg = np.where((seg == 0) & (magnitude >= (1 << (bit + base_shift))), bit, seg)
    return seg


_ULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])


def ulaw_encode(pcm16: bytes) -> bytes:
    x = _pcm(pcm16) >> 2  # mu-law works on 14-bit samples (floor shift, as the reference encoder)
    mask = np.where(x < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(x), 8159) + 0x21
    exponent = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude).astype(np.int32)
    code = (np.minimum(exponent, 7) << 4) | ((magnitude >> (exponent + 1)) & 0x0F)
    code = np.where(exponent >= 8, 0x7F, code)  # beyond the last segment: the largest code
    return (code ^ mask).astype(np.uint8).tobytes()


def ulaw_decode(codes: bytes) -> bytes:
    return ULAW_TO_LINEAR[np.frombuffer(codes, dtype=np.uint8)].astype("<i2").tobytes()


def alaw_encode(pcm16: bytes) -> bytes:
    x = _pcm(pcm16) >> 3  # A-law works on 13-bit samples
    sign = np.where(x >= 0, 0x80, 0)
    magnitude = np.where(x >= 0, x, -x - 1)
    magnitude = np.minimum(magnitude, 0x0FFF)
    exponent = _segment(magnitude, 4)
    mantissa = np.where(exponent == 0, magnitude >> 1, magnitude >> exponent) & 0x0F
    return ((sign | (exponent << 4) | mantissa) ^ 0x55).astype(np.uint8).tobytes()


def alaw_decode(codes: bytes) -> bytes:
    return ALAW_TO_LINEAR[np.frombuffer(codes, dtype=np.uint8)].astype("<i2").tobytes()
