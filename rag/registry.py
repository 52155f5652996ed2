"""The document registry: each uploaded document's state, error and counts, per tenant.

It lives in the platform database's ``kb_documents`` table (migration 0002): Postgres in production, the
embedded SQLite file by default, so the gateway, the Celery workers and the CLI share one registry. It is
synchronous on purpose: it is called from ingestion threads and Celery tasks, never from the event loop.

Tenants are names in the knowledge base and ids in the database: a name is resolved once through the
``tenants`` table (an unknown name is a ValueError) and cached. Every query filters on ``tenant_id``; there
is no lookup by id alone. On Postgres each operation is one transaction that first sets ``app.tenant_id``,
so row-level security scopes it a second time: through the application role, another tenant's rows are
invisible even to a query that forgot its filter. The name lookup itself goes through ``tenant_id_of``, a
SECURITY DEFINER function of migration 0002, because the application role sees no ``tenants`` row before
a tenant is set.

States: ``queued`` -> ``processing`` -> ``indexed`` | ``failed`` (with a reason code and message).
The same bytes uploaded again by the same tenant return the existing document (a no-op), unless
that one failed, in which case it is queued again.
"""

from __future__ import annotations

import builtins
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    and_,
    create_engine,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from voiceai.db.engine import sync_url
from voiceai.db.models import KbDocument, Tenant

STATES = ("queued", "processing", "indexed", "failed")

_DOCS = cast(Table, KbDocument.__table__)
_TENANTS = cast(Table, Tenant.__table__)
_PG_SEQUENCE = "kb_documents_seq_seq"  # migration 0002
# What `update` may change: everything but the identity of the document.
_UPDATABLE = frozenset(c.name for c in _DOCS.columns) - {"id", "tenant_id", "content_hash", "seq"}
_TIME_COLUMNS = ("created_at", "updated_at", "indexed_at")


@dataclass
class DocumentRecord:
    id: str
    tenant: str
    filename: str
    content_hash: str
    size_bytes: int
    status: str
    priority: str
    task_id: str
    title: str
    format: str
    language: str
    pages: int
    chunks: int
    error_reason: str
    error: str
    attempts: int
    created_at: float
    updated_at: float
    indexed_at: float | None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["error"] = {"reason": self.error_reason, "message": self.error} if self.status == "failed" else None
        del out["error_reason"]
        return out


def _to_datetime(value: float | datetime | None) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value, UTC)


