"""The data layer on real databases: migrations up/down/up, row-level security as the application role,
the append-only audit log, tenant-scoped sessions, the embedded SQLite default.

Each Postgres test gets its own database, owner role and application role (unique names), created with
the superuser DSN in VOICEAI_TEST_POSTGRES_DSN (default: postgres on 127.0.0.1:5432, trust auth) and
dropped afterwards. The owner is not a superuser (superusers ignore row-level security), as in production.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from psycopg import errors as pg_errors
from sqlalchemy import create_engine, delete, func, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError

from voiceai.config import Settings
from voiceai.db import engine as db_engine
from voiceai.db import migrate
from voiceai.db.config import DbConfig
from voiceai.db.engine import CrossTenantWrite, Database, resolve_url
from voiceai.db.models import TENANT_TABLES, AuditLog, Base, Call, Tenant, TenantConfig, Transcript, User

pytestmark = pytest.mark.integration

PG_DSN = os.environ.get("VOICEAI_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ALL_TABLES = set(Base.metadata.tables)
RLS_TABLES = {"tenants", *TENANT_TABLES}
TENANT_A, TENANT_B = "a" * 32, "b" * 32


@dataclass(frozen=True)
class PgDatabase:
    """A throwaway database: ``owner`` owns it and runs the migrations, ``app_role`` is the application."""

    name: str
    owner: str
    app_role: str

    def url(self, role: str, driver: str = "asyncpg") -> str:
        base = make_url(PG_DSN).set(drivername=f"postgresql+{driver}", username=role, password=None,
                                    database=self.name)
        return base.render_as_string(hide_password=False)

    def connect(self, role: str) -> psycopg.Connection:
        """A raw psycopg connection as ``role`` (no ORM, no Database: what any client could do)."""
        return psycopg.connect(self.url(role, "psycopg").replace("postgresql+psycopg", "postgresql"))


@pytest.fixture
def pg() -> Iterator[PgDatabase]:
    try:
        admin = psycopg.connect(PG_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no Postgres at {PG_DSN} ({exc}); start one or set VOICEAI_TEST_POSTGRES_DSN to a superuser DSN")
    suffix = uuid.uuid4().hex[:12]
    db = PgDatabase(name=f"voiceai_test_{suffix}", owner=f"voiceai_test_owner_{suffix}",
                    app_role=f"voiceai_test_app_{suffix}")
    with admin:
        # CREATEROLE: migration 0001 creates the application role itself.
        admin.execute(f'CREATE ROLE "{db.owner}" LOGIN CREATEROLE')
        admin.execute(f'CREATE DATABASE "{db.name}" OWNER "{db.owner}"')
        try:
            yield db
        finally:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db.name,))
            admin.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
            admin.execute(f'DROP ROLE IF EXISTS "{db.app_role}"')
            admin.execute(f'DROP ROLE IF EXISTS "{db.owner}"')


def _sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'voiceai.sqlite3'}"


def _sync_url(url: str) -> str:
    u = make_url(url)
    driver = "postgresql+psycopg" if u.get_backend_name() == "postgresql" else "sqlite"
    return u.set(drivername=driver).render_as_string(hide_password=False)


def _schema_drift(url: str) -> list[object]:
    """What autogenerate would still change: the migrations must build exactly the models' tables."""
    engine = create_engine(_sync_url(url))
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection, opts={"compare_type": True}),
                                         Base.metadata))
    finally:
        engine.dispose()


