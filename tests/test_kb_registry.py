"""The knowledge base's document registry in the platform database (`rag.registry.SqlDocumentRegistry`), on
both engines: registration, dedupe, failed-retry, updates, version order, delete; and on Postgres, through
the application role, row-level security: one tenant's registry cannot see or delete another's documents,
even by id, even with the explicit tenant filter left out.

Real Postgres (a throwaway database per test, tests/pg_helpers.py) and a real SQLite file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import text

from gateway.platform import ensure_tenant
from rag.registry import SqlDocumentRegistry
from tests.pg_helpers import throwaway_database
from voiceai.db import migrate
from voiceai.db.engine import Database

pytestmark = pytest.mark.integration


@dataclass
class Setup:
    registry: SqlDocumentRegistry
    dialect: str
    tenant_ids: dict[str, str]


def _create_tenants(admin_url: str, *names: str) -> dict[str, str]:
    async def create() -> dict[str, str]:
        db = Database(admin_url)
        try:
            return {name: await ensure_tenant(db, name) for name in names}
        finally:
            await db.close()

    return asyncio.run(create())


@pytest.fixture(params=["postgresql", "sqlite"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    """Tenants ``a`` and ``b``; on Postgres the registry logs in as the application role (RLS applies)."""
    if request.param == "postgresql":
        with throwaway_database() as pg:
            owner_url = pg.url(pg.owner)
            migrate.upgrade(owner_url, app_role=pg.app_role)
            ids = _create_tenants(owner_url, "a", "b")
            registry = SqlDocumentRegistry(pg.url(pg.app_role, ""))  # a plain postgresql:// URL, as pasted
            try:
                yield Setup(registry, "postgresql", ids)
            finally:
                registry.close()
    else:
        url = f"sqlite:///{tmp_path / 'voiceai.sqlite3'}"
        migrate.upgrade(url)
        registry = SqlDocumentRegistry(url)
        try:
            yield Setup(registry, "sqlite", _create_tenants(url, "a", "b"))
        finally:
            registry.close()


def test_register_dedupes_and_retries_failed_documents(setup: Setup) -> None:
    reg = setup.registry
    doc, duplicate = reg.register("a", "fees.md", "h1", 120, priority="high")
    assert not duplicate and (doc.tenant, doc.filename, doc.status, doc.priority, doc.size_bytes) == (
        "a", "fees.md", "queued", "high", 120)
    assert (doc.attempts, doc.chunks, doc.task_id, doc.indexed_at, doc.error) == (0, 0, "", None, "")
    assert isinstance(doc.created_at, float) and doc.created_at == doc.updated_at

    again, duplicate = reg.register("a", "renamed.md", "h1", 120)
    assert duplicate and again.id == doc.id and again.filename == "fees.md"  # a no-op: nothing changed
    other, duplicate = reg.register("b", "fees.md", "h1", 120)  # the same bytes, another tenant: its own
    assert not duplicate and other.id != doc.id

    reg.start_attempt("a", doc.id)
    reg.update("a", doc.id, status="failed", error_reason="corrupt", error="bad bytes")
    failed = reg.get("a", doc.id)
    assert failed is not None and (failed.status, failed.attempts) == ("failed", 1)
    assert failed.as_json()["error"] == {"reason": "corrupt", "message": "bad bytes"}
    retried, duplicate = reg.register("a", "fees-v2.md", "h1", 120)
    assert not duplicate and retried.id == doc.id
    assert (retried.status, retried.filename, retried.error, retried.error_reason, retried.attempts) == (
        "queued", "fees-v2.md", "", "", 1)
    assert retried.created_at >= failed.created_at


def test_update_list_and_delete(setup: Setup) -> None:
    reg = setup.registry
    first, _ = reg.register("a", "one.md", "h1", 1)
    second, _ = reg.register("a", "two.md", "h2", 2)
    reg.update("a", first.id, task_id="task-1")
    reg.start_attempt("a", first.id)
    reg.update("a", first.id, status="indexed", chunks=7, pages=2, title="One", format="md", language="en",
               indexed_at=1_800_000_000.25)
    done = reg.get("a", first.id)
    assert done is not None
    assert (done.status, done.chunks, done.pages, done.title, done.format, done.language, done.task_id,
            done.attempts) == ("indexed", 7, 2, "One", "md", "en", "task-1", 1)
    assert done.indexed_at == pytest.approx(1_800_000_000.25) and done.updated_at >= done.created_at

    assert [d.id for d in reg.list("a")] == [first.id, second.id]  # registration order
    assert [d.id for d in reg.list("a", "indexed")] == [first.id]
    assert reg.list("b") == []
    with pytest.raises(ValueError, match="unknown document state"):
        reg.update("a", first.id, status="done")
    with pytest.raises(ValueError, match="tenant_id"):
        reg.update("a", first.id, tenant_id=setup.tenant_ids["b"])

    assert reg.delete("a", first.id) is True
    assert reg.get("a", first.id) is None and reg.delete("a", first.id) is False
    assert [d.id for d in reg.list("a")] == [second.id]


def test_older_versions_are_the_earlier_registrations_of_the_name(setup: Setup) -> None:
    reg = setup.registry
    v1, _ = reg.register("a", "fees.md", "h1", 1)
    v2, _ = reg.register("a", "fees.md", "h2", 1)
    v3, _ = reg.register("a", "fees.md", "h3", 1)
    reg.register("a", "other.md", "h4", 1)
    reg.register("b", "fees.md", "h5", 1)  # another tenant's file of the same name is never a version

    def older(doc_id: str) -> list[str]:
        return [d.id for d in reg.older_versions("a", "fees.md", doc_id)]

    assert older(v1.id) == [] and older(v2.id) == [v1.id] and older(v3.id) == [v1.id, v2.id]
    assert older("no-such-id") == []

    # The same registration time (a coarse clock): registration order (seq) still decides.
    same = v1.created_at
    for doc in (v2, v3):
        reg.update("a", doc.id, created_at=same)
    assert older(v2.id) == [v1.id] and older(v3.id) == [v1.id, v2.id] and older(v1.id) == []

    # A failed v1 uploaded again is now the newest version: it replaces v2 and v3, not the other way round.
    reg.update("a", v1.id, status="failed", error_reason="corrupt", error="x")
    reg.register("a", "fees.md", "h1", 1)
    assert older(v1.id) == [v2.id, v3.id] and older(v3.id) == [v2.id]


def test_an_unknown_tenant_name_is_refused(setup: Setup) -> None:
    with pytest.raises(ValueError, match="no tenant named 'ghost'"):
        setup.registry.register("ghost", "fees.md", "h1", 1)
    with pytest.raises(ValueError, match="no tenant named 'ghost'"):
        setup.registry.list("ghost")
    assert setup.registry.tenant_id("a") == setup.tenant_ids["a"]


def test_one_tenant_cannot_see_or_delete_anothers_documents(setup: Setup) -> None:
    reg = setup.registry
    theirs, _ = reg.register("b", "secret.md", "h1", 1)
    mine, _ = reg.register("a", "mine.md", "h2", 1)
    assert reg.get("a", theirs.id) is None
    assert reg.delete("a", theirs.id) is False
    reg.update("a", theirs.id, status="failed", error="x")  # matches nothing
    reg.start_attempt("a", theirs.id)
    assert reg.older_versions("a", "secret.md", theirs.id) == []
    assert [d.id for d in reg.list("a")] == [mine.id]
    still = reg.get("b", theirs.id)
    assert still is not None and (still.status, still.attempts) == ("queued", 0)


@pytest.mark.parametrize("setup", ["postgresql"], indirect=True)  # SQLite has no row-level security
def test_row_level_security_holds_without_the_explicit_filter(setup: Setup) -> None:
    """On Postgres the registry's own connection (the application role, app.tenant_id set) cannot reach
    another tenant's rows even with ``tenant_id = ...`` left out of the SQL."""
    reg = setup.registry
    theirs, _ = reg.register("b", "secret.md", "h1", 1)
    mine, _ = reg.register("a", "mine.md", "h2", 1)
    with reg._scoped("a") as (conn, _):
        assert conn.execute(text("SELECT id FROM kb_documents")).scalars().all() == [mine.id]
        assert conn.execute(text("DELETE FROM kb_documents WHERE id = :id"), {"id": theirs.id}).rowcount == 0
        assert conn.execute(text("UPDATE kb_documents SET status = 'failed' WHERE id = :id"),
                            {"id": theirs.id}).rowcount == 0
    assert reg.get("b", theirs.id) is not None
    # Without a tenant the application role sees no tenants at all: hence tenant_id_of for the name lookup.
    with reg._engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM tenants")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM kb_documents")).scalar() == 0
