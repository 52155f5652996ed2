"""Access tokens, call tokens (RS256 JWTs) and refresh tokens (opaque, rotated, stored hashed).

Why these shapes:

* Access tokens are stateless so that every REST call and every WebSocket join is checked without a
  database round trip; the price is that one stays valid until it expires, hence one hour at most.
* Refresh tokens are the revocable part: opaque random strings, only their SHA-256 kept (they carry 256
  bits of entropy, so an unkeyed hash cannot be brute-forced). Each use rotates the token; presenting a
  token that was already rotated means two parties hold it (a thief and the owner), so the whole family
  (every token descended from the same login) is revoked and both must log in again.
* Call tokens let a browser caller join exactly one call for a few minutes, and do nothing else.

Verification trusts nothing in the token's header except the kid, and only as a lookup key: the algorithm
is pinned to RS256 (no ``alg: none``, no HS256 signed with our public key as the secret), the kid must be
in the key ring, and iss/aud/exp/nbf/iat and our own ``typ`` claim are all checked.
"""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, cast

import jwt
from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from gateway.auth.config import AuthConfig
from gateway.auth.keys import KeyRing
from gateway.auth.roles import CALLER_ROLE, Permission
from voiceai.db.models import ROLES, RefreshToken, Tenant, User, new_id

TokenType = Literal["access", "call"]
PrincipalType = Literal["user", "api_key"]
PRINCIPAL_TYPES: tuple[PrincipalType, ...] = ("user", "api_key")
ALGORITHM = "RS256"
# Replicas' clocks drift a little; 30 s is well under the shortest lifetime (call tokens: 30 s minimum).
CLOCK_LEEWAY_S = 30
MAX_TOKEN_CHARS = 8192  # a real token is ~700 characters; anything near this is an attack or an accident
MAX_REFRESH_CHARS = 256
_REQUIRED = ["iss", "aud", "sub", "tid", "typ", "iat", "nbf", "exp", "jti"]


