"""Attacks on the real gateway (platform on SQLite, auth on): every route guarded, bad credentials refused
with the right status, tenants sealed from each other, injection strings inert, oversized bodies refused
before they are read, and nothing written by a refused request."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gateway.app import create_app
from gateway.auth.deps import unprotected_routes
from gateway.auth.keys import KeyRing
from gateway.auth.tokens import issue_access, issue_call_token
from gateway.platform import ensure_tenant
from media_bridge.clients import BridgeClients
from tests.fakes import FakeAsrClient, FakeLlmClient, FakeTtsClient, FakeVadClient
from tests.platform_helpers import isolate
from voiceai.config import Settings, load_settings
from voiceai.db.engine import Database
from voiceai.db.models import AuditLog, Call, Transcript

pytestmark = pytest.mark.integration

# POST /v1/calls checks credentials in its body: anonymous only for auth.anonymous_calls_tenant (tested below);
# the refresh token in the body is the credential of /v1/auth/refresh and /v1/auth/logout.
# The Twilio routes carry their own proof (X-Twilio-Signature; the call token in the stream's start frame),
# tested in test_twilio.py.
PUBLIC = ["/", "/static", "/health", "/metrics", "/.well-known/jwks.json", "/docs", "/docs/oauth2-redirect",
          "/redoc", "/openapi.json", "/v1/twilio/voice", "/v1/twilio/voice/after", "/v1/twilio/stream",
          "/v1/calls", "/v1/auth/refresh", "/v1/auth/logout"]
INJECTIONS = ["' OR '1'='1", "1; DROP TABLE calls; --", "\" OR \"\"=\"", "%27%20OR%201%3D1", "../../etc/passwd",
              "<script>alert(1)</script>", "ًٌٍَُِّْ\u200f\u202e", "💳" * 50]


class Env:
    def __init__(self, settings: Settings, client: TestClient, tenants: dict[str, str]) -> None:
        self.settings = settings
        self.http = client
        self.tenants = tenants
        self.ring = KeyRing.load_or_create(settings.auth.keys_dir)

    def token(self, tenant: str = "alpha", role: str = "admin", **kw: Any) -> str:
        return issue_access(kw.pop("ring", self.ring), self.settings.auth, subject=f"{tenant}-{role}",
                            tenant_id=self.tenants[tenant], tenant_name=tenant, role=role, principal_type="user", **kw)

    def bearer(self, tenant: str = "alpha", role: str = "admin", **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(tenant, role, **kw)}"}

    def counts(self) -> tuple[int, int, int]:
        async def run() -> tuple[int, int, int]:
            db = Database(self.settings.db.url)
            try:
                async with db.admin_session() as session:
                    return (await session.scalar(select(func.count()).select_from(AuditLog)) or 0,
                            await session.scalar(select(func.count()).select_from(Call)) or 0,
                            await session.scalar(select(func.count()).select_from(Transcript)) or 0)
            finally:
                await db.close()

        return asyncio.run(run())


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    settings = isolate(load_settings(profile="cpu", env={}), tmp_path_factory.mktemp("security"))

    async def clients_factory(_: Settings) -> BridgeClients:
        tts = FakeTtsClient()
        return BridgeClients(vad=FakeVadClient(), asr=FakeAsrClient(), llm=FakeLlmClient(), tts=tts, fallback_tts=tts)

    app = create_app(settings, clients_factory=clients_factory, kb_factory=None)
    with TestClient(app) as client:
        async def seed() -> dict[str, str]:
            db = Database(settings.db.url)
            try:
                tenants = {name: await ensure_tenant(db, name) for name in ("alpha", "beta")}
                async with db.tenant_session(tenants["beta"]) as session:
                    session.add(Call(id="b" * 32, tenant_id=tenants["beta"], channel="websocket", language="ar"))
                    await session.flush()
                    session.add(Transcript(tenant_id=tenants["beta"], call_id="b" * 32, turn=1, speaker="caller",
                                           text="beta's secret"))
                return tenants
            finally:
                await db.close()

        yield Env(settings, client, asyncio.run(seed()))


def _b64(data: dict[str, Any] | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims(env: Env, tenant: str = "alpha", role: str = "admin") -> dict[str, Any]:
    now = int(time.time())
    return {"iss": env.settings.auth.issuer, "aud": env.settings.auth.audience, "sub": "attacker", "typ": "access",
            "tid": env.tenants[tenant], "tname": tenant, "role": role, "ptype": "user", "iat": now, "nbf": now,
            "exp": now + 600, "jti": "x"}


def test_every_route_is_guarded(env: Env) -> None:
    assert unprotected_routes(env.http.app, public=PUBLIC) == []  # type: ignore[arg-type]
    assert unprotected_routes(env.http.app, public=PUBLIC[:-3]) == [  # type: ignore[arg-type]
        "POST /v1/auth/logout", "POST /v1/auth/refresh", "POST /v1/calls"]


@pytest.mark.parametrize("kind", ["missing", "garbage", "expired", "other_key", "alg_none", "hs256_public_key",
                                  "api_key_unknown", "call_token_as_access"])
def test_bad_credentials_get_401_and_nothing_is_written(env: Env, kind: str, tmp_path: Path) -> None:
    kid = env.ring.kids[-1]
    headers: dict[str, str] = {}
    if kind == "garbage":
        headers = {"Authorization": "Bearer not.a.jwt"}
    elif kind == "expired":
        headers = env.bearer(now=time.time() - 7200)
    elif kind == "other_key":
        headers = env.bearer(ring=KeyRing.load_or_create(tmp_path / "other"))
    elif kind == "alg_none":
        headers = {"Authorization": f"Bearer {_b64({'alg': 'none', 'kid': kid, 'typ': 'JWT'})}.{_b64(_claims(env))}."}
    elif kind == "hs256_public_key":
        public = env.ring.public_key(kid)
        assert public is not None
        secret = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input = f"{_b64({'alg': 'HS256', 'kid': kid, 'typ': 'JWT'})}.{_b64(_claims(env))}"
        signature = _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
        headers = {"Authorization": f"Bearer {signing_input}.{signature}"}
    elif kind == "api_key_unknown":
        headers = {"X-API-Key": "vai_deadbeef_" + "x" * 43}
    elif kind == "call_token_as_access":
        call = issue_call_token(env.ring, env.settings.auth, tenant_id=env.tenants["alpha"], tenant_name="alpha",
                                call_id="c" * 32, language="en")
        headers = {"Authorization": f"Bearer {call}"}
    before = env.counts()
    for method, path, body in (("GET", "/v1/calls", None), ("GET", f"/v1/calls/{'b' * 32}", None),
                               ("POST", "/v1/gdpr/erase", {"caller_id": "0501234567"})):
        resp = env.http.request(method, path, headers=headers, json=body)
        expected = 403 if kind == "call_token_as_access" else 401
        assert resp.status_code == expected, (kind, method, path, resp.text)
        if expected == 401:
            assert resp.headers["www-authenticate"].startswith("Bearer")
    assert env.counts() == before


def test_roles_are_enforced(env: Env) -> None:
    before = env.counts()
    viewer = env.bearer(role="viewer")
    assert env.http.get("/v1/calls", headers=viewer).status_code == 200
    assert env.http.get(f"/v1/calls/{'a' * 32}", headers=viewer).status_code == 403  # transcripts: not for viewers
    assert env.http.post("/v1/gdpr/erase", json={"caller_id": "0501234567"}, headers=viewer).status_code == 403
    assert env.http.post("/v1/kb/documents", files={"file": ("a.txt", b"x")}, headers=viewer).status_code == 403
    agent = env.bearer(role="agent")
    assert env.http.post("/v1/gdpr/erase", json={"caller_id": "0501234567"}, headers=agent).status_code == 403
    assert env.counts() == before


def test_another_tenants_call_is_indistinguishable_from_a_missing_one(env: Env) -> None:
    agent = env.bearer("alpha", "agent")
    theirs = env.http.get(f"/v1/calls/{'b' * 32}", headers=agent)
    missing = env.http.get(f"/v1/calls/{'f' * 32}", headers=agent)
    assert theirs.status_code == missing.status_code == 404 and theirs.json() == missing.json()
    assert "b" * 32 not in json.dumps(env.http.get("/v1/calls", headers=agent).json())
    own = env.http.get(f"/v1/calls/{'b' * 32}", headers=env.bearer("beta", "agent"))
    assert own.status_code == 200 and own.json()["transcript"][0]["text"] == "beta's secret"


def test_a_credential_cannot_name_another_tenant(env: Env) -> None:
    resp = env.http.get("/v1/calls", headers=env.bearer("alpha") | {"X-Tenant": "beta"})
    assert resp.status_code == 403


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_strings_are_inert(env: Env, value: str) -> None:
    before = env.counts()
    admin = env.bearer("alpha", "admin")
    assert env.http.get(f"/v1/calls/{value}", headers=admin).status_code in (404, 422)
    erase = env.http.post("/v1/gdpr/erase", json={"caller_id": value}, headers=admin)
    assert erase.status_code in (200, 422)
    if erase.status_code == 200:
        assert erase.json()["erased"]["calls"] == 0
    assert env.http.get("/v1/calls", params={"limit": value}, headers=admin).status_code == 422
    audits, calls, transcripts = env.counts()
    assert (calls, transcripts) == before[1:]  # beta's call survived every one of them
    assert audits - before[0] <= 1  # an accepted erase (of nothing) is audited; nothing else was written


def test_oversized_bodies_are_refused_before_reading(env: Env) -> None:
    big = {"caller_id": "0501234567", "pad": "x" * (2 * 2**20)}
    assert env.http.post("/v1/gdpr/erase", json=big, headers=env.bearer()).status_code == 413
    assert env.http.post("/v1/calls", json=big).status_code == 413


def test_anonymous_calls_only_for_the_configured_tenant(env: Env) -> None:
    started = env.http.post("/v1/calls", json={"language": "ar"})
    assert started.status_code == 201
    assert env.http.post("/v1/calls", json={"language": "fr"}).status_code == 422
    # A credential decides the tenant: a viewer may not start calls for theirs.
    assert env.http.post("/v1/calls", json={}, headers=env.bearer(role="viewer")).status_code == 403


def test_refresh_rotates_and_reuse_revokes_the_login(env: Env) -> None:
    from gateway.auth.tokens import issue_refresh, verify
    from voiceai.db.models import User

    async def login() -> str:
        db = Database(env.settings.db.url)
        try:
            async with db.tenant_session(env.tenants["alpha"]) as session:
                user = User(tenant_id=env.tenants["alpha"], email=f"u{time.time_ns()}@alpha.ae", role="agent")
                session.add(user)
                await session.flush()
                return await issue_refresh(session, user, env.settings.auth)
        finally:
            await db.close()

    first = asyncio.run(login())
    rotated = env.http.post("/v1/auth/refresh", json={"refresh_token": first})
    assert rotated.status_code == 200
    body = rotated.json()
    claims = verify(env.ring, env.settings.auth, body["access_token"], "access")
    assert (claims.tenant_name, claims.role) == ("alpha", "agent")
    assert env.http.get("/v1/calls", headers={"Authorization": f"Bearer {body['access_token']}"}).status_code == 200
    # Presenting the used token again (stolen and replayed) revokes the whole login, the new token too.
    reused = env.http.post("/v1/auth/refresh", json={"refresh_token": first})
    assert reused.status_code == 401 and reused.json()["detail"]["reason"] == "refresh_reused"
    assert env.http.post("/v1/auth/refresh", json={"refresh_token": body["refresh_token"]}).status_code == 401
    assert env.http.post("/v1/auth/refresh", json={"refresh_token": "x" * 43}).status_code == 401
    assert env.http.post("/v1/auth/logout", json={"refresh_token": "y" * 43}).status_code == 401
    second = asyncio.run(login())
    assert env.http.post("/v1/auth/logout", json={"refresh_token": second}).status_code == 204
    assert env.http.post("/v1/auth/refresh", json={"refresh_token": second}).status_code == 401


def test_tenant_config_read_write_audited_and_role_checked(env: Env) -> None:
    admin, supervisor, agent = env.bearer(role="admin"), env.bearer(role="supervisor"), env.bearer(role="agent")
    assert env.http.get("/v1/config", headers=agent).status_code == 403
    current = env.http.get("/v1/config", headers=supervisor)
    assert current.status_code == 200 and current.json()["retention_days"] == 30
    assert env.http.put("/v1/config", json={"retention_days": 7}, headers=supervisor).status_code == 403
    before = env.counts()[0]
    updated = env.http.put("/v1/config", headers=admin, json={
        "retention_days": 90, "store_full_transcripts": True, "languages": {"enabled": ["ar"], "default": "ar"}})
    assert updated.status_code == 200
    assert (updated.json()["retention_days"], updated.json()["store_full_transcripts"]) == (90, True)
    assert env.counts()[0] == before + 1  # audited
    for bad in ({"retention_days": 45}, {"languages": {"enabled": ["fr"]}}, {"unknown": 1},
                {"store_full_transcripts": "' OR 1=1"}):
        assert env.http.put("/v1/config", json=bad, headers=admin).status_code == 422, bad
    # Beta's config is its own.
    assert env.http.get("/v1/config", headers=env.bearer("beta", "admin")).json()["retention_days"] == 30


def test_a_gateway_without_a_knowledge_base_says_so(tmp_path: Path) -> None:
    """kb.enabled = false: the KB routes answer 503 (after the role check), calls are not grounded."""
    settings = isolate(load_settings(profile="cpu", env={}), tmp_path)
    settings.kb.enabled = False

    async def clients_factory(_: Settings) -> BridgeClients:
        tts = FakeTtsClient()
        return BridgeClients(vad=FakeVadClient(), asr=FakeAsrClient(), llm=FakeLlmClient(), tts=tts, fallback_tts=tts)

    with TestClient(create_app(settings, clients_factory=clients_factory)) as http:
        assert http.app.state.kb is None and http.app.state.clients.kb is None  # type: ignore[attr-defined]
        ring = KeyRing.load_or_create(settings.auth.keys_dir)
        token = issue_access(ring, settings.auth, subject="u", tenant_id="t", tenant_name="demo", role="admin",
                             principal_type="user")
        resp = http.post("/v1/kb/search", json={"query": "fees"}, headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 503
        assert http.post("/v1/kb/search", json={"query": "fees"}).status_code == 401
