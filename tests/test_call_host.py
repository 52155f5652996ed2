"""The call host every transport shares, and the session's keys and transfers (DTMF, REFER-style hand-over)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from media_bridge.host import CallSpec, JoinedCalls
from media_bridge.replies import scripted
from tests.fakes import CallHarness, FakeTransport, fast_settings
from tests.host_helpers import fake_host
from tests.servers import eventually

pytestmark = pytest.mark.unit


class TransferringTransport(FakeTransport):
    """A transport that can hand a call over (like SIP REFER), recording where to."""

    def __init__(self, accept: bool = True) -> None:
        super().__init__()
        self.accept = accept
        self.transfers: list[tuple[str, float]] = []

    async def transfer(self, target: str) -> bool:
        self.transfers.append((target, self.clock()))
        return self.accept


async def test_transfer_key_says_hold_then_transfers_after_the_line_played() -> None:
    transport = TransferringTransport()
    settings = fast_settings(call__transfer__target="sip:queue-cards@pbx.bank.internal")
    async with CallHarness(settings=settings, transport=transport) as call:
        await call.session.push_dtmf("5", 120)
        await call.session.push_dtmf("0", 100)
        await call.until_ended(timeout_ms=6000)
    assert call.session.dtmf == ["5", "0"]
    assert [e["digit"] for e in transport.of_type("dtmf")] == ["5", "0"]
    assert scripted("transfer", "en") in transport.bot_text()
    assert [t for t, _ in transport.transfers] == ["sip:queue-cards@pbx.bank.internal"]
    # The hand-over comes after the last frame of "please hold" went out.
    assert transport.transfers[0][1] >= transport.frames[-1][0]
    assert call.session.ended_reason == "transferred"
    assert transport.of_type("transfer")[0]["target"] == "sip:queue-cards@pbx.bank.internal"


async def test_refused_transfer_is_recorded_as_such() -> None:
    transport = TransferringTransport(accept=False)
    async with CallHarness(transport=transport) as call:
        call.session.transfer()
        await call.until_ended(timeout_ms=6000)
    assert call.session.ended_reason == "transfer_failed"


async def test_caller_hanging_up_during_hold_line_is_not_transferred() -> None:
    transport = TransferringTransport()
    async with CallHarness(transport=transport) as call:
        call.session.transfer()
        await call.until(lambda: bool(transport.frames), what="the hold line starting")
        await call.hangup()
    assert transport.transfers == []
    assert call.session.ended_reason == "hangup"


async def test_arabic_caller_hears_the_arabic_hold_line() -> None:
    transport = TransferringTransport()
    async with CallHarness(transport=transport, language="ar") as call:
        await call.session.push_dtmf("0")
        await call.until_ended(timeout_ms=6000)
    assert scripted("transfer", "ar") in transport.bot_text()


def test_join_claims_once_and_forgets_after_the_token_lifetime() -> None:
    joined = JoinedCalls(keep_s=0.05)
    assert joined.claim("a") and not joined.claim("a") and joined.claim("b")
    import time

    time.sleep(0.06)
    assert joined.claim("a")


async def test_host_records_the_call_and_ends_it_when_the_caller_side_ends() -> None:
    host, writer = fake_host(fast_settings(call__greeting=True))
    transport = FakeTransport()
    hung_up = asyncio.Event()

    async def feed(session: Any) -> None:
        await eventually(lambda: transport.of_type("bot.text"), "the greeting")
        hung_up.set()

    spec = CallSpec("c1", "tenant-1", "acme", "sip", "ar", caller_id="+971501234567")
    session = await asyncio.wait_for(host.run(spec, transport, feed), 10)
    assert hung_up.is_set() and session.ended_reason == "hangup"
    assert "c1" not in host.active
    started = writer.of_kind("call_started")[0]
    assert started["channel"] == "sip" and started["language"] == "ar" and started["caller_id"] == "+971501234567"
    assert writer.of_kind("call_ended") == [{"call_id": "c1", "reason": "hangup"}]
    assert all(tenant == "tenant-1" for _, tenant, _ in writer.records)


async def test_a_failing_caller_side_ends_only_its_own_call() -> None:
    host, writer = fake_host()

    async def broken(session: Any) -> None:
        raise ValueError("malformed input from the caller")

    async def quiet(session: Any) -> None:
        await asyncio.sleep(0.5)

    results = await asyncio.wait_for(asyncio.gather(
        host.run(CallSpec("bad", "t", "acme", "sip"), FakeTransport(), broken),
        host.run(CallSpec("good", "t", "acme", "sip"), FakeTransport(), quiet)), 10)
    assert [s.ended_reason for s in results] == ["hangup", "hangup"]
    assert {r["call_id"] for r in writer.of_kind("call_ended")} == {"bad", "good"}


async def test_hangup_all_ends_every_call() -> None:
    host, _ = fake_host()

    async def forever(session: Any) -> None:
        await asyncio.Event().wait()

    calls = [asyncio.create_task(host.run(CallSpec(f"c{i}", "t", "acme", "sip"), FakeTransport(), forever))
             for i in range(3)]
    await eventually(lambda: len(host.active) == 3, "three calls")
    await host.hangup_all()
    sessions = await asyncio.wait_for(asyncio.gather(*calls), 5)
    assert {s.ended_reason for s in sessions} == {"server_shutdown"}


def test_sip_wildcard_bind_needs_the_address_peers_should_use() -> None:
    from pydantic import ValidationError

    from media_bridge.channels import SipConfig

    with pytest.raises(ValidationError, match="public_address"):
        SipConfig(port=5060, bind="0.0.0.0")
    assert SipConfig(port=5060, bind="0.0.0.0", public_address="10.1.2.3").public_address == "10.1.2.3"


def test_voiceai_up_sip_port_turns_sip_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import voiceai.stack
    from voiceai.cli import build_parser

    seen: dict[str, Any] = {}

    async def fake_run_stack(settings: Any, host: str, port: int, with_vad_server: bool = False) -> int:
        seen["sip"] = settings.channels.sip
        return 0

    monkeypatch.setattr(voiceai.stack, "run_stack", fake_run_stack)
    args = build_parser().parse_args(["up", "--sip-port", "5070"])
    assert args.func(args) == 0
    assert (seen["sip"].port, seen["sip"].bind) == (5070, "127.0.0.1")
    args = build_parser().parse_args(["up"])
    args.func(args)
    assert seen["sip"].port is None  # SIP stays off unless asked for


async def test_task_set_keeps_logs_and_cancels(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from voiceai.tasks import TaskSet

    tasks = TaskSet(logging.getLogger("test.tasks"), "owner task failed", call_id="c9")

    async def boom() -> None:
        raise RuntimeError("broken")

    failing = tasks.spawn(boom(), "boom")
    sleeper = tasks.spawn(asyncio.sleep(60), "sleeper")
    await asyncio.gather(failing, return_exceptions=True)
    await asyncio.sleep(0)
    assert list(tasks) == [sleeper] and len(tasks) == 1  # done tasks are forgotten
    record = next(r for r in caplog.records if r.getMessage() == "owner task failed")
    assert record.call_id == "c9" and record.task == "boom"  # type: ignore[attr-defined]
    await tasks.cancel_all()
    assert sleeper.cancelled() and len(tasks) == 0
