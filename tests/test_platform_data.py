"""Platform data on real databases: the durable call writer (redaction, idempotent replay, order, a real
Postgres outage, the spool bound), the retention purge (also as the Celery task) and the GDPR erase.

Postgres tests use a throwaway database on the shared server (tests/pg_helpers.py) and write through the
application role, so every write also passes row-level security; the outage tests start a private
server they can stop. The SQLite runs are the embedded default.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import DBAPIError

from tests.pg_helpers import PgDatabase, PrivatePostgres, create_database, throwaway_database
from tests.servers import eventually
from voiceai.db import migrate
from voiceai.db.engine import Database
from voiceai.db.models import Action, AuditLog, Call, Tenant, TenantConfig, Transcript
from voiceai.db.writer import CallWriter, SpoolFull
from workers.retention import caller_hash, erase_caller, normalize_caller_id, purge_expired

pytestmark = pytest.mark.integration

PEPPER = b"test-pepper-0123456789abcdef0123"
T_REDACT, T_FULL, T_OTHER = "1" * 32, "2" * 32, "3" * 32
T0 = datetime(2026, 2, 1, 9, 30, tzinfo=UTC).timestamp()

# One conversation: caller (Arabic), bot (English), caller (Arabic); a phone number and an email in it.
CALLER_NUMBER = "+971 50 123 4567"
TURNS = [
    ("caller", "مرحبا، رقمي ٠٥٠١٢٣٤٥٦٧ وبريدي ahmed.ali@bank.ae"),
    ("bot", "Thanks, I will email the statement to ahmed.ali@bank.ae and call you on +971 50 123 4567."),
    ("caller", "شكرا، ممكن تتصل على 050 765 4321؟"),
]
REDACTED = [
    "مرحبا، رقمي [PHONE] وبريدي [EMAIL]",
    "Thanks, I will email the statement to [EMAIL] and call you on [PHONE].",
    "شكرا، ممكن تتصل على [PHONE]؟",
]


@dataclass(frozen=True)
class Backend:
    dialect: str
    owner_url: str
    app_url: str


@pytest.fixture
def pg() -> Iterator[PgDatabase]:
    with throwaway_database() as db:
        yield db


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A database migrated to head: Postgres (owner + application role) or the embedded SQLite file."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'voiceai.sqlite3'}"
        migrate.upgrade(url)
        return Backend("sqlite", url, url)
    pg: PgDatabase = request.getfixturevalue("pg")
    migrate.upgrade(pg.url(pg.owner), app_role=pg.app_role)
    return Backend("postgresql", pg.url(pg.owner), pg.url(pg.app_role))


async def _add_tenant(admin: Database, tenant_id: str, name: str, *, retention_days: int | None = 30,
                      full_transcripts: bool = False) -> None:
    """A tenant, with a configs row unless ``retention_days`` is None (then the defaults apply)."""
    async with admin.admin_session() as s:
        s.add(Tenant(id=tenant_id, name=name))
        await s.flush()
        if retention_days is not None:
            s.add(TenantConfig(tenant_id=tenant_id, retention_days=retention_days,
                               store_full_transcripts=full_transcripts))


async def _rows(db: Database, stmt: Any) -> list[Any]:
    async with db.admin_session() as s:
        return list((await s.execute(stmt)).scalars())


def _submit_call(writer: CallWriter, tenant_id: str, call_id: str, turns: list[tuple[str, str]] = TURNS,
                 first_turn: int = 0) -> None:
    writer.call_started(tenant_id, call_id, "websocket", "ar", T0, caller_id=CALLER_NUMBER)
    _submit_turns(writer, tenant_id, call_id, turns, first_turn)
    writer.call_ended(tenant_id, call_id, T0 + 60, "hangup", "resolved", {"asr_ms": 120})


def _submit_turns(writer: CallWriter, tenant_id: str, call_id: str, turns: list[tuple[str, str]],
                  first_turn: int = 0) -> None:
    for i, (speaker, text) in enumerate(turns, start=first_turn):
        writer.turn(tenant_id, call_id, i, speaker, text, latency={"llm_ms": 300 + i}, started_at=T0 + 10 * i,
                    ended_at=T0 + 10 * i + 5, interrupted=i == 1)


def _spool_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.json"))


def _snapshot(calls: list[Call], turns: list[Transcript]) -> list[tuple[Any, ...]]:
    return sorted([(c.id, c.tenant_id, c.state, c.caller_id, c.caller_hash, c.ended_reason, c.outcome) for c in calls]
                  + [(t.id, t.call_id, t.turn, t.speaker, t.text, t.redacted) for t in turns])


def _in_apply_order(turns: list[Transcript]) -> list[int]:
    """Turn numbers in the order they were written (created_at is stamped when a write is applied)."""
    return [t.turn for t in sorted(turns, key=lambda t: (t.created_at, t.turn))]


def _metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


# ---- the call writer -------------------------------------------------------------------------------------


async def test_writer_stores_each_write_once_redacted_unless_the_tenant_opted_in(backend: Backend,
                                                                                 tmp_path: Path) -> None:
    admin, app = Database(backend.owner_url), Database(backend.app_url)
    spool = tmp_path / "spool"
    try:
        await _add_tenant(admin, T_REDACT, "bank-redacted")
        await _add_tenant(admin, T_FULL, "bank-full", full_transcripts=True)
        # Spooled first (nothing applies yet), as a gateway does when its database is not reachable.
        spooler = CallWriter(app, spool, pepper=PEPPER)
        _submit_call(spooler, T_REDACT, "call-redacted")
        _submit_call(spooler, T_FULL, "call-full")
        assert spooler.pending() == 10
        saved = tmp_path / "saved"
        shutil.copytree(spool, saved)
        # A write applied but not yet deleted when the process died: the same turn comes again, after the end.
        first_turn = _spool_files(spool)[1]
        assert json.loads((spool / first_turn).read_text())["payload"]["turn"] == 0
        shutil.copy(spool / first_turn, spool / f"{10:012d}.json")

        writer = CallWriter(app, spool, pepper=PEPPER, retry_max_s=0.2)  # a restarted gateway picks them up
        assert writer.pending() == 11
        writer.start()
        await writer.flush(30)
        await writer.stop()

        calls = {c.id: c for c in await _rows(admin, select(Call))}
        turns = await _rows(admin, select(Transcript))
        assert set(calls) == {"call-redacted", "call-full"}
        assert len(turns) == 6  # (call, turn, speaker) once each, the replayed turn included
        for call_id, tenant_id in (("call-redacted", T_REDACT), ("call-full", T_FULL)):
            call = calls[call_id]
            mine = [t for t in turns if t.call_id == call_id]
            # call_ended is an update: applied before call_started it would have matched nothing.
            assert (call.tenant_id, call.state, call.ended_reason, call.outcome) == (tenant_id, "ended", "hangup",
                                                                                     "resolved")
            assert call.timings == {"asr_ms": 120}
            assert call.started_at.replace(tzinfo=UTC).timestamp() == T0
            assert _in_apply_order(mine) == [0, 1, 2]
            assert [(t.turn, t.speaker) for t in sorted(mine, key=lambda t: t.turn)] == [(0, "caller"), (1, "bot"),
                                                                                         (2, "caller")]
            assert [t.interrupted for t in sorted(mine, key=lambda t: t.turn)] == [False, True, False]
            assert all(t.tenant_id == tenant_id for t in mine)
            # The number is kept only as a keyed hash, the same for every spelling of it.
            assert call.caller_hash == caller_hash("٠٥٠١٢٣٤٥٦٧", PEPPER) == caller_hash("0501234567", PEPPER) != ""
        redacted = sorted((t for t in turns if t.call_id == "call-redacted"), key=lambda t: t.turn)
        full = sorted((t for t in turns if t.call_id == "call-full"), key=lambda t: t.turn)
        assert [t.text for t in redacted] == REDACTED
        assert all(t.redacted for t in redacted)
        assert calls["call-redacted"].caller_id == "[PHONE]"
        assert [t.text for t in full] == [text for _, text in TURNS]
        assert not any(t.redacted for t in full)
        assert calls["call-full"].caller_id == CALLER_NUMBER

        # The whole spool replayed once more (a crash after every commit, before any delete): nothing changes.
        before = _snapshot(list(calls.values()), turns)
        for name in _spool_files(saved):
            shutil.copy(saved / name, spool / name)
        replay = CallWriter(app, spool, pepper=PEPPER, retry_max_s=0.2)
        assert replay.pending() == 10
        replay.start()
        await replay.flush(30)
        await replay.stop()
        assert _snapshot(await _rows(admin, select(Call)), await _rows(admin, select(Transcript))) == before

        # The stored hash is what an erase request finds the call by (through the application role too).
        counts = await erase_caller(app, T_REDACT, "٠٥٠ ١٢٣ ٤٥٦٧", PEPPER, actor_type="user", actor_id="u1")
        assert counts == {"calls": 1, "transcripts": 3, "actions": 0}
        assert {c.id for c in await _rows(admin, select(Call))} == {"call-full"}
    finally:
        await app.close()
        await admin.close()


async def test_writer_sets_aside_a_write_the_database_refuses_for_good(backend: Backend, tmp_path: Path) -> None:
    """A turn of a call that does not exist (a foreign-key violation) and an unreadable file must not hold
    back the writes behind them; a transient error would be retried instead (see the outage test)."""
    admin, app = Database(backend.owner_url), Database(backend.app_url)
    spool = tmp_path / "spool"
    rejected_before = _metric("voiceai_db_writes_rejected_total")
    try:
        await _add_tenant(admin, T_REDACT, "bank")
        writer = CallWriter(app, spool, pepper=PEPPER, retry_max_s=0.2)
        writer.turn(T_REDACT, "no-such-call", 0, "caller", "hello, call me on 0501234567")
        (spool / f"{1:012d}.json").write_bytes(b"{not json")
        writer = CallWriter(app, spool, pepper=PEPPER, retry_max_s=0.2)  # seq continues after the junk file
        _submit_call(writer, T_REDACT, "call-1")
        writer.start()
        await writer.flush(30)
        await writer.stop()

        assert sorted(p.name for p in (spool / "rejected").iterdir()) == [f"{0:012d}.json", f"{1:012d}.json"]
        assert _metric("voiceai_db_writes_rejected_total") == rejected_before + 2
        # What is kept aside is redacted: it outlives the call and no erase request reaches it.
        kept = (spool / "rejected" / f"{0:012d}.json").read_text()
        assert "0501234567" not in kept and "[PHONE]" in kept and "hello" in kept
        assert [c.state for c in await _rows(admin, select(Call))] == ["ended"]
        assert sorted(t.turn for t in await _rows(admin, select(Transcript))) == [0, 1, 2]
    finally:
        await app.close()
        await admin.close()


async def test_writer_rereads_the_full_transcript_choice_and_needs_a_pepper_for_the_hash(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'voiceai.sqlite3'}"
    migrate.upgrade(url)
    db = Database(url)
    try:
        await _add_tenant(db, T_REDACT, "bank")
        writer = CallWriter(db, tmp_path / "spool", retry_max_s=0.2)  # no pepper
        writer.POLICY_TTL_S = 0.0  # re-read the tenant's choice on every write
        writer.start()
        writer.call_started(T_REDACT, "call-1", "sip", "en", T0, caller_id=CALLER_NUMBER)
        writer.turn(T_REDACT, "call-1", 0, "caller", "mail me at sara@example.com")
        await writer.flush(30)
        async with db.admin_session() as s:  # the tenant opts in: the next write is stored as it is
            await s.execute(update(TenantConfig).values(store_full_transcripts=True))
        writer.turn(T_REDACT, "call-1", 1, "bot", "Sure, sara@example.com it is.")
        await writer.flush(30)
        await writer.stop()

        (call,) = await _rows(db, select(Call))
        assert (call.caller_id, call.caller_hash) == ("[PHONE]", "")
        texts = [t.text for t in sorted(await _rows(db, select(Transcript)), key=lambda t: t.turn)]
        assert texts == ["mail me at [EMAIL]", "Sure, sara@example.com it is."]
    finally:
        await db.close()


async def test_spool_bound_refuses_new_writes_and_loses_none_of_the_spooled_ones(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'voiceai.sqlite3'}"
    migrate.upgrade(url)
    db = Database(url)
    spool = tmp_path / "spool"
    refused_before = _metric("voiceai_db_writes_refused_total")
    try:
        await _add_tenant(db, T_REDACT, "bank")
        writer = CallWriter(db, spool, max_bytes=2000, retry_max_s=0.2)
        writer.call_started(T_REDACT, "call-1", "websocket", "en", T0)
        accepted = 0
        with pytest.raises(SpoolFull, match="limit 2000"):
            for turn in range(100):
                writer.turn(T_REDACT, "call-1", turn, "caller", f"turn {turn} " + "x" * 100)
                accepted += 1
        assert 3 <= accepted < 100
        spooled = {name: (spool / name).read_bytes() for name in _spool_files(spool)}
        assert len(spooled) == accepted + 1 == writer.pending()
        assert sum(len(b) for b in spooled.values()) <= 2000
        with pytest.raises(SpoolFull):  # still full: refused again, and the refusal wrote nothing
            writer.call_ended(T_REDACT, "call-1", T0 + 60, "hangup")
        assert {name: (spool / name).read_bytes() for name in _spool_files(spool)} == spooled
        assert _metric("voiceai_db_writes_refused_total") == refused_before + 2

        writer.start()
        await writer.flush(30)
        assert sorted(t.turn for t in await _rows(db, select(Transcript))) == list(range(accepted))
        writer.call_ended(T_REDACT, "call-1", T0 + 60, "hangup")  # drained: accepted again
        await writer.flush(30)
        await writer.stop()
        assert [c.state for c in await _rows(db, select(Call))] == ["ended"]
    finally:
        await db.close()


# ---- a real outage: a private Postgres stopped and started under the writer ------------------------------


@dataclass
class OutageServer:
    server: PrivatePostgres
    admin: Database
    app: Database


@pytest.fixture
async def outage_server() -> Any:
    """A private Postgres migrated to head, with tenant T_REDACT; stopped and removed afterwards, always."""
    with PrivatePostgres() as server:
        await asyncio.to_thread(server.start)
        pg = await asyncio.to_thread(create_database, server.superuser_dsn)
        migrate.upgrade(pg.url(pg.owner), app_role=pg.app_role)
        admin, app = Database(pg.url(pg.owner)), Database(pg.url(pg.app_role))
        try:
            await _add_tenant(admin, T_REDACT, "bank")
            yield OutageServer(server, admin, app)
        finally:
            await app.close()
            await admin.close()


def _outage_turns(first: int, count: int) -> list[tuple[str, str]]:
    return [("caller" if i % 2 == 0 else "bot", f"turn {i}: رقم الحساب ٠٥٠١٢٣٤٥٦٧")
            for i in range(first, first + count)]


async def test_writer_rides_out_a_postgres_outage(outage_server: OutageServer, tmp_path: Path) -> None:
    server, admin = outage_server.server, outage_server.admin
    writer = CallWriter(outage_server.app, tmp_path / "spool", pepper=PEPPER, retry_max_s=0.2)
    writer.start()
    try:
        writer.call_started(T_REDACT, "call-1", "sip", "ar", T0, caller_id=CALLER_NUMBER)
        _submit_turns(writer, T_REDACT, "call-1", _outage_turns(0, 4))
        await writer.flush(30)
        assert len(await _rows(admin, select(Transcript))) == 4

        await asyncio.to_thread(server.stop, "fast")
        failures_before = _metric("voiceai_db_write_failures_total")
        for turn in range(4, 12):  # the call goes on: submit neither blocks nor raises
            writer.turn(T_REDACT, "call-1", turn, "caller" if turn % 2 == 0 else "bot", f"turn {turn}")
            assert writer.pending() == turn - 3  # spooled, nothing applied
        await eventually(lambda: _metric("voiceai_db_write_failures_total") >= failures_before + 3,
                          "the applier to fail and retry while the database is down")
        writer.call_ended(T_REDACT, "call-1", T0 + 300, "hangup", "resolved")
        assert writer.pending() == 9

        await asyncio.to_thread(server.start)
        await writer.flush(60)
    finally:
        await writer.stop()

    (call,) = await _rows(admin, select(Call))
    assert (call.state, call.ended_reason, call.outcome) == ("ended", "hangup", "resolved")
    turns = await _rows(admin, select(Transcript))
    assert sorted(t.turn for t in turns) == list(range(12))  # each exactly once
    assert _in_apply_order(turns) == list(range(12))
    assert {t.text for t in turns if t.turn < 4} == {f"turn {i}: رقم الحساب [PHONE]" for i in range(4)}


async def test_a_restarted_writer_replays_what_an_outage_left_in_the_spool(outage_server: OutageServer,
                                                                          tmp_path: Path) -> None:
    server, admin, app = outage_server.server, outage_server.admin, outage_server.app
    spool = tmp_path / "spool"
    writer = CallWriter(app, spool, pepper=PEPPER, retry_max_s=0.2)
    writer.start()
    writer.call_started(T_REDACT, "call-1", "sip", "ar", T0, caller_id=CALLER_NUMBER)
    _submit_turns(writer, T_REDACT, "call-1", _outage_turns(0, 2))
    await writer.flush(30)

    await asyncio.to_thread(server.stop, "fast")
    _submit_turns(writer, T_REDACT, "call-1", _outage_turns(2, 5), first_turn=2)
    writer.call_ended(T_REDACT, "call-1", T0 + 300, "hangup", "handoff")
    await writer.stop(drain_s=0.5)  # the gateway shuts down mid-outage: the writes stay on disk
    left = _spool_files(spool)
    assert len(left) == 6

    await asyncio.to_thread(server.start)
    restarted = CallWriter(app, spool, pepper=PEPPER, retry_max_s=0.2)
    assert restarted.pending() == 6
    restarted.start()
    try:
        await restarted.flush(60)
    finally:
        await restarted.stop()

    (call,) = await _rows(admin, select(Call))
    assert (call.state, call.outcome, call.caller_hash) == ("ended", "handoff", caller_hash(CALLER_NUMBER, PEPPER))
    turns = await _rows(admin, select(Transcript))
    assert sorted(t.turn for t in turns) == list(range(7))
    assert _in_apply_order(turns) == list(range(7))


# ---- retention ------------------------------------------------------------------------------------------

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


async def _add_calls(admin: Database, tenant_id: str, ages_days: dict[str, float], *, now: datetime = NOW,
                     numbers: dict[str, str] | None = None) -> None:
    """Calls started ``age`` days before ``now``, each with two transcript turns and one action."""
    async with admin.admin_session() as s:
        for call_id, age in ages_days.items():
            number = (numbers or {}).get(call_id, "")
            s.add(Call(id=call_id, tenant_id=tenant_id, channel="sip", language="ar", caller_id="[PHONE]",
                       caller_hash=caller_hash(number, PEPPER) if number else "",
                       started_at=now - timedelta(days=age)))
        await s.flush()
        for call_id in ages_days:
            s.add_all([Transcript(id=f"{call_id}-t{turn}", tenant_id=tenant_id, call_id=call_id, turn=turn,
                                  speaker=speaker, text="نعم") for turn, speaker in enumerate(("caller", "bot"))])
            s.add(Action(id=f"{call_id}-a", tenant_id=tenant_id, call_id=call_id, turn=1, name="balance",
                         status="ok"))


async def _call_data(admin: Database) -> tuple[set[str], set[str], set[str]]:
    """The ids of every call, and the call ids that still have transcripts and actions."""
    return ({c.id for c in await _rows(admin, select(Call))},
            {t.call_id for t in await _rows(admin, select(Transcript))},
            {a.call_id for a in await _rows(admin, select(Action))})


async def test_retention_purge_deletes_only_what_each_tenant_no_longer_keeps(backend: Backend) -> None:
    admin, app = Database(backend.owner_url), Database(backend.app_url)
    try:
        await _add_tenant(admin, T_REDACT, "week", retention_days=7)
        await _add_tenant(admin, T_FULL, "quarter", retention_days=90)
        await _add_tenant(admin, T_OTHER, "default", retention_days=None)  # no configs row: 30 days
        await _add_calls(admin, T_REDACT, {"w-1d": 1, "w-6d": 6.9, "w-7d": 7, "w-8d": 8, "w-30d": 30})
        await _add_calls(admin, T_FULL, {"q-8d": 8, "q-89d": 89, "q-91d": 91, "q-200d": 200})
        await _add_calls(admin, T_OTHER, {"d-29d": 29, "d-31d": 31})

        result = await purge_expired(admin, now=NOW)

        assert result == {"week": {"calls": 2, "transcripts": 4, "actions": 2},
                          "quarter": {"calls": 2, "transcripts": 4, "actions": 2},
                          "default": {"calls": 1, "transcripts": 2, "actions": 1}}
        kept = {"w-1d", "w-6d", "w-7d", "q-8d", "q-89d", "d-29d"}  # exactly the retention is still kept
        assert await _call_data(admin) == (kept, kept, kept)
        audits = await _rows(admin, select(AuditLog).where(AuditLog.action == "retention.purge"))
        assert sorted((a.tenant_id, a.actor_type, a.details["retention_days"], a.details["calls"],
                       a.details["transcripts"], a.details["actions"]) for a in audits) == [
            (T_REDACT, "system", 7, 2, 4, 2), (T_FULL, "system", 90, 2, 4, 2), (T_OTHER, "system", 30, 1, 2, 1)]
        week = next(a for a in audits if a.tenant_id == T_REDACT)
        assert week.details["cutoff"] == (NOW - timedelta(days=7)).isoformat()

        again = await purge_expired(admin, now=NOW)  # nothing left to purge; still audited
        assert all(counts == {"calls": 0, "transcripts": 0, "actions": 0} for counts in again.values())
        assert len(await _rows(admin, select(AuditLog).where(AuditLog.action == "retention.purge"))) == 6
        if backend.dialect == "postgresql":
            # Platform-wide work needs the owner: through the application role no tenant is even visible.
            assert await purge_expired(app, now=NOW + timedelta(days=365)) == {}
            assert len((await _call_data(admin))[0]) == 6
    finally:
        await app.close()
        await admin.close()


async def test_retention_purge_of_more_calls_than_a_statement_takes_parameters(backend: Backend) -> None:
    """A tenant's first purge (retention shortened, or the job was down) can cover more calls than one
    statement may carry bind parameters (32767 on asyncpg; SQLite's cap depends on the build)."""
    admin = Database(backend.owner_url)
    calls = 33_000
    try:
        await _add_tenant(admin, T_REDACT, "busy", retention_days=7)
        old = NOW - timedelta(days=8)
        async with admin.admin_session() as s:
            await s.execute(insert(Call), [{"id": f"{i:032x}", "tenant_id": T_REDACT, "channel": "sip",
                                            "language": "ar", "started_at": old} for i in range(calls)])
            await s.execute(insert(Transcript), [{"id": f"t{i:031x}", "tenant_id": T_REDACT, "call_id": f"{i:032x}",
                                                  "turn": 0, "speaker": "caller", "text": "نعم"}
                                                 for i in range(0, calls, 10)])
        await _add_calls(admin, T_REDACT, {"recent": 1})

        assert await purge_expired(admin, now=NOW) == {"busy": {"calls": calls, "transcripts": calls // 10,
                                                                "actions": 0}}
        assert await _call_data(admin) == ({"recent"},) * 3
    finally:
        await admin.close()


def test_purge_task_purges_the_configured_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Celery task's function, run directly (no broker), on the database the settings name."""
    db_file = tmp_path / "v.sqlite3"
    monkeypatch.setenv("VOICEAI_DATABASE_URL", f"sqlite:///{db_file}")
    for var in ("VOICEAI_DATABASE_ADMIN_URL", "VOICEAI_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    migrate.upgrade(f"sqlite:///{db_file}")
    now = datetime.now(UTC)

    async def seed() -> None:
        db = Database(f"sqlite:///{db_file}")
        try:
            await _add_tenant(db, T_REDACT, "week", retention_days=7)
            await _add_tenant(db, T_FULL, "quarter", retention_days=90)
            await _add_calls(db, T_REDACT, {"w-1d": 1, "w-10d": 10}, now=now)
            await _add_calls(db, T_FULL, {"q-10d": 10, "q-100d": 100}, now=now)
        finally:
            await db.close()

    async def read() -> tuple[tuple[set[str], set[str], set[str]], list[AuditLog]]:
        db = Database(f"sqlite:///{db_file}")
        try:
            return await _call_data(db), await _rows(db, select(AuditLog))
        finally:
            await db.close()

    asyncio.run(seed())
    from workers.tasks import purge_expired_task

    result = purge_expired_task()

    assert result == {"week": {"calls": 1, "transcripts": 2, "actions": 1},
                      "quarter": {"calls": 1, "transcripts": 2, "actions": 1}}
    data, audits = asyncio.run(read())
    assert data == ({"w-1d", "q-10d"},) * 3
    assert sorted((a.tenant_id, a.action, a.details["calls"]) for a in audits) == [
        (T_REDACT, "retention.purge", 1), (T_FULL, "retention.purge", 1)]


# ---- GDPR erase -----------------------------------------------------------------------------------------


async def test_erase_caller_removes_one_callers_data_in_one_tenant(backend: Backend) -> None:
    admin, app = Database(backend.owner_url), Database(backend.app_url)
    spellings = {"a-intl": "+971 50 123 4567", "a-local": "0501234567", "a-arabic": "٠٥٠١٢٣٤٥٦٧"}
    try:
        assert {normalize_caller_id(n) for n in spellings.values()} == {"971501234567"}
        await _add_tenant(admin, T_REDACT, "bank-a")
        await _add_tenant(admin, T_FULL, "bank-b")
        await _add_calls(admin, T_REDACT, {"a-intl": 1, "a-local": 2, "a-arabic": 3, "a-other": 1},
                         numbers={**spellings, "a-other": "+971 55 999 0000"})
        await _add_calls(admin, T_FULL, {"b-same": 1}, numbers={"b-same": "+971501234567"})

        counts = await erase_caller(app, T_REDACT, "00971-50-123-4567", PEPPER, actor_type="user",
                                    actor_id="supervisor-1", source_ip="10.0.0.7")

        assert counts == {"calls": 3, "transcripts": 6, "actions": 3}
        assert await _call_data(admin) == ({"a-other", "b-same"},) * 3
        (audit,) = await _rows(admin, select(AuditLog).where(AuditLog.action == "gdpr.erase"))
        assert (audit.tenant_id, audit.actor_type, audit.actor_id, audit.target_type, audit.source_ip) == (
            T_REDACT, "user", "supervisor-1", "caller", "10.0.0.7")
        assert audit.details == counts
        assert audit.target_id == caller_hash("0501234567", PEPPER)[:12]
        recorded = json.dumps(audit.details, ensure_ascii=False) + audit.target_id + audit.actor_id
        for fragment in ("1234567", "٤٥٦٧", "4567", *spellings.values()):
            assert fragment not in recorded

        assert await erase_caller(app, T_REDACT, "0501234567", PEPPER, actor_type="user", actor_id="x") == {
            "calls": 0, "transcripts": 0, "actions": 0}
        with pytest.raises(ValueError, match="no digits"):
            await erase_caller(app, T_REDACT, "unknown", PEPPER, actor_type="user", actor_id="x")

        # The audit trail of the erase cannot be edited or removed, not even by the owner.
        for stmt in (update(AuditLog).where(AuditLog.id == audit.id).values(details={}),
                     delete(AuditLog).where(AuditLog.id == audit.id)):
            with pytest.raises(DBAPIError, match="append-only"):
                async with admin.admin_session() as s:
                    await s.execute(stmt)
        (still,) = await _rows(admin, select(AuditLog).where(AuditLog.id == audit.id))
        assert still.details == counts
    finally:
        await app.close()
        await admin.close()


async def test_tool_calls_are_recorded_as_actions_redacted(tmp_path: Path) -> None:
    """A tool the bot ran (search_kb) lands in `actions` once, its arguments redacted like transcripts."""
    from sqlalchemy import select

    from gateway.platform import ensure_tenant
    from voiceai.db import migrate
    from voiceai.db.engine import Database
    from voiceai.db.models import Action
    from voiceai.db.writer import CallWriter

    url = f"sqlite:///{tmp_path / 'v.sqlite3'}"
    migrate.upgrade(url)
    db = Database(url)
    try:
        tenant_id = await ensure_tenant(db, "bank")
        writer = CallWriter(db, tmp_path / "spool")
        writer.start()
        writer.call_started(tenant_id, "c" * 32, "websocket", "en", 1_700_000_000.0)
        action = {"name": "search_kb", "arguments": {"query": "card for 0501234567"},
                  "result": {"documents": ["cards.md"]}, "status": "ok", "latency_ms": 12}
        writer.action(tenant_id, "c" * 32, 1, 0, action)
        writer.action(tenant_id, "c" * 32, 1, 0, action)  # a replay
        await writer.flush()
        await writer.stop()
        async with db.tenant_session(tenant_id) as session:
            rows = list(await session.scalars(select(Action)))
        assert len(rows) == 1
        assert rows[0].arguments == {"query": "card for [PHONE]"} and rows[0].result == {"documents": ["cards.md"]}
        assert (rows[0].name, rows[0].turn, rows[0].latency_ms) == ("search_kb", 1, 12)
    finally:
        await db.close()
