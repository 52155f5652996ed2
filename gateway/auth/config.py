"""Identity and access configuration."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RateLimitConfig(BaseModel):
    enabled: bool = Field(True)
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Counters live here (shared by every gateway).")
    tenant_per_minute: int = Field(6000, ge=1, description="Requests per tenant per minute.")
    principal_per_minute: int = Field(600, ge=1, description="Requests per user or API key per minute.")


class AuthConfig(BaseModel):
    enabled: bool = Field(True, description="Off only for local development; every endpoint then acts as an admin "
                                            "of kb.default_tenant, and the gateway says so at start.")
    keys_dir: str = Field("", description="RS256 signing keys (<kid>.pem, private); the newest signs, all verify. "
                                          "Empty: data/keys (created on first use).")
    issuer: str = Field("voiceai", description="JWT iss.")
    audience: str = Field("voiceai", description="JWT aud.")
    access_ttl_s: int = Field(3600, ge=60, le=86400)
    refresh_ttl_s: int = Field(30 * 86400, ge=3600)
    call_token_ttl_s: int = Field(300, ge=30, le=3600, description="How long a browser caller has to join their call.")
    api_key_pepper: str = Field("", description="HMAC key for API-key hashes (env VOICEAI_API_KEY_PEPPER); empty: a "
                                                "per-install secret under keys_dir.")
    anonymous_calls_tenant: str = Field("", description="A tenant whose web page may start calls without "
                                                         "credentials (a public website widget): POST /v1/calls "
                                                         "then mints a call token for it. Empty: callers need an "
                                                         "API key or a user token to start a call.")
    rate_limit: RateLimitConfig = RateLimitConfig()
