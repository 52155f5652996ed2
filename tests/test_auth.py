"""Identity and access: tokens, key rotation, refresh reuse detection, API keys, roles, the FastAPI guards.

The attack cases are crafted by hand (``alg: none``, HS256 keyed with our public key, a token signed by
another key under our kid, an edited payload) because a JWT library will not produce most of them.
Pure tests are ``unit``; the ones on a real SQLite database (aiosqlite, a file per test) are ``integration``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import logging
import stat
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import Depends, FastAPI, WebSocket
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from starlette.websockets import WebSocketDisconnect

from gateway.auth import keys as keys_module
from gateway.auth.apikeys import KEY_RE, authenticate_api_key, create_api_key, load_pepper, revoke_api_key
from gateway.auth.config import AuthConfig
from gateway.auth.deps import (
    AuthContext,
    Principal,
    authenticate_websocket,
    authorize,
    db_api_key_lookup,
    require,
    require_call,
    require_ws,
    unprotected_routes,
    ws_subprotocol,
)
from gateway.auth.keys import KeyRing
from gateway.auth.roles import CALLER_ROLE, ROLE_PERMISSIONS, WRITE_PERMISSIONS, Permission, permission_table_markdown
from gateway.auth.tokens import (
    AuthError,
    issue_access,
    issue_call_token,
    issue_refresh,
    revoke_refresh,
    rotate_refresh,
    verify,
)
from voiceai.db.models import ROLES, ApiKey, Base, RefreshToken, Tenant, User

P = Permission
unit = pytest.mark.unit
integration = pytest.mark.integration
DOCS = Path(__file__).resolve().parent.parent / "docs" / "SECURITY.md"
SMALL_KEY_BITS = 2048  # the production default is 3072; tests generate many keys, and only one of those


# --- fixtures and helpers ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    """A ring the tests only read (tests that rotate or retire build their own)."""
    return KeyRing.load_or_create(tmp_path_factory.mktemp("keys"), key_size_bits=SMALL_KEY_BITS)


@pytest.fixture(scope="module")
def other_ring(tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    """Another install's keys: what a forger holds."""
    return KeyRing.load_or_create(tmp_path_factory.mktemp("other-keys"), key_size_bits=SMALL_KEY_BITS)


@pytest.fixture
def cfg(tmp_path: Path) -> AuthConfig:
    return AuthConfig(keys_dir=str(tmp_path / "keys"), issuer="voiceai-test", audience="voiceai-test")


