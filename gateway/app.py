"""The FastAPI gateway: routes stay thin; the handlers are built once at startup (lifespan)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import grpc
from fastapi import Depends, FastAPI, WebSocket
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import auth_routes, config_routes, twilio_routes, webrtc_routes
from gateway import calls as calls_routes
from gateway import kb as kb_routes
from gateway.auth.deps import Principal, require_ws
from gateway.auth.roles import Permission
from gateway.calls_ws import serve_call
from gateway.platform import start_platform
from media_bridge.clients import BridgeClients, make_bridge_clients
from media_bridge.host import CallHost, JoinedCalls
from voiceai.config import SERVICES, Settings

STATIC = Path(__file__).with_name("static")
ClientsFactory = Callable[[Settings], Awaitable[BridgeClients]]
KbFactory = Callable[[Settings], Any]


def make_knowledge_base(settings: Settings) -> Any:
    """The gateway's knowledge base: ingestion through Celery when a broker is set, else in-process."""
    from rag.rerank import make_reranker
    from rag.service import KnowledgeBase
    from voiceai.db.engine import resolve_url

    queue = None
    if settings.kb.broker_url:
        from workers.tasks import CeleryQueue

        queue = CeleryQueue()
    eng = settings.nlu.engine
    reranker = make_reranker(settings.kb.rerank, settings.models_dir, eng.base_url, eng.model, eng.api_key)
    # The platform (built first in the lifespan) has already migrated an embedded database.
    return KnowledgeBase(settings.kb, settings.models_dir, db_url=resolve_url(settings.db), reranker=reranker,
                         queue=queue)


JSON_BODY_LIMIT = 1 * 2**20


class _BodyLimit:
    """Refuses an oversized body from its Content-Length, before it is read or spooled: documents up to
    the upload limit, every other request body up to 1 MiB. Chunked bodies are capped where they are
    read (the upload route reads at most limit + 1 bytes)."""

    def __init__(self, app: Any, upload_limit: int) -> None:
        self.app = app
        self.upload_limit = upload_limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            limit = self.upload_limit if scope["path"] == "/v1/kb/documents" else JSON_BODY_LIMIT
            length = dict(scope["headers"]).get(b"content-length", b"0")
            if length.isdigit() and int(length) > limit:
                response = JSONResponse({"detail": f"body of {int(length)} bytes; the limit is {limit} bytes"},
                                        status_code=413)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _start_sip(settings: Settings, host: CallHost, platform: Any) -> Any:
    """The SIP user agent, when ``channels.sip.port`` is set: calls to a routed number reach that tenant's
    bot, the rest the configured (or anonymous calls) tenant."""
    cfg = settings.channels.sip
    if cfg.port is None:
        return None
    from media_bridge.sip.ua import SipServer

    async def tenant_for(called_user: str) -> tuple[str, str]:
        return await platform.tenant_named(cfg.routes.get(called_user, cfg.tenant))  # type: ignore[no-any-return]

    server = SipServer(host, cfg, tenant_for)
    await server.start()
    return server


async def _service_health(address: str) -> str:
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.5)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    except grpc.aio.AioRpcError as err:
        return err.code().name


def create_app(settings: Settings, clients_factory: ClientsFactory = make_bridge_clients,
               kb_factory: KbFactory | None = make_knowledge_base) -> FastAPI:
    """Builds the app; model clients and the knowledge base are created in the lifespan and shared."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.platform = await start_platform(settings)
        app.state.auth = app.state.platform.auth
        app.state.limiter = app.state.platform.limiter
        use_kb = kb_factory is not None and settings.kb.enabled
        app.state.kb = await asyncio.to_thread(kb_factory, settings) if use_kb and kb_factory else None
        app.state.clients = await clients_factory(settings)
        app.state.clients.kb = app.state.kb
        app.state.host = CallHost(settings, app.state.clients, app.state.platform.writer,
                                  JoinedCalls(keep_s=settings.auth.call_token_ttl_s + 120))
        app.state.sip = await _start_sip(settings, app.state.host, app.state.platform)
        try:
            yield
        finally:
            if app.state.sip is not None:
                await app.state.sip.stop()
            await app.state.host.hangup_all()
            await app.state.clients.aclose()
            if app.state.kb is not None:
                await asyncio.to_thread(app.state.kb.close)
            await app.state.platform.close()

    app = FastAPI(title="voiceai gateway", version="0.1.0", lifespan=lifespan)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(kb_routes.router)
    # Multipart framing adds a little to the file itself.
    app.add_middleware(_BodyLimit, upload_limit=settings.kb.max_upload_bytes + 64 * 1024)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/health")
    async def health() -> JSONResponse:
        """Ready only when every configured model server reports SERVING."""
        remote = {s: settings.servers.for_service(s).address for s in SERVICES}
        checks = {s: (await _service_health(a) if a else "IN_PROCESS") for s, a in remote.items()}
        ready = all(v in ("SERVING", "IN_PROCESS") for v in checks.values())
        return JSONResponse({"status": "ok" if ready else "unavailable", "services": checks},
                            status_code=200 if ready else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.include_router(calls_routes.router)
    app.include_router(auth_routes.router)
    app.include_router(config_routes.router)
    app.include_router(webrtc_routes.router)
    app.include_router(twilio_routes.router)

    @app.get("/.well-known/jwks.json", include_in_schema=False)
    async def jwks() -> dict[str, Any]:
        """The public keys tokens are signed with, for services that verify them."""
        return app.state.auth.ring.jwks()  # type: ignore[no-any-return]

    @app.websocket("/v1/calls/ws")
    async def call_ws(ws: WebSocket, principal: Annotated[Principal | None, Depends(require_ws(
            Permission.CALLS_JOIN, call_id_param="call_id"))]) -> None:
        if principal is not None:
            await serve_call(ws, app.state.host, principal)

    return app
