"""Settings for a gateway under test: its own SQLite database, signing keys, write spool and Redis
database, all under a temporary folder (never the checkout's data/)."""

from __future__ import annotations

from pathlib import Path

from voiceai.config import Settings

TEST_REDIS = "redis://127.0.0.1:6379/13"


def isolate(settings: Settings, folder: Path, *, auth: bool = True) -> Settings:
    folder.mkdir(parents=True, exist_ok=True)
    out = settings.model_copy(deep=True)
    out.db.url = f"sqlite:///{folder / 'voiceai.sqlite3'}"
    out.db.admin_url = ""
    out.db.write_buffer_dir = str(folder / "spool")
    out.auth.keys_dir = str(folder / "keys")
    out.auth.enabled = auth
    out.auth.rate_limit.redis_url = TEST_REDIS
    out.kb.data_dir = folder / "kb"
    return out


def kb_database(folder: Path, *tenants: str) -> str:
    """A migrated SQLite platform database under ``folder`` (the file `isolate` points at) holding ``tenants``:
    the knowledge base's registry lives there, and it refuses tenants that do not exist."""
    import asyncio

    from gateway.platform import ensure_tenant
    from voiceai.db import migrate
    from voiceai.db.engine import Database

    folder.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{folder / 'voiceai.sqlite3'}"
    migrate.upgrade(url)

    async def create() -> None:
        db = Database(url)
        try:
            for tenant in tenants:
                await ensure_tenant(db, tenant)
        finally:
            await db.close()

    asyncio.run(create())
    return url
