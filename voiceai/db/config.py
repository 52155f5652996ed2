"""Database configuration."""

from __future__ import annotations

from pydantic import BaseModel, Field


class DbConfig(BaseModel):
    """Postgres in production; an embedded SQLite file when ``url`` is empty (`voiceai up`, a laptop)."""

    url: str = Field("", description="SQLAlchemy URL the application uses "
                                     "(postgresql+asyncpg://voiceai_app@db/voiceai). Empty: sqlite+aiosqlite under "
                                     "data/ (no row-level security there).")
    admin_url: str = Field("", description="URL of the owner role that runs migrations and platform-wide admin "
                                           "commands (tenant create); empty: same as url.")
    pool_size: int = Field(10, ge=1, le=200)
    max_overflow: int = Field(10, ge=0, le=200)
    statement_timeout_ms: int = Field(5000, ge=0, description="Postgres statement_timeout per session.")
    write_buffer_dir: str = Field("", description="Call-loop writes wait here (one file per write) while the database "
                                                  "is down; empty: data/write-buffer.")
    write_buffer_max_bytes: int = Field(256 * 2**20, ge=2**20, description="Cap on that buffer; beyond it the oldest "
                                                                            "writes are refused loudly, never dropped "
                                                                            "silently.")
