"""The one mechanism that guards every REST and WebSocket endpoint: FastAPI dependencies.

A route states the permission it needs and receives the authenticated caller:

    @router.post("/documents")
    async def upload(principal: Annotated[Principal, Depends(require(Permission.KB_WRITE))], ...) -> ...

    @app.websocket("/v1/calls/ws")
    async def call_ws(ws: WebSocket, principal: Annotated[Principal | None, Depends(require_ws(P.CALLS_JOIN))]):
        if principal is None:
            return  # already refused and closed with 4401/4403

The tenant is the principal's (``principal.tenant_id`` / ``tenant_name``), never a header or a parameter:
a valid token for tenant A can only ever reach tenant A's rows, and routes answer 404 for another
tenant's ids. `unprotected_routes` lists the routes that state no permission, so a test can hold the
whole app to this.

Both transports share one core (`AuthContext.authenticate` then `authorize`), which raises `AuthError`;
only the last step differs: REST answers 401 (with ``WWW-Authenticate: Bearer``) or 403, a WebSocket is
accepted and closed with 4401 or 4403 (a close before accepting reaches a browser as a bare HTTP 403,
without the code).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import Headers
from starlette.routing import Mount

from gateway.auth.apikeys import KEY_PREFIX, authenticate_api_key
from gateway.auth.config import AuthConfig
from gateway.auth.keys import KeyRing
from gateway.auth.roles import Permission, permissions_of
from gateway.auth.tokens import AuthError, Claims, verify
from voiceai.db.models import Tenant

log = logging.getLogger(__name__)

PrincipalType = Literal["user", "api_key", "call", "dev"]
WS_CLOSE_UNAUTHENTICATED = 4401
WS_CLOSE_FORBIDDEN = 4403
WS_BEARER_PREFIX = "bearer."  # Sec-WebSocket-Protocol: voiceai.v1, bearer.<jwt>
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")  # the slug rule of rag.store, without importing rag


@dataclass(frozen=True)
class Principal:
    """Who is calling, for which tenant, with which role. ``call_id`` is set for call tokens only."""

    tenant_id: str
    tenant_name: str
    subject: str  # user id, API key id, or "call:<id>"
    role: str  # admin | supervisor | agent | viewer | caller
    principal_type: PrincipalType
    call_id: str | None = None
    language: str | None = None

    @classmethod
    def from_claims(cls, claims: Claims) -> Principal:
        ptype: PrincipalType = "call" if claims.typ == "call" else "api_key" if claims.principal_type == "api_key" \
            else "user"
        return cls(tenant_id=claims.tenant_id, tenant_name=claims.tenant_name, subject=claims.subject,
                   role=claims.role, principal_type=ptype, call_id=claims.call_id, language=claims.language)

    @property
    def principal_id(self) -> str:
        """A stable key for rate limits and audit rows: ``user:<id>``, ``api_key:<id>``, ..."""
        return f"{self.principal_type}:{self.subject}"

    @property
    def permissions(self) -> frozenset[Permission]:
        return permissions_of(self.role)

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions


@dataclass(frozen=True)
class Credential:
    """What the client presented: a JWT (access or call token) or an API key."""

    kind: Literal["bearer", "api_key"]
    value: str


ApiKeyLookup = Callable[[str], Awaitable[Principal | None]]
PrincipalCheck = Callable[[Principal], Awaitable[bool]]
SessionFactory = Callable[[], AbstractAsyncContextManager[AsyncSession]]


class AuthContext:
    """Everything the dependencies need, built once at startup and set as ``app.state.auth``.

    ``api_key_lookup`` resolves an ``vai_...`` key to a Principal (see `db_api_key_lookup`); None turns API
    keys off. ``principal_active`` (optional) is asked after a token verified, to cut off a disabled user
    or tenant before their access token expires. ``default_tenant`` / ``default_tenant_id`` name the
    tenant every request acts for when ``cfg.enabled`` is False (local development only).
    """

    def __init__(self, cfg: AuthConfig, ring: KeyRing, pepper: bytes, api_key_lookup: ApiKeyLookup | None = None,
                 *, default_tenant: str = "demo", default_tenant_id: str = "",
                 principal_active: PrincipalCheck | None = None) -> None:
        self.cfg = cfg
        self.ring = ring
        self.pepper = pepper
        self.api_key_lookup = api_key_lookup
        self.default_tenant = default_tenant
        self.default_tenant_id = default_tenant_id or default_tenant
        self.principal_active = principal_active
        self._warned = False

    async def authenticate(self, credential: Credential | None, *, x_tenant: str | None = None) -> Principal:
        """The principal behind ``credential``, or AuthError (401, or 403 for a tenant mismatch)."""
        if not self.cfg.enabled:
            return self._dev_principal(x_tenant)
        if credential is None:
            raise AuthError("missing", message="send Authorization: Bearer <token> or X-API-Key")
        if credential.kind == "api_key":
            principal = await self.api_key_lookup(credential.value) if self.api_key_lookup else None
            if principal is None:
                raise AuthError("invalid_api_key")
        else:
            principal = Principal.from_claims(verify(self.ring, self.cfg, credential.value, ("access", "call")))
        if self.principal_active is not None and not await self.principal_active(principal):
            raise AuthError("inactive", message="this user, key or tenant is disabled")
        # Old clients still send X-Tenant: harmless when it agrees, an attempt to cross tenants when not.
        if x_tenant and x_tenant != principal.tenant_name:
            raise AuthError("tenant_mismatch", status=403, message="the credential belongs to another tenant")
        return principal

    def _dev_principal(self, x_tenant: str | None) -> Principal:
        if not self._warned:
            log.warning("authentication is disabled (auth.enabled = false): every request acts as an admin")
            self._warned = True
        name = x_tenant or self.default_tenant
        if not TENANT_RE.match(name):
            raise AuthError("invalid_tenant", status=422, message="X-Tenant must be 1-63 of a-z, 0-9, '-', '_'")
        tenant_id = self.default_tenant_id if name == self.default_tenant else name
        return Principal(tenant_id=tenant_id, tenant_name=name, subject="dev", role="admin", principal_type="dev")


def authorize(principal: Principal, permission: Permission, *, call_id: str | None = None) -> None:
    """Raises AuthError 403 unless ``principal`` may do ``permission`` (on call ``call_id``, if given)."""
    if not principal.can(permission):
        raise AuthError("forbidden", status=403, message=f"role {principal.role!r} lacks {permission.value}")
    if call_id is not None and principal.principal_type == "call" and call_id != principal.call_id:
        raise AuthError("wrong_call", status=403, message="this call token is for another call")


def _credential(candidates: Iterable[Credential | None]) -> Credential | None:
    found = {c for c in candidates if c is not None}
    if len(found) > 1:
        # Two different credentials: refuse rather than guess which one the client meant.
        raise AuthError("ambiguous_credentials", message="send exactly one credential")
    return found.pop() if found else None


def _header_credentials(headers: Headers) -> list[Credential | None]:
    out: list[Credential | None] = []
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("unsupported_scheme", message="use Authorization: Bearer <token>")
        value = value.strip()
        out.append(Credential("api_key" if value.startswith(KEY_PREFIX) else "bearer", value))
    api_key = headers.get("x-api-key")
    if api_key:
        out.append(Credential("api_key", api_key.strip()))
    return out


def http_credential(request: Request) -> Credential | None:
    """The request's credential: ``Authorization: Bearer <jwt | vai_...>`` or ``X-API-Key: vai_...``."""
    return _credential(_header_credentials(request.headers))