def _to_epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    # SQLite keeps no zone: the registry writes UTC, so a naive value read back is UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class SqlDocumentRegistry:
    """The registry on the platform database at ``url`` (any driver: a synchronous one is used).

    On Postgres ``url`` is normally the application role's (``db.url``); it needs migration 0002. Thread-safe:
    each call checks a connection out of the engine's pool for one transaction.
    """

    def __init__(self, url: str) -> None:
        self.url = sync_url(url)
        self._postgres = self.url.get_backend_name() == "postgresql"
        kwargs: dict[str, Any] = {"pool_pre_ping": True, "pool_size": 5} if self._postgres else {}
        self._engine: Engine = create_engine(self.url, **kwargs)
        if not self._postgres:
            _configure_sqlite(self._engine)
        self._tenant_ids: dict[str, str] = {}
        self._tenant_lock = threading.Lock()

    # ---- tenants and transactions ----------------------------------------------------------------

    def tenant_id(self, tenant: str) -> str:
        """The id of the tenant named ``tenant``; ValueError when there is none."""
        with self._tenant_lock:
            cached = self._tenant_ids.get(tenant)
        if cached is not None:
            return cached
        with self._engine.begin() as conn:  # no tenant set: on Postgres only tenant_id_of can see the name
            if self._postgres:
                found = conn.scalar(text("SELECT tenant_id_of(:name)"), {"name": tenant})
            else:
                found = conn.scalar(select(_TENANTS.c.id).where(_TENANTS.c.name == tenant))
        if found is None:
            raise ValueError(f"no tenant named {tenant!r} in the platform database; create it first "
                             f"(voiceai admin tenant create {tenant})")
        with self._tenant_lock:
            self._tenant_ids[tenant] = str(found)
        return str(found)

    @contextmanager
    def _scoped(self, tenant: str) -> Iterator[tuple[Connection, str]]:
        """One transaction scoped to ``tenant`` (committed at the end, rolled back if the block raises)."""
        tenant_id = self.tenant_id(tenant)
        with self._engine.begin() as conn:
            if self._postgres:
                conn.execute(text("SELECT set_config('app.tenant_id', :tid, true)"), {"tid": tenant_id})
            yield conn, tenant_id

    def _next_seq(self) -> Any:
        if self._postgres:
            return func.nextval(_PG_SEQUENCE)
        # Inside the registry's BEGIN IMMEDIATE transaction (see _configure_sqlite): no other writer interleaves.
        return select(func.coalesce(func.max(_DOCS.c.seq), 0) + 1).scalar_subquery()

    @staticmethod
    def _record(tenant: str, row: Any) -> DocumentRecord:
        m = row._mapping
        return DocumentRecord(
            id=m["id"], tenant=tenant, filename=m["filename"], content_hash=m["content_hash"],
            size_bytes=m["size_bytes"], status=m["status"], priority=m["priority"], task_id=m["task_id"],
            title=m["title"], format=m["format"], language=m["language"], pages=m["pages"], chunks=m["chunks"],
            error_reason=m["error_reason"], error=m["error"], attempts=m["attempts"],
            created_at=_to_epoch(m["created_at"]) or 0.0, updated_at=_to_epoch(m["updated_at"]) or 0.0,
            indexed_at=_to_epoch(m["indexed_at"]))

    # ---- the registry ----------------------------------------------------------------------------

    def register(self, tenant: str, filename: str, content_hash: str, size_bytes: int,
                 priority: str = "default") -> tuple[DocumentRecord, bool]:
        """A new queued document, or (existing, True) for bytes this tenant already uploaded."""
        for attempt in range(2):
            try:
                return self._register(tenant, filename, content_hash, size_bytes, priority)
            except IntegrityError:
                # The same bytes registered concurrently (the unique key caught it): the second pass sees them.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _register(self, tenant: str, filename: str, content_hash: str, size_bytes: int,
                  priority: str) -> tuple[DocumentRecord, bool]:
        now = datetime.now(UTC)
        with self._scoped(tenant) as (conn, tenant_id):
            row = conn.execute(select(_DOCS).where(_DOCS.c.tenant_id == tenant_id,
                                                   _DOCS.c.content_hash == content_hash)).first()
            if row is not None and row.status != "failed":
                return self._record(tenant, row), True
            if row is not None:  # it failed before: try it again under the same id
                # created_at (and seq) move too: the retried upload is now the newest version of its name.
                doc_id = row.id
                conn.execute(update(_DOCS).where(_DOCS.c.tenant_id == tenant_id, _DOCS.c.id == doc_id).values(
                    status="queued", error="", error_reason="", filename=filename, priority=priority,
                    created_at=now, updated_at=now, seq=self._next_seq()))
            else:
                doc_id = uuid.uuid4().hex
                conn.execute(insert(_DOCS).values(
                    id=doc_id, tenant_id=tenant_id, filename=filename, content_hash=content_hash,
                    size_bytes=size_bytes, status="queued", priority=priority, task_id="", title="", format="",
                    language="", pages=0, chunks=0, error_reason="", error="", attempts=0, created_at=now,
                    updated_at=now, indexed_at=None, seq=self._next_seq()))
            fresh = conn.execute(select(_DOCS).where(_DOCS.c.tenant_id == tenant_id, _DOCS.c.id == doc_id)).one()
        return self._record(tenant, fresh), False

    def get(self, tenant: str, doc_id: str) -> DocumentRecord | None:
        with self._scoped(tenant) as (conn, tenant_id):
            row = conn.execute(select(_DOCS).where(_DOCS.c.tenant_id == tenant_id, _DOCS.c.id == doc_id)).first()
        return self._record(tenant, row) if row is not None else None

    def list(self, tenant: str, status: str | None = None) -> builtins.list[DocumentRecord]:
        """The tenant's documents in registration order, optionally only those in ``status``."""
        query = select(_DOCS).where(_DOCS.c.tenant_id == self.tenant_id(tenant))
        if status:
            query = query.where(_DOCS.c.status == status)
        with self._scoped(tenant) as (conn, _):
            rows = conn.execute(query.order_by(_DOCS.c.created_at, _DOCS.c.seq)).all()
        return [self._record(tenant, r) for r in rows]

    def has_status(self, tenant: str, status: str) -> bool:
        """Whether any of the tenant's documents is in ``status`` (asked on every caller turn: no rows read)."""
        with self._scoped(tenant) as (conn, tenant_id):
            return conn.execute(select(_DOCS.c.id).where(_DOCS.c.tenant_id == tenant_id, _DOCS.c.status == status)
                                .limit(1)).first() is not None

    def update(self, tenant: str, doc_id: str, **fields: Any) -> None:
        if "status" in fields and fields["status"] not in STATES:
            raise ValueError(f"unknown document state {fields['status']!r}")
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not a document field that can change: {', '.join(sorted(unknown))}")
        fields["updated_at"] = time.time()
        for name in _TIME_COLUMNS:
            if name in fields:
                fields[name] = _to_datetime(fields[name])
        with self._scoped(tenant) as (conn, tenant_id):
            conn.execute(update(_DOCS).where(_DOCS.c.tenant_id == tenant_id, _DOCS.c.id == doc_id).values(**fields))

    def start_attempt(self, tenant: str, doc_id: str) -> None:
        with self._scoped(tenant) as (conn, tenant_id):
            conn.execute(update(_DOCS).where(_DOCS.c.tenant_id == tenant_id, _DOCS.c.id == doc_id).values(
                status="processing", attempts=_DOCS.c.attempts + 1, updated_at=datetime.now(UTC)))

    def older_versions(self, tenant: str, filename: str, keep_id: str) -> builtins.list[DocumentRecord]:
        """Documents of the same name registered before ``keep_id``: replaced when it is indexed.

        Only earlier ones, by (created_at, seq): when v2 is uploaded while v1 is still queued, v1 finishing
        first must not delete v2 (the queue may ingest them in either order; the newest upload stays).
        """
        with self._scoped(tenant) as (conn, tenant_id):
            keep = conn.execute(select(_DOCS.c.created_at, _DOCS.c.seq).where(
                _DOCS.c.tenant_id == tenant_id, _DOCS.c.id == keep_id)).first()
            if keep is None:
                return []
            rows = conn.execute(select(_DOCS).where(
                _DOCS.c.tenant_id == tenant_id, _DOCS.c.filename == filename, _DOCS.c.id != keep_id,
                or_(_DOCS.c.created_at < keep.created_at,
                    and_(_DOCS.c.created_at == keep.created_at, _DOCS.c.seq < keep.seq)),
            ).order_by(_DOCS.c.created_at, _DOCS.c.seq)).all()
        return [self._record(tenant, r) for r in rows]

    def delete(self, tenant: str, doc_id: str) -> bool:
        with self._scoped(tenant) as (conn, tenant_id):
            result = conn.execute(delete(_DOCS).where(_DOCS.c.tenant_id == tenant_id, _DOCS.c.id == doc_id))
        return result.rowcount > 0

    def close(self) -> None:
        """Closes the pooled connections."""
        self._engine.dispose()


def _configure_sqlite(engine: Engine) -> None:
    """Foreign keys, WAL and a busy timeout, as `voiceai.db.engine.Database` has; and every transaction
    opened with BEGIN IMMEDIATE: `register` reads then writes, and a deferred transaction upgrading its
    read lock could fail at once with "database is locked" against another process's writer (the gateway,
    a worker) instead of waiting its turn."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below), not the driver
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
