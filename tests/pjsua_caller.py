"""A phone caller made of pjsip (pjsua2): calls a SIP URI, plays a WAV into the call, records what it hears.

Run as its own process (pjsua2 keeps one library instance per process and its own threads)::

    python -m tests.pjsua_caller sip:1000@127.0.0.1:5070 --play caller.wav --record bot.wav --seconds 20

Prints one JSON object: the call states seen, the negotiated codec, when the call was confirmed, the
DTMF sent, and why it ended. The caller hangs up after ``--seconds`` unless the bot hangs up first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pjsua2 as pj

REPO = Path(__file__).resolve().parent.parent

STATE_NAMES = {getattr(pj, n): n.removeprefix("PJSIP_INV_STATE_") for n in dir(pj) if n.startswith("PJSIP_INV_STATE_")}


class Caller(pj.Call):
    def __init__(self, account: pj.Account, play: str | None, record: str | None) -> None:
        super().__init__(account)
        self.play, self.record = play, record
        self.states: list[tuple[float, str]] = []
        self.player: pj.AudioMediaPlayer | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.confirmed_at: float | None = None
        self.last_reason = ""
        self.codec = ""

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        name = STATE_NAMES.get(info.state, str(info.state))
        self.states.append((time.monotonic(), name))
        self.last_reason = f"{info.lastStatusCode} {info.lastReason}"
        if name == "CONFIRMED":
            self.confirmed_at = time.monotonic()

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        info = self.getInfo()
        for i, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO or media.status != pj.PJSUA_CALL_MEDIA_ACTIVE:
                continue
            audio = self.getAudioMedia(i)
            with_codec = self.getStreamInfo(i)
            self.codec = with_codec.codecName
            if self.play and self.player is None:
                self.player = pj.AudioMediaPlayer()
                self.player.createPlayer(self.play, pj.PJMEDIA_FILE_NO_LOOP)
                self.player.startTransmit(audio)
            if self.record and self.recorder is None:
                self.recorder = pj.AudioMediaRecorder()
                self.recorder.createRecorder(self.record)
                audio.startTransmit(self.recorder)


async def call_with_pjsua(uri: str, workdir: Path, play: Path, seconds: float, *extra: str) -> dict[str, Any]:
    """Runs this caller in its own process; returns its JSON result plus ``recording`` (the bot, as heard)."""
    record = workdir / "bot.wav"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.pjsua_caller", uri, "--play", str(play), "--record", str(record),
        "--seconds", str(seconds), *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["recording"] = record
    return result


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("uri")
    p.add_argument("--play")
    p.add_argument("--record")
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--port", type=int, default=0, help="local SIP port (0: any)")
    p.add_argument("--codec", default="PCMU", choices=["PCMU", "PCMA"])
    p.add_argument("--dtmf", default="", help="keys to send (RFC 4733) 2 s after the call is up")
    args = p.parse_args()

    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.level = 1
    cfg.logConfig.consoleLevel = 1
    ep.libInit(cfg)
    transport = pj.TransportConfig()
    transport.port = args.port
    transport.boundAddress = "127.0.0.1"
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    ep.libStart()
    ep.audDevManager().setNullDev()
    # Only G.711, the codec asked for first: what a phone trunk offers.
    for codec in ep.codecEnum2():
        wanted = codec.codecId.startswith(args.codec + "/")
        other_g711 = codec.codecId.startswith(("PCMU/", "PCMA/"))
        ep.codecSetPriority(codec.codecId, 255 if wanted else 128 if other_g711 else 0)

    account_cfg = pj.AccountConfig()
    account_cfg.idUri = "sip:+971501234567@127.0.0.1"
    account = pj.Account()
    account.create(account_cfg)

    call = Caller(account, args.play, args.record)
    started = time.monotonic()
    call.makeCall(args.uri, pj.CallOpParam(True))
    dtmf_sent = ""
    ended_by = "caller"
    while True:
        ep.libHandleEvents(20)
        now = time.monotonic()
        if call.states and call.states[-1][1] == "DISCONNECTED":
            ended_by = "bot" if call.confirmed_at and now - started < args.seconds else "refused"
            break
        if args.dtmf and not dtmf_sent and call.confirmed_at and now - call.confirmed_at > 2.0:
            call.dialDtmf(args.dtmf)
            dtmf_sent = args.dtmf
        if now - started > args.seconds:
            call.hangup(pj.CallOpParam(True))
            for _ in range(100):
                ep.libHandleEvents(20)
                if call.states[-1][1] == "DISCONNECTED":
                    break
            break
    result = {
        "states": [name for _, name in call.states],
        "setup_ms": round((call.confirmed_at - started) * 1000, 1) if call.confirmed_at else None,
        "codec": call.codec,
        "dtmf_sent": dtmf_sent,
        "ended_by": ended_by,
        "last_status": call.last_reason,
    }
    # Recorder and player must go before the library.
    call.recorder = call.player = None
    del call
    ep.libDestroy()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