def ws_credential(ws: WebSocket) -> Credential | None:
    """A WebSocket's credential: the headers as for REST (servers), else what a browser can send: a
    ``bearer.<jwt>`` subprotocol or a ``token`` query parameter (the subprotocol stays out of access logs)."""
    candidates = _header_credentials(ws.headers)
    for proto in ws.scope.get("subprotocols") or []:
        if proto.startswith(WS_BEARER_PREFIX):
            candidates.append(Credential("bearer", proto.removeprefix(WS_BEARER_PREFIX)))
    token = ws.query_params.get("token")
    if token:
        candidates.append(Credential("api_key" if token.startswith(KEY_PREFIX) else "bearer", token))
    return _credential(candidates)


def ws_subprotocol(ws: WebSocket) -> str | None:
    """The subprotocol to accept with: the first one offered that is not a token (a browser that offered
    protocols fails the connection unless one is echoed, and echoing the token would be careless)."""
    for proto in ws.scope.get("subprotocols") or []:
        if not proto.startswith(WS_BEARER_PREFIX):
            return str(proto)
    return None


def auth_context(app: Any) -> AuthContext:
    ctx = getattr(app.state, "auth", None)
    if not isinstance(ctx, AuthContext):
        raise RuntimeError("app.state.auth is not set: build an AuthContext in the gateway's lifespan")
    return ctx


