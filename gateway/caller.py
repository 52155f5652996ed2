"""`voiceai call`: a simulated caller, a real client of the call WebSocket.

Each WAV is one caller turn, streamed in real time in 20 ms frames, followed by silence while the
bot answers. The caller measures ``e2e_ms`` itself: from the end of its speech in the WAV (found
with the same Silero VAD) to the first bot audio frame received after it. With
``--barge-in-at-ms N`` the next turn starts N ms after the bot starts answering, interrupting it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voiceai.audio import float_to_pcm16, read_wav, write_wav

FRAME_MS = 20
REPLY_TIMEOUT_S = 45.0
QUIET_AFTER_REPLY_MS = 600  # bot audio silent this long after its turn event: the reply is over


@dataclass
class CallerTurn:
    wav: Path
    pcm: bytes
    speech_end_ms: float  # end of speech within the WAV


@dataclass
class _Listener:
    """Everything the server sends, with arrival times."""

    audio: list[tuple[float, int]] = field(default_factory=list)  # (arrival, bytes)
    audio_bytes: bytearray = field(default_factory=bytearray)
    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    max_gap_ms: float = 0.0

    def turn_count(self) -> int:
        return sum(1 for _, e in self.events if e.get("type") == "turn")


def speech_end_ms(samples: np.ndarray, models_dir: Path, vad_model: str = "silero-vad") -> float:
    """Where the last speech in a clip ends (Silero, the same model the server runs)."""
    from asr.vad import SegmenterOptions, SileroVadModel, SpeechSegmenter
    from voiceai import models

    seg = SpeechSegmenter(SileroVadModel(models.require(vad_model, models_dir) / "silero_vad.onnx"),
                          SegmenterOptions())
    events = seg.process(samples)
    end = seg.force_end()
    ends = [e.timestamp_ms for e in events if e.kind == "speech_end"] + ([end.timestamp_ms] if end else [])
    return float(max(ends)) if ends else len(samples) * 1000 / 16000


def load_turns(paths: list[Path], models_dir: Path, rate_hz: int) -> list[CallerTurn]:
    turns = []
    for p in paths:
        samples16, _ = read_wav(p, 16000)
        end_ms = speech_end_ms(samples16, models_dir)
        samples, _ = read_wav(p, rate_hz)
        turns.append(CallerTurn(p, float_to_pcm16(samples), end_ms))
    return turns


async def call_ws_url(url: str, language: str = "en", *, query: str = "",
                      headers: dict[str, str] | None = None) -> str:
    """Starts a call (``POST /v1/calls``: with ``headers`` holding an API key or token, or anonymously
    where the gateway allows it) and returns the WebSocket URL that joins it with its call token."""
    import httpx

    async with httpx.AsyncClient(base_url=url, headers=headers or {}, timeout=30) as http:
        resp = await http.post("/v1/calls", json={"language": language})
        if resp.status_code != 201:
            raise RuntimeError(f"could not start a call: HTTP {resp.status_code} {resp.text[:200]}")
        started = resp.json()
    base = url.rstrip("/").replace("http://", "ws://").replace("https://", "wss://")
    return f"{base}{started['ws_path']}&token={started['token']}" + (f"&{query}" if query else "")


async def simulate_call(url: str, turns: list[CallerTurn], language: str = "en", rate_hz: int = 16000,
                        barge_in_at_ms: int | None = None, out_dir: Path | None = None,
                        greeting: bool = False, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs one call; returns {"call_id", "turns": [...], "max_audio_gap_ms", "events"}."""
    import websockets

    ws_url = await call_ws_url(url, language, query=f"sample_rate_hz={rate_hz}&greeting={int(greeting)}",
                               headers=headers)
    frame_bytes = rate_hz * FRAME_MS // 1000 * 2
    listener = _Listener()
    results: list[dict[str, Any]] = []
    async with websockets.connect(ws_url, max_size=2**22) as ws:
        reader = asyncio.create_task(_listen(ws, listener))
        started = time.monotonic()
        silence = b"\0" * frame_bytes
        sent_frames = 0

        async def send_frame(frame: bytes) -> None:
            nonlocal sent_frames
            sent_frames += 1
            await ws.send(frame)
            await asyncio.sleep(max(0.0, started + sent_frames * FRAME_MS / 1000 - time.monotonic()))

        async def send_silence_until(predicate, timeout_s: float) -> bool:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if predicate():
                    return True
                await send_frame(silence)
            return False

        call_id = ""
        if greeting:  # let the greeting play out before the first turn
            await send_silence_until(lambda: _bot_quiet(listener, QUIET_AFTER_REPLY_MS) and listener.audio, 20)
        for i, turn in enumerate(turns):
            turn_started = time.monotonic()
            speech_end_at = None
            for k in range(0, len(turn.pcm), frame_bytes):
                frame = turn.pcm[k:k + frame_bytes].ljust(frame_bytes, b"\0")
                await send_frame(frame)
                if speech_end_at is None and (k + frame_bytes) / 2 / rate_hz * 1000 >= turn.speech_end_ms:
                    speech_end_at = time.monotonic()
            speech_end_at = speech_end_at or time.monotonic()
            n_events = listener.turn_count()

            def got_audio(after: float = speech_end_at) -> bool:
                return any(t > after for t, _ in listener.audio[-50:])

            await send_silence_until(got_audio, REPLY_TIMEOUT_S)
            first_audio = next((t for t, _ in listener.audio if t > speech_end_at), None)
            next_turn_barges = barge_in_at_ms is not None and i + 1 < len(turns)
            if next_turn_barges and first_audio is not None:
                barge_at = first_audio + (barge_in_at_ms or 0) / 1000
                await send_silence_until(lambda at=barge_at: time.monotonic() >= at, 30)
                # The next turn's audio starts now, while the bot speaks; its turn event arrives
                # once the cut reply is recorded.
            else:
                await send_silence_until(lambda n=n_events: listener.turn_count() > n
                                         and _bot_quiet(listener, QUIET_AFTER_REPLY_MS), REPLY_TIMEOUT_S)
            event = await _next_turn_event(listener, n_events, timeout_s=0 if next_turn_barges else 5)
            results.append(_turn_result(turn, event, speech_end_at, first_audio, turn_started))
            call_id = call_id or next((e.get("call_id", "") for _, e in listener.events
                                       if e.get("type") == "call.started"), "")
        if barge_in_at_ms is not None:
            # Collect turn events that arrived late (interrupted turns are recorded at the barge-in).
            await send_silence_until(lambda: _bot_quiet(listener, QUIET_AFTER_REPLY_MS), 15)
            _attach_late_turn_events(listener, results)
        with contextlib.suppress(Exception):
            await ws.send(json.dumps({"type": "hangup"}))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(listener.ended.wait(), 5)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader
    if out_dir is not None:
        await asyncio.to_thread(_save_audio, out_dir, bytes(listener.audio_bytes), rate_hz)
    return {"call_id": call_id, "turns": results, "max_audio_gap_ms": round(listener.max_gap_ms, 1),
            "events": [e for _, e in listener.events]}


