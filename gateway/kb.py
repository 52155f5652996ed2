"""REST for the knowledge base: upload, status, list, delete, search (``/v1/kb/...``).

The tenant is the caller's credential's (gateway.auth): kb.read to list and read documents, kb.write to
upload and delete (audited), kb.search to search and ask. Every lookup is scoped by the tenant: another
tenant's document id answers 404, exactly like an id that does not exist.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from gateway.auth.deps import Principal, require
from gateway.auth.roles import Permission
from gateway.platform import audit
from rag.service import KnowledgeBase, UploadRejected

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/kb", tags=["knowledge base"])


def _kb(request: Request) -> KnowledgeBase:
    kb = getattr(request.app.state, "kb", None)
    if kb is None:
        raise HTTPException(503, "the knowledge base is not enabled on this gateway")
    return kb


Reader = Annotated[Principal, Depends(require(Permission.KB_READ))]
Writer = Annotated[Principal, Depends(require(Permission.KB_WRITE))]
Searcher = Annotated[Principal, Depends(require(Permission.KB_SEARCH))]


async def _audit(request: Request, principal: Principal, action: str, target_id: str, **details: Any) -> None:
    """The audit row of a knowledge-base mutation (skipped on a gateway built without the platform)."""
    if getattr(request.app.state, "platform", None) is not None:
        await audit(request, principal, action, "kb_document", target_id, **details)


@router.post("/documents", status_code=202)
async def upload(request: Request, principal: Writer, file: Annotated[UploadFile | None, File()] = None,
                 priority: Annotated[str, Form()] = "default") -> JSONResponse:
    """Accepts one document (multipart field ``file``) and queues it: 202 with the task id."""
    tenant = principal.tenant_name
    kb = _kb(request)
    if file is None:
        raise HTTPException(422, "send the document as the multipart field 'file'")
    limit = kb.cfg.max_upload_bytes
    if file.size is not None and file.size > limit:
        raise HTTPException(413, f"{file.filename} is {file.size} bytes; the limit is {limit} bytes")
    data = await file.read(limit + 1)
    try:
        submitted = await asyncio.to_thread(kb.submit, tenant, file.filename or "", data, priority)
    except UploadRejected as err:
        log.info("upload refused", extra={"tenant": tenant, "reason": err.reason})
        raise HTTPException(err.status, str(err)) from err
    doc = submitted.document
    if not submitted.duplicate:
        await _audit(request, principal, "kb.document.upload", doc.id, filename=doc.filename, bytes=doc.size_bytes,
                     priority=priority)
    body = {"document_id": doc.id, "task_id": doc.task_id, "status": doc.status, "duplicate": submitted.duplicate,
            "filename": doc.filename}
    return JSONResponse(body, status_code=200 if submitted.duplicate else 202)


@router.get("/documents")
async def list_documents(request: Request, principal: Reader, status: str | None = None) -> dict[str, Any]:
    tenant = principal.tenant_name
    docs = await asyncio.to_thread(_kb(request).list, tenant, status)
    return {"documents": [d.as_json() for d in docs]}


@router.get("/documents/{document_id}")
async def get_document(request: Request, document_id: str, principal: Reader) -> dict[str, Any]:
    tenant = principal.tenant_name
    doc = await asyncio.to_thread(_kb(request).get, tenant, document_id)
    if doc is None:
        raise HTTPException(404, "no such document")
    return doc.as_json()


@router.delete("/documents/{document_id}", status_code=204)
async def delete_document(request: Request, document_id: str, principal: Writer) -> Response:
    tenant = principal.tenant_name
    if not await asyncio.to_thread(_kb(request).delete, tenant, document_id):
        raise HTTPException(404, "no such document")
    await _audit(request, principal, "kb.document.delete", document_id)
    return Response(status_code=204)


class SearchBody(BaseModel):
    query: str = Field(min_length=1, max_length=2000)
    top_k: int = Field(3, ge=1, le=20)


@router.post("/search")
async def search(request: Request, body: SearchBody, principal: Searcher) -> dict[str, Any]:
    tenant = principal.tenant_name
    if not body.query.strip():
        raise HTTPException(422, "query is blank")
    result = await asyncio.to_thread(_kb(request).search, tenant, body.query, body.top_k)
    return result.as_json()


class AskBody(BaseModel):
    question: str = Field(min_length=1, max_length=2000)
    language: str | None = Field(None, pattern="^(ar|en)$")
    max_tokens: int = Field(160, ge=1, le=1024)


@router.post("/ask")
async def ask(request: Request, body: AskBody, principal: Searcher) -> dict[str, Any]:
    """The grounded answer the bot would give (`voiceai ask`), with its sources and passages."""
    from rag.answer import answer_question

    tenant = principal.tenant_name
    if not body.question.strip():
        raise HTTPException(422, "question is blank")
    return await answer_question(request.app.state.clients.llm, _kb(request), tenant, body.question,
                                 language=body.language, max_tokens=body.max_tokens)