class AuthError(Exception):
    """A refused credential. ``reason`` is a stable machine-readable word (also shown to the client)."""

    def __init__(self, reason: str, *, status: int = 401, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason
        self.status = status
        self.message = message or reason.replace("_", " ")


@dataclass(frozen=True)
class Claims:
    """What a verified token says. ``role`` is ``caller`` for call tokens."""

    typ: str
    subject: str
    tenant_id: str
    tenant_name: str
    role: str
    principal_type: str  # user | api_key | call
    jti: str
    kid: str
    issued_at: int
    expires_at: int
    call_id: str | None = None
    language: str | None = None


def issue_access(ring: KeyRing, cfg: AuthConfig, *, subject: str, tenant_id: str, tenant_name: str, role: str,
                 principal_type: PrincipalType, now: float | None = None) -> str:
    """An access token for a user or an API key, valid ``cfg.access_ttl_s``."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, not {role!r}")
    if principal_type not in PRINCIPAL_TYPES:
        raise ValueError(f"principal_type must be one of {PRINCIPAL_TYPES}, not {principal_type!r}")
    if not (subject and tenant_id and tenant_name):
        raise ValueError("subject, tenant_id and tenant_name are required")
    claims = {"sub": subject, "tid": tenant_id, "tname": tenant_name, "role": role, "ptype": principal_type}
    return _sign(ring, cfg, "access", claims, cfg.access_ttl_s, now)


def issue_call_token(ring: KeyRing, cfg: AuthConfig, *, tenant_id: str, tenant_name: str, call_id: str,
                     language: str, now: float | None = None) -> str:
    """A token that lets a browser join call ``call_id`` (and nothing else) within ``cfg.call_token_ttl_s``.

    ``tenant_name`` travels along because the call loop scopes the knowledge base by the tenant's name.
    """
    if not (tenant_id and tenant_name and call_id):
        raise ValueError("tenant_id, tenant_name and call_id are required")
    claims = {"sub": f"call:{call_id}", "tid": tenant_id, "tname": tenant_name, "call": call_id, "lang": language,
              "scope": Permission.CALLS_JOIN.value}
    return _sign(ring, cfg, "call", claims, cfg.call_token_ttl_s, now)


def _sign(ring: KeyRing, cfg: AuthConfig, typ: TokenType, claims: dict[str, Any], ttl_s: int,
          now: float | None) -> str:
    iat = int(time.time() if now is None else now)
    payload = {"iss": cfg.issuer, "aud": cfg.audience, **claims, "typ": typ, "iat": iat, "nbf": iat,
               "exp": iat + ttl_s, "jti": uuid.uuid4().hex}
    key = ring.signing_key
    return jwt.encode(payload, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


def verify(ring: KeyRing, cfg: AuthConfig, token: str | None, expected_typ: TokenType | Collection[TokenType],
           *, leeway_s: int = CLOCK_LEEWAY_S) -> Claims:
    """Checks a JWT completely or raises ``AuthError`` (status 401) saying why.

    Reasons: missing, malformed, bad_algorithm, missing_kid, unknown_kid, invalid_signature, expired,
    not_yet_valid, wrong_issuer, wrong_audience, missing_claim, invalid_claims, wrong_type.
    """
    if not token:
        raise AuthError("missing")
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthError("malformed", message="token too long")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError as err:
        raise AuthError("malformed") from err
    # Checked before any key is looked up: the header is attacker-controlled, and only RS256 is ours.
    if header.get("alg") != ALGORITHM:
        raise AuthError("bad_algorithm", message=f"only {ALGORITHM} tokens are accepted")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise AuthError("missing_kid")
    public_key = ring.public_key(kid)
    if public_key is None:
        raise AuthError("unknown_kid", message="signed by a key this install does not (or no longer) trust")
    try:
        payload = jwt.decode(token, public_key, algorithms=[ALGORITHM], audience=cfg.audience, issuer=cfg.issuer,
                             leeway=leeway_s, options={"require": _REQUIRED})
    except jwt.InvalidSignatureError as err:
        raise AuthError("invalid_signature") from err
    except jwt.ExpiredSignatureError as err:
        raise AuthError("expired") from err
    except jwt.ImmatureSignatureError as err:
        raise AuthError("not_yet_valid") from err
    except jwt.InvalidIssuerError as err:
        raise AuthError("wrong_issuer") from err
    except jwt.InvalidAudienceError as err:
        raise AuthError("wrong_audience") from err
    except jwt.MissingRequiredClaimError as err:
        raise AuthError("missing_claim", message=str(err)) from err
    except jwt.InvalidAlgorithmError as err:
        raise AuthError("bad_algorithm") from err
    except jwt.DecodeError as err:
        raise AuthError("malformed") from err
    except jwt.InvalidTokenError as err:
        raise AuthError("invalid_claims", message=str(err)) from err
    expected = {expected_typ} if isinstance(expected_typ, str) else set(expected_typ)
    if payload.get("typ") not in expected:
        raise AuthError("wrong_type", message=f"a {payload.get('typ')!r} token cannot be used here")
    return _claims(payload, kid)


def _claims(payload: dict[str, Any], kid: str) -> Claims:
    """Builds Claims, refusing a signed payload whose fields have the wrong shape (fail closed)."""
    tid, tname, typ = payload.get("tid"), payload.get("tname"), payload["typ"]
    if not (isinstance(tid, str) and tid and isinstance(tname, str) and tname):
        raise AuthError("invalid_claims", message="tenant claims missing")
    common = {"typ": typ, "subject": payload["sub"], "tenant_id": tid, "tenant_name": tname, "jti": payload["jti"],
              "kid": kid, "issued_at": int(payload["iat"]), "expires_at": int(payload["exp"])}
    if typ == "access":
        role, ptype = payload.get("role"), payload.get("ptype")
        if role not in ROLES or ptype not in PRINCIPAL_TYPES:
            raise AuthError("invalid_claims", message="role or principal type missing")
        return Claims(**common, role=cast(str, role), principal_type=cast(str, ptype))
    call_id, lang = payload.get("call"), payload.get("lang")
    if not (isinstance(call_id, str) and call_id and isinstance(lang, str)
            and payload.get("scope") == Permission.CALLS_JOIN.value):
        raise AuthError("invalid_claims", message="call claims missing")
    return Claims(**common, role=CALLER_ROLE, principal_type="call", call_id=call_id, language=lang)


# --- refresh tokens -------------------------------------------------------------------------------------------
# These flush and leave the commit to the caller (so a login or a refresh commits together with its audit
# row), with one exception: reuse detection commits the family's revocation itself before raising, because
# the caller's error path would otherwise roll it back and the stolen token would stay usable.


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes even for timezone-aware columns; they were stored as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


async def issue_refresh(session: AsyncSession, user: User, cfg: AuthConfig, *, family_id: str | None = None,
                        now: datetime | None = None) -> str:
    """A new refresh token for ``user``; a new family (a new login) unless ``family_id`` is given."""
    now = now or datetime.now(UTC)
    token = secrets.token_urlsafe(32)
    session.add(RefreshToken(tenant_id=user.tenant_id, user_id=user.id, family_id=family_id or new_id(),
                             token_hash=_hash(token), issued_at=now,
                             expires_at=now + timedelta(seconds=cfg.refresh_ttl_s)))
    await session.flush()
    return token


async def rotate_refresh(session: AsyncSession, token: str, cfg: AuthConfig, *,
                         now: datetime | None = None) -> tuple[str, User]:
    """Exchanges a refresh token for its successor; returns (new token, user) to issue an access token for.

    Raises AuthError 401: invalid_refresh (unknown), refresh_expired, user_disabled, refresh_reused (the
    token was already rotated or revoked: its whole family is now revoked and committed).
    """
    now = now or datetime.now(UTC)
    if not token or len(token) > MAX_REFRESH_CHARS:
        raise AuthError("invalid_refresh")
    row = (await session.execute(select(RefreshToken).where(RefreshToken.token_hash == _hash(token)))).scalar()
    if row is None:
        raise AuthError("invalid_refresh")
    if row.rotated_at is not None or row.revoked_at is not None:
        await _reused(session, row.family_id, now)
    if _utc(row.expires_at) <= now:
        raise AuthError("refresh_expired")
    user = await session.get(User, row.user_id)
    tenant = await session.get(Tenant, row.tenant_id)
    if user is None or user.disabled or tenant is None or tenant.disabled:
        raise AuthError("user_disabled")
    # A conditional update, not a read-then-write: of two concurrent rotations of one token only one wins,
    # and the loser is treated as reuse (it is: two clients hold the same token).
    claimed = cast(CursorResult[Any], await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.rotated_at.is_(None), RefreshToken.revoked_at.is_(None))
        .values(rotated_at=now)))
    if claimed.rowcount != 1:
        await _reused(session, row.family_id, now)
    return await issue_refresh(session, user, cfg, family_id=row.family_id, now=now), user


async def _reused(session: AsyncSession, family_id: str, now: datetime) -> None:
    await revoke_family(session, family_id, now=now)
    await session.commit()
    raise AuthError("refresh_reused", message="refresh token reused; every session of this login was revoked")


async def _revoke_where(session: AsyncSession, condition: Any, now: datetime | None) -> int:
    result = cast(CursorResult[Any], await session.execute(
        update(RefreshToken).where(condition, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now or datetime.now(UTC))))
    return result.rowcount


async def revoke_family(session: AsyncSession, family_id: str, *, now: datetime | None = None) -> int:
    """Revokes every live token of one login (logout, reuse); returns how many were live."""
    return await _revoke_where(session, RefreshToken.family_id == family_id, now)


async def revoke_refresh(session: AsyncSession, token: str, *, now: datetime | None = None) -> bool:
    """Logout: revokes the family ``token`` belongs to; False when the token is unknown."""
    family_id = (await session.execute(select(RefreshToken.family_id)
                                       .where(RefreshToken.token_hash == _hash(token)))).scalar()
    if family_id is None:
        return False
    await revoke_family(session, family_id, now=now)
    return True


async def revoke_user_refresh(session: AsyncSession, user_id: str, *, now: datetime | None = None) -> int:
    """Logs a user out everywhere (disabled, role changed, password reset); returns how many were live."""
    return await _revoke_where(session, RefreshToken.user_id == user_id, now)
