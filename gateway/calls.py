"""Calls over REST: start one (a call token for the caller's browser), list, detail, and the GDPR erase.

Starting a call: a server of the tenant (API key) or a signed-in user with ``calls.write`` asks for a
call token and hands it to the caller's browser; the browser joins ``/v1/calls/ws?token=...`` once,
for that call only. A tenant may let its public web page start calls without credentials
(``auth.anonymous_calls_tenant``): then an unauthenticated request gets a token for that tenant.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from gateway.auth.deps import Principal, authenticate, authorize, http_credential, http_error, require
from gateway.auth.roles import Permission
from gateway.auth.tokens import AuthError, issue_call_token
from gateway.platform import platform_of
from voiceai.db.models import Call, Transcript
from workers.retention import erase_caller

router = APIRouter(tags=["calls"])


class StartCall(BaseModel):
    language: str = Field("en", pattern="^(ar|en)$")


@router.post("/v1/calls", status_code=201)
async def start_call(request: Request, body: StartCall) -> dict[str, Any]:
    """A new call id and its call token (valid ``auth.call_token_ttl_s``, one join)."""
    platform = platform_of(request)
    ctx = platform.auth
    if http_credential(request) is None and ctx.cfg.enabled and platform.anonymous_tenant is not None:
        tenant_id, tenant_name = platform.anonymous_tenant
    else:
        principal = await authenticate(request)
        try:
            authorize(principal, Permission.CALLS_WRITE)
        except AuthError as err:
            raise http_error(err) from None
        tenant_id, tenant_name = principal.tenant_id, principal.tenant_name
    limiter = platform.limiter
    if limiter is not None:  # anonymous starts count against the tenant and the caller's address
        client = request.client.host if request.client else "unknown"
        decision = await limiter.check(tenant_id, f"ip:{client}")
        if not decision.allowed:
            raise HTTPException(429, "too many calls started; try again later",
                                headers={"Retry-After": str(decision.retry_after_s)})
    call_id = uuid.uuid4().hex
    token = issue_call_token(ctx.ring, ctx.cfg, tenant_id=tenant_id, tenant_name=tenant_name, call_id=call_id,
                             language=body.language)
    return {"call_id": call_id, "token": token, "expires_in": ctx.cfg.call_token_ttl_s,
            "ws_path": f"/v1/calls/ws?call_id={call_id}&language={body.language}"}


def _call_summary(call: Call) -> dict[str, Any]:
    return {"call_id": call.id, "channel": call.channel, "language": call.language, "state": call.state,
            "started_at": call.started_at.timestamp() if call.started_at else None,
            "ended_at": call.ended_at.timestamp() if call.ended_at else None, "ended_reason": call.ended_reason,
            "outcome": call.outcome}


@router.get("/v1/calls")
async def list_calls(request: Request, principal: Annotated[Principal, Depends(require(Permission.CALLS_READ))],
                     limit: int = 50) -> dict[str, Any]:
    if not 1 <= limit <= 500:
        raise HTTPException(422, "limit must be between 1 and 500")
    tenant = principal.tenant_id
    async with platform_of(request).db.tenant_session(tenant) as session:
        # One statement, columns only (no ORM objects): the page of calls by the started_at index, each
        # with its turn count from a correlated count on (call_id).
        turns = (select(func.count()).select_from(Transcript)
                 .where(Transcript.tenant_id == tenant, Transcript.call_id == Call.id).scalar_subquery())
        rows = await session.execute(
            select(Call.id, Call.channel, Call.language, Call.state, Call.started_at, Call.ended_at,
                   Call.ended_reason, Call.outcome, turns.label("turns"))
            .where(Call.tenant_id == tenant).order_by(Call.started_at.desc()).limit(limit))
        return {"calls": [
            {"call_id": r.id, "channel": r.channel, "language": r.language, "state": r.state,
             "started_at": r.started_at.timestamp() if r.started_at else None,
             "ended_at": r.ended_at.timestamp() if r.ended_at else None, "ended_reason": r.ended_reason,
             "outcome": r.outcome, "turns": int(r.turns or 0)} for r in rows]}


@router.get("/v1/calls/{call_id}")
async def get_call(request: Request, call_id: str,
                   principal: Annotated[Principal, Depends(require(Permission.TRANSCRIPTS_READ))]) -> dict[str, Any]:
    """The call and its transcript. Another tenant's call id is a 404, like one that does not exist."""
    async with platform_of(request).db.tenant_session(principal.tenant_id) as session:
        call = await session.scalar(select(Call).where(Call.tenant_id == principal.tenant_id, Call.id == call_id))
        if call is None:
            raise HTTPException(404, "no such call")
        turns = await session.scalars(select(Transcript).where(Transcript.tenant_id == principal.tenant_id,
                                                               Transcript.call_id == call_id)
                                      .order_by(Transcript.turn, Transcript.created_at))
        return _call_summary(call) | {"timings": call.timings, "transcript": [
            {"turn": t.turn, "speaker": t.speaker, "text": t.text, "redacted": t.redacted,
             "interrupted": t.interrupted, "latency": t.latency} for t in turns]}


class EraseRequest(BaseModel):
    caller_id: str = Field(min_length=3, max_length=64)


@router.post("/v1/gdpr/erase")
async def gdpr_erase(request: Request, body: EraseRequest,
                     principal: Annotated[Principal, Depends(require(Permission.GDPR_ERASE))]) -> dict[str, Any]:
    """Erases one caller's calls, transcripts and actions in the principal's tenant (audited)."""
    platform = platform_of(request)
    # Writes still spooled for this caller's calls land first, so the erase reaches them too.
    with contextlib.suppress(TimeoutError):
        await platform.writer.flush(timeout_s=10)
    try:
        counts = await erase_caller(platform.db, principal.tenant_id, body.caller_id, platform.pepper,
                                    actor_type=principal.principal_type, actor_id=principal.subject,
                                    source_ip=request.client.host if request.client else "")
    except ValueError as err:
        raise HTTPException(422, str(err)) from err
    return {"erased": counts}  # erase_caller wrote the audit entry in the same transaction
