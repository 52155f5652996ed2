"""G.711 mu-law and A-law: bit-exact against the reference encoder, and speech survives the round trip."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from media_bridge import g711

pytestmark = pytest.mark.unit

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16).tobytes()
ALL_CODES = bytes(range(256))

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # the C reference encoder (removed from the standard library in Python 3.13)
    except ImportError:  # pragma: no cover
        audioop = None


@pytest.mark.skipif(audioop is None, reason="audioop (the reference G.711 implementation) left Python in 3.13")
@pytest.mark.parametrize(("encode", "decode", "ref_encode", "ref_decode"), [
    ("ulaw_encode", "ulaw_decode", "lin2ulaw", "ulaw2lin"), ("alaw_encode", "alaw_decode", "lin2alaw", "alaw2lin")])
def test_every_sample_and_code_matches_the_reference(encode: str, decode: str, ref_encode: str,
                                                     ref_decode: str) -> None:
    assert getattr(g711, encode)(ALL_SAMPLES) == getattr(audioop, ref_encode)(ALL_SAMPLES, 2)
    assert getattr(g711, decode)(ALL_CODES) == getattr(audioop, ref_decode)(ALL_CODES, 2)


@pytest.mark.parametrize(("encode", "decode", "silence"), [
    (g711.ulaw_encode, g711.ulaw_decode, 0xFF), (g711.alaw_encode, g711.alaw_decode, 0xD5)])
def test_known_codes_and_round_trip_error(encode, decode, silence) -> None:  # type: ignore[no-untyped-def]
    assert encode(np.zeros(160, np.int16).tobytes()) == bytes([silence]) * 160  # 20 ms of telephone silence
    t = np.arange(8000) / 8000
    tone = (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    back = np.frombuffer(decode(encode(tone.tobytes())), np.int16).astype(np.float64)
    snr_db = 10 * np.log10(np.sum(tone.astype(np.float64) ** 2) / np.sum((back - tone) ** 2))
    assert snr_db > 30  # G.711 gives ~38 dB on a loud tone; garbage would be near 0
    assert len(encode(tone.tobytes())) == len(tone)  # one byte per sample


def test_odd_byte_count_is_refused() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        g711.ulaw_encode(b"\x00\x01\x02")
