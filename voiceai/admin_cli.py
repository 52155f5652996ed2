"""Platform administration: `voiceai admin ...` and `voiceai db ...`.

    voiceai db upgrade|downgrade|current
    voiceai admin tenant create NAME [--display-name N] [--retention-days 30] [--full-transcripts]
    voiceai admin user create --tenant T --email E --role admin|supervisor|agent|viewer
    voiceai admin token --email E [--refresh]       # prints an access token (and a refresh token)
    voiceai admin apikey create --tenant T [--role R] [--name N]   # prints the key once
    voiceai admin keys rotate|list|retire KID        # signing keys: rotate, list, stop trusting one

These run with the database owner's URL (``db.admin_url``): they are platform operations, done by
an operator on the server, and each leaves an entry in audit_logs (actor type ``cli``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from voiceai.config import Settings

MAX_DISPLAY_NAME_CHARS = 200


def _keys_dir(settings: Settings) -> Path:
    from gateway.auth.keys import keys_dir_for

    return keys_dir_for(settings.auth)


def _db(settings: Settings) -> Any:
    from voiceai.db.engine import Database

    return Database.from_settings(settings, admin=True)


def _db_url(settings: Settings) -> str:
    from voiceai.db.engine import resolve_url

    return str(resolve_url(settings.db, admin=True))


def _operator() -> str:
    """Who runs the command, for the audit trail. A container often runs under a uid with no passwd entry
    and no USER variable, where getpass.getuser() raises: the uid still names the operator's account."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _audit(action: str, tenant_id: str | None, target_type: str, target_id: str, **details: Any) -> Any:
    from voiceai.db.models import AuditLog

    return AuditLog(tenant_id=tenant_id, actor_type="cli", actor_id=_operator(), action=action,
                    target_type=target_type, target_id=target_id, details=details)


def _check_display_name(name: str | None) -> str:
    # The column holds 200 characters: Postgres would refuse a longer one with a traceback, SQLite keep it.
    if name and len(name) > MAX_DISPLAY_NAME_CHARS:
        raise ValueError(f"display name is {len(name)} characters; at most {MAX_DISPLAY_NAME_CHARS}")
    return name or ""


async def _tenant_by_name(session: Any, name: str) -> Any:
    from voiceai.db.models import Tenant

    tenant = await session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise ValueError(f"no tenant named {name!r} (voiceai admin tenant create {name})")
    return tenant


def cmd_db(args: argparse.Namespace, settings: Settings) -> int:
    from voiceai.db import migrate

    url = _db_url(settings)
    role = migrate.app_role_for(settings.db)
    if args.db_command == "upgrade":
        migrate.upgrade(url, args.revision or "head", app_role=role)
    elif args.db_command == "downgrade":
        migrate.downgrade(url, args.revision or "base", app_role=role)
    print(migrate.current(url) or "(empty database)")
    return 0


def cmd_tenant_create(args: argparse.Namespace, settings: Settings) -> int:
    from rag.store import check_tenant
    from voiceai.db.models import Tenant, TenantConfig

    name = check_tenant(args.name)
    display_name = _check_display_name(args.display_name)

    async def run() -> dict[str, Any]:
        db = _db(settings)
        try:
            async with db.admin_session() as session:
                if await session.scalar(select(Tenant).where(Tenant.name == name)) is not None:
                    raise ValueError(f"tenant {name!r} already exists")
                tenant = Tenant(name=name, display_name=display_name or name)
                session.add(tenant)
                await session.flush()
                session.add(TenantConfig(tenant_id=tenant.id, retention_days=args.retention_days,
                                         store_full_transcripts=args.full_transcripts))
                session.add(_audit("tenant.create", tenant.id, "tenant", tenant.id, name=name,
                                   retention_days=args.retention_days, full_transcripts=args.full_transcripts))
                return {"id": tenant.id, "name": name, "retention_days": args.retention_days,
                        "store_full_transcripts": args.full_transcripts}
        finally:
            await db.close()

    _print(asyncio.run(run()), args)
    return 0


def cmd_user_create(args: argparse.Namespace, settings: Settings) -> int:
    from voiceai.db.models import ROLES, User

    if args.role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    email = args.email.strip().lower()
    if "@" not in email or len(email) > 320 or any(c.isspace() or ord(c) < 32 for c in email):
        raise ValueError(f"{args.email!r} is not an email address")
    display_name = _check_display_name(args.name)

    async def run() -> dict[str, Any]:
        db = _db(settings)
        try:
            async with db.admin_session() as session:
                tenant = await _tenant_by_name(session, args.tenant)
                if await session.scalar(select(User).where(User.email == email)) is not None:
                    raise ValueError(f"a user with email {email} already exists")
                user = User(tenant_id=tenant.id, email=email, role=args.role, display_name=display_name)
                session.add(user)
                await session.flush()
                session.add(_audit("user.create", tenant.id, "user", user.id, role=args.role))
                return {"id": user.id, "tenant": tenant.name, "email": email, "role": args.role}
        finally:
            await db.close()

    _print(asyncio.run(run()), args)
    return 0


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.auth.keys import KeyRing
    from gateway.auth.tokens import issue_access, issue_refresh
    from voiceai.db.models import Tenant, User

    email = args.email.strip().lower()

    async def run() -> dict[str, Any]:
        db = _db(settings)
        try:
            async with db.admin_session() as session:
                user = await session.scalar(select(User).where(User.email == email))
                if user is None or user.disabled:
                    raise ValueError(f"no active user with email {email}")
                tenant = await session.get(Tenant, user.tenant_id)
                assert tenant is not None
                if tenant.disabled:  # the gateway refuses such a user's refresh too: do not mint around it
                    raise ValueError(f"tenant {tenant.name!r} is disabled")
                ring = KeyRing.load_or_create(_keys_dir(settings))
                out: dict[str, Any] = {"access_token": issue_access(
                    ring, settings.auth, subject=user.id, tenant_id=tenant.id, tenant_name=tenant.name,
                    role=user.role, principal_type="user"), "token_type": "Bearer",
                    "expires_in": settings.auth.access_ttl_s}
                if args.refresh:
                    out["refresh_token"] = await issue_refresh(session, user, settings.auth)
                session.add(_audit("token.issue", tenant.id, "user", user.id, refresh=args.refresh))
                return out
        finally:
            await db.close()

    out = asyncio.run(run())
    if args.json or args.refresh:
        print(json.dumps(out, indent=2))
    else:
        print(out["access_token"])
    return 0