def http_error(err: AuthError) -> HTTPException:
    """401 with a Bearer challenge (RFC 6750), 403 with ``insufficient_scope``, else the error's status."""
    headers = None
    if err.status == 401:
        challenge = 'Bearer realm="voiceai"'
        if err.reason != "missing":
            challenge += f', error="invalid_token", error_description="{err.reason}"'
        headers = {"WWW-Authenticate": challenge}
    elif err.status == 403:
        headers = {"WWW-Authenticate": 'Bearer realm="voiceai", error="insufficient_scope"'}
    return HTTPException(err.status, detail={"reason": err.reason, "message": err.message}, headers=headers)


async def authenticate(request: Request) -> Principal:
    """FastAPI dependency: the request's Principal (also left on ``request.state.principal``), or 401/403."""
    ctx = auth_context(request.app)
    try:
        principal = await ctx.authenticate(http_credential(request), x_tenant=request.headers.get("x-tenant"))
    except AuthError as err:
        raise http_error(err) from None
    request.state.principal = principal
    limiter = getattr(request.app.state, "limiter", None)
    if limiter is not None:  # per tenant and per user / API key (gateway.ratelimit)
        decision = await limiter.check(principal.tenant_id, principal.principal_id)
        if not decision.allowed:
            raise HTTPException(429, detail={"reason": f"rate_limited_{decision.scope}",
                                             "message": "too many requests; retry later"},
                                headers={"Retry-After": str(decision.retry_after_s)})
    return principal


