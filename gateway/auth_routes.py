"""Token endpoints: exchange a refresh token for new tokens, and log out.

A refresh token is the credential here (no access token needed: the access token may have expired).
The lookup runs on the owner's connection because the tenant is not known until the token is; the
new tokens carry the user's tenant and current role (a role change takes effect at the next refresh).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from gateway.auth.deps import http_error
from gateway.auth.tokens import AuthError, issue_access, revoke_refresh, rotate_refresh
from gateway.platform import platform_of
from voiceai.db.models import AuditLog, Tenant

router = APIRouter(prefix="/v1/auth", tags=["auth"])


class RefreshBody(BaseModel):
    refresh_token: str = Field(min_length=16, max_length=200)


@router.post("/refresh")
async def refresh(request: Request, body: RefreshBody) -> dict[str, Any]:
    """A new access token and the next refresh token; presenting a used one revokes its whole family."""
    platform = platform_of(request)
    ctx = platform.auth
    try:
        async with platform.admin_db.admin_session() as session:
            token, user = await rotate_refresh(session, body.refresh_token, ctx.cfg)
            tenant = await session.get(Tenant, user.tenant_id)
            if tenant is None or tenant.disabled:
                raise AuthError("inactive", message="this tenant is disabled")
            access = issue_access(ctx.ring, ctx.cfg, subject=user.id, tenant_id=tenant.id, tenant_name=tenant.name,
                                  role=user.role, principal_type="user")
            session.add(AuditLog(tenant_id=tenant.id, actor_type="user", actor_id=user.id, action="token.refresh",
                                 target_type="user", target_id=user.id,
                                 source_ip=request.client.host if request.client else ""))
    except AuthError as err:
        raise http_error(err) from None
    return {"access_token": access, "token_type": "Bearer", "expires_in": ctx.cfg.access_ttl_s,
            "refresh_token": token}


@router.post("/logout", status_code=204)
async def logout(request: Request, body: RefreshBody) -> None:
    """Revokes the refresh token's family (every token rotated from the same login)."""
    platform = platform_of(request)
    async with platform.admin_db.admin_session() as session:
        if not await revoke_refresh(session, body.refresh_token):
            raise HTTPException(401, detail={"reason": "invalid_refresh", "message": "unknown refresh token"})
