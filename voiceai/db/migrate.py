"""Schema migrations: alembic, configured in code (no alembic.ini), behind `voiceai db upgrade|downgrade|current`.

The revisions live in voiceai/db/migrations and are installed with the package, so a deployed image can
migrate its own database. Always run them with the owner's URL (``db.admin_url``): revision 0001 creates
the application role, grants it its rights and installs the row-level security policies.

These functions are synchronous (a CLI calls them); alembic's env.py drives the async engine with
``asyncio.run``. Called from code that already runs an event loop, they do the work in a helper thread
rather than fail.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from voiceai.db.engine import async_url, resolve_url

if TYPE_CHECKING:
    from voiceai.db.config import DbConfig

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
DEFAULT_APP_ROLE = "voiceai_app"
# Lower-case identifiers only: the name is spliced into DDL (roles cannot be bind parameters), so it must
# need no escaping, and it must mean the same role quoted or not.
_ROLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

T = TypeVar("T")


def check_role_name(name: str) -> str:
    """``name`` if it is a plain lower-case Postgres identifier; raises ValueError otherwise."""
    if not _ROLE_NAME.fullmatch(name):
        raise ValueError(f"role name {name!r} must be 1-63 lower-case letters, digits or underscores")
    return name


def app_role_from_url(url: str) -> str:
    """The application role a database URL logs in as (``db.url``), or the default when it names none
    (SQLite, or a URL relying on the OS user)."""
    if not url:
        return DEFAULT_APP_ROLE
    return check_role_name(async_url(url).username or DEFAULT_APP_ROLE)


def app_role_for(db: DbConfig) -> str:
    """The ``app_role`` to migrate with for this configuration: the user of ``db.url`` when a separate owner
    URL (``db.admin_url``) runs the migrations; otherwise (one role for everything, or SQLite) the default,
    since the owner cannot double as the application role."""
    return app_role_from_url(db.url) if db.admin_url and db.url else DEFAULT_APP_ROLE


def alembic_config(url: str, *, app_role: str = DEFAULT_APP_ROLE) -> Config:
    """An alembic Config for ``url`` built in code. The URL travels in ``attributes``, not in the
    ``sqlalchemy.url`` option, so a password with ``%`` in it is not mangled by configparser."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = async_url(url).render_as_string(hide_password=False)
    config.attributes["app_role"] = check_role_name(app_role)
    return config


def upgrade(url: str, revision: str = "head", app_role: str = DEFAULT_APP_ROLE) -> None:
    """Migrates the database at ``url`` (the owner's) up to ``revision``; ``app_role`` is the role the
    application logs in as (created by revision 0001 if missing)."""
    _off_loop(command.upgrade, alembic_config(url, app_role=app_role), revision)


def downgrade(url: str, revision: str = "base", app_role: str = DEFAULT_APP_ROLE) -> None:
    """Migrates down to ``revision`` (``base``: an empty schema; roles are left in place). ``app_role``
    names the role whose database-level grants are revoked."""
    _off_loop(command.downgrade, alembic_config(url, app_role=app_role), revision)


def application_url(db: DbConfig) -> str:
    """The URL the application uses (`resolve_url`), ready to use: the embedded SQLite database is migrated to
    head first, as the gateway does at startup; a Postgres schema is the operator's (`voiceai db upgrade`).
    For processes that may be the first to open the database: the CLI, a Celery worker."""
    url = resolve_url(db)
    if async_url(url).get_backend_name() == "sqlite":
        upgrade(url)
    return url


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at; None when it was never migrated (or is at base)."""

    async def read() -> str | None:
        engine = create_async_engine(async_url(url), poolclass=pool.NullPool)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(_current_revision)
        finally:
            await engine.dispose()

    return _off_loop(asyncio.run, read())


def head() -> str | None:
    """The newest revision this code ships: a database whose `current` differs needs `upgrade`."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _off_loop(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)``, in a helper thread when this thread already runs an event loop (asyncio.run would
    refuse to start a second one)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn(*args)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="voiceai-migrate") as executor:
        return executor.submit(fn, *args).result()

