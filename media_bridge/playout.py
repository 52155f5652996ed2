"""Paced playout of the bot's audio to the caller, with pause, resume and flush.

Audio is sent in fixed frames at real-time pace (one ``frame_ms`` frame per ``frame_ms``), so the
caller's jitter buffer stays small and a barge-in silences the bot within one frame. The playout
remembers which phrase each frame belongs to, so that after a barge-in the history keeps only
what the caller actually heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

SendAudio = Callable[[bytes], Awaitable[None]]


@dataclass
class _Phrase:
    text: str
    queued_bytes: int = 0
    played_bytes: int = 0
    complete: bool = False  # all its audio has been queued


@dataclass
class PlayoutStats:
    frames_sent: int = 0
    max_gap_ms: float = 0.0  # longest gap between two frames of one reply, beyond the frame time
    gaps_over_ms: dict[int, int] = field(default_factory=dict)


class Playout:
    """One per call. ``enqueue`` audio with its phrase; a task sends it paced."""

    def __init__(self, send: SendAudio, sample_rate_hz: int, frame_ms: int = 20,
                 on_first_frame: Callable[[], None] | None = None,
                 on_drained: Callable[[], None] | None = None,
                 on_phrase_start: Callable[[str], None] | None = None) -> None:
        self._send = send
        self.frame_bytes = sample_rate_hz * frame_ms // 1000 * 2
        self.frame_s = frame_ms / 1000
        self._frames: deque[tuple[bytes, _Phrase]] = deque()
        self._partial = b""
        self._phrases: list[_Phrase] = []
        self._wake = asyncio.Event()
        self._paused = False
        self._task: asyncio.Task | None = None
        self._on_first_frame = on_first_frame
        self._on_drained = on_drained
        self._on_phrase_start = on_phrase_start
        self._current: _Phrase | None = None  # the phrase whose frames are going out
        self._reply_open = False
        self._first_sent = False
        self._drain_notified = True
        self.stats = PlayoutStats()

    # ---- producer side -----------------------------------------------------------------------

    def start_reply(self) -> None:
        """A new reply begins: phrase accounting and the first-frame callback reset."""
        self._phrases = []
        self._first_sent = False
        self._reply_open = True
        self._drain_notified = False

    def begin_phrase(self, text: str) -> None:
        self._flush_partial()
        self._phrases.append(_Phrase(text))

    def enqueue(self, pcm16: bytes) -> None:
        """Adds audio of the current phrase (any length; cut into frames here)."""
        if not self._phrases:
            self.begin_phrase("")
        phrase = self._phrases[-1]
        data = self._partial + pcm16
        n = len(data) - len(data) % self.frame_bytes
        for i in range(0, n, self.frame_bytes):
            self._frames.append((data[i:i + self.frame_bytes], phrase))
        phrase.queued_bytes += n
        self._partial = data[n:]
        self._wake.set()

    def end_phrase(self) -> None:
        self._flush_partial()
        if self._phrases:
            self._phrases[-1].complete = True

    def end_reply(self) -> None:
        """No more audio for this reply; ``on_drained`` fires once the queue empties."""
        self.end_phrase()
        self._reply_open = False
        self._wake.set()

    def _flush_partial(self) -> None:
        if self._partial and self._phrases:
            pad = self._partial + b"\0" * (self.frame_bytes - len(self._partial))
            self._frames.append((pad, self._phrases[-1]))
            self._phrases[-1].queued_bytes += len(pad)
            self._partial = b""
            self._wake.set()

    # ---- control -----------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        """Audio queued or a reply still being produced."""
        return bool(self._frames) or self._reply_open

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False
        self._wake.set()

    def flush(self) -> str:
        """Drops everything not yet sent; returns the text the caller heard of this reply."""
        self._frames.clear()
        self._partial = b""
        self._paused = False
        self._reply_open = False
        self._drain_notified = True  # a cut reply is not "played to the end"
        heard = self.played_text()
        self._phrases = []
        return heard

    def played_text(self) -> str:
        """Whole phrases that were sent, plus the share of words of a phrase cut in the middle."""
        parts = []
        for p in self._phrases:
            if p.played_bytes == 0:
                break
            if p.complete and p.played_bytes >= p.queued_bytes:
                parts.append(p.text)
                continue
            words = p.text.split()
            share = p.played_bytes / max(p.queued_bytes, 1)
            cut = " ".join(words[: int(len(words) * share)])
            if cut:
                parts.append(cut)
            break
        return " ".join(t for t in parts if t)

    # ---- the pacing task ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="playout")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        deadline: float | None = None
        last_sent: float | None = None
        while True:
            if not self._frames or self._paused:
                if not self._frames and not self._reply_open and not self._drain_notified:
                    self._drain_notified = True
                    if self._on_drained:
                        self._on_drained()
                deadline, last_sent = None, None
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            if deadline is None:
                deadline = now
            elif deadline > now:
                await asyncio.sleep(deadline - now)
                if self._paused or not self._frames:
                    continue
            frame, phrase = self._frames.popleft()
            if phrase is not self._current:
                self._current = phrase
                if self._on_phrase_start and phrase.text:
                    self._on_phrase_start(phrase.text)
            await self._send(frame)
            sent = time.monotonic()
            phrase.played_bytes += len(frame)
            self.stats.frames_sent += 1
            if last_sent is not None:
                gap_ms = (sent - last_sent - self.frame_s) * 1000
                self.stats.max_gap_ms = max(self.stats.max_gap_ms, gap_ms)
            last_sent = sent
            if not self._first_sent:
                self._first_sent = True
                if self._on_first_frame:
                    self._on_first_frame()
            # Never run ahead of real time, and do not try to catch up after a stall either.
            deadline = max(deadline + self.frame_s, sent - self.frame_s)
