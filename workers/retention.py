"""Retention and erasure: the scheduled purge (Celery beat) and the GDPR erase of one caller.

* `purge_expired`: for every tenant, calls that started before now - ``configs.retention_days``
  (7/30/90, per tenant) are deleted with their transcripts and actions. One audit entry per tenant
  with the counts. A call-loop write still spooled for a purged call (a gateway that could not reach
  the database for longer than the retention) is refused by the database and set aside by the writer
  (voiceai.db.writer), not resurrected.
* `erase_caller`: every call of one caller in one tenant, found by the keyed hash of their number
  (``calls.caller_hash``: the number itself is stored redacted), with its transcripts and actions.
  The audit entry records counts and the hash prefix, never the number.

Knowledge-base documents are the tenant's own content, not caller data: they are removed by
deleting the document or offboarding the tenant, not by these jobs.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select

from voiceai.db.engine import Database
from voiceai.db.models import Action, AuditLog, Call, Tenant, TenantConfig, Transcript
from voiceai.db.writer import caller_hash, normalize_caller_id

__all__ = ["caller_hash", "erase_caller", "normalize_caller_id", "purge_expired"]

log = logging.getLogger(__name__)


async def _delete_calls(session: Any, tenant_id: str, where: Any) -> dict[str, int]:
    """Deletes one tenant's calls matching ``where`` with their transcripts and actions; returns the counts.

    The calls are named by a subquery, not a list of ids: a tenant's first purge can cover more calls than
    a statement may carry bind parameters (32767 on asyncpg; SQLite builds have their own cap)."""
    calls = select(Call.id).where(Call.tenant_id == tenant_id, where)
    # Explicit deletes rather than relying on ON DELETE CASCADE: SQLite needs foreign keys switched on
    # per connection, and an erase must not depend on that. Children first, so the counts are exact.
    counts: dict[str, int] = {}
    for name, table in (("transcripts", Transcript), ("actions", Action)):
        result = await session.execute(
            delete(table).where(table.tenant_id == tenant_id, table.call_id.in_(calls))
            .execution_options(synchronize_session=False))
        counts[name] = result.rowcount
    result = await session.execute(delete(Call).where(Call.tenant_id == tenant_id, where)
                                   .execution_options(synchronize_session=False))
    return {"calls": result.rowcount, **counts}


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