class Requirement:
    """The dependency `require` returns; a class so that `unprotected_routes` can recognise it."""

    def __init__(self, permission: Permission, call_id_param: str | None = None) -> None:
        self.permission = permission
        self.call_id_param = call_id_param

    async def __call__(self, request: Request, principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        call_id = request.path_params.get(self.call_id_param) if self.call_id_param else None
        try:
            authorize(principal, self.permission, call_id=call_id)
        except AuthError as err:
            log.info("request refused", extra={"reason": err.reason, "permission": self.permission.value,
                                               "principal": principal.principal_id, "tenant": principal.tenant_id})
            raise http_error(err) from None
        return principal


def require(permission: Permission) -> Requirement:
    """Dependency: the Principal, if it holds ``permission``; else 401 (unauthenticated) or 403."""
    return Requirement(permission)


def require_call(call_id_param: str = "call_id") -> Requirement:
    """Dependency for routes on one call (``/v1/calls/{call_id}/...``): needs calls.join, and a call token
    only passes for the call it was issued for."""
    return Requirement(Permission.CALLS_JOIN, call_id_param)


async def authenticate_websocket(ws: WebSocket, permission: Permission, *,
                                 call_id: str | None = None) -> Principal | None:
    """The WebSocket's Principal if it may do ``permission`` (on ``call_id``, if given); else None, after
    accepting and closing with 4401 (unauthenticated) or 4403 (forbidden).

    On success the socket is left unaccepted: accept it with ``subprotocol=ws_subprotocol(ws)``. A call
    token's own call id is ``principal.call_id``; the call loop must use that one.
    """
    ctx = auth_context(ws.app)
    try:
        principal = await ctx.authenticate(ws_credential(ws), x_tenant=ws.headers.get("x-tenant"))
        authorize(principal, permission, call_id=call_id)
    except AuthError as err:
        log.info("websocket refused", extra={"reason": err.reason, "permission": permission.value})
        code = WS_CLOSE_UNAUTHENTICATED if err.status == 401 else WS_CLOSE_FORBIDDEN
        await ws.accept(subprotocol=ws_subprotocol(ws))
        await ws.close(code=code, reason=err.reason)
        return None
    ws.state.principal = principal
    return principal


class WsRequirement:
    """The dependency `require_ws` returns (a class, like `Requirement`, for `unprotected_routes`)."""

    def __init__(self, permission: Permission, call_id_param: str | None) -> None:
        self.permission = permission
        self.call_id_param = call_id_param

    async def __call__(self, websocket: WebSocket) -> Principal | None:
        call_id = None
        if self.call_id_param:
            call_id = websocket.path_params.get(self.call_id_param) or websocket.query_params.get(self.call_id_param)
        return await authenticate_websocket(websocket, self.permission, call_id=call_id)


def require_ws(permission: Permission, *, call_id_param: str | None = "call_id") -> WsRequirement:
    """WebSocket dependency: the Principal, or None once the socket was refused (the route just returns).

    ``call_id_param`` names the path or query parameter holding the call being joined, if any.
    """
    return WsRequirement(permission, call_id_param)


def db_api_key_lookup(sessions: SessionFactory, pepper: bytes) -> ApiKeyLookup:
    """An `ApiKeyLookup` on the database. ``sessions`` opens a committing, platform-wide session (the
    tenant is not known before the key is): ``Database.admin_session``."""

    async def lookup(plaintext: str) -> Principal | None:
        async with sessions() as session:
            key = await authenticate_api_key(session, plaintext, pepper)
            if key is None:
                return None
            tenant = await session.get(Tenant, key.tenant_id)
            if tenant is None or tenant.disabled:
                return None
            return Principal(tenant_id=key.tenant_id, tenant_name=tenant.name, subject=key.id, role=key.role,
                             principal_type="api_key")

    return lookup


def _requirements(dependant: Dependant) -> list[Permission]:
    found: list[Permission] = []
    for sub in dependant.dependencies:
        if isinstance(sub.call, Requirement | WsRequirement):
            found.append(sub.call.permission)
        found.extend(_requirements(sub))
    return found


def _routes(routes: Sequence[Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every route with its full path, including those of routers included lazily (FastAPI >= 0.165 keeps
    an included router as one entry whose own routes live on ``original_router``)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            context = getattr(route, "include_context", None)
            yield from _routes(included.routes, prefix + (getattr(context, "prefix", "") or ""))
        else:
            yield prefix + getattr(route, "path", "?"), route


def route_permissions(app: FastAPI) -> dict[str, list[Permission]]:
    """``"GET /v1/calls"`` -> the permissions its dependencies require (empty: none)."""
    out: dict[str, list[Permission]] = {}
    for path, route in _routes(app.routes):
        if isinstance(route, APIRoute):
            for method in sorted(route.methods or ()):
                out[f"{method} {path}"] = _requirements(route.dependant)
        elif isinstance(route, APIWebSocketRoute):
            out[f"WS {path}"] = _requirements(route.dependant)
        elif isinstance(route, Mount):
            out[f"MOUNT {path}"] = []
        else:
            for method in sorted(getattr(route, "methods", None) or ["WS"]):
                out[f"{method} {path}"] = []
    return out


def unprotected_routes(app: FastAPI, *, public: Sequence[str]) -> list[str]:
    """The routes that require no permission and whose path is not listed in ``public``."""
    return sorted(name for name, perms in route_permissions(app).items()
                  if not perms and name.split(" ", 1)[1] not in public)
