"""A tenant's policies (``configs``): retention, full transcripts, languages, voices, thresholds, hours.

``GET /v1/config`` (config.read) and ``PUT /v1/config`` (config.write: admins). Every change is audited
with the fields that changed, before and after.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from gateway.auth.deps import Principal, require
from gateway.auth.roles import Permission
from gateway.platform import audit, platform_of
from voiceai.db.models import TenantConfig

router = APIRouter(prefix="/v1/config", tags=["config"])

_FIELDS = ("retention_days", "store_full_transcripts", "languages", "voices", "thresholds", "working_hours",
           "policies")


class Languages(BaseModel):
    model_config = ConfigDict(extra="forbid")
    enabled: list[Literal["ar", "en"]] = Field(min_length=1)
    default: Literal["ar", "en"] = "ar"


class ConfigUpdate(BaseModel):
    """Only the fields sent change. Free-form sections are bounded JSON objects."""

    model_config = ConfigDict(extra="forbid")
    retention_days: Literal[7, 30, 90] | None = None
    store_full_transcripts: bool | None = None
    languages: Languages | None = None
    voices: dict[str, str] | None = Field(None, max_length=20)
    thresholds: dict[str, float] | None = Field(None, max_length=50)
    working_hours: dict[str, Any] | None = Field(None, max_length=20)
    policies: dict[str, Any] | None = Field(None, max_length=50)


def _as_json(cfg: TenantConfig) -> dict[str, Any]:
    return {name: getattr(cfg, name) for name in _FIELDS} | {"updated_at": cfg.updated_at.isoformat()}


async def _load(session: Any, tenant_id: str) -> TenantConfig:
    cfg = await session.scalar(select(TenantConfig).where(TenantConfig.tenant_id == tenant_id))
    if cfg is None:  # a tenant made before configs existed gets the defaults
        cfg = TenantConfig(tenant_id=tenant_id, retention_days=30, store_full_transcripts=False, languages={},
                           voices={}, thresholds={}, working_hours={}, policies={}, updated_at=datetime.now(UTC))
        session.add(cfg)
        await session.flush()
    return cfg


@router.get("")
async def get_config(request: Request,
                     principal: Annotated[Principal, Depends(require(Permission.CONFIG_READ))]) -> dict[str, Any]:
    async with platform_of(request).db.tenant_session(principal.tenant_id) as session:
        return _as_json(await _load(session, principal.tenant_id))


@router.put("")
async def put_config(request: Request, body: ConfigUpdate,
                     principal: Annotated[Principal, Depends(require(Permission.CONFIG_WRITE))]) -> dict[str, Any]:
    changes = body.model_dump(exclude_none=True, mode="json")
    async with platform_of(request).db.tenant_session(principal.tenant_id) as session:
        cfg = await _load(session, principal.tenant_id)
        before = {name: getattr(cfg, name) for name in changes}
        for name, value in changes.items():
            setattr(cfg, name, value)
        cfg.updated_at = datetime.now(UTC)
        out = _as_json(cfg)
    if changes:
        await audit(request, principal, "config.update", "config", principal.tenant_id, before=before, after=changes)
    return out
