"""The document registry: each uploaded document's state, error and counts, per tenant.

SQLite here (a file under ``kb.data_dir``, shared safely by the gateway and worker processes on one
machine); the Postgres ``kb_documents`` table replaces it with the platform data layer. Every query
is scoped by tenant: there is no lookup by id alone.

States: ``queued`` -> ``processing`` -> ``indexed`` | ``failed`` (with a reason code and message).
The same bytes uploaded again by the same tenant return the existing document (a no-op), unless
that one failed, in which case it is queued again.
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

STATES = ("queued", "processing", "indexed", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kb_documents (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    filename TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL DEFAULT 'default',
    task_id TEXT NOT NULL DEFAULT '',
    title TEXT NOT NULL DEFAULT '',
    format TEXT NOT NULL DEFAULT '',
    language TEXT NOT NULL DEFAULT '',
    pages INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    error_reason TEXT NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    indexed_at REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS kb_documents_content ON kb_documents (tenant, content_hash);
CREATE INDEX IF NOT EXISTS kb_documents_name ON kb_documents (tenant, filename);
"""


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


class DocumentRegistry:
    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)

    def _one(self, sql: str, args: tuple) -> DocumentRecord | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
        return DocumentRecord(**dict(row)) if row else None

    def register(self, tenant: str, filename: str, content_hash: str, size_bytes: int,
                 priority: str = "default") -> tuple[DocumentRecord, bool]:
        """A new queued document, or (existing, True) for bytes this tenant already uploaded."""
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT * FROM kb_documents WHERE tenant = ? AND content_hash = ?",
                                       (tenant, content_hash)).fetchone()
                if row is not None and row["status"] != "failed":
                    self._db.execute("COMMIT")
                    return DocumentRecord(**dict(row)), True
                if row is not None:  # it failed before: try it again under the same id
                    # created_at moves too: the retried upload is now the newest version of its name.
                    self._db.execute("UPDATE kb_documents SET status = 'queued', error = '', error_reason = '', "
                                     "filename = ?, priority = ?, created_at = ?, updated_at = ? WHERE id = ?",
                                     (filename, priority, now, now, row["id"]))
                    doc_id = row["id"]
                else:
                    doc_id = uuid.uuid4().hex
                    self._db.execute(
                        "INSERT INTO kb_documents (id, tenant, filename, content_hash, size_bytes, status, priority, "
                        "created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                        (doc_id, tenant, filename, content_hash, size_bytes, priority, now, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        record = self.get(tenant, doc_id)
        assert record is not None
        return record, False

    def get(self, tenant: str, doc_id: str) -> DocumentRecord | None:
        return self._one("SELECT * FROM kb_documents WHERE tenant = ? AND id = ?", (tenant, doc_id))

    def list(self, tenant: str, status: str | None = None) -> builtins.list[DocumentRecord]:
        sql, args = "SELECT * FROM kb_documents WHERE tenant = ?", [tenant]
        if status:
            sql += " AND status = ?"
            args.append(status)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created_at, id", args).fetchall()
        return [DocumentRecord(**dict(r)) for r in rows]

    def update(self, tenant: str, doc_id: str, **fields: Any) -> None:
        if "status" in fields and fields["status"] not in STATES:
            raise ValueError(f"unknown document state {fields['status']!r}")
        fields["updated_at"] = time.time()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE kb_documents SET {cols} WHERE tenant = ? AND id = ?",
                             (*fields.values(), tenant, doc_id))

    def start_attempt(self, tenant: str, doc_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE kb_documents SET status = 'processing', attempts = attempts + 1, updated_at = ? "
                             "WHERE tenant = ? AND id = ?", (time.time(), tenant, doc_id))

    def older_versions(self, tenant: str, filename: str, keep_id: str) -> builtins.list[DocumentRecord]:
        """Documents of the same name registered before ``keep_id``: replaced when it is indexed.

        Only earlier ones: when v2 is uploaded while v1 is still queued, v1 finishing first must not
        delete v2 (the queue may ingest them in either order; the newest upload is the one that stays).
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT o.* FROM kb_documents o JOIN kb_documents k ON k.tenant = o.tenant AND k.id = ? "
                "WHERE o.tenant = ? AND o.filename = ? AND o.id != k.id "
                "AND (o.created_at, o.rowid) < (k.created_at, k.rowid)",
                (keep_id, tenant, filename)).fetchall()
        return [DocumentRecord(**dict(r)) for r in rows]

    def delete(self, tenant: str, doc_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM kb_documents WHERE tenant = ? AND id = ?", (tenant, doc_id))
        return cur.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()