def _save_audio(out_dir: Path, pcm: bytes, rate_hz: int) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_wav(out_dir / "bot.wav", pcm, rate_hz)


def _bot_quiet(listener: _Listener, quiet_ms: float) -> bool:
    return not listener.audio or time.monotonic() - listener.audio[-1][0] >= quiet_ms / 1000


async def _next_turn_event(listener: _Listener, already: int, timeout_s: float) -> dict[str, Any] | None:
    events = [e for _, e in listener.events if e.get("type") == "turn"]
    if len(events) > already:
        return events[already]
    if timeout_s <= 0:
        return None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        events = [e for _, e in listener.events if e.get("type") == "turn"]
        if len(events) > already:
            return events[already]
    return None


def _attach_late_turn_events(listener: _Listener, results: list[dict[str, Any]]) -> None:
    events = [e for _, e in listener.events if e.get("type") == "turn"]
    for i, r in enumerate(results):
        if r["bot_text"] is None and i < len(events):
            r.update(user_text=events[i]["user_text"], bot_text=events[i]["bot_text"],
                     interrupted=events[i]["interrupted"], stages=events[i]["stages"],
                     fallbacks=events[i].get("fallbacks", []))


def _turn_result(turn: CallerTurn, event: dict[str, Any] | None, speech_end_at: float,
                 first_audio: float | None, turn_started: float) -> dict[str, Any]:
    return {
        "wav": turn.wav.name,
        "user_text": event["user_text"] if event else None,
        "bot_text": event["bot_text"] if event else None,
        "e2e_ms": round((first_audio - speech_end_at) * 1000, 1) if first_audio else None,
        "stages": event["stages"] if event else {},
        "interrupted": bool(event and event["interrupted"]),
        "fallbacks": event.get("fallbacks", []) if event else [],
        "language": event.get("language") if event else None,
    }


async def _listen(ws, listener: _Listener) -> None:
    last_audio: float | None = None
    try:
        async for message in ws:
            now = time.monotonic()
            if isinstance(message, bytes):
                if last_audio is not None and now - last_audio < 0.5:
                    # Gaps inside one reply (a pause of 0.5 s or more is between replies).
                    listener.max_gap_ms = max(listener.max_gap_ms, (now - last_audio) * 1000 - FRAME_MS)
                last_audio = now
                listener.audio.append((now, len(message)))
                listener.audio_bytes += message
                continue
            event = json.loads(message)
            listener.events.append((now, event))
            if event.get("type") == "barge_in":
                last_audio = None
            if event.get("type") == "call.ended":
                listener.ended.set()
    finally:
        listener.ended.set()


def main_call(url: str, wavs: list[str], language: str, out_dir: str | None, barge_in_at_ms: int | None,
              models_dir: Path, rate_hz: int = 16000, token: str = "") -> dict[str, Any]:
    """``token``: an access token or API key that may start calls (else the gateway's anonymous tenant)."""
    turns = load_turns([Path(w) for w in wavs], models_dir, rate_hz)
    headers = {} if not token else {"X-API-Key": token} if token.startswith("vai_") else {
        "Authorization": f"Bearer {token}"}
    return asyncio.run(simulate_call(url, turns, language, rate_hz, barge_in_at_ms,
                                     Path(out_dir) if out_dir else None, headers=headers))
