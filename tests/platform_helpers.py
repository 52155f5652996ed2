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
