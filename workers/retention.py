"""Retention and erasure: the scheduled purge (Celery beat) and the GDPR erase of one caller.

* `purge_expired`: for every tenant, calls that started before now - ``configs.retention_days``
  (7/30/90, per tenant) are deleted with their transcripts and actions (foreign keys cascade), and so
  are the call-loop writes still spooled for them. One audit entry per tenant with the counts.
* `erase_caller`: every call of one caller in one tenant, found by the keyed hash of their number
  (``calls.caller_hash``: the number itself is stored redacted), with its transcripts and actions.
  The audit entry records counts and the hash prefix, never the number.

Knowledge-base documents are the tenant's own content, not caller data: they are removed by
deleting the document or offboarding the tenant, not by these jobs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select

from voiceai.db.engine import Database
from voiceai.db.models import Action, AuditLog, Call, Tenant, TenantConfig, Transcript

log = logging.getLogger(__name__)

_DIGITS = str.maketrans({**{chr(0x0660 + d): str(d) for d in range(10)},
                         **{chr(0x06F0 + d): str(d) for d in range(10)}})


def normalize_caller_id(caller_id: str) -> str:
    """E.164-ish digits: Arabic-Indic digits mapped, separators dropped, UAE 05x -> 9715x, 00 -> +."""
    digits = re.sub(r"\D", "", caller_id.translate(_DIGITS))
    if digits.startswith("00"):
        digits = digits[2:]
    elif digits.startswith("0") and len(digits) == 10:  # a UAE national number (05x xxx xxxx, 04 xxx xxxx)
        digits = "971" + digits[1:]
    return digits


def caller_hash(caller_id: str, pepper: bytes) -> str:
    """The keyed hash calls are found by for an erase request; empty for an unknown caller."""
    normalized = normalize_caller_id(caller_id)
    return hmac.new(pepper, normalized.encode(), hashlib.sha256).hexdigest() if normalized else ""


async def _delete_calls(session: Any, tenant_id: str, where: Any) -> dict[str, int]:
    ids = list(await session.scalars(select(Call.id).where(Call.tenant_id == tenant_id, where)))
    if not ids:
        return {"calls": 0, "transcripts": 0, "actions": 0}
    counts = {
        "transcripts": await session.scalar(select(func.count()).select_from(Transcript).where(
            Transcript.tenant_id == tenant_id, Transcript.call_id.in_(ids))) or 0,
        "actions": await session.scalar(select(func.count()).select_from(Action).where(
            Action.tenant_id == tenant_id, Action.call_id.in_(ids))) or 0,
    }
    # Explicit deletes rather than relying on ON DELETE CASCADE: SQLite needs foreign keys switched on
    # per connection, and an erase must not depend on that.
    await session.execute(delete(Transcript).where(Transcript.tenant_id == tenant_id, Transcript.call_id.in_(ids)))
    await session.execute(delete(Action).where(Action.tenant_id == tenant_id, Action.call_id.in_(ids)))
    await session.execute(delete(Call).where(Call.tenant_id == tenant_id, Call.id.in_(ids)))
    return {"calls": len(ids), **counts}


async def purge_expired(db: Database, now: datetime | None = None) -> dict[str, dict[str, int]]:
    """Deletes every tenant's calls past its retention; returns the counts per tenant name."""
    now = now or datetime.now(UTC)
    async with db.admin_session() as session:
        tenants = list(await session.execute(
            select(Tenant.id, Tenant.name, TenantConfig.retention_days)
            .join(TenantConfig, TenantConfig.tenant_id == Tenant.id, isouter=True)))
    out: dict[str, dict[str, int]] = {}
    for tenant_id, name, days in tenants:
        cutoff = now - timedelta(days=days or 30)
        async with db.tenant_session(tenant_id) as session:
            counts = await _delete_calls(session, tenant_id, Call.started_at < cutoff)
            session.add(AuditLog(tenant_id=tenant_id, actor_type="system", actor_id="retention",
                                 action="retention.purge", target_type="tenant", target_id=tenant_id,
                                 details={"retention_days": days or 30, "cutoff": cutoff.isoformat(), **counts}))
        out[name] = counts
        if counts["calls"]:
            log.info("retention purge", extra={"tenant": name, **counts})
    return out


async def erase_caller(db: Database, tenant_id: str, caller_id: str, pepper: bytes, *, actor_type: str,
                       actor_id: str, source_ip: str = "") -> dict[str, int]:
    """GDPR erase of one caller's calls in one tenant. Returns the counts (also audited)."""
    digest = caller_hash(caller_id, pepper)
    if not digest:
        raise ValueError("caller id has no digits")
    async with db.tenant_session(tenant_id) as session:
        counts = await _delete_calls(session, tenant_id, Call.caller_hash == digest)
        session.add(AuditLog(tenant_id=tenant_id, actor_type=actor_type, actor_id=actor_id, action="gdpr.erase",
                             target_type="caller", target_id=digest[:12], source_ip=source_ip, details=counts))
    return counts
