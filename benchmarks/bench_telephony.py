"""Phone audio and the recogniser: word error rate and decode time of 8 kHz G.711 speech against 16 kHz.

    .venv/bin/python -m benchmarks.bench_telephony [--rounds 3]

Each fixture clip (tests/fixtures/audio: Piper English, MBROLA Arabic) is recognised three ways by the
configured ASR (Whisper, in-process): as recorded (16 kHz), and as a phone call delivers it to the
bridge, downsampled to 8 kHz, through G.711 mu-law or A-law and back, and resampled to 16 kHz frame
by frame by the bridge (``voiceai.audio.StreamResampler``, exactly the ``CallSession`` path). WER is over folded words
(``asr.metrics``); "final after end" is from the last audio chunk to the final transcript.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from asr.api import AsrOptions, Transcript
from asr.client import InProcessAsrClient
from asr.metrics import cer, word_errors, words
from asr.recognizer import AsrEngine
from benchmarks import report
from tests.asr_helpers import as_bridge_hears, phone_line_pcm
from tests.conftest import AUDIO
from voiceai.audio import float_to_pcm16, read_wav
from voiceai.config import load_settings

PATHS = ("16 kHz", "PCMU 8 kHz", "PCMA 8 kHz")
CHUNK_MS = 20


def clip(name: str, path: str) -> bytes:
    if path == "16 kHz":
        samples, _ = read_wav(AUDIO / name, 16000)
        pcm = float_to_pcm16(samples)
    else:
        pcm = as_bridge_hears(phone_line_pcm(name, path.split()[0]), 8000)
    return b"\0" * 16000 + pcm + b"\0" * 32000  # lead and tail silence, as in a call


async def recognise(client: InProcessAsrClient, pcm: bytes) -> tuple[str, float]:
    """The final text, and ms from the last chunk sent to the last final."""
    session = client.open(AsrOptions(language="auto", interim_results=False))
    step = 16000 * CHUNK_MS // 1000 * 2
    sent_at = 0.0

    async def feed() -> None:
        nonlocal sent_at
        for i in range(0, len(pcm), step):
            await session.send_audio(pcm[i:i + step])
            await asyncio.sleep(0)
        sent_at = time.perf_counter()
        await session.close()

    feeder = asyncio.get_running_loop().create_task(feed())
    texts, last = [], 0.0
    try:
        async for r in session.results():
            if isinstance(r, Transcript) and r.is_final and r.text:
                texts.append(r.text)
                last = time.perf_counter()
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    return " ".join(texts), max(0.0, (last - sent_at) * 1000)


async def run(rounds: int) -> dict[str, Any]:
    settings = load_settings(profile="cpu", env={})
    engine = AsrEngine(settings)
    await asyncio.to_thread(engine.load)
    client = InProcessAsrClient(engine)
    texts = json.loads((AUDIO / "TEXTS.json").read_text())
    rows: list[dict[str, Any]] = []
    try:
        for name, meta in texts.items():
            for path in PATHS:
                pcm = clip(name, path)
                heard, latency = "", []
                for _ in range(rounds):
                    heard, ms = await recognise(client, pcm)
                    latency.append(ms)
                said = words(meta["text"])
                rows.append({"clip": name, "language": meta["language"], "path": path, "heard": heard,
                             "errors": word_errors(words(heard), said), "words": len(said),
                             "cer": cer(heard, meta["text"]),
                             "final_after_end_ms": report.median(latency)})
                print(rows[-1], flush=True)
    finally:
        await client.aclose()
    summary = []
    for language in ("en", "ar"):
        for path in PATHS:
            mine = [r for r in rows if r["language"] == language and r["path"] == path]
            summary.append({"language": language, "path": path,
                            "wer": sum(r["errors"] for r in mine) / max(1, sum(r["words"] for r in mine)),
                            "cer": report.median([r["cer"] for r in mine]),
                            "final_after_end_ms": report.median([r["final_after_end_ms"] for r in mine])})
    return {"asr": settings.asr.model_dump(mode="json").get("model", ""), "rounds": rounds,
            "clips": rows, "summary": summary}


def markdown(data: dict[str, Any]) -> str:
    out = ["## Phone audio (8 kHz G.711) and the recogniser", "",
           "Fixture clips recognised as recorded (16 kHz) and as a phone call delivers them (8 kHz, G.711 "
           "round trip, the bridge's resampling to 16 kHz). WER over folded words, CER (median over clips) over their "
           "letters; the Arabic clips are "
           "synthetic MBROLA speech, which Whisper base only partly understands even at 16 kHz, so compare "
           "the rows, not the absolute Arabic figure.", ""]
    out.append(report.table(["language", "audio path", "WER", "CER", "final after end (ms, median)"],
                            [[s["language"], s["path"], round(s["wer"], 3), round(s["cer"], 3), s["final_after_end_ms"]]
                             for s in data["summary"]]))
    out += ["", report.table(["clip", "audio path", "word errors / words", "heard"],
                             [[r["clip"], r["path"], f"{r['errors']}/{r['words']}", r["heard"]]
                              for r in data["clips"]])]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="recognitions per clip and path (latency median)")
    args = parser.parse_args()
    data = asyncio.run(run(args.rounds))
    report.write("telephony", data, markdown(data))


if __name__ == "__main__":
    main()