def _pg_tables(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return {r[0] for r in rows}


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _ids(conn: psycopg.Connection, table: str) -> set[str]:
    return {r[0] for r in conn.execute(f"SELECT id FROM {table}").fetchall()}


def _set_tenant(conn: psycopg.Connection, tenant_id: str) -> None:
    conn.execute("SELECT set_config('app.tenant_id', %s, true)", (tenant_id,))


async def _seed_orm(admin: Database) -> None:
    async with admin.admin_session() as s:
        s.add_all([Tenant(id=t, name=f"tenant-{t[0]}") for t in (TENANT_A, TENANT_B)])
        await s.flush()
        for t in (TENANT_A, TENANT_B):
            tag = t[0]
            s.add_all([TenantConfig(tenant_id=t), User(id=f"user-{tag}", tenant_id=t, email=f"{tag}@example.com",
                                                       role="admin"),
                       Call(id=f"call-{tag}", tenant_id=t, channel="websocket", language="ar")])
            await s.flush()
            s.add_all([Transcript(id=f"turn-{tag}", tenant_id=t, call_id=f"call-{tag}", turn=0, speaker="caller",
                                  text="مرحبا"),
                       AuditLog(tenant_id=t, actor_type="user", action="kb.document.delete")])
        s.add(AuditLog(tenant_id=None, actor_type="cli", action="tenant.create"))


def _seed(url: str) -> None:
    """Two tenants, each with a user, a call, a transcript turn and an audit row; plus a platform audit row.
    Written through the ORM as the owner (no tenant set), so the raw-SQL checks below need no column lists."""

    async def seed() -> None:
        db = Database(url)
        try:
            await _seed_orm(db)
        finally:
            await db.close()

    asyncio.run(seed())


# ---- migrations ------------------------------------------------------------------------------------------


def test_upgrade_creates_every_table_with_rls_and_the_app_role(pg: PgDatabase) -> None:
    owner_url = pg.url(pg.owner)
    assert migrate.current(owner_url) is None
    migrate.upgrade(owner_url, app_role=pg.app_role)

    assert migrate.current(owner_url) == migrate.head() == "0002"
    assert _schema_drift(owner_url) == []
    with pg.connect(pg.owner) as conn:
        assert _pg_tables(conn) == ALL_TABLES | {"alembic_version"}
        rls = {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
            "SELECT relname, relrowsecurity, relforcerowsecurity, pg_get_userbyid(relowner) FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'").fetchall()}
        assert {t for t, (enabled, forced, _) in rls.items() if enabled and forced} == RLS_TABLES
        assert all(owner == pg.owner for _, _, owner in rls.values())
        policies = conn.execute("SELECT tablename, policyname, roles::text FROM pg_policies").fetchall()
        assert {(t, p) for t, p, _ in policies} == {(t, p) for t in RLS_TABLES for p in ("tenant_isolation",
                                                                                            "platform_admin")}
        assert {r for _, p, r in policies if p == "platform_admin"} == {f"{{{pg.owner}}}"}
        role = conn.execute("SELECT rolcanlogin, rolsuper, rolbypassrls, rolcreaterole FROM pg_roles "
                            "WHERE rolname = %s", (pg.app_role,)).fetchone()
        assert role == (True, False, False, False)


def test_postgres_up_down_up(pg: PgDatabase) -> None:
    owner_url = pg.url(pg.owner)
    migrate.upgrade(owner_url, app_role=pg.app_role)
    migrate.downgrade(owner_url, app_role=pg.app_role)

    assert migrate.current(owner_url) is None
    with pg.connect(pg.owner) as conn:
        assert _pg_tables(conn) == {"alembic_version"}  # alembic keeps its (now empty) bookkeeping table
        assert _count(conn, "pg_policies") == 0
        assert conn.execute("SELECT count(*) FROM pg_proc WHERE proname IN ('audit_logs_append_only', "
                            "'tenant_id_of')").fetchone() == (0,)
        # Roles are cluster-wide: left in place, with nothing granted in this database any more.
        assert conn.execute("SELECT has_database_privilege(%s, current_database(), 'CONNECT'), "
                            "has_schema_privilege(%s, 'public', 'CREATE')", (pg.app_role, pg.app_role)).fetchone() \
            == (True, False)  # CONNECT still comes from PUBLIC, the default

    # Again, now with the application role already there: 0001 reuses it.
    migrate.upgrade(owner_url, app_role=pg.app_role)
    assert migrate.current(owner_url) == "0002"
    assert _schema_drift(owner_url) == []


