"""RS256 signing keys: a folder of ``<kid>.pem`` files, the newest signs, every one still there verifies.

Why a folder of files and not a database table: the private keys never pass through the application's
database role (a leaked database dump must not be able to mint tokens), and a Kubernetes Secret or a
shared volume mounts the same folder on every gateway replica.

Rotation without downtime: ``rotate()`` adds a key whose kid sorts last, so it becomes the signing key,
while tokens signed by the previous key keep verifying until that key is ``retire()``-d (after the
longest token lifetime has passed). Replicas that did not run the rotation notice new files on their
own: a token with an unknown kid triggers a re-read of the folder (at most once a second), and the
folder is re-read every minute anyway so that retired keys stop verifying everywhere.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from gateway.auth.config import AuthConfig

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_KEY_SIZE_BITS = 3072
MIN_KEY_SIZE_BITS = 2048
# A kid is also a file name and a JWT header value: keep it to a safe alphabet so neither can be abused.
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
REFRESH_INTERVAL_S = 60.0
MISS_REFRESH_INTERVAL_S = 1.0


def keys_dir_for(cfg: AuthConfig) -> Path:
    """The configured keys folder, or ``data/keys`` in the repository when none is set."""
    return Path(cfg.keys_dir) if cfg.keys_dir else REPO_ROOT / "data" / "keys"


def new_kid(now: datetime | None = None) -> str:
    """A kid that sorts by creation time (UTC, microseconds) with a random tail against collisions."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class SigningKey:
    """One key of the ring."""

    kid: str
    private_key: rsa.RSAPrivateKey

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()


