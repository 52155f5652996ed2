"""`voiceai demo`: the whole stack on this machine, and simulated calls through it.

Starts what `voiceai up` starts (ASR, NLU and TTS servers on loopback, the gateway), then runs a
two-turn English call and an Arabic call with `voiceai call`'s simulated caller, prints each turn
and saves the bot's audio, and stops everything.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from voiceai.config import Settings
from voiceai.supervisor import free_port

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "audio"
CALLS = {
    "en": ["en_balance.wav", "en_order.wav"],
    "ar": ["ar_agent.wav"],
}


def _print_call(language: str, result: dict) -> None:
    print(f"\n--- {'English' if language == 'en' else 'Arabic'} call {result['call_id']}", flush=True)
    for i, t in enumerate(result["turns"], 1):
        stages = t["stages"] or {}
        print(f"turn {i}  caller: {t['user_text']}")
        print(f"        bot:    {t['bot_text']}{'  [interrupted]' if t['interrupted'] else ''}")
        print(f"        e2e {t['e2e_ms']} ms (speech end -> first bot audio at the caller); server stages: "
              f"final transcript +{_after(stages, 'final_transcript_ms')} ms, endpoint "
              f"+{_after(stages, 'endpoint_ms')} ms, first LLM token +{_after(stages, 'llm_first_token_ms')} ms, "
              f"first audio sent +{_after(stages, 'first_audio_sent_ms')} ms", flush=True)


def _after(stages: dict, key: str) -> str:
    if stages.get(key) is None or stages.get("speech_end_ms") is None:
        return "?"
    return f"{stages[key] - stages['speech_end_ms']:.0f}"


async def run_demo(settings: Settings, out_dir: Path) -> None:
    from gateway.caller import load_turns, simulate_call
    from voiceai.stack import run_stack

    port = free_port()
    ready, stop = asyncio.Event(), asyncio.Event()
    stack = asyncio.create_task(run_stack(settings, "127.0.0.1", port, ready=ready, stop=stop))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({stack, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if stack.done():
        waiter.cancel()
        raise RuntimeError("the stack did not start; see the messages above")
    url = f"http://127.0.0.1:{port}"
    try:
        for language, wavs in CALLS.items():
            turns = load_turns([FIXTURES / w for w in wavs], settings.models_dir, 16000)
            result = await simulate_call(url, turns, language, out_dir=out_dir / language)
            _print_call(language, result)
            print(f"        bot audio saved to {out_dir / language / 'bot.wav'}", flush=True)
        print(f"\nThe web page is at {url}/ while the stack runs: `voiceai up` keeps it running.", flush=True)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await stack