def access(ring: KeyRing, cfg: AuthConfig, role: str = "admin", tenant: str = "bank-a", **kw: Any) -> str:
    return issue_access(ring, cfg, subject=f"user-{role}", tenant_id=f"id-{tenant}", tenant_name=tenant, role=role,
                        principal_type=kw.pop("principal_type", "user"), **kw)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes] | None = None) -> str:
    """A JWT assembled by hand, so that headers no library would write can be sent."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64url(signature)}"


def valid_payload(cfg: AuthConfig, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": cfg.issuer, "aud": cfg.audience, "sub": "user-1", "tid": "id-bank-a", "tname": "bank-a",
            "role": "admin", "ptype": "user", "typ": "access", "iat": now, "nbf": now, "exp": now + 600,
            "jti": "j1", **over}


def refused(reason: str, fn: Callable[[], object]) -> AuthError:
    with pytest.raises(AuthError) as info:
        fn()
    assert info.value.reason == reason, info.value.message
    assert info.value.status == 401
    return info.value


# --- access and call tokens -------------------------------------------------------------------------------------


@unit
def test_access_token_round_trip(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    token = access(shared_ring, cfg, role="supervisor")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256" and header["kid"] == shared_ring.signing_key.kid
    claims = verify(shared_ring, cfg, token, "access")
    assert (claims.subject, claims.tenant_id, claims.tenant_name, claims.role, claims.principal_type) == \
        ("user-supervisor", "id-bank-a", "bank-a", "supervisor", "user")
    assert claims.expires_at - claims.issued_at == cfg.access_ttl_s == 3600
    payload = jwt.decode(token, options={"verify_signature": False})
    assert {"iss", "aud", "sub", "tid", "tname", "role", "typ", "iat", "nbf", "exp", "jti"} <= set(payload)
    assert access(shared_ring, cfg) != access(shared_ring, cfg), "every token gets its own jti"


@unit
def test_issue_refuses_unknown_role(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    with pytest.raises(ValueError):
        access(shared_ring, cfg, role="root")
    with pytest.raises(ValueError):
        access(shared_ring, cfg, role=CALLER_ROLE)


@unit
def test_call_token_round_trip(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    token = issue_call_token(shared_ring, cfg, tenant_id="id-bank-a", tenant_name="bank-a", call_id="c1",
                             language="ar")
    claims = verify(shared_ring, cfg, token, "call")
    assert (claims.call_id, claims.language, claims.role, claims.principal_type) == ("c1", "ar", CALLER_ROLE, "call")
    assert claims.expires_at - claims.issued_at == cfg.call_token_ttl_s == 300


@unit
def test_missing_and_garbage_tokens(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    refused("missing", lambda: verify(shared_ring, cfg, None, "access"))
    refused("missing", lambda: verify(shared_ring, cfg, "", "access"))
    refused("malformed", lambda: verify(shared_ring, cfg, "not.a.jwt", "access"))
    refused("malformed", lambda: verify(shared_ring, cfg, "x" * 9000, "access"))


@unit
def test_expired_token(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    two_hours_ago = time.time() - 2 * cfg.access_ttl_s
    refused("expired", lambda: verify(shared_ring, cfg, access(shared_ring, cfg, now=two_hours_ago), "access"))
    # Without leeway a token is dead the second its exp passes.
    just_expired = access(shared_ring, cfg, now=time.time() - cfg.access_ttl_s - 1)
    refused("expired", lambda: verify(shared_ring, cfg, just_expired, "access", leeway_s=0))
    assert verify(shared_ring, cfg, just_expired, "access", leeway_s=30).role == "admin"


@unit
def test_token_from_the_future(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    token = access(shared_ring, cfg, now=time.time() + 600)
    refused("not_yet_valid", lambda: verify(shared_ring, cfg, token, "access"))


@unit
def test_forged_with_another_key_under_our_kid(shared_ring: KeyRing, other_ring: KeyRing, cfg: AuthConfig) -> None:
    forged = jwt.encode(valid_payload(cfg), other_ring.signing_key.private_key, algorithm="RS256",
                        headers={"kid": shared_ring.signing_key.kid})
    refused("invalid_signature", lambda: verify(shared_ring, cfg, forged, "access"))


@unit
def test_forged_with_another_installs_key(shared_ring: KeyRing, other_ring: KeyRing, cfg: AuthConfig) -> None:
    refused("unknown_kid", lambda: verify(shared_ring, cfg, access(other_ring, cfg), "access"))


@unit
def test_edited_payload_breaks_the_signature(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    """A viewer promoting itself to admin by editing its token."""
    header, payload, signature = access(shared_ring, cfg, role="viewer").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    edited = f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"
    refused("invalid_signature", lambda: verify(shared_ring, cfg, edited, "access"))


@unit
def test_alg_none_is_refused(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    for alg in ("none", "None", "NONE"):
        token = craft({"alg": alg, "typ": "JWT", "kid": shared_ring.signing_key.kid}, valid_payload(cfg))
        assert token.endswith(".")
        refused("bad_algorithm", functools.partial(verify, shared_ring, cfg, token, "access"))


@unit
def test_hs256_keyed_with_our_public_key_is_refused(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    """The classic key-confusion attack: the public key is public, so an HMAC keyed with it is forgeable."""
    public_pem = shared_ring.signing_key.public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    token = craft({"alg": "HS256", "typ": "JWT", "kid": shared_ring.signing_key.kid}, valid_payload(cfg),
                  sign=lambda msg: hmac.new(public_pem, msg, hashlib.sha256).digest())
    refused("bad_algorithm", lambda: verify(shared_ring, cfg, token, "access"))
    # And below our header check, the library's algorithm pin refuses it too.
    with pytest.raises(jwt.InvalidAlgorithmError):
        jwt.decode(token, shared_ring.signing_key.public_key, algorithms=["RS256"], audience=cfg.audience)


@unit
def test_kid_is_required_and_only_a_lookup_key(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    key = shared_ring.signing_key.private_key
    no_kid = jwt.encode(valid_payload(cfg), key, algorithm="RS256")
    refused("missing_kid", lambda: verify(shared_ring, cfg, no_kid, "access"))
    for kid in ("../../etc/passwd", "x" * 65, f"{shared_ring.signing_key.kid}.pem"):
        token = jwt.encode(valid_payload(cfg), key, algorithm="RS256", headers={"kid": kid})
        refused("unknown_kid", functools.partial(verify, shared_ring, cfg, token, "access"))


@unit
def test_other_issuer_or_audience(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    token = access(shared_ring, cfg)
    refused("wrong_audience", lambda: verify(shared_ring, cfg.model_copy(update={"audience": "crm"}), token, "access"))
    refused("wrong_issuer", lambda: verify(shared_ring, cfg.model_copy(update={"issuer": "other"}), token, "access"))


@unit
def test_signed_token_with_bad_claims(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    """Even a correctly signed token must have the shape we issue (fail closed on our own bugs)."""
    key, kid = shared_ring.signing_key.private_key, shared_ring.signing_key.kid

    def sign(**over: Any) -> str:
        payload = {k: v for k, v in valid_payload(cfg, **over).items() if v is not None}
        return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid})

    refused("missing_claim", lambda: verify(shared_ring, cfg, sign(exp=None), "access"))
    refused("missing_claim", lambda: verify(shared_ring, cfg, sign(tid=None), "access"))
    refused("invalid_claims", lambda: verify(shared_ring, cfg, sign(role="root"), "access"))
    refused("invalid_claims", lambda: verify(shared_ring, cfg, sign(tname=""), "access"))
    refused("invalid_claims", lambda: verify(shared_ring, cfg, sign(typ="call"), "call"))  # no call id, no scope


@unit
def test_wrong_token_type(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    call = issue_call_token(shared_ring, cfg, tenant_id="id-bank-a", tenant_name="bank-a", call_id="c1",
                            language="en")
    refused("wrong_type", lambda: verify(shared_ring, cfg, call, "access"))
    refused("wrong_type", lambda: verify(shared_ring, cfg, access(shared_ring, cfg), "call"))
    # A refresh token is opaque, not a JWT: it cannot even be parsed as one.
    refused("malformed", lambda: verify(shared_ring, cfg, "kq0Yc6v4n1j5yG3Q2m8d3y0Jv5v9p3n9h2x0s1a7b4c", "access"))


# --- keys -------------------------------------------------------------------------------------------------------


@unit
def test_first_key_is_created_private_and_3072_bits(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    ring = KeyRing.load_or_create(folder)
    files = list(folder.glob("*.pem"))
    assert [f.stem for f in files] == ring.kids
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) & 0o077 == 0
    assert files[0].read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert ring.signing_key.private_key.key_size == 3072
    assert KeyRing.load_or_create(folder).kids == ring.kids, "a second start reuses the key"
    with pytest.raises(ValueError):
        KeyRing.load_or_create(tmp_path / "weak", key_size_bits=1024)


@unit
def test_rotation_and_retirement(tmp_path: Path, cfg: AuthConfig) -> None:
    ring = KeyRing.load_or_create(tmp_path, key_size_bits=SMALL_KEY_BITS)
    old_kid = ring.signing_key.kid
    old_token = access(ring, cfg)
    new_kid = ring.rotate(key_size_bits=SMALL_KEY_BITS)
    assert new_kid > old_kid and ring.kids == [old_kid, new_kid] and ring.signing_key.kid == new_kid
    new_token = access(ring, cfg)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert verify(ring, cfg, old_token, "access").kid == old_kid, "the old key verifies until retired"
    with pytest.raises(ValueError):
        ring.retire(new_kid)  # the signing key: rotate first
    ring.retire(old_kid)
    assert not (tmp_path / f"{old_kid}.pem").exists()
    refused("unknown_kid", lambda: verify(ring, cfg, old_token, "access"))
    assert verify(ring, cfg, new_token, "access").kid == new_kid
    assert KeyRing.load_or_create(tmp_path).kids == [new_kid]


@unit
def test_other_replicas_follow_rotation_and_retirement(tmp_path: Path, cfg: AuthConfig,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "MISS_REFRESH_INTERVAL_S", 0.0)
    monkeypatch.setattr(keys_module, "REFRESH_INTERVAL_S", 0.0)
    here = KeyRing.load_or_create(tmp_path, key_size_bits=SMALL_KEY_BITS)
    there = KeyRing.load_or_create(tmp_path)
    old_token = access(here, cfg)
    here.rotate(key_size_bits=SMALL_KEY_BITS)
    new_token = access(here, cfg)
    assert verify(there, cfg, new_token, "access"), "an unknown kid makes the replica re-read the folder"
    assert there.signing_key.kid == here.signing_key.kid
    here.retire(jwt.get_unverified_header(old_token)["kid"])
    refused("unknown_kid", lambda: verify(there, cfg, old_token, "access"))


@unit
def test_jwks_verifies_our_tokens(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    jwks = shared_ring.jwks()
    assert [k["kid"] for k in jwks["keys"]] == shared_ring.kids
    jwk = jwks["keys"][-1]
    assert (jwk["kty"], jwk["alg"], jwk["use"]) == ("RSA", "RS256", "sig") and "d" not in jwk, "public parts only"
    public = RSAAlgorithm.from_jwk(json.dumps(jwk))
    claims = jwt.decode(access(shared_ring, cfg), public, algorithms=["RS256"], audience=cfg.audience)  # type: ignore[arg-type]
    assert claims["tname"] == "bank-a"


# --- roles ------------------------------------------------------------------------------------------------------


@unit
@pytest.mark.parametrize(("role", "permission", "allowed"), [
    ("admin", P.USERS_MANAGE, True), ("admin", P.GDPR_ERASE, True), ("admin", P.KB_WRITE, True),
    ("supervisor", P.KB_WRITE, True), ("supervisor", P.TRANSCRIPTS_READ, True), ("supervisor", P.CONFIG_WRITE, False),
    ("supervisor", P.USERS_MANAGE, False), ("supervisor", P.GDPR_ERASE, False),
    ("agent", P.HANDOFF_TAKE, True), ("agent", P.KB_SEARCH, True), ("agent", P.TRANSCRIPTS_READ, True),
    ("agent", P.USERS_MANAGE, False), ("agent", P.KB_WRITE, False), ("agent", P.APIKEYS_MANAGE, False),
    ("viewer", P.CALLS_READ, True), ("viewer", P.KB_READ, True), ("viewer", P.KB_WRITE, False),
    ("viewer", P.TRANSCRIPTS_READ, False), ("viewer", P.CONFIG_WRITE, False),
    (CALLER_ROLE, P.CALLS_JOIN, True), (CALLER_ROLE, P.CALLS_READ, False), ("root", P.CALLS_READ, False),
])
def test_role_table(role: str, permission: Permission, allowed: bool) -> None:
    principal = Principal(tenant_id="t", tenant_name="t", subject="s", role=role, principal_type="user")
    assert principal.can(permission) is allowed


@unit
def test_role_table_invariants() -> None:
    assert ROLE_PERMISSIONS["admin"] == frozenset(Permission)
    assert not ROLE_PERMISSIONS["viewer"] & WRITE_PERMISSIONS, "a viewer never writes"
    assert ROLE_PERMISSIONS[CALLER_ROLE] == {P.CALLS_JOIN}
    for role in ROLES:  # roles nest: each can do at most what the one above it can
        assert ROLE_PERMISSIONS[role] <= ROLE_PERMISSIONS["admin"]
    assert ROLE_PERMISSIONS["viewer"] <= ROLE_PERMISSIONS["supervisor"]
    assert ROLE_PERMISSIONS["agent"] <= ROLE_PERMISSIONS["supervisor"]


@unit
def test_docs_carry_the_role_table() -> None:
    assert permission_table_markdown() in DOCS.read_text(), "regenerate the table in docs/SECURITY.md"


@unit
def test_call_token_only_joins_its_own_call() -> None:
    caller = Principal(tenant_id="t", tenant_name="t", subject="call:c1", role=CALLER_ROLE, principal_type="call",
                       call_id="c1")
    authorize(caller, P.CALLS_JOIN, call_id="c1")
    authorize(caller, P.CALLS_JOIN)  # no call named: the call loop uses principal.call_id
    with pytest.raises(AuthError) as info:
        authorize(caller, P.CALLS_JOIN, call_id="c2")
    assert (info.value.status, info.value.reason) == (403, "wrong_call")
    with pytest.raises(AuthError) as info:
        authorize(caller, P.TRANSCRIPTS_READ)
    assert (info.value.status, info.value.reason) == (403, "forbidden")


# --- refresh tokens and API keys on a real database -------------------------------------------------------------


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'auth.sqlite3'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    async with sessions() as session:
        session.add_all([Tenant(id="ta", name="bank-a"), Tenant(id="tb", name="bank-b"),
                         User(id="ua", tenant_id="ta", email="a@bank-a.ae", role="agent")])
        await session.commit()
    yield sessions
    await engine.dispose()


async def user(session: AsyncSession, user_id: str = "ua") -> User:
    found = await session.get(User, user_id)
    assert found is not None
    return found


async def rotate_refused(sessions: async_sessionmaker[AsyncSession], token: str, cfg: AuthConfig,
                         now: datetime | None = None) -> str:
    async with sessions() as session:
        with pytest.raises(AuthError) as info:
            await rotate_refresh(session, token, cfg, now=now)
    assert info.value.status == 401
    return info.value.reason


@integration
async def test_refresh_rotation_and_reuse_detection(db: async_sessionmaker[AsyncSession], cfg: AuthConfig) -> None:
    async with db() as session:
        first = await issue_refresh(session, await user(session), cfg)
        other_login = await issue_refresh(session, await user(session), cfg)
        await session.commit()
    async with db() as session:
        second, owner = await rotate_refresh(session, first, cfg)
        await session.commit()
    assert second != first and owner.id == "ua"
    async with db() as session:
        rows = (await session.execute(select(RefreshToken))).scalars().all()
    hashes = {hashlib.sha256(t.encode()).hexdigest() for t in (first, second, other_login)}
    assert {r.token_hash for r in rows} == hashes
    assert not {first, second} & {r.token_hash for r in rows}, "stored hashed"

    # The thief (or the owner) presents the rotated token again: the whole family dies, the other login lives.
    assert await rotate_refused(db, first, cfg) == "refresh_reused"
    assert await rotate_refused(db, second, cfg) == "refresh_reused"
    async with db() as session:
        third, _ = await rotate_refresh(session, other_login, cfg)
        await session.commit()
    assert third


@integration
async def test_reuse_revocation_survives_the_callers_rollback(db: async_sessionmaker[AsyncSession],
                                                              cfg: AuthConfig) -> None:
    async with db() as session:
        first = await issue_refresh(session, await user(session), cfg)
        second, _ = await rotate_refresh(session, first, cfg)
        await session.commit()
    with pytest.raises(AuthError):
        async with db() as session, session.begin():  # the pattern of Database.tenant_session/admin_session
            await rotate_refresh(session, first, cfg)
    assert await rotate_refused(db, second, cfg) == "refresh_reused"


@integration
async def test_concurrent_rotation_is_reuse(db: async_sessionmaker[AsyncSession], cfg: AuthConfig) -> None:
    """Two refreshes of one token race: the one that read the row before the other's rotation landed must
    lose at the conditional update (it read a stale "not rotated"), not mint a second live successor."""
    async with db() as session:
        token = await issue_refresh(session, await user(session), cfg)
        await session.commit()
    async with db() as slow:
        # The slow request has already read the row (still unrotated) when the fast one commits.
        stale = (await slow.execute(select(RefreshToken))).scalars().all()  # held: the identity map is weak
        await slow.commit()
        async with db() as fast:
            winner, _ = await rotate_refresh(fast, token, cfg)
            await fast.commit()
        with pytest.raises(AuthError) as info:
            await rotate_refresh(slow, token, cfg)
    assert info.value.reason == "refresh_reused" and stale
    assert await rotate_refused(db, winner, cfg) == "refresh_reused", "the family died with it"


@integration
async def test_refresh_refusals(db: async_sessionmaker[AsyncSession], cfg: AuthConfig) -> None:
    async with db() as session:
        token = await issue_refresh(session, await user(session), cfg)
        to_logout = await issue_refresh(session, await user(session), cfg)
        await session.commit()
    assert await rotate_refused(db, "no-such-token", cfg) == "invalid_refresh"
    later = datetime.now(UTC) + timedelta(seconds=cfg.refresh_ttl_s + 1)
    assert await rotate_refused(db, token, cfg, now=later) == "refresh_expired"
    async with db() as session:
        (await user(session)).disabled = True
        await session.commit()
    assert await rotate_refused(db, token, cfg) == "user_disabled"
    async with db() as session:
        assert await revoke_refresh(session, to_logout)
        await session.commit()
    assert await rotate_refused(db, to_logout, cfg) == "refresh_reused"


@integration
async def test_api_keys(db: async_sessionmaker[AsyncSession]) -> None:
    pepper = b"p" * 32
    async with db() as session:
        plaintext, row = await create_api_key(session, "ta", "agent", "ivr", pepper)
        await session.commit()
    match = KEY_RE.match(plaintext)
    assert match is not None and match.group(1) == row.prefix
    async with db() as session:
        stored = (await session.execute(select(ApiKey))).scalar_one()
        columns = [str(getattr(stored, c.key)) for c in ApiKey.__table__.columns]
        assert not any(match.group(2) in value for value in columns), "the secret is stored nowhere"
        assert stored.key_hash != plaintext and len(stored.key_hash) == 64
        found = await authenticate_api_key(session, plaintext, pepper)
        assert found is not None and (found.tenant_id, found.role) == ("ta", "agent")
        assert found.last_used_at is not None
        assert await authenticate_api_key(session, plaintext, b"q" * 32) is None, "another install's pepper"
        assert await authenticate_api_key(session, plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B"),
                                          pepper) is None
        assert await authenticate_api_key(session, "vai_garbage", pepper) is None
        assert not await revoke_api_key(session, "tb", row.id), "another tenant cannot revoke it"
        assert await authenticate_api_key(session, plaintext, pepper) is not None
        assert await revoke_api_key(session, "ta", row.id)
        await session.commit()
    async with db() as session:
        assert await authenticate_api_key(session, plaintext, pepper) is None
    with pytest.raises(ValueError):
        async with db() as session:
            await create_api_key(session, "ta", CALLER_ROLE, "x", pepper)


@integration
async def test_db_api_key_lookup(db: async_sessionmaker[AsyncSession]) -> None:
    pepper = b"p" * 32
    async with db() as session:
        plaintext, row = await create_api_key(session, "ta", "viewer", "dashboards", pepper)
        await session.commit()

    def admin_session() -> AbstractAsyncContextManager[AsyncSession]:
        @asynccontextmanager
        async def scope() -> AsyncIterator[AsyncSession]:
            async with db() as session, session.begin():
                yield session
        return scope()

    lookup = db_api_key_lookup(admin_session, pepper)
    principal = await lookup(plaintext)
    assert principal == Principal(tenant_id="ta", tenant_name="bank-a", subject=row.id, role="viewer",
                                  principal_type="api_key")
    assert await lookup("vai_00000000_" + "a" * 43) is None
    async with db() as session:
        tenant = await session.get(Tenant, "ta")
        assert tenant is not None
        tenant.disabled = True
        await session.commit()
    assert await lookup(plaintext) is None, "a disabled tenant's keys stop working"


@unit
def test_pepper(tmp_path: Path) -> None:
    cfg = AuthConfig()
    pepper = load_pepper(cfg, tmp_path)
    assert len(pepper) == 64 and load_pepper(cfg, tmp_path) == pepper, "created once, then reused"
    assert stat.S_IMODE((tmp_path / "api-key-pepper.secret").stat().st_mode) == 0o600
    assert load_pepper(AuthConfig(api_key_pepper="x" * 20), tmp_path) == b"x" * 20
    with pytest.raises(ValueError):
        load_pepper(AuthConfig(api_key_pepper="short"), tmp_path)


# --- the FastAPI guards -----------------------------------------------------------------------------------------

API_KEY = "vai_0123abcd_" + "k" * 43


def tiny_app(ring: KeyRing, cfg: AuthConfig, *, active: bool = True) -> FastAPI:
    """Routes guarded exactly as the gateway's are, on an AuthContext with a fake API-key store."""
    app = FastAPI()

    async def lookup(plaintext: str) -> Principal | None:
        if plaintext != API_KEY:
            return None
        return Principal(tenant_id="id-bank-a", tenant_name="bank-a", subject="k1", role="agent",
                         principal_type="api_key")

    async def principal_active(principal: Principal) -> bool:
        return active

    app.state.auth = AuthContext(cfg, ring, b"p" * 32, lookup, default_tenant="demo", default_tenant_id="id-demo",
                                 principal_active=principal_active)

    @app.get("/calls")
    async def calls(principal: Annotated[Principal, Depends(require(P.CALLS_READ))]) -> dict[str, str]:
        return {"tenant": principal.tenant_name, "role": principal.role, "type": principal.principal_type}

    @app.post("/kb", dependencies=[Depends(require(P.KB_WRITE))])
    async def kb_write() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/calls/{call_id}/join")
    async def join(call_id: str, principal: Annotated[Principal, Depends(require_call())]) -> dict[str, str | None]:
        return {"call": call_id, "own": principal.call_id}

    @app.get("/forgotten")
    async def forgotten() -> dict[str, bool]:
        return {"ok": True}

    @app.websocket("/calls/ws")
    async def call_ws(ws: WebSocket,
                      principal: Annotated[Principal | None, Depends(require_ws(P.CALLS_JOIN))]) -> None:
        if principal is None:
            return
        await ws.accept(subprotocol=ws_subprotocol(ws))
        await ws.send_json({"call": principal.call_id, "tenant": principal.tenant_name})
        await ws.close()

    @app.websocket("/monitor")
    async def monitor(ws: WebSocket) -> None:
        principal = await authenticate_websocket(ws, P.TRANSCRIPTS_READ)
        if principal is None:
            return
        await ws.accept()
        await ws.send_json({"role": principal.role})
        await ws.close()

    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@unit
