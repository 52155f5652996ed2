"""`voiceai db ...` and `voiceai admin ...` through the real entry point (voiceai.cli.main), on the embedded
SQLite file and on a throwaway Postgres database (owner URL for the commands, application-role URL as the
app's), configured the way an operator does it: environment variables and a TOML file.

Every command's result is read back from the database and the key folder: tokens are verified with the
key ring, API keys authenticated, and each mutation's audit row checked.
"""

from __future__ import annotations

import asyncio
import getpass
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
from sqlalchemy import select, update

from gateway.auth.apikeys import authenticate_api_key, hash_api_key, load_pepper
from gateway.auth.keys import KeyRing
from gateway.auth.tokens import AuthError, rotate_refresh, verify
from tests.pg_helpers import PgDatabase, throwaway_database
from voiceai.cli import main
from voiceai.config import Settings, load_settings
from voiceai.db import migrate
from voiceai.db.engine import Database
from voiceai.db.models import ApiKey, AuditLog, RefreshToken, Tenant, TenantConfig, User

pytestmark = pytest.mark.integration

BAD_TENANT_NAMES = ["Bad Name", "x" * 70, "a;drop", "_underscore-first", "bank\n", ""]


@dataclass
class Cli:
    """Runs `voiceai ...` in this process and reads back what it did."""

    dialect: str
    admin_url: str
    app_url: str
    keys_dir: Path
    capsys: pytest.CaptureFixture[str]
    pg: PgDatabase | None = None

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = main(list(argv))
        captured = self.capsys.readouterr()
        return rc, captured.out, captured.err

    def ok(self, *argv: str) -> str:
        rc, out, err = self(*argv)
        assert rc == 0, err
        return out

    def ok_json(self, *argv: str) -> dict[str, Any]:
        return json.loads(self.ok(*argv, "--json"))  # type: ignore[no-any-return]

    def refused(self, *argv: str) -> str:
        """Runs a command that must fail with exit 2 and one clear line; returns that line."""
        rc, out, err = self(*argv)
        assert rc == 2, (out, err)
        assert err.startswith("voiceai: error: ") and err.count("\n") == 1, err
        return err

    @property
    def settings(self) -> Settings:
        return load_settings()

    def query(self, stmt: Any) -> list[Any]:
        async def read() -> list[Any]:
            db = Database(self.admin_url)
            try:
                async with db.admin_session() as s:
                    return list((await s.execute(stmt)).scalars())
            finally:
                await db.close()

        return asyncio.run(read())

    def in_session(self, work: Any) -> Any:
        """``await work(session)`` in one platform-wide transaction (committed)."""

        async def run() -> Any:
            db = Database(self.admin_url)
            try:
                async with db.admin_session() as s:
                    return await work(s)
            finally:
                await db.close()

        return asyncio.run(run())

    def audits(self, action: str) -> list[AuditLog]:
        return self.query(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id))


@pytest.fixture
def pg() -> Iterator[PgDatabase]:
    with throwaway_database() as db:
        yield db


