"""API keys for server-to-server clients (a bank's IVR, a CRM): ``vai_<prefix8>_<secret>``.

Only HMAC-SHA256(pepper, key) is stored. The pepper is a secret that lives outside the database (config
or environment, else a file next to the signing keys), so a leaked database dump alone cannot be used
to check guesses; and because the hash is keyed and the secret has ~256 bits, looking a key up by its
hash is safe: the lookup reveals nothing an attacker could turn into a timing oracle. The short prefix
is stored in clear so that listings and logs can name a key without exposing it.

Like the refresh-token functions, these flush and leave the commit to the caller (together with its
audit row).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.config import AuthConfig
from voiceai.db.models import ROLES, ApiKey

KEY_PREFIX = "vai_"
_ALPHABET = string.ascii_letters + string.digits  # no "_" or "-": a key selects with one double-click
_SECRET_CHARS = 43  # 43 base-62 characters: 256 bits
KEY_RE = re.compile(r"^vai_([0-9a-f]{8})_([A-Za-z0-9]{43})\Z")
PEPPER_FILE = "api-key-pepper.secret"
MIN_PEPPER_BYTES = 16
LAST_USED_RESOLUTION = timedelta(minutes=1)  # last_used_at is written at most once a minute per key


def load_pepper(cfg: AuthConfig, keys_dir: str | Path) -> bytes:
    """The HMAC key for API-key hashes: ``cfg.api_key_pepper``, else a per-install secret file (created once).

    Changing the pepper invalidates every API key, so the file is never rewritten once it exists.
    """
    if cfg.api_key_pepper:
        pepper = cfg.api_key_pepper.encode()
        if len(pepper) < MIN_PEPPER_BYTES:
            raise ValueError(f"auth.api_key_pepper must be at least {MIN_PEPPER_BYTES} bytes")
        return pepper
    folder = Path(keys_dir)
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / PEPPER_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pepper = path.read_bytes().strip()
        if len(pepper) < MIN_PEPPER_BYTES:
            raise ValueError(f"{path} holds fewer than {MIN_PEPPER_BYTES} bytes") from None
        return pepper
    pepper = secrets.token_hex(32).encode()
    with os.fdopen(fd, "wb") as f:
        f.write(pepper)
    return pepper


def hash_api_key(plaintext: str, pepper: bytes) -> str:
    return hmac.new(pepper, plaintext.encode(), hashlib.sha256).hexdigest()


async def create_api_key(session: AsyncSession, tenant_id: str, role: str, name: str,
                         pepper: bytes) -> tuple[str, ApiKey]:
    """A new key; the plaintext is returned once and never stored, so show it to the user now."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    prefix = secrets.token_hex(4)
    plaintext = f"{KEY_PREFIX}{prefix}_{''.join(secrets.choice(_ALPHABET) for _ in range(_SECRET_CHARS))}"
    row = ApiKey(tenant_id=tenant_id, name=name, prefix=prefix, key_hash=hash_api_key(plaintext, pepper), role=role)
    session.add(row)
    await session.flush()
    return plaintext, row


async def authenticate_api_key(session: AsyncSession, plaintext: str, pepper: bytes, *,
                               now: datetime | None = None) -> ApiKey | None:
    """The live key ``plaintext`` names, or None (unknown, malformed, revoked). Marks it used."""
    match = KEY_RE.match(plaintext or "")
    if match is None:
        return None  # refused before the database: junk costs nothing
    digest = hash_api_key(plaintext, pepper)
    row = (await session.execute(select(ApiKey).where(ApiKey.key_hash == digest))).scalar()
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.prefix != match.group(1):
        return None
    if row.revoked_at is not None:
        return None
    now = now or datetime.now(UTC)
    last = row.last_used_at
    if last is None or now - (last if last.tzinfo else last.replace(tzinfo=UTC)) >= LAST_USED_RESOLUTION:
        row.last_used_at = now
        await session.flush()
    return row


async def revoke_api_key(session: AsyncSession, tenant_id: str, key_id: str, *, now: datetime | None = None) -> bool:
    """Revokes one of ``tenant_id``'s keys; False when it has no such key (another tenant's id included)."""
    row = (await session.execute(select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id))).scalar()
    if row is None:
        return False
    if row.revoked_at is None:
        row.revoked_at = now or datetime.now(UTC)
        await session.flush()
    return True
