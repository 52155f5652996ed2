"""Alembic environment: runs the revisions over the async engine of the URL `voiceai.db.migrate` passes.

Configuration comes from ``config.attributes`` (set in code by voiceai.db.migrate), falling back to the
``sqlalchemy.url`` option for someone driving alembic by hand:

* ``url``: the database, as the owner role (plain ``postgresql://`` / ``sqlite://`` URLs get an async driver);
* ``connection``: an open sync `Connection` to run on instead (the caller owns its transaction);
* ``app_role``: read by the revisions themselves (also ``-x app_role=...``).

This deliberately does not use `voiceai.db.engine.Database`: migrations run without a statement timeout
(an index build may take minutes) and, on SQLite, without ``PRAGMA foreign_keys``: batch mode rebuilds a
table by copy-and-drop, and with foreign keys on, dropping the old table would cascade-delete child rows.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from voiceai.db.engine import async_url
from voiceai.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database URL: run migrations through voiceai.db.migrate (or `voiceai db upgrade`)")
    return str(url)


def run_migrations_offline() -> None:
    """``--sql``: renders the revisions as a script for a DBA to review and run."""
    url = async_url(_url())
    context.configure(url=url, target_metadata=target_metadata, compare_type=True, literal_binds=True,
                      dialect_opts={"paramstyle": "named"}, render_as_batch=url.get_backend_name() == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    # Batch mode on SQLite: its ALTER TABLE cannot drop or change columns, so alembic rebuilds the table.
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True,
                      render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    # NullPool: a one-shot engine; nothing should outlive the migration.
    engine = create_async_engine(async_url(_url()), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