def test_http_guard_refusals(shared_ring: KeyRing, other_ring: KeyRing, cfg: AuthConfig) -> None:
    client = TestClient(tiny_app(shared_ring, cfg))
    cases: list[tuple[dict[str, str], str]] = [
        ({}, "missing"),
        (bearer("garbage"), "malformed"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unsupported_scheme"),
        (bearer(access(shared_ring, cfg, now=time.time() - 7200)), "expired"),
        (bearer(access(other_ring, cfg)), "unknown_kid"),
        ({"X-API-Key": "vai_nope"}, "invalid_api_key"),
        ({**bearer(access(shared_ring, cfg)), "X-API-Key": API_KEY}, "ambiguous_credentials"),
    ]
    for headers, reason in cases:
        response = client.get("/calls", headers=headers)
        assert response.status_code == 401, (reason, response.text)
        assert response.json()["detail"]["reason"] == reason
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="voiceai"')
        assert ('error="invalid_token"' in challenge) is (reason != "missing")


@unit
def test_http_guard_roles_and_tenants(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    client = TestClient(tiny_app(shared_ring, cfg))
    viewer = bearer(access(shared_ring, cfg, role="viewer"))
    ok = client.get("/calls", headers=viewer)
    assert ok.status_code == 200 and ok.json() == {"tenant": "bank-a", "role": "viewer", "type": "user"}
    write = client.post("/kb", headers=viewer)
    assert write.status_code == 403 and write.json()["detail"]["reason"] == "forbidden"
    assert 'error="insufficient_scope"' in write.headers["WWW-Authenticate"]
    assert client.post("/kb", headers=bearer(access(shared_ring, cfg, role="supervisor"))).status_code == 200
    assert client.post("/kb", headers=bearer(access(shared_ring, cfg, role="agent"))).status_code == 403
    # A bank-a token naming bank-b in the old header is an attempt to cross tenants; agreeing is harmless.
    crossed = client.get("/calls", headers={**viewer, "X-Tenant": "bank-b"})
    assert crossed.status_code == 403 and crossed.json()["detail"]["reason"] == "tenant_mismatch"
    assert client.get("/calls", headers={**viewer, "X-Tenant": "bank-a"}).status_code == 200
    # API keys, in either header.
    for headers in ({"X-API-Key": API_KEY}, bearer(API_KEY)):
        response = client.get("/calls", headers=headers)
        assert response.status_code == 200 and response.json()["type"] == "api_key"
    assert client.post("/kb", headers={"X-API-Key": API_KEY}).status_code == 403


@unit
def test_http_guard_call_tokens(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    client = TestClient(tiny_app(shared_ring, cfg))
    call = bearer(issue_call_token(shared_ring, cfg, tenant_id="id-bank-a", tenant_name="bank-a", call_id="c1",
                                   language="ar"))
    assert client.get("/calls/c1/join", headers=call).json() == {"call": "c1", "own": "c1"}
    other = client.get("/calls/c2/join", headers=call)
    assert other.status_code == 403 and other.json()["detail"]["reason"] == "wrong_call"
    assert client.get("/calls", headers=call).status_code == 403, "a call token reads nothing"
    assert client.get("/calls/c2/join", headers=bearer(access(shared_ring, cfg, role="viewer"))).status_code == 403


@unit
def test_http_guard_inactive_principal(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    client = TestClient(tiny_app(shared_ring, cfg, active=False))
    response = client.get("/calls", headers=bearer(access(shared_ring, cfg)))
    assert response.status_code == 401 and response.json()["detail"]["reason"] == "inactive"


@unit
def test_auth_disabled_acts_as_default_admin(shared_ring: KeyRing, cfg: AuthConfig,
                                             caplog: pytest.LogCaptureFixture) -> None:
    client = TestClient(tiny_app(shared_ring, cfg.model_copy(update={"enabled": False})))
    with caplog.at_level(logging.WARNING, logger="gateway.auth.deps"):
        assert client.get("/calls").json() == {"tenant": "demo", "role": "admin", "type": "dev"}
        assert client.post("/kb").status_code == 200
        assert client.get("/calls", headers={"X-Tenant": "bank-b"}).json()["tenant"] == "bank-b"
    assert sum("authentication is disabled" in r.message for r in caplog.records) == 1, "warned once"


@unit
def test_every_route_is_guarded_or_listed_public(shared_ring: KeyRing, cfg: AuthConfig) -> None:
    app = tiny_app(shared_ring, cfg)
    public = ["/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"]
    # /monitor checks inside its body (authenticate_websocket), which no audit can see: routes use require_ws.
    assert unprotected_routes(app, public=public) == ["GET /forgotten", "WS /monitor"]


def ws_refusal(client: TestClient, url: str, **kw: Any) -> int:
    with client.websocket_connect(url, **kw) as ws, pytest.raises(WebSocketDisconnect) as info:
        ws.receive_json()
    return info.value.code


@unit
def test_websocket_guard(shared_ring: KeyRing, other_ring: KeyRing, cfg: AuthConfig) -> None:
    client = TestClient(tiny_app(shared_ring, cfg))
    call = issue_call_token(shared_ring, cfg, tenant_id="id-bank-a", tenant_name="bank-a", call_id="c1",
                            language="ar")
    assert ws_refusal(client, "/calls/ws") == 4401
    assert ws_refusal(client, "/calls/ws?token=garbage") == 4401
    assert ws_refusal(client, f"/calls/ws?token={access(other_ring, cfg)}") == 4401
    assert ws_refusal(client, f"/calls/ws?token={access(shared_ring, cfg, now=time.time() - 7200)}") == 4401
    assert ws_refusal(client, f"/calls/ws?token={access(shared_ring, cfg, role='viewer')}") == 4403
    assert ws_refusal(client, f"/calls/ws?token={call}&call_id=c2") == 4403, "only its own call"
    assert ws_refusal(client, f"/monitor?token={call}") == 4403
    assert ws_refusal(client, "/monitor", subprotocols=["voiceai.v1", "bearer.garbage"]) == 4401

    with client.websocket_connect(f"/calls/ws?token={call}") as ws:
        assert ws.receive_json() == {"call": "c1", "tenant": "bank-a"}
    # What a browser sends: the token as a subprotocol next to the real one, which is what gets echoed.
    with client.websocket_connect("/calls/ws?call_id=c1", subprotocols=["voiceai.v1", f"bearer.{call}"]) as ws:
        assert ws.accepted_subprotocol == "voiceai.v1"
        assert ws.receive_json()["call"] == "c1"
    with client.websocket_connect(f"/monitor?token={access(shared_ring, cfg, role='agent')}") as ws:
        assert ws.receive_json() == {"role": "agent"}
