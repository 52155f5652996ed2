"""The async engine and its two kinds of session: tenant-scoped, and platform-wide (admin).

Every request-path database access goes through `Database.tenant_session`, which opens one transaction
and scopes it to one tenant twice over:

* On Postgres it first runs ``set_config('app.tenant_id', <tenant>, true)``. The setting is
  transaction-local, so it dies with the transaction and a pooled connection never carries one tenant's
  scope into the next checkout. The row-level security policies of migration 0001 compare every row's
  ``tenant_id`` with it: a query that forgot its filter still cannot read, insert or change another
  tenant's rows.
* On both engines the session adds ``tenant_id = <tenant>`` to every ORM SELECT, UPDATE and DELETE
  of a tenant-owned entity (``with_loader_criteria``), and refuses to flush an ORM object of another
  tenant (`CrossTenantWrite`). SQLite has no row-level security, so there these checks, plus the
  explicit filters the application writes anyway, are the lock; Core inserts and raw SQL (``text()``)
  on SQLite are not scoped at all.

`Database.admin_session` opens a transaction with no tenant: tenant creation, token lookup by email,
retention over all tenants. On Postgres the application role sees no rows without a tenant, so such
work needs a `Database` built on the owner's URL (``Database.from_settings(settings, admin=True)``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from voiceai.config import REPO_ROOT
from voiceai.db import models

if TYPE_CHECKING:
    from voiceai.config import Settings
    from voiceai.db.config import DbConfig

DEFAULT_DATA_DIR = REPO_ROOT / "data"
"""Where the embedded SQLite file lives when no database URL is configured (read at call time, so
tests can point it elsewhere)."""
SQLITE_FILENAME = "voiceai.sqlite3"

Dialect = Literal["postgresql", "sqlite"]

# The async driver used when a URL names none (``postgresql://``, ``sqlite:///``).
_ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}
_KNOWN_ASYNC_DRIVERS = {"postgresql": ("asyncpg", "psycopg"), "sqlite": ("aiosqlite",)}


def async_url(url: str | URL) -> URL:
    """``url`` with an async driver: ``postgresql://`` and ``postgres://`` become asyncpg, ``sqlite://``
    becomes aiosqlite, so operators can paste the plain URLs their tools print."""
    if isinstance(url, str) and url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    u = make_url(url)
    backend = u.get_backend_name()
    if backend not in _ASYNC_DRIVERS:
        raise ValueError(f"unsupported database {backend!r}: use postgresql or sqlite")
    # Only an explicitly named async driver is kept: without one, get_driver_name() reports the sync default.
    if "+" not in u.drivername or u.get_driver_name() not in _KNOWN_ASYNC_DRIVERS[backend]:
        u = u.set(drivername=f"{backend}+{_ASYNC_DRIVERS[backend]}")
    return u


_SYNC_DRIVERS = {"postgresql": "psycopg", "sqlite": "pysqlite"}


def sync_url(url: str | URL) -> URL:
    """``url`` with a synchronous driver (psycopg, Python's sqlite3), whatever driver it named: for code that
    runs in worker threads and Celery tasks rather than on the event loop (`rag.registry.SqlDocumentRegistry`)."""
    u = async_url(url)  # normalises postgres:// and checks the backend
    backend = u.get_backend_name()
    return u.set(drivername=f"{backend}+{_SYNC_DRIVERS[backend]}")


def default_sqlite_url(data_dir: Path | None = None) -> str:
    """The embedded database's URL, creating its folder: used when ``db.url`` is empty."""
    folder = DEFAULT_DATA_DIR if data_dir is None else data_dir
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite+aiosqlite:///{(folder / SQLITE_FILENAME).resolve()}"


def resolve_url(db: DbConfig, *, admin: bool = False) -> str:
    """The URL a process should use: the owner's for admin work (falling back to the application's, which
    is also what a single-role deployment has), the embedded SQLite file when neither is set."""
    url = (db.admin_url or db.url) if admin else db.url
    return url or default_sqlite_url()


class _ScopedSession(Session):
    """The sync session behind every `AsyncSession` of a `Database`: the listeners below are registered on
    this class, so they never touch sessions of other code in the same process."""


# (mapped class, the column holding its tenant): every tenant-owned entity, plus Tenant itself.
_TENANT_COLUMNS: tuple[tuple[type[models.Base], str], ...] = (
    (models.Tenant, "id"),
    *((m.class_, "tenant_id") for m in models.Base.registry.mappers if m.class_.__tablename__ in models.TENANT_TABLES),
)

_TENANT_COLUMN_OF: dict[type[models.Base], str] = dict(_TENANT_COLUMNS)


class CrossTenantWrite(PermissionError):
    """An ORM object of another tenant was added to, or moved out of, a tenant session."""


@event.listens_for(_ScopedSession, "before_flush")
def _refuse_other_tenants(session: Session, _context: Any, _instances: Any) -> None:
    """Refuses to flush an object whose tenant is not the session's: on SQLite nothing else would stop
    it; on Postgres this names the mistake before the RLS check turns it into a generic error."""
    tenant_id = session.info.get("tenant_id")
    if tenant_id is None:
        return
    for obj in (*session.new, *session.dirty):
        column = _TENANT_COLUMN_OF.get(type(obj))
        if column is not None and getattr(obj, column) != tenant_id:
            raise CrossTenantWrite(f"a {type(obj).__name__} of another tenant cannot be written in this tenant's "
                                   "session")


@event.listens_for(_ScopedSession, "do_orm_execute")
def _scope_to_tenant(state: ORMExecuteState) -> None:
    """Adds ``tenant_id = <session tenant>`` to ORM statements of a tenant session: the read-side lock on
    SQLite, which has no row-level security, and a second filter on Postgres."""
    tenant_id = state.session.info.get("tenant_id")
    if tenant_id is None or not (state.is_select or state.is_update or state.is_delete):
        return
    if state.is_column_load or state.is_relationship_load:
        return  # the parent query was already scoped
    for cls, column in _TENANT_COLUMNS:
        state.statement = state.statement.options(
            with_loader_criteria(cls, getattr(cls, column) == tenant_id, include_aliases=True))


class Database:
    """One async engine (a connection pool) and the sessions the platform uses on it.

    ``url`` may name Postgres or SQLite, with or without an async driver. ``statement_timeout_ms``
    (Postgres) bounds every statement, so a stuck query frees its connection instead of starving the
    pool; 0 disables it. The pool sizes apply to Postgres; SQLite uses SQLAlchemy's default file pool.
    """

    def __init__(self, url: str, *, statement_timeout_ms: int = 5000, pool_size: int = 10,
                 max_overflow: int = 10) -> None:
        self.url = async_url(url)
        backend = self.url.get_backend_name()
        self._dialect: Dialect = "postgresql" if backend == "postgresql" else "sqlite"
        kwargs: dict[str, Any] = {}
        if self._dialect == "postgresql":
            kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True,
                          connect_args=_pg_connect_args(self.url.get_driver_name(), statement_timeout_ms))
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if self._dialect == "sqlite":
            _configure_sqlite(self.engine, in_memory=self.url.database in (None, "", ":memory:"),
                              busy_timeout_ms=statement_timeout_ms or 5000)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False, sync_session_class=_ScopedSession)

    @classmethod
    def from_settings(cls, settings: Settings, admin: bool = False) -> Database:
        """The database of ``settings.db``; ``admin`` picks the owner's URL (migrations, platform-wide
        work), falling back to the application's. No URL at all: the embedded SQLite file under data/."""
        db = settings.db
        return cls(resolve_url(db, admin=admin), statement_timeout_ms=db.statement_timeout_ms,
                   pool_size=db.pool_size, max_overflow=db.max_overflow)

    @property
    def dialect(self) -> Dialect:
        """``"postgresql"`` or ``"sqlite"``: callers branch on it only for dialect-specific SQL
        (``INSERT ... ON CONFLICT``)."""
        return self._dialect

    @asynccontextmanager
    async def tenant_session(self, tenant_id: str) -> AsyncIterator[AsyncSession]:
        """One transaction scoped to ``tenant_id``: committed when the block ends, rolled back if it raises.

        An empty tenant is refused rather than treated as "no tenant": on Postgres the owner's policy
        reads an empty ``app.tenant_id`` as platform-wide access.
        """
        if not tenant_id:
            raise ValueError("tenant_session needs a tenant id; use admin_session for platform-wide work")
        async with self._sessions() as session, session.begin():
            session.info["tenant_id"] = tenant_id
            if self._dialect == "postgresql":
                await session.execute(text("SELECT set_config('app.tenant_id', :tid, true)"), {"tid": tenant_id})
            yield session

    @asynccontextmanager
    async def admin_session(self) -> AsyncIterator[AsyncSession]:
        """One platform-wide transaction (no tenant): committed when the block ends, rolled back if it raises.

        On Postgres only the owner role sees rows here; through the application role every tenant-owned
        table looks empty.
        """
        async with self._sessions() as session, session.begin():
            yield session

    async def close(self) -> None:
        """Closes every pooled connection."""
        await self.engine.dispose()


def _pg_connect_args(driver: str, statement_timeout_ms: int) -> dict[str, Any]:
    # Set at connect time rather than per transaction: one round trip per connection, not per request.
    if driver == "asyncpg":
        return {"server_settings": {"statement_timeout": str(statement_timeout_ms)}}
    return {"options": f"-c statement_timeout={statement_timeout_ms}"}  # psycopg


def _configure_sqlite(engine: AsyncEngine, *, in_memory: bool, busy_timeout_ms: int) -> None:
    """Foreign keys (off by default in SQLite, so ON DELETE CASCADE and the references would be
    decorative), WAL (readers do not block the writer) and a busy timeout (a second writer waits instead
    of failing at once), on every new connection."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode=WAL")
        finally:
            cursor.close()