@pytest.fixture(params=["sqlite", "postgresql"])
def cli(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Cli:
    keys_dir = tmp_path / "keys"
    config = tmp_path / "voiceai.toml"
    config.write_text(f'[auth]\nkeys_dir = "{keys_dir}"\n')
    monkeypatch.setenv("VOICEAI_CONFIG", str(config))
    for var in ("VOICEAI_DATABASE_URL", "VOICEAI_DATABASE_ADMIN_URL", "VOICEAI_API_KEY_PEPPER", "VOICEAI_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'v.sqlite3'}"
        monkeypatch.setenv("VOICEAI_DATABASE_URL", url)
        return Cli("sqlite", url, url, keys_dir, capsys)
    pg: PgDatabase = request.getfixturevalue("pg")
    # Plain postgresql:// URLs, as an operator pastes them; the commands pick the async driver.
    owner_url, app_url = pg.url(pg.owner, driver=""), pg.url(pg.app_role, driver="")
    monkeypatch.setenv("VOICEAI_DATABASE_ADMIN_URL", owner_url)
    monkeypatch.setenv("VOICEAI_DATABASE_URL", app_url)
    return Cli("postgresql", owner_url, app_url, keys_dir, capsys, pg)


@pytest.fixture
def migrated(cli: Cli) -> Cli:
    assert cli.ok("db", "upgrade").strip() == migrate.head()
    return cli


def _tenant(cli: Cli, name: str = "bank-one") -> dict[str, Any]:
    return cli.ok_json("admin", "tenant", "create", name)


def _user(cli: Cli, email: str = "ahmed.ali@bank.ae", role: str = "agent", tenant: str = "bank-one") -> dict[str, Any]:
    return cli.ok_json("admin", "user", "create", "--tenant", tenant, "--email", email, "--role", role)


# ---- voiceai db ------------------------------------------------------------------------------------------


def test_db_upgrade_current_downgrade(cli: Cli) -> None:
    assert cli.ok("db", "current").strip() == "(empty database)"
    assert cli.ok("db", "upgrade").strip() == migrate.head()
    assert cli.ok("db", "current").strip() == migrate.head() == migrate.current(cli.admin_url)
    if cli.pg is not None:
        # The application role was created under the name of VOICEAI_DATABASE_URL's user, and row-level
        # security holds for it: no tenant set, no rows, even after the owner wrote one.
        _tenant(cli)
        with cli.pg.connect(cli.pg.app_role) as app:
            assert app.execute("SELECT count(*) FROM tenants").fetchone() == (0,)
            assert app.execute("SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)
    assert cli.ok("db", "downgrade").strip() == "(empty database)"
    assert migrate.current(cli.admin_url) is None
    assert cli.ok("db", "upgrade", "--revision", "head").strip() == migrate.head()
    assert cli.ok("db", "upgrade").strip() == migrate.head()  # again: nothing to do, no error


# ---- tenants ---------------------------------------------------------------------------------------------


def test_tenant_create(migrated: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli = migrated
    operator = getpass.getuser()
    one = cli.ok_json("admin", "tenant", "create", "bank-one", "--display-name", "بنك واحد", "--retention-days", "7")
    assert (one["name"], one["retention_days"], one["store_full_transcripts"]) == ("bank-one", 7, False)
    # A container user with no passwd entry and no USER variable: the audit row still names the operator.
    monkeypatch.setattr(getpass, "getuser", _no_such_user)
    out = cli.ok("admin", "tenant", "create", "bank_two", "--full-transcripts")
    assert "name=bank_two" in out and "store_full_transcripts=True" in out and "retention_days=30" in out

    assert "tenant 'bank-one' already exists" in cli.refused("admin", "tenant", "create", "bank-one")
    for bad in BAD_TENANT_NAMES:
        assert "must be 1-63 characters" in cli.refused("admin", "tenant", "create", bad), bad
    assert "at most 200" in cli.refused("admin", "tenant", "create", "bank-three", "--display-name", "ب" * 201)
    with pytest.raises(SystemExit) as exit_info:  # only 7, 30 or 90
        main(["admin", "tenant", "create", "bank-four", "--retention-days", "5"])
    assert exit_info.value.code == 2

    tenants = {t.name: t for t in cli.query(select(Tenant))}
    assert set(tenants) == {"bank-one", "bank_two"}
    assert tenants["bank-one"].id == one["id"]
    assert (tenants["bank-one"].display_name, tenants["bank_two"].display_name) == ("بنك واحد", "bank_two")
    configs = {c.tenant_id: (c.retention_days, c.store_full_transcripts) for c in cli.query(select(TenantConfig))}
    assert configs == {one["id"]: (7, False), tenants["bank_two"].id: (30, True)}
    audits = cli.audits("tenant.create")
    assert [(a.tenant_id, a.actor_type, a.target_type, a.target_id, a.details["name"]) for a in audits] == [
        (one["id"], "cli", "tenant", one["id"], "bank-one"),
        (tenants["bank_two"].id, "cli", "tenant", tenants["bank_two"].id, "bank_two")]
    assert [a.actor_id for a in audits] == [operator, f"uid:{os.getuid()}"]


def _no_such_user() -> str:
    raise KeyError("getpwuid(): uid not found")


# ---- users -----------------------------------------------------------------------------------------------


def test_user_create(migrated: Cli) -> None:
    cli = migrated
    tenant = _tenant(cli)
    _tenant(cli, "bank-two")
    user = cli.ok_json("admin", "user", "create", "--tenant", "bank-one", "--email", " Ahmed.Ali@Bank.AE ",
                       "--role", "supervisor", "--name", "أحمد علي")
    assert (user["email"], user["role"], user["tenant"]) == ("ahmed.ali@bank.ae", "supervisor", "bank-one")

    create = ("admin", "user", "create")
    assert "no tenant named 'nope'" in cli.refused(*create, "--tenant", "nope", "--email", "x@bank.ae", "--role",
                                                   "agent")
    assert "role must be one of" in cli.refused(*create, "--tenant", "bank-one", "--email", "x@bank.ae", "--role",
                                                "owner")
    for bad in ("not-an-email", "a b@bank.ae", "x@bank.ae\x07"):
        assert "is not an email address" in cli.refused(*create, "--tenant", "bank-one", "--email", bad, "--role",
                                                        "agent"), bad
    # Emails are unique across the platform, whatever their case and whichever tenant.
    assert "already exists" in cli.refused(*create, "--tenant", "bank-two", "--email", "AHMED.ALI@bank.ae",
                                           "--role", "viewer")

    (row,) = cli.query(select(User))
    assert (row.id, row.tenant_id, row.email, row.role, row.display_name) == (
        user["id"], tenant["id"], "ahmed.ali@bank.ae", "supervisor", "أحمد علي")
    (audit,) = cli.audits("user.create")
    assert (audit.tenant_id, audit.actor_type, audit.target_type, audit.target_id, audit.details) == (
        tenant["id"], "cli", "user", user["id"], {"role": "supervisor"})


# ---- tokens and signing keys -----------------------------------------------------------------------------


def test_token_is_a_verifiable_jwt_for_the_users_tenant_and_role(migrated: Cli) -> None:
    cli = migrated
    tenant = _tenant(cli)
    user = _user(cli, role="agent")
    rc, out, _ = cli("admin", "token", "--email", "Ahmed.Ali@bank.ae")
    assert rc == 0 and out.count("\n") == 1
    token = out.strip()

    settings = cli.settings
    ring = KeyRing.load_or_create(cli.keys_dir)
    claims = verify(ring, settings.auth, token, "access")
    assert (claims.subject, claims.tenant_id, claims.tenant_name, claims.role, claims.principal_type) == (
        user["id"], tenant["id"], "bank-one", "agent", "user")
    assert claims.kid == ring.signing_key.kid
    with pytest.raises(AuthError):  # an access token is not a call token
        verify(ring, settings.auth, token, "call")

    issued = json.loads(cli.ok("admin", "token", "--email", "ahmed.ali@bank.ae", "--refresh"))
    assert set(issued) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert (issued["token_type"], issued["expires_in"]) == ("Bearer", settings.auth.access_ttl_s)
    assert verify(ring, settings.auth, issued["access_token"], "access").subject == user["id"]
    refresh = issued["refresh_token"]
    (stored,) = cli.query(select(RefreshToken))
    assert (stored.user_id, stored.tenant_id) == (user["id"], tenant["id"])
    assert stored.token_hash == hashlib.sha256(refresh.encode()).hexdigest() != refresh
    # It is a live refresh token: the gateway's rotation accepts it once.
    new_token, who = cli.in_session(lambda s: rotate_refresh(s, refresh, settings.auth))
    assert who.id == user["id"] and new_token != refresh

    assert "no active user with email nobody@bank.ae" in cli.refused("admin", "token", "--email", "nobody@bank.ae")
    cli.in_session(lambda s: s.execute(update(Tenant).values(disabled=True)))
    assert "tenant 'bank-one' is disabled" in cli.refused("admin", "token", "--email", "ahmed.ali@bank.ae")

    audits = cli.audits("token.issue")
    assert [(a.tenant_id, a.actor_type, a.target_type, a.target_id, a.details) for a in audits] == [
        (tenant["id"], "cli", "user", user["id"], {"refresh": False}),
        (tenant["id"], "cli", "user", user["id"], {"refresh": True})]
    assert not any(token in json.dumps(a.details) or refresh in json.dumps(a.details) for a in audits)


def test_keys_rotate_signs_new_tokens_with_the_new_key_and_old_ones_still_verify(migrated: Cli) -> None:
    cli = migrated
    _tenant(cli)
    _user(cli)
    old_token = cli.ok("admin", "token", "--email", "ahmed.ali@bank.ae").strip()
    old_kid = jwt.get_unverified_header(old_token)["kid"]

    out = cli.ok("admin", "keys", "rotate")
    ring = KeyRing.load_or_create(cli.keys_dir)
    assert len(ring.kids) == 2 and ring.kids[0] == old_kid
    new_kid = ring.kids[1]
    assert out.splitlines() == [f"new signing key {new_kid}", f"keys that verify (newest signs): {old_kid}, {new_kid}"]

    new_token = cli.ok("admin", "token", "--email", "ahmed.ali@bank.ae").strip()
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    cfg = cli.settings.auth
    assert verify(ring, cfg, old_token, "access").kid == old_kid
    assert verify(ring, cfg, new_token, "access").kid == new_kid
    assert len(cli.audits("token.issue")) == 2
    assert len(cli.audits("keys.rotate")) == 1

    # Retiring the old key: its tokens are refused from then on; the signing key cannot be retired.
    cli.ok("admin", "keys", "retire", old_kid)
    with pytest.raises(AuthError) as refused:
        verify(KeyRing.load_or_create(cli.keys_dir), cfg, old_token, "access")
    assert refused.value.reason == "unknown_kid"
    assert verify(KeyRing.load_or_create(cli.keys_dir), cfg, new_token, "access").kid == new_kid
    assert len(cli.audits("keys.retire")) == 1
    assert cli.ok("admin", "keys", "list").strip().endswith(new_kid)


# ---- API keys --------------------------------------------------------------------------------------------


def test_apikey_create_prints_a_working_key_stored_only_as_a_hash(migrated: Cli) -> None:
    cli = migrated
    tenant = _tenant(cli)
    created = cli.ok_json("admin", "apikey", "create", "--tenant", "bank-one", "--role", "viewer", "--name", "crm")
    key = created["api_key"]
    assert (created["tenant"], created["role"]) == ("bank-one", "viewer")
    secret = key.rsplit("_", 1)[1]

    pepper = load_pepper(cli.settings.auth, cli.keys_dir)

    async def authenticate(session: Any) -> tuple[ApiKey | None, ApiKey | None]:
        wrong = key[:-1] + ("A" if key[-1] != "A" else "B")
        return await authenticate_api_key(session, key, pepper), await authenticate_api_key(session, wrong, pepper)

    found, wrong = cli.in_session(authenticate)
    assert found is not None and wrong is None
    assert (found.id, found.tenant_id, found.role, found.name) == (created["id"], tenant["id"], "viewer", "crm")

    (row,) = cli.query(select(ApiKey))
    assert row.key_hash == hash_api_key(key, pepper)
    assert key.startswith(f"vai_{row.prefix}_")
    stored = [str(getattr(row, column.key)) for column in ApiKey.__table__.columns]
    assert not any(secret in value for value in stored)
    (audit,) = cli.audits("apikey.create")
    assert (audit.tenant_id, audit.actor_type, audit.target_type, audit.target_id) == (
        tenant["id"], "cli", "api_key", created["id"])
    assert audit.details == {"role": "viewer", "prefix": row.prefix}
    if cli.dialect == "sqlite":  # nowhere in the database file either (nor in its write-ahead log)
        db_file = Path(cli.admin_url.removeprefix("sqlite:///"))
        for path in (db_file, db_file.with_name(db_file.name + "-wal")):
            if path.exists():
                assert secret.encode() not in path.read_bytes()

    assert "role must be one of" in cli.refused("admin", "apikey", "create", "--tenant", "bank-one", "--role", "root")
    assert "no tenant named 'nope'" in cli.refused("admin", "apikey", "create", "--tenant", "nope")
    assert len(cli.query(select(ApiKey))) == 1