class KeyRing:
    """The RS256 keys of one install, ordered by kid (oldest first); the last one signs.

    Thread-safe: the key list is replaced as a whole, never mutated in place, so readers on the
    event loop see either the old or the new ring.
    """

    def __init__(self, keys: list[SigningKey], folder: Path | None = None) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one key")
        self.folder = folder
        self._keys: tuple[SigningKey, ...] = tuple(sorted(keys, key=lambda k: k.kid))
        self._lock = threading.Lock()
        self._listing = self._list_files()
        self._refreshed_at = time.monotonic()

    @classmethod
    def load_or_create(cls, folder: str | Path, *, key_size_bits: int = DEFAULT_KEY_SIZE_BITS) -> KeyRing:
        """Loads every ``<kid>.pem`` in ``folder``; creates the folder and a first key when there is none."""
        path = Path(folder)
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = [_read_key(f) for f in _pem_files(path)]
        if not keys:
            log.info("no signing key yet: creating one", extra={"keys_dir": str(path)})
            keys = [_write_key(path, new_kid(), _generate(key_size_bits))]
        return cls(keys, path)

    @property
    def kids(self) -> list[str]:
        """Every kid still in the ring, oldest first."""
        return [k.kid for k in self._keys]

    @property
    def signing_key(self) -> SigningKey:
        """The newest key: every token is signed with it."""
        return self._keys[-1]

    def public_key(self, kid: str) -> rsa.RSAPublicKey | None:
        """The verification key for ``kid``; None when it is unknown or retired."""
        if not KID_RE.match(kid):
            return None
        key = self._find(kid)
        if key is None and self._maybe_refresh(MISS_REFRESH_INTERVAL_S):
            key = self._find(kid)
        elif key is not None and self._maybe_refresh(REFRESH_INTERVAL_S):
            key = self._find(kid)  # it may have been retired by another process
        return key.public_key if key is not None else None

    def rotate(self, *, key_size_bits: int = DEFAULT_KEY_SIZE_BITS) -> str:
        """Adds a new newest key (written to the folder first, when there is one); returns its kid."""
        kid = new_kid()
        with self._lock:
            if kid <= self._keys[-1].kid:
                # The new key would not sort last, so it would not sign: refuse rather than rotate silently.
                raise RuntimeError(f"the clock is behind the newest key {self._keys[-1].kid}; not rotating")
            private = _generate(key_size_bits)
            key = _write_key(self.folder, kid, private)
            self._keys = (*self._keys, key)
            self._listing = self._list_files()
        log.info("signing key rotated", extra={"kid": kid})
        return kid

    def retire(self, kid: str) -> None:
        """Removes ``kid`` (and its file): tokens it signed stop verifying. The signing key cannot be retired."""
        with self._lock:
            if kid == self._keys[-1].kid:
                raise ValueError(f"{kid} is the signing key; rotate first, then retire it")
            if self._find(kid) is None:
                raise KeyError(kid)
            if self.folder is not None:
                (self.folder / f"{kid}.pem").unlink(missing_ok=True)
            self._keys = tuple(k for k in self._keys if k.kid != kid)
            self._listing = self._list_files()
        log.info("signing key retired", extra={"kid": kid})

    def refresh(self) -> bool:
        """Re-reads the folder when its listing changed (another process rotated or retired); True if it did."""
        if self.folder is None:
            return False
        with self._lock:
            self._refreshed_at = time.monotonic()
            listing = self._list_files()
            if listing == self._listing:
                return False
            known = {k.kid: k for k in self._keys}
            keys: list[SigningKey] = []
            for f in _pem_files(self.folder):
                kid = f.stem
                keys.append(known[kid] if kid in known else _read_key(f))
            if not keys:
                log.error("every signing key file is gone; keeping the keys in memory",
                          extra={"keys_dir": str(self.folder)})
                return False
            self._keys = tuple(sorted(keys, key=lambda k: k.kid))
            self._listing = listing
        log.info("signing keys re-read", extra={"kids": self.kids})
        return True

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JSON Web Key Set, for services that verify our tokens themselves."""
        out = []
        for key in self._keys:
            jwk = RSAAlgorithm.to_jwk(key.public_key, as_dict=True)
            out.append({**jwk, "kid": key.kid, "use": "sig", "alg": "RS256"})
        return {"keys": out}

    def _find(self, kid: str) -> SigningKey | None:
        for key in self._keys:
            if key.kid == kid:
                return key
        return None

    def _maybe_refresh(self, interval_s: float) -> bool:
        if self.folder is None or time.monotonic() - self._refreshed_at < interval_s:
            return False
        try:
            return self.refresh()
        except OSError:
            log.exception("could not re-read the signing keys", extra={"keys_dir": str(self.folder)})
            return False

    def _list_files(self) -> frozenset[str]:
        return frozenset(f.name for f in _pem_files(self.folder)) if self.folder else frozenset()


def _pem_files(folder: Path | None) -> list[Path]:
    if folder is None or not folder.is_dir():
        return []
    return sorted(f for f in folder.iterdir() if f.suffix == ".pem" and KID_RE.match(f.stem) and f.is_file())


def _generate(key_size_bits: int) -> rsa.RSAPrivateKey:
    if key_size_bits < MIN_KEY_SIZE_BITS:
        raise ValueError(f"RSA keys under {MIN_KEY_SIZE_BITS} bits are refused (asked for {key_size_bits})")
    return rsa.generate_private_key(public_exponent=65537, key_size=key_size_bits)


def _read_key(path: Path) -> SigningKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("signing key file is readable by other users; chmod 600 it",
                    extra={"path": str(path), "mode": oct(mode)})
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key")
    if private.key_size < MIN_KEY_SIZE_BITS:
        raise ValueError(f"{path} is a {private.key_size}-bit key; at least {MIN_KEY_SIZE_BITS} bits are required")
    return SigningKey(path.stem, private)


def _write_key(folder: Path | None, kid: str, private: rsa.RSAPrivateKey) -> SigningKey:
    """Writes ``<kid>.pem`` (PKCS8, mode 0600) through a temporary name, so no reader sees half a key."""
    if folder is None:
        return SigningKey(kid, private)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    tmp = folder / f".{kid}.pem.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{kid}.pem")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return SigningKey(kid, private)
