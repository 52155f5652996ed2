"""Durable, ordered writes from the call loop: audio never waits for the database.

The call loop hands each write (a call started, a turn, a call ended) to `CallWriter.submit`, which
appends it to a spool folder as one small JSON file named by a sequence number and returns: no
network round trip on the audio path. A background task applies the files in order, each in its own
tenant-scoped transaction, and deletes a file only after its transaction committed. While the
database is down it retries with back-off and the spool grows (bounded by ``max_bytes``; past that,
new writes are refused with an error log and a metric, never dropped silently). A gateway restarted
mid-outage replays what is left. Every write is idempotent (a call row is inserted once, a turn is
unique per (call, turn, speaker), an end is an update), so a write applied just before a crash and
replayed after is counted once.

A write the database refuses for good (a data or integrity error: a turn of a call that no longer
exists, a value too long for its column) or a spool file that cannot be read is moved to the
``rejected/`` subfolder with an error log and a metric, so that one bad write cannot hold back every
later one; transient errors (connection refused, timeouts, a locked SQLite file) are retried.

Transcripts and caller ids are stored redacted (voiceai.pii) unless the tenant opted into full
transcripts; the tenant's choice is re-read every ``POLICY_TTL_S``. With a ``pepper``, a call also
gets ``caller_hash`` (`caller_hash` below), by which a GDPR erase request finds it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from voiceai.db.engine import Database
from voiceai.db.models import Action, Call, TenantConfig, Transcript
from voiceai.pii import ascii_digits, redact_obj
from voiceai.pii import redact as redact_text

log = logging.getLogger(__name__)

SPOOLED = Gauge("voiceai_db_spool_writes", "Call-loop writes waiting for the database.")
SPOOL_BYTES = Gauge("voiceai_db_spool_bytes", "Bytes of call-loop writes waiting for the database.")
APPLIED = Counter("voiceai_db_writes_total", "Call-loop writes applied, by kind.", ["kind"])
REFUSED = Counter("voiceai_db_writes_refused_total", "Call-loop writes refused: the spool was full.")
FAILURES = Counter("voiceai_db_write_failures_total", "Attempts to apply a spooled write that failed.")
REJECTED = Counter("voiceai_db_writes_rejected_total", "Spooled writes the database refused for good (set aside).")

BATCH = 64  # writes of one tenant applied per transaction when the spool has a backlog
_NAME = re.compile(r"^(\d{12})\.json$")
REJECTED_DIR = "rejected"
# SQLSTATE classes that retrying cannot fix: 22 data exception (a value too long, bad encoding), 23
# integrity constraint violation (a turn whose call is gone). asyncpg reports most of them as a plain
# DBAPIError, so the class is read from the driver's error rather than from SQLAlchemy's exception type.
_PERMANENT_SQLSTATE_CLASSES = ("22", "23")
# The payload fields each kind of write needs; a file missing one can never be applied.
_FIELDS = {
    "call_started": ("call_id", "channel", "language", "started_at", "caller_id"),
    "turn": ("call_id", "turn", "speaker", "text", "interrupted", "latency", "started_at", "ended_at"),
    "call_ended": ("call_id", "ended_at", "reason", "outcome", "timings"),
    "action": ("call_id", "turn", "index", "name"),
}


class SpoolFull(RuntimeError):
    """The spool is at ``max_bytes``: the write was refused (and logged), nothing was dropped silently."""


class _BadWrite(ValueError):
    """A spool file that can never be applied (unreadable, unknown kind, missing field)."""


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


def _permanent(err: Exception) -> bool:
    """True for a database error that the same write would hit again on every retry."""
    if isinstance(err, IntegrityError):
        return True
    if isinstance(err, DBAPIError):
        sqlstate = getattr(err.orig, "sqlstate", None) or getattr(err.orig, "pgcode", None)
        return isinstance(sqlstate, str) and sqlstate[:2] in _PERMANENT_SQLSTATE_CLASSES
    return False


def _transcript_id(call_id: str, turn: int, speaker: str) -> str:
    """A primary key derived from the turn's identity, so a replayed turn lands on the same row and turns of
    different calls never share one (a truncated call id would)."""
    return hashlib.sha256(f"{call_id}\0{turn}\0{speaker}".encode()).hexdigest()[:32]


class CallWriter:
    """Spools call-loop writes to ``spool_dir`` and applies them in order in the background.

    ``pepper`` (the install's secret HMAC key) turns a caller id into ``calls.caller_hash``; without one,
    calls carry no hash and cannot be found by an erase request.
    """

    POLICY_TTL_S = 60.0
    """How long a tenant's full-transcript choice is cached: an opt-out takes effect within this."""

    def __init__(self, db: Database, spool_dir: Path, *, max_bytes: int = 256 * 2**20,
                 redact: Callable[[str], str] | None = None, retry_max_s: float = 5.0,
                 pepper: bytes | None = None) -> None:
        self.db = db
        self.dir = spool_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.retry_max_s = retry_max_s
        self._redact = redact or redact_text
        self._pepper = pepper
        existing = sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _NAME.match(p.name)))
        self._seq = existing[-1] + 1 if existing else 0
        self._bytes = sum(p.stat().st_size for p in self.dir.glob("*.json"))
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._full_transcripts: dict[str, tuple[bool, float]] = {}  # tenant -> (choice, monotonic read time)
        self._update_gauges()

    # ---- the call loop's side (synchronous, local disk only) ------------------------------------

    def submit(self, kind: str, tenant_id: str, payload: dict[str, Any]) -> None:
        """Spools one write. Raises SpoolFull (and logs) when the spool is at its limit."""
        body = json.dumps({"kind": kind, "tenant_id": tenant_id, "payload": payload}, ensure_ascii=False).encode()
        if self._bytes + len(body) > self.max_bytes:
            REFUSED.inc()
            log.error("database write spool is full; write refused", extra={"kind": kind, "bytes": self._bytes})
            raise SpoolFull(f"the write spool holds {self._bytes} bytes (limit {self.max_bytes})")
        path = self.dir / f"{self._seq:012d}.json"
        self._seq += 1
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(body)
        os.replace(tmp, path)  # the applier never sees half a file
        self._bytes += len(body)
        self._update_gauges()
        self._wake.set()

    def call_started(self, tenant_id: str, call_id: str, channel: str, language: str, started_at: float,
                     caller_id: str = "") -> None:
        """A new call (``started_at``: Unix seconds). The caller id is hashed here, with the pepper."""
        digest = caller_hash(caller_id, self._pepper) if caller_id and self._pepper else ""
        self.submit("call_started", tenant_id, {"call_id": call_id, "channel": channel, "language": language,
                                                "started_at": started_at, "caller_id": caller_id,
                                                "caller_hash": digest})

    def turn(self, tenant_id: str, call_id: str, turn: int, speaker: str, text: str, *, interrupted: bool = False,
             latency: dict[str, Any] | None = None, started_at: float | None = None,
             ended_at: float | None = None) -> None:
        self.submit("turn", tenant_id, {"call_id": call_id, "turn": turn, "speaker": speaker, "text": text,
                                        "interrupted": interrupted, "latency": latency or {},
                                        "started_at": started_at, "ended_at": ended_at})

    def call_ended(self, tenant_id: str, call_id: str, ended_at: float, reason: str, outcome: str = "",
                   timings: dict[str, Any] | None = None) -> None:
        self.submit("call_ended", tenant_id, {"call_id": call_id, "ended_at": ended_at, "reason": reason,
                                              "outcome": outcome, "timings": timings or {}})

    def action(self, tenant_id: str, call_id: str, turn: int, index: int, action: dict[str, Any]) -> None:
        """A tool the bot ran during turn ``turn`` (the ``index``-th of that turn)."""
        self.submit("action", tenant_id, {"call_id": call_id, "turn": turn, "index": index, **action})

    # ---- the applier -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="db-writer")

    async def stop(self, drain_s: float = 5.0) -> None:
        """Tries to apply what is spooled for up to ``drain_s``; the rest stays on disk for next time."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(drain_s):
                while self.pending():
                    self._wake.set()
                    await asyncio.sleep(0.05)
        except TimeoutError:
            log.warning("database writes left in the spool at shutdown", extra={"pending": self.pending()})
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    def pending(self) -> int:
        return sum(1 for p in self.dir.iterdir() if _NAME.match(p.name))

    async def flush(self, timeout_s: float = 30.0) -> None:
        """Waits until the spool is empty (tests, shutdown)."""
        async with asyncio.timeout(timeout_s):
            while self.pending():
                self._wake.set()
                await asyncio.sleep(0.02)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            files = sorted(p for p in self.dir.iterdir() if _NAME.match(p.name))
            if not files:
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(files) > 1 and await self._apply_batch(files[:BATCH]):
                delay = 0.1
                continue
            for path in files:
                try:
                    await self._apply(_read_op(path))
                except _BadWrite as err:
                    self._reject(path, err)
                    continue
                except Exception as err:  # the database is down, or refused this write
                    if _permanent(err):
                        self._reject(path, err)
                        continue
                    FAILURES.inc()
                    log.warning("database write failed; will retry", extra={"file": path.name, "error": repr(err)})
                    await asyncio.sleep(delay)
                    delay = min(self.retry_max_s, delay * 2)
                    break  # keep the order: retry this file first
                size = path.stat().st_size
                path.unlink()
                self._bytes -= size
                self._update_gauges()
                delay = 0.1

    def _reject(self, path: Path, err: Exception) -> None:
        """Sets a write that can never be applied aside (kept for an operator, out of the replay order).

        What is kept is PII-redacted: a set-aside write outlives the call, and neither retention nor an erase
        request reaches this folder, so it must hold nothing that identifies a caller."""
        REJECTED.inc()
        log.error("database write rejected; moved aside", extra={"file": path.name, "error": repr(err)})
        rejected = self.dir / REJECTED_DIR
        rejected.mkdir(exist_ok=True)
        size = path.stat().st_size
        raw = path.read_bytes()
        try:
            kept = json.dumps(redact_obj(json.loads(raw)), ensure_ascii=False).encode()
        except (ValueError, UnicodeDecodeError):
            kept = b'{"unreadable": true}'  # not JSON: nothing worth keeping, and nothing raw is kept
        (rejected / path.name).write_bytes(kept)
        path.unlink()
        self._bytes -= size
        self._update_gauges()

    async def _apply_batch(self, files: list[Path]) -> bool:
        """Applies the leading run of writes of one tenant in one transaction (a busy spool drains in
        batches: one commit instead of one per turn). False, with nothing changed, when anything in it
        fails: the caller then goes one write at a time, which sets bad writes aside and retries."""
        try:
            ops = [_read_op(files[0])]
            for path in files[1:]:
                op = _read_op(path)
                if op["tenant_id"] != ops[0]["tenant_id"]:
                    break
                ops.append(op)
            if len(ops) < 2:
                return False
            tenant_id = ops[0]["tenant_id"]
            async with self.db.tenant_session(tenant_id) as session:
                for op in ops:
                    await self._handlers[op["kind"]](session, tenant_id, op["payload"])
        except Exception:
            return False
        for op, path in zip(ops, files, strict=False):
            APPLIED.labels(op["kind"]).inc()
            size = path.stat().st_size
            path.unlink()
            self._bytes -= size
        self._update_gauges()
        return True

    @property
    def _handlers(self) -> dict[str, Callable[[AsyncSession, str, dict[str, Any]], Awaitable[None]]]:
        return {"call_started": self._apply_call_started, "turn": self._apply_turn,
                "call_ended": self._apply_call_ended, "action": self._apply_action}

    async def _apply(self, op: dict[str, Any]) -> None:
        kind, tenant_id, p = op["kind"], op["tenant_id"], op["payload"]
        async with self.db.tenant_session(tenant_id) as session:
            await self._handlers[kind](session, tenant_id, p)
        APPLIED.labels(kind).inc()

    def _insert(self, table: Any) -> Any:
        dialect = postgresql if self.db.dialect == "postgresql" else sqlite
        return dialect.insert(table)

    async def _full(self, session: AsyncSession, tenant_id: str) -> bool:
        cached = self._full_transcripts.get(tenant_id)
        now = time.monotonic()
        if cached is not None and now - cached[1] < self.POLICY_TTL_S:
            return cached[0]
        cfg = await session.scalar(select(TenantConfig.store_full_transcripts)
                                   .where(TenantConfig.tenant_id == tenant_id))
        self._full_transcripts[tenant_id] = (bool(cfg), now)
        return bool(cfg)

    async def _apply_call_started(self, session: AsyncSession, tenant_id: str, p: dict[str, Any]) -> None:
        full = await self._full(session, tenant_id)
        await session.execute(self._insert(Call.__table__).values(
            id=p["call_id"], tenant_id=tenant_id, state="active", channel=p["channel"], language=p["language"],
            caller_id=p["caller_id"] if full else self._redact(p["caller_id"]), started_at=_ts(p["started_at"]),
            caller_hash=p.get("caller_hash", ""), timings={}, ended_reason="", outcome="").on_conflict_do_nothing())

    async def _apply_turn(self, session: AsyncSession, tenant_id: str, p: dict[str, Any]) -> None:
        full = await self._full(session, tenant_id)
        await session.execute(self._insert(Transcript.__table__).values(
            id=_transcript_id(p["call_id"], p["turn"], p["speaker"]), tenant_id=tenant_id, call_id=p["call_id"],
            turn=p["turn"], speaker=p["speaker"], text=p["text"] if full else self._redact(p["text"]),
            redacted=not full, interrupted=p["interrupted"], latency=p["latency"], started_at=_ts(p["started_at"]),
            ended_at=_ts(p["ended_at"]), created_at=datetime.now(UTC)).on_conflict_do_nothing())

    async def _apply_action(self, session: AsyncSession, tenant_id: str, p: dict[str, Any]) -> None:
        """Arguments and results are redacted like transcripts (a caller's number in a lookup query)."""
        full = await self._full(session, tenant_id)
        clean = (lambda v: v) if full else redact_obj
        digest = hashlib.sha256(f"{p['call_id']}/{p['turn']}/{p['index']}".encode()).hexdigest()[:32]
        await session.execute(self._insert(Action.__table__).values(
            id=digest, tenant_id=tenant_id, call_id=p["call_id"], turn=p["turn"], name=str(p.get("name", ""))[:100],
            arguments=clean(p.get("arguments") or {}), result=clean(p.get("result") or {}),
            status=str(p.get("status", "ok"))[:16], latency_ms=int(p.get("latency_ms") or 0),
            created_at=datetime.now(UTC)).on_conflict_do_nothing())

    async def _apply_call_ended(self, session: AsyncSession, tenant_id: str, p: dict[str, Any]) -> None:
        await session.execute(update(Call).where(Call.tenant_id == tenant_id, Call.id == p["call_id"]).values(
            state="ended", ended_at=_ts(p["ended_at"]), ended_reason=p["reason"], outcome=p["outcome"],
            timings=p["timings"]))

    def _update_gauges(self) -> None:
        SPOOL_BYTES.set(self._bytes)
        SPOOLED.set(self.pending())


def _read_op(path: Path) -> dict[str, Any]:
    """One spooled write, checked enough that a bad file is set aside instead of retried forever."""
    try:
        op = json.loads(path.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _BadWrite(f"unreadable spool file: {err}") from err
    if not (isinstance(op, dict) and op.get("kind") in _FIELDS and isinstance(op.get("tenant_id"), str)
            and op["tenant_id"] and isinstance(op.get("payload"), dict)):
        raise _BadWrite("not a call-loop write")
    missing = [f for f in _FIELDS[op["kind"]] if f not in op["payload"]]
    if missing:
        raise _BadWrite(f"{op['kind']} write without {', '.join(missing)}")
    return op


def normalize_caller_id(caller_id: str) -> str:
    """E.164-ish digits: Arabic-Indic digits mapped, separators dropped, UAE 05x -> 9715x, 00 -> +."""
    digits = re.sub(r"\D", "", ascii_digits(caller_id))
    if digits.startswith("00"):
        digits = digits[2:]
    elif digits.startswith("0") and len(digits) == 10:  # a UAE national number (05x xxx xxxx, 04 xxx xxxx)
        digits = "971" + digits[1:]
    return digits


def caller_hash(caller_id: str, pepper: bytes) -> str:
    """The keyed hash (HMAC-SHA256 of the normalised number) calls are stored and found by; empty for an
    unknown caller. Also exported as ``workers.retention.caller_hash``."""
    normalized = normalize_caller_id(caller_id)
    return hmac.new(pepper, normalized.encode(), hashlib.sha256).hexdigest() if normalized else ""
