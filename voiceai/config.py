"""Typed configuration: built-in defaults, then a profile, then a config file, then a few env vars.

Environment variables carry deployment facts only (addresses, secrets, directories, log level),
and this module is the one place that reads them:

=========================  =====================================================
VOICEAI_CONFIG             path of a TOML config file layered over the profile
VOICEAI_PROFILE            ``cpu`` (default) or ``gpu``
VOICEAI_MODELS_DIR         the local models directory
VOICEAI_LOG_LEVEL          DEBUG, INFO, WARNING, ...
VOICEAI_OTLP_ENDPOINT      OTLP/gRPC collector for traces (empty: no export)
VOICEAI_VAD_ADDRESS        host:port of a running VAD server (empty: in-process)
VOICEAI_ASR_ADDRESS        host:port of a running ASR server
VOICEAI_NLU_ADDRESS        host:port of a running NLU server
VOICEAI_TTS_ADDRESS        host:port of a running TTS server
VOICEAI_LLM_BASE_URL       OpenAI-compatible engine URL (vLLM), ending in /v1
VOICEAI_LLM_API_KEY        bearer token for that engine
VOICEAI_KB_DIR             knowledge-base files (uploads, local vectors; the registry is in the database)
VOICEAI_QDRANT_URL         Qdrant server (empty: qdrant-client local mode)
VOICEAI_QDRANT_API_KEY     Qdrant API key
VOICEAI_BROKER_URL         Celery broker for ingestion (empty: ingest in-process)
VOICEAI_DATABASE_URL       the application's database (empty: embedded SQLite)
VOICEAI_DATABASE_ADMIN_URL the owner role's database URL (migrations, tenant create)
VOICEAI_REDIS_URL          Redis for rate limits
VOICEAI_API_KEY_PEPPER     HMAC key for API-key hashes
=========================  =====================================================
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from asr.config import AsrConfig, VadConfig
from gateway.auth.config import AuthConfig
from media_bridge.channels import ChannelsConfig
from media_bridge.config import CallConfig
from nlu.config import NluConfig
from rag.config import KbConfig
from tts.config import TtsConfig
from voiceai.db.config import DbConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = Path(__file__).with_name("profiles")
SERVICES = ("vad", "asr", "nlu", "tts")


class ServerConfig(BaseModel):
    """Where one model server listens, and where clients find it."""

    host: str = Field("127.0.0.1", description="Bind address of the gRPC port.")
    port: int = Field(0, ge=0, le=65535, description="gRPC port; 0 picks a free one.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 picks one.")
    address: str = Field("", description="host:port of a running server; empty runs the backend in-process.")
    max_concurrent_streams: int = Field(64, ge=1, description="Streams served at once; more are refused.")
    grace_s: float = Field(5.0, ge=0, description="Drain time for in-flight streams on shutdown.")


class ServersConfig(BaseModel):
    """Every model server."""

    vad: ServerConfig = ServerConfig(port=50051, metrics_port=9151)
    asr: ServerConfig = ServerConfig(port=50052, metrics_port=9152)
    nlu: ServerConfig = ServerConfig(port=50053, metrics_port=9153)
    tts: ServerConfig = ServerConfig(port=50054, metrics_port=9154)

    def for_service(self, name: str) -> ServerConfig:
        return getattr(self, name)


class TelemetryConfig(BaseModel):
    """Logs, metrics and traces."""

    log_level: str = Field("INFO", description="Root log level.")
    log_json: bool = Field(True, description="One JSON object per log line (for log shippers).")
    redact_pii: bool = Field(True, description="Drop PII-marked log fields (transcripts, prompts).")
    otlp_endpoint: str = Field("", description="OTLP/gRPC endpoint for traces; empty disables export.")


class Settings(BaseModel):
    """The whole configuration of a voiceai process."""

    profile: Literal["cpu", "gpu"] = "cpu"
    models_dir: Path = Field(REPO_ROOT / "models", description="Local models directory.")
    servers: ServersConfig = ServersConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    vad: VadConfig = VadConfig()
    asr: AsrConfig = AsrConfig()
    nlu: NluConfig = NluConfig()
    tts: TtsConfig = TtsConfig()
    call: CallConfig = CallConfig()
    kb: KbConfig = KbConfig()
    db: DbConfig = DbConfig()
    auth: AuthConfig = AuthConfig()
    channels: ChannelsConfig = ChannelsConfig()


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value


_ENV_OVERRIDES = {
    "VOICEAI_MODELS_DIR": "models_dir",
    "VOICEAI_LOG_LEVEL": "telemetry.log_level",
    "VOICEAI_OTLP_ENDPOINT": "telemetry.otlp_endpoint",
    "VOICEAI_LLM_BASE_URL": "nlu.engine.base_url",
    "VOICEAI_LLM_API_KEY": "nlu.engine.api_key",
    "VOICEAI_KB_DIR": "kb.data_dir",
    "VOICEAI_QDRANT_URL": "kb.store.url",
    "VOICEAI_QDRANT_API_KEY": "kb.store.api_key",
    "VOICEAI_BROKER_URL": "kb.broker_url",
    "VOICEAI_DATABASE_URL": "db.url",
    "VOICEAI_DATABASE_ADMIN_URL": "db.admin_url",
    "VOICEAI_REDIS_URL": "auth.rate_limit.redis_url",
    "VOICEAI_API_KEY_PEPPER": "auth.api_key_pepper",
    **{f"VOICEAI_{s.upper()}_ADDRESS": f"servers.{s}.address" for s in SERVICES},
}


def load_settings(
    config_file: str | Path | None = None,
    profile: str | None = None,
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Builds Settings: defaults < profile TOML < config file < environment < explicit overrides.

    ``overrides`` maps dotted keys (``"servers.asr.port"``) to values, for command-line flags.
    """
    env = dict(os.environ if env is None else env)
    profile = profile or env.get("VOICEAI_PROFILE") or "cpu"
    profile_file = PROFILES_DIR / f"{profile}.toml"
    if not profile_file.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILES_DIR.glob("*.toml")))
        raise ValueError(f"unknown profile {profile!r}; known profiles: {known}")
    tree: dict[str, Any] = tomllib.loads(profile_file.read_text())
    config_file = config_file or env.get("VOICEAI_CONFIG")
    if config_file:
        tree = _deep_merge(tree, tomllib.loads(Path(config_file).read_text()))
    for var, key in _ENV_OVERRIDES.items():
        if env.get(var):
            _set(tree, key, env[var])
    for key, value in (overrides or {}).items():
        _set(tree, key, value)
    tree["profile"] = profile
    return Settings.model_validate(tree)
