"""espeak-ng as a subprocess: formant speech, robotic but instant, for Arabic and as the fallback."""

from __future__ import annotations

import struct
import subprocess
from collections.abc import Iterator

import numpy as np

from tts.backends import BackendCapabilities
from tts.config import TtsConfig, VoiceConfig

_MIN_WPM, _MAX_WPM = 80, 450  # the range espeak-ng accepts


def parse_wav(data: bytes) -> tuple[np.ndarray, int]:
    """Mono float32 samples and rate from espeak-ng's ``--stdout`` WAV.

    espeak-ng streams, so its RIFF and data sizes are placeholders (0x7fffffff); the data chunk is
    taken to run to the end of the bytes instead of trusting its size.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("espeak-ng did not write a WAV stream")
    pos, rate_hz, channels, bits = 12, 0, 0, 0
    while pos + 8 <= len(data):
        chunk_id, size = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            _fmt, channels, rate_hz, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", data, body)
        elif chunk_id == b"data":
            if bits != 16 or channels != 1:
                raise ValueError(f"espeak-ng wrote {channels} channel(s) of {bits}-bit audio; "
                                 "expected mono 16-bit")
            pcm = data[body:]
            pcm = pcm[: len(pcm) - len(pcm) % 2]
            return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0, rate_hz
        pos = body + size + (size & 1)
    raise ValueError("espeak-ng WAV stream has no data chunk")


class EspeakBackend:
    """Runs ``espeak-ng`` once per phrase; text goes through stdin, never argv or a shell."""

    name = "espeak"
    # Each phrase is its own process, so two can run at once on two cores.
    capabilities = BackendCapabilities(streams_within_phrase=False, max_concurrent_phrases=2)

    def __init__(self, voice: VoiceConfig, cfg: TtsConfig) -> None:
        if not voice.espeak_voice:
            raise ValueError(f"voice {voice.id!r}: an espeak voice needs 'espeak_voice' (e.g. 'ar')")
        self._voice = voice.espeak_voice
        self._binary = cfg.espeak_binary
        self._wpm = cfg.espeak_wpm
        self._timeout_s = cfg.espeak_timeout_s
        self._rate_hz = 0

    @property
    def sample_rate_hz(self) -> int:
        return self._rate_hz

    def load(self) -> None:
        # One tiny render checks the binary and the voice, and tells the native rate.
        _samples, self._rate_hz = self._render("a", 1.0)

    def synthesize_phrase(self, text: str, language: str, speed: float) -> Iterator[np.ndarray]:
        samples, _rate = self._render(text, speed)
        yield samples

    def close(self) -> None:
        pass

    def _render(self, text: str, speed: float) -> tuple[np.ndarray, int]:
        wpm = min(_MAX_WPM, max(_MIN_WPM, round(self._wpm * speed)))
        # -b 1: the input is UTF-8. Text on stdin cannot be mistaken for an option.
        cmd = [self._binary, "-b", "1", "-v", self._voice, "-s", str(wpm), "--stdout"]
        try:
            done = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True,
                                  timeout=self._timeout_s, check=False)
        except FileNotFoundError as err:
            raise RuntimeError(f"{self._binary} not found; install it with: "
                               "apt-get install espeak-ng") from err
        if done.returncode == 0 and not done.stdout:
            return np.zeros(0, dtype=np.float32), self._rate_hz  # nothing speakable in the text
        if done.returncode != 0 or not done.stdout.startswith(b"RIFF"):
            detail = (done.stderr or done.stdout[:200]).decode("utf-8", "replace").strip()
            raise RuntimeError(f"espeak-ng voice {self._voice!r} failed (exit {done.returncode}): {detail}")
        return parse_wav(done.stdout)