def cmd_apikey_create(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.auth.apikeys import create_api_key, load_pepper
    from voiceai.db.models import ROLES

    if args.role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")

    async def run() -> dict[str, Any]:
        db = _db(settings)
        try:
            async with db.admin_session() as session:
                tenant = await _tenant_by_name(session, args.tenant)
                pepper = load_pepper(settings.auth, _keys_dir(settings))
                plaintext, key = await create_api_key(session, tenant.id, args.role, args.name or "", pepper)
                session.add(_audit("apikey.create", tenant.id, "api_key", key.id, role=args.role, prefix=key.prefix))
                return {"id": key.id, "tenant": tenant.name, "role": args.role, "api_key": plaintext,
                        "note": "shown once; only a keyed hash is stored"}
        finally:
            await db.close()

    _print(asyncio.run(run()), args)
    return 0


def cmd_keys(args: argparse.Namespace, settings: Settings) -> int:
    """rotate: a new newest signing key (old ones still verify); retire KID: that key stops verifying
    (its tokens are refused from then on); list: the key ids, newest last."""
    from gateway.auth.keys import KeyRing

    ring = KeyRing.load_or_create(_keys_dir(settings))
    if args.keys_command == "rotate":
        print(f"new signing key {ring.rotate()}")
    elif args.keys_command == "retire":
        if args.kid not in ring.kids:
            raise ValueError(f"no signing key {args.kid!r}; keys: {', '.join(ring.kids)}")
        ring.retire(args.kid)
        print(f"retired {args.kid}")
    if args.keys_command != "list":
        asyncio.run(_audit_platform(settings, f"keys.{args.keys_command}", getattr(args, "kid", "") or ""))
    print("keys that verify (newest signs): " + ", ".join(ring.kids))
    return 0


async def _audit_platform(settings: Settings, action: str, target_id: str) -> None:
    """A platform-level audit row (no tenant), for operations on the whole install."""
    db = _db(settings)
    try:
        async with db.admin_session() as session:
            session.add(_audit(action, None, "signing_key", target_id))
    finally:
        await db.close()


def _print(out: dict[str, Any], args: argparse.Namespace) -> None:
    if getattr(args, "json", False):
        print(json.dumps(out, indent=2, ensure_ascii=False))
    else:
        print("  ".join(f"{k}={v}" for k, v in out.items()))


def add_parsers(sub: Any, run: Any) -> None:
    d = sub.add_parser("db", help="database migrations (Alembic)")
    d.add_argument("db_command", choices=["upgrade", "downgrade", "current"])
    d.add_argument("--revision", help="target revision (default: head / base)")
    d.set_defaults(func=run(cmd_db))

    a = sub.add_parser("admin", help="tenants, users, tokens, API keys, signing keys")
    asub = a.add_subparsers(dest="admin_command", required=True)
    t = asub.add_parser("tenant", help="tenants").add_subparsers(dest="tenant_command", required=True)
    tc = t.add_parser("create", help="create a tenant")
    tc.add_argument("name")
    tc.add_argument("--display-name")
    tc.add_argument("--retention-days", type=int, default=30, choices=[7, 30, 90])
    tc.add_argument("--full-transcripts", action="store_true", help="store transcripts unredacted (opt-in)")
    tc.add_argument("--json", action="store_true")
    tc.set_defaults(func=run(cmd_tenant_create))

    u = asub.add_parser("user", help="users").add_subparsers(dest="user_command", required=True)
    uc = u.add_parser("create", help="create a user")
    uc.add_argument("--tenant", required=True)
    uc.add_argument("--email", required=True)
    uc.add_argument("--role", required=True)
    uc.add_argument("--name", help="display name")
    uc.add_argument("--json", action="store_true")
    uc.set_defaults(func=run(cmd_user_create))

    tok = asub.add_parser("token", help="print an access token for a user")
    tok.add_argument("--email", required=True)
    tok.add_argument("--refresh", action="store_true", help="also issue a refresh token (JSON output)")
    tok.add_argument("--json", action="store_true")
    tok.set_defaults(func=run(cmd_token))

    k = asub.add_parser("apikey", help="API keys").add_subparsers(dest="apikey_command", required=True)
    kc = k.add_parser("create", help="create an API key (printed once)")
    kc.add_argument("--tenant", required=True)
    kc.add_argument("--role", default="agent")
    kc.add_argument("--name")
    kc.add_argument("--json", action="store_true")
    kc.set_defaults(func=run(cmd_apikey_create))

    ks = asub.add_parser("keys", help="token signing keys").add_subparsers(dest="keys_command", required=True)
    ks.add_parser("rotate", help="add a new signing key").set_defaults(func=run(cmd_keys))
    ks.add_parser("list", help="the signing keys").set_defaults(func=run(cmd_keys))
    kr = ks.add_parser("retire", help="stop accepting tokens signed by a key")
    kr.add_argument("kid")
    kr.set_defaults(func=run(cmd_keys))


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `voiceai admin ...`")
