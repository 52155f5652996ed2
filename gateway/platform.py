"""The gateway's platform services, built once at startup: database, identity, rate limits, the
durable call writer, and the audit trail every mutation goes through.

With no database configured the gateway uses the embedded SQLite file and migrates it itself (so
`voiceai up` works with nothing installed); a Postgres schema is migrated by the operator
(`voiceai db upgrade`), and the gateway refuses to start on an old one rather than guess.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request
from sqlalchemy import select

from gateway.auth.apikeys import load_pepper
from gateway.auth.deps import AuthContext, Principal, db_api_key_lookup
from gateway.auth.keys import KeyRing, keys_dir_for
from gateway.ratelimit import RateLimiter
from voiceai.config import REPO_ROOT, Settings
from voiceai.db import migrate
from voiceai.db.engine import Database
from voiceai.db.models import AuditLog, Tenant, TenantConfig
from voiceai.db.writer import CallWriter
from voiceai.pii import redact_obj

log = logging.getLogger(__name__)


@dataclass
class Platform:
    db: Database
    admin_db: Database
    auth: AuthContext
    limiter: RateLimiter | None
    writer: CallWriter
    pepper: bytes
    anonymous_tenant: tuple[str, str] | None = None  # (id, name) of the tenant anonymous web callers reach
    _tenant_ids: dict[str, str] = field(default_factory=dict)

    async def tenant_named(self, name: str) -> tuple[str, str]:
        """``(id, name)`` of the tenant a channel configures by name (a SIP route, the Twilio number); an
        empty name is the anonymous calls tenant. LookupError when there is no such tenant."""
        if not name:
            if self.anonymous_tenant is None:
                raise LookupError("no tenant configured for this channel and auth.anonymous_calls_tenant is empty")
            return self.anonymous_tenant
        if name not in self._tenant_ids:
            async with self.admin_db.admin_session() as session:
                tenant_id = await session.scalar(select(Tenant.id).where(Tenant.name == name))
            if tenant_id is None:
                raise LookupError(f"tenant {name!r} does not exist")
            self._tenant_ids[name] = str(tenant_id)
        return self._tenant_ids[name], name

    async def close(self) -> None:
        await self.writer.stop()
        if self.limiter is not None:
            await self.limiter.close()
        await self.db.close()
        if self.admin_db is not self.db:
            await self.admin_db.close()


async def ensure_tenant(admin_db: Database, name: str) -> str:
    """The development tenant (`kb.default_tenant`) exists on an embedded database: created if missing."""
    async with admin_db.admin_session() as session:
        tenant_id = await session.scalar(select(Tenant.id).where(Tenant.name == name))
        if tenant_id is None:
            tenant = Tenant(name=name, display_name=name)
            session.add(tenant)
            await session.flush()
            session.add(TenantConfig(tenant_id=tenant.id))
            session.add(AuditLog(tenant_id=tenant.id, actor_type="system", actor_id="gateway", action="tenant.create",
                                 target_type="tenant", target_id=tenant.id, details={"name": name, "why": "default"}))
            tenant_id = tenant.id
        return str(tenant_id)


async def start_platform(settings: Settings) -> Platform:
    db = Database.from_settings(settings)
    admin_db = Database.from_settings(settings, admin=True) if settings.db.admin_url else db
    if db.dialect == "sqlite":
        await asyncio.to_thread(migrate.upgrade, str(db.url))
    else:
        current, head = await asyncio.to_thread(migrate.current, str(admin_db.url)), migrate.head()
        if current != head:
            raise RuntimeError(f"the database schema is at {current or 'nothing'}, this gateway needs {head}: run "
                               "`voiceai db upgrade` first")
    keys_dir = keys_dir_for(settings.auth)
    ring = await asyncio.to_thread(KeyRing.load_or_create, keys_dir)
    pepper = await asyncio.to_thread(load_pepper, settings.auth, keys_dir)
    default_tenant = settings.kb.default_tenant
    default_id = await ensure_tenant(admin_db, default_tenant) if db.dialect == "sqlite" else ""
    anonymous = None
    if settings.auth.anonymous_calls_tenant:
        name = settings.auth.anonymous_calls_tenant
        if db.dialect == "sqlite":
            anonymous_id: str | None = await ensure_tenant(admin_db, name)
        else:
            async with admin_db.admin_session() as session:
                anonymous_id = await session.scalar(select(Tenant.id).where(Tenant.name == name))
        if anonymous_id is None:
            raise RuntimeError(f"auth.anonymous_calls_tenant names {name!r}, which does not exist")
        anonymous = (str(anonymous_id), name)
    auth = AuthContext(settings.auth, ring, pepper, db_api_key_lookup(admin_db.admin_session, pepper),
                       default_tenant=default_tenant, default_tenant_id=default_id)
    limiter = RateLimiter(settings.auth.rate_limit) if settings.auth.rate_limit.enabled else None
    spool = Path(settings.db.write_buffer_dir) if settings.db.write_buffer_dir else REPO_ROOT / "data" / "write-buffer"
    writer = CallWriter(db, spool, max_bytes=settings.db.write_buffer_max_bytes, pepper=pepper)
    writer.start()
    return Platform(db=db, admin_db=admin_db, auth=auth, limiter=limiter, writer=writer, pepper=pepper,
                    anonymous_tenant=anonymous)


def platform_of(request: Request) -> Platform:
    return request.app.state.platform  # type: ignore[no-any-return]


async def audit(request: Request, principal: Principal, action: str, target_type: str = "", target_id: str = "",
                **details: Any) -> None:
    """One audit_logs row for a mutation: who (principal), what, when, from where. Details are redacted."""
    platform = platform_of(request)
    client = request.client.host if request.client else ""
    row = AuditLog(tenant_id=principal.tenant_id, actor_type=principal.principal_type, actor_id=principal.subject,
                   action=action, target_type=target_type, target_id=target_id, source_ip=client,
                   user_agent=request.headers.get("user-agent", "")[:300], details=redact_obj(details))
    async with platform.db.tenant_session(principal.tenant_id) as session:
        session.add(row)