def test_upgrade_refuses_an_application_role_that_bypasses_rls(pg: PgDatabase) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{pg.app_role}" LOGIN BYPASSRLS')
    with pytest.raises(DBAPIError, match="bypasses row-level security"):
        migrate.upgrade(pg.url(pg.owner), app_role=pg.app_role)
    assert migrate.current(pg.url(pg.owner)) is None  # one transaction: nothing half-applied
    with pytest.raises(DBAPIError, match="must not be the role that owns the tables"):
        migrate.upgrade(pg.url(pg.owner), app_role=pg.owner)


def test_sqlite_up_down_up(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    path = tmp_path / "voiceai.sqlite3"

    def objects() -> set[tuple[str, str]]:
        with sqlite3.connect(path) as conn:
            rows = conn.execute("SELECT type, name FROM sqlite_master WHERE type IN ('table', 'trigger')")
            return {(t, n) for t, n in rows}

    migrate.upgrade(url)
    assert objects() == {("table", t) for t in ALL_TABLES | {"alembic_version"}} | {
        ("trigger", "audit_logs_no_update"), ("trigger", "audit_logs_no_delete")}
    assert _schema_drift(url) == []
    migrate.downgrade(url)
    assert objects() == {("table", "alembic_version")}
    assert migrate.current(url) is None
    migrate.upgrade(url)
    assert migrate.current(url) == "0002"


def test_role_names_are_checked_before_they_reach_sql() -> None:
    assert migrate.app_role_from_url("postgresql://voiceai_app:pw@db/voiceai") == "voiceai_app"
    assert migrate.app_role_from_url("") == migrate.DEFAULT_APP_ROLE
    separate = DbConfig(url="postgresql://bank_app@db/voiceai", admin_url="postgresql://bank_owner@db/voiceai")
    assert migrate.app_role_for(separate) == "bank_app"
    assert migrate.app_role_for(DbConfig(url="postgresql://bank_owner@db/voiceai")) == migrate.DEFAULT_APP_ROLE
    for bad in ('app"; DROP TABLE users; --', "App", "", "x" * 64):
        with pytest.raises(ValueError):
            migrate.check_role_name(bad)


# ---- row-level security, as the application role --------------------------------------------------------


def test_application_role_sees_and_writes_only_its_tenant(pg: PgDatabase) -> None:
    migrate.upgrade(pg.url(pg.owner), app_role=pg.app_role)
    _seed(pg.url(pg.owner))

    with pg.connect(pg.app_role) as app:
        with app.transaction():  # no tenant set: every tenant-owned table looks empty
            for table in ("tenants", "users", "calls", "transcripts", "audit_logs"):
                assert _count(app, table) == 0, table

        with app.transaction():
            _set_tenant(app, TENANT_A)
            assert _ids(app, "tenants") == {TENANT_A}
            assert _ids(app, "users") == {"user-a"}
            assert _ids(app, "calls") == {"call-a"}
            assert _ids(app, "transcripts") == {"turn-a"}
            assert {r[0] for r in app.execute("SELECT tenant_id FROM audit_logs")} == {TENANT_A}
            # B's rows cannot be changed or removed: they do not exist for this role. A's can (control).
            assert app.execute("UPDATE calls SET outcome = 'x' WHERE id = 'call-b'").rowcount == 0
            assert app.execute("UPDATE transcripts SET text = 'x' WHERE tenant_id = %s", (TENANT_B,)).rowcount == 0
            assert app.execute("DELETE FROM users WHERE id = 'user-b'").rowcount == 0
            assert app.execute("UPDATE calls SET outcome = 'resolved' WHERE id = 'call-a'").rowcount == 1
            assert app.execute("UPDATE tenants SET display_name = 'A' WHERE id = %s", (TENANT_A,)).rowcount == 1

        # The setting was transaction-local: the next transaction on this connection sees nothing again.
        with app.transaction():
            assert _count(app, "calls") == 0

        refused = [
            ("INSERT INTO calls (id, tenant_id, state, channel, language, caller_id, started_at, ended_reason, "
             "outcome, timings) VALUES ('call-x', %s, 'active', 'sip', 'en', '', now(), '', '', '{}')", (TENANT_B,)),
            ("UPDATE calls SET tenant_id = %s WHERE id = 'call-a'", (TENANT_B,)),  # moving a row out: WITH CHECK
            ("INSERT INTO audit_logs (tenant_id, at, actor_type, action, actor_id, target_type, target_id, "
             "source_ip, user_agent, details) VALUES (NULL, now(), 'user', 'x', '', '', '', '', '', '{}')", ()),
            ("INSERT INTO tenants (id, name, display_name, created_at, disabled) "
             "VALUES ('c', 'c', '', now(), false)", ()),
            ("UPDATE tenants SET disabled = false", ()),  # a tenant must not re-enable itself
            ("DELETE FROM tenants", ()),
            ("UPDATE audit_logs SET action = 'x'", ()),
            ("DELETE FROM audit_logs", ()),
            ("TRUNCATE calls", ()),  # TRUNCATE ignores RLS, so the role must not have it
        ]
        for sql, params in refused:
            with pytest.raises(pg_errors.InsufficientPrivilege), app.transaction():
                _set_tenant(app, TENANT_A)
                app.execute(sql, params)

        with app.transaction():
            _set_tenant(app, TENANT_A)
            app.execute("INSERT INTO audit_logs (tenant_id, at, actor_type, action, actor_id, target_type, target_id, "
                        "source_ip, user_agent, details) VALUES (%s, now(), 'user', 'kb.delete', '', '', '', '', '', "
                        "'{}')", (TENANT_A,))

    with pg.connect(pg.owner) as owner:  # nothing of B changed
        assert owner.execute("SELECT outcome FROM calls WHERE id = 'call-b'").fetchone() == ("",)
        assert _count(owner, "users") == 2


def test_owner_sees_every_tenant_only_without_a_tenant_set(pg: PgDatabase) -> None:
    """The owner's platform_admin policy: platform-wide with no tenant set, scoped like the application
    role inside a tenant transaction (so a single-role deployment is still isolated per tenant)."""
    migrate.upgrade(pg.url(pg.owner), app_role=pg.app_role)
    _seed(pg.url(pg.owner))
    with pg.connect(pg.owner) as owner:
        with owner.transaction():
            assert _ids(owner, "calls") == {"call-a", "call-b"}
            assert _count(owner, "audit_logs") == 3
        with owner.transaction():
            _set_tenant(owner, TENANT_A)
            assert _ids(owner, "calls") == {"call-a"}
            assert _ids(owner, "tenants") == {TENANT_A}
            assert owner.execute("DELETE FROM calls WHERE id = 'call-b'").rowcount == 0
        with pytest.raises(pg_errors.InsufficientPrivilege), owner.transaction():
            _set_tenant(owner, TENANT_A)
            owner.execute("UPDATE users SET tenant_id = %s", (TENANT_B,))
        with owner.transaction():  # deleting a tenant cascades through RLS (FK actions are not subject to it)
            owner.execute("DELETE FROM tenants WHERE id = %s", (TENANT_B,))
            assert _ids(owner, "transcripts") == {"turn-a"}


# ---- append-only audit log ------------------------------------------------------------------------------


def test_audit_logs_are_append_only_on_postgres_even_for_owner_and_superuser(pg: PgDatabase) -> None:
    migrate.upgrade(pg.url(pg.owner), app_role=pg.app_role)
    superuser_dsn = make_url(PG_DSN).set(database=pg.name).render_as_string(hide_password=False)
    _seed(pg.url(pg.owner))
    for conn in (pg.connect(pg.owner), psycopg.connect(superuser_dsn)):
        with conn:
            for sql in ("UPDATE audit_logs SET action = 'x'", "DELETE FROM audit_logs",
                        "DELETE FROM audit_logs WHERE false",  # a statement trigger: even a no-op is refused
                        "TRUNCATE audit_logs"):
                with pytest.raises(pg_errors.RaiseException, match="audit_logs is append-only"), conn.transaction():
                    conn.execute(sql)
            assert _count(conn, "audit_logs") == 3


def test_audit_logs_are_append_only_on_sqlite(tmp_path: Path) -> None:
    migrate.upgrade(_sqlite_url(tmp_path))
    with sqlite3.connect(tmp_path / "voiceai.sqlite3") as conn:
        conn.execute("INSERT INTO audit_logs (tenant_id, at, actor_type, actor_id, action, target_type, target_id, "
                     "source_ip, user_agent, details) VALUES (NULL, '2026-01-01', 'cli', '', 'tenant.create', '', '', "
                     "'', '', '{}')")
        for sql in ("UPDATE audit_logs SET action = 'x'", "DELETE FROM audit_logs"):
            with pytest.raises(sqlite3.IntegrityError, match="audit_logs is append-only"):
                conn.execute(sql)
        assert conn.execute("SELECT action FROM audit_logs").fetchall() == [("tenant.create",)]


# ---- Database: tenant-scoped sessions through the ORM ---------------------------------------------------


@dataclass(frozen=True)
class Backend:
    dialect: str
    owner_url: str
    app_url: str


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        url = _sqlite_url(tmp_path)
        migrate.upgrade(url)
        return Backend("sqlite", url, url)  # one file, no roles
    pg: PgDatabase = request.getfixturevalue("pg")
    migrate.upgrade(pg.url(pg.owner), app_role=pg.app_role)
    return Backend("postgresql", pg.url(pg.owner), pg.url(pg.app_role))


async def test_tenant_session_scopes_the_orm_on_both_engines(backend: Backend) -> None:
    admin, app = Database(backend.owner_url), Database(backend.app_url)
    try:
        assert admin.dialect == app.dialect == backend.dialect
        await _seed_orm(admin)

        async with app.tenant_session(TENANT_A) as s:
            assert (await s.scalars(select(Call.id))).all() == ["call-a"]  # no tenant filter written here
            assert await s.get(Call, "call-b") is None
            assert (await s.scalars(select(Tenant.id))).all() == [TENANT_A]
            assert await s.scalar(select(func.count()).select_from(Transcript)) == 1
            assert (await s.execute(update(Call).values(outcome="resolved"))).rowcount == 1  # type: ignore[attr-defined]
            assert (await s.execute(delete(Call).where(Call.id == "call-b"))).rowcount == 0  # type: ignore[attr-defined]
            raw = await s.scalar(text("SELECT count(*) FROM calls"))
            # Raw SQL: Postgres still scopes it (RLS); SQLite has no RLS, so only the ORM and the
            # application's own filters stand between tenants there.
            assert raw == (1 if backend.dialect == "postgresql" else 2)

        with pytest.raises(CrossTenantWrite):  # refused before the database is asked, on both engines
            async with app.tenant_session(TENANT_A) as s:
                s.add(Call(tenant_id=TENANT_B, channel="sip", language="en"))

        with pytest.raises(RuntimeError, match="boom"):  # an error rolls the whole transaction back
            async with app.tenant_session(TENANT_A) as s:
                s.add(Call(id="call-rolled-back", tenant_id=TENANT_A, channel="sip", language="en"))
                await s.flush()
                raise RuntimeError("boom")

        async with app.tenant_session(TENANT_A) as s:  # a clean exit commits
            s.add(Call(id="call-committed", tenant_id=TENANT_A, channel="sip", language="en"))
        async with admin.admin_session() as s:
            ids = set((await s.scalars(select(Call.id))).all())
            assert ids == {"call-a", "call-b", "call-committed"}
            assert await s.scalar(select(Call.outcome).where(Call.id == "call-b")) == ""
            assert await s.scalar(select(func.count()).select_from(AuditLog)) == 3

        async with app.admin_session() as s:
            # Platform-wide work needs the owner on Postgres: the application role without a tenant sees nothing.
            visible = await s.scalar(select(func.count()).select_from(Call))
            assert visible == (0 if backend.dialect == "postgresql" else 3)

        with pytest.raises(ValueError):
            async with app.tenant_session(""):
                pass
    finally:
        await app.close()
        await admin.close()


async def test_statement_timeout_bounds_every_statement(pg: PgDatabase) -> None:
    migrate.upgrade(pg.url(pg.owner), app_role=pg.app_role)
    db = Database(pg.url(pg.app_role), statement_timeout_ms=200)
    try:
        with pytest.raises(DBAPIError, match="statement timeout"):
            async with db.tenant_session(TENANT_A) as s:
                await s.execute(text("SELECT pg_sleep(2)"))
    finally:
        await db.close()


# ---- SQLite: the embedded default -----------------------------------------------------------------------


async def test_from_settings_defaults_to_sqlite_under_the_data_dir(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    monkeypatch.setattr(db_engine, "DEFAULT_DATA_DIR", data_dir)
    settings = Settings(db=DbConfig())
    url = resolve_url(settings.db, admin=True)
    assert url == f"sqlite+aiosqlite:///{data_dir / 'voiceai.sqlite3'}" == resolve_url(settings.db)
    assert data_dir.is_dir()

    migrate.upgrade(url)  # from inside a running event loop: migrate moves itself to a thread
    db = Database.from_settings(settings)
    try:
        assert db.dialect == "sqlite"
        async with db.admin_session() as s:
            assert await s.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await s.scalar(text("PRAGMA foreign_keys")) == 1
            s.add(Tenant(id=TENANT_A, name="tenant-a"))
        async with db.tenant_session(TENANT_A) as s:
            assert (await s.scalars(select(Tenant.name))).all() == ["tenant-a"]
    finally:
        await db.close()


def test_from_settings_picks_the_admin_url_and_falls_back_to_the_app_url() -> None:
    app_only = Settings(db=DbConfig(url="postgresql://voiceai_app@db/voiceai"))
    both = Settings(db=DbConfig(url="postgresql://voiceai_app@db/voiceai", admin_url="postgres://owner@db/voiceai"))
    assert Database.from_settings(app_only, admin=True).url.username == "voiceai_app"
    admin = Database.from_settings(both, admin=True)
    assert (admin.url.username, admin.url.drivername, admin.dialect) == ("owner", "postgresql+asyncpg", "postgresql")
    assert Database.from_settings(both).url.username == "voiceai_app"


async def test_sqlite_enforces_foreign_keys(tmp_path: Path) -> None:
    url = _sqlite_url(tmp_path)
    migrate.upgrade(url)
    db = Database(url)
    try:
        with pytest.raises(IntegrityError, match="FOREIGN KEY"):
            async with db.admin_session() as s:
                s.add(User(tenant_id="no-such-tenant", email="x@example.com", role="admin"))
        await _seed_orm(db)
        async with db.admin_session() as s:  # ON DELETE CASCADE works because the pragma is on
            await s.execute(delete(Tenant).where(Tenant.id == TENANT_B))
        async with db.admin_session() as s:
            assert (await s.scalars(select(Transcript.call_id))).all() == ["call-a"]
            assert (await s.scalars(select(TenantConfig.tenant_id))).all() == [TENANT_A]
    finally:
        await db.close()
