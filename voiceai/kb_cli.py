"""Knowledge-base commands: `voiceai kb ingest|search|list|delete`, `voiceai ask`, `voiceai worker`.

They work on this machine's knowledge base in-process (``kb.data_dir``), or through a running
gateway when ``VOICEAI_GATEWAY_URL`` is set (needed while `voiceai up` holds the local store), with
the credential in ``VOICEAI_TOKEN`` (an access token or an API key).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from voiceai.config import Settings


def _gateway() -> str:
    return os.environ.get("VOICEAI_GATEWAY_URL", "").rstrip("/")


def _credentials(tenant: str) -> dict[str, str]:
    """Headers for the gateway: VOICEAI_TOKEN holds an access token or an API key (vai_...) of the tenant."""
    secret = os.environ.get("VOICEAI_TOKEN", "")
    if not secret:
        raise ValueError("set VOICEAI_TOKEN to an access token (`voiceai admin token --email ...`) or an API key "
                         "(`voiceai admin apikey create --tenant ...`) to go through the gateway")
    auth = {"X-API-Key": secret} if secret.startswith("vai_") else {"Authorization": f"Bearer {secret}"}
    return {**auth, "X-Tenant": tenant}


def _files(paths: list[str]) -> Iterator[Path]:
    """Named files as they are; folders walked for the supported types (others skipped)."""
    from rag.loaders import SUPPORTED_EXTENSIONS

    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_EXTENSIONS)
        elif path.is_file():
            yield path
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")


def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 24
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label[:40]:<40}")
    sys.stderr.flush()
    if done == total:
        sys.stderr.write("\n")


class _Deferred:
    """The CLI ingests each document itself, in order, to report progress as it goes."""

    def submit(self, tenant: str, document_id: str, priority: str) -> str:
        return f"cli-{document_id}"


def open_kb(settings: Settings, deferred: bool = False) -> Any:
    """This machine's knowledge base, its registry in the platform database (the embedded one migrated first)."""
    from rag.rerank import make_reranker
    from rag.service import KnowledgeBase
    from voiceai.db.migrate import application_url

    db_url = application_url(settings.db)
    eng = settings.nlu.engine
    reranker = make_reranker(settings.kb.rerank, settings.models_dir, eng.base_url, eng.model, eng.api_key)
    return KnowledgeBase(settings.kb, settings.models_dir, db_url=db_url, reranker=reranker,
                         queue=_Deferred() if deferred else None)


def _require_tenant(kb: Any, tenant: str) -> None:
    """The tenant must exist. On the embedded SQLite database `kb ingest` creates a missing one, so the
    first-run flow (`voiceai kb ingest benchmarks/kb/corpus/gulfbank --tenant gulfbank`) needs no admin
    step; on Postgres tenants are the operator's (`voiceai admin tenant create`), and a missing one is a
    ValueError (exit 2)."""
    from gateway.platform import ensure_tenant
    from rag.store import check_tenant
    from voiceai.db.engine import Database

    try:
        kb.registry.tenant_id(check_tenant(tenant))
        return
    except ValueError:
        if kb.registry.url.get_backend_name() != "sqlite":
            raise

    async def create() -> None:
        db = Database(kb.registry.url.render_as_string(hide_password=False))
        try:
            await ensure_tenant(db, tenant)
        finally:
            await db.close()

    asyncio.run(create())
    print(f"note: created tenant {tenant!r} in the embedded database (with Postgres, create tenants with "
          f"`voiceai admin tenant create {tenant}`)", file=sys.stderr)


def _result_row(path: Path, doc: dict[str, Any] | None, error: dict[str, str] | None = None) -> dict[str, Any]:
    if doc is None:
        return {"file": str(path), "status": "failed", "error": error}
    return {"file": str(path), "document_id": doc.get("id") or doc.get("document_id"), "status": doc["status"],
            "duplicate": doc.get("duplicate", False), "chunks": doc.get("chunks"), "error": doc.get("error")}


def cmd_kb_ingest(args: argparse.Namespace, settings: Settings) -> int:
    files = list(_files(args.paths))
    rows = (_ingest_remote if _gateway() else _ingest_local)(files, args, settings)
    if args.json:
        print(json.dumps({"tenant": args.tenant, "documents": rows}, ensure_ascii=False, indent=2))
    else:
        for r in rows:
            extra = f"{r['chunks']} chunks" if r["status"] == "indexed" else ""
            if r.get("duplicate"):
                extra = "unchanged (already uploaded)"
            if r["status"] == "failed" and r.get("error"):
                extra = f"{r['error']['reason']}: {r['error']['message']}"
            print(f"{r['status']:<10} {r['file']}  {extra}")
    failed = sum(r["status"] == "failed" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} documents indexed for tenant {args.tenant}", file=sys.stderr)
    return 1 if failed else 0


def _ingest_local(files: list[Path], args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    from rag.service import UploadRejected

    kb = open_kb(settings, deferred=True)
    rows = []
    try:
        _require_tenant(kb, args.tenant)
        for n, path in enumerate(files, start=1):
            _progress(n - 1, len(files), path.name)
            try:
                submitted = kb.submit(args.tenant, path.name, path.read_bytes(), args.priority)
            except UploadRejected as err:
                rows.append(_result_row(path, None, {"reason": err.reason, "message": str(err)}))
                continue
            record = submitted.document
            if not submitted.duplicate:
                record = kb.process(args.tenant, record.id) or record
            row = record.as_json()
            row["duplicate"] = submitted.duplicate
            rows.append(_result_row(path, row))
        _progress(len(files), len(files), "done")
    finally:
        kb.close()
    return rows


def _ingest_remote(files: list[Path], args: argparse.Namespace, settings: Settings) -> list[dict[str, Any]]:
    import httpx

    headers = _credentials(args.tenant)
    rows: list[dict[str, Any]] = []
    with httpx.Client(base_url=_gateway(), headers=headers, timeout=60) as http:
        pending: list[tuple[Path, str, bool]] = []
        for path in files:
            resp = http.post("/v1/kb/documents", files={"file": (path.name, path.read_bytes())},
                             data={"priority": args.priority})
            if resp.status_code >= 400:
                rows.append(_result_row(path, None, {"reason": f"http_{resp.status_code}",
                                                     "message": resp.json().get("detail", resp.text)}))
                continue
            body = resp.json()
            pending.append((path, body["document_id"], body["duplicate"]))
        deadline = time.monotonic() + args.timeout
        for n, (path, doc_id, duplicate) in enumerate(pending, start=1):
            _progress(n - 1, len(pending), path.name)
            while True:
                doc = http.get(f"/v1/kb/documents/{doc_id}").json()
                if doc["status"] in ("indexed", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            doc["duplicate"] = duplicate
            rows.append(_result_row(path, doc))
        _progress(len(pending), len(pending), "done")
    return rows


def cmd_kb_search(args: argparse.Namespace, settings: Settings) -> int:
    if _gateway():
        import httpx

        resp = httpx.post(f"{_gateway()}/v1/kb/search", json={"query": args.query, "top_k": args.top_k},
                          headers=_credentials(args.tenant), timeout=30)
        resp.raise_for_status()
        out = resp.json()
    else:
        kb = open_kb(settings)
        try:
            out = kb.search(args.tenant, args.query, args.top_k).as_json()
        finally:
            kb.close()
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    if not out["results"]:
        print("no results")
    for n, r in enumerate(out["results"], start=1):
        section = f" > {r['section']}" if r.get("section") else ""
        print(f"{n}. [{r['score']:.4f}] {r['document']}{section}\n   {r['text'][:300]}")
    if not out["answerable"]:
        print(f"(best match {out['best_dense_score']:.3f} is below the answerable bar {settings.kb.min_score})")
    return 0


def _http(tenant: str) -> Any:
    import httpx

    return httpx.Client(base_url=_gateway(), headers=_credentials(tenant), timeout=60)


def cmd_kb_list(args: argparse.Namespace, settings: Settings) -> int:
    if _gateway():
        with _http(args.tenant) as http:
            resp = http.get("/v1/kb/documents")
            resp.raise_for_status()
            docs = resp.json()["documents"]
    else:
        kb = open_kb(settings, deferred=True)
        try:
            docs = [d.as_json() for d in kb.list(args.tenant)]
        finally:
            kb.close()
    if args.json:
        print(json.dumps({"documents": docs}, ensure_ascii=False, indent=2))
    for d in [] if args.json else docs:
        print(f"{d['id']}  {d['status']:<10} {d['chunks']:>4} chunks  {d['language'] or '-':<2}  {d['filename']}")
    return 0


def cmd_kb_delete(args: argparse.Namespace, settings: Settings) -> int:
    if _gateway():
        with _http(args.tenant) as http:
            ok = http.delete(f"/v1/kb/documents/{args.document_id}").status_code == 204
    else:
        kb = open_kb(settings, deferred=True)
        try:
            ok = kb.delete(args.tenant, args.document_id)
        finally:
            kb.close()
    print("deleted" if ok else f"no document {args.document_id} for tenant {args.tenant}",
          file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_ask(args: argparse.Namespace, settings: Settings) -> int:
    if _gateway():
        import httpx

        resp = httpx.post(f"{_gateway()}/v1/kb/ask", json={"question": args.question, "language": args.lang,
                                                           "max_tokens": args.max_tokens},
                          headers=_credentials(args.tenant), timeout=300)
        resp.raise_for_status()
        out = resp.json()
    else:
        out = _ask_local(args, settings)
    if args.json:
        print(json.dumps(out, ensure_ascii=False, indent=2))
    else:
        print(out["answer"])
        if out["sources"]:
            print(f"\nsources: {', '.join(out['sources'])}", file=sys.stderr)
    return 0


def _ask_local(args: argparse.Namespace, settings: Settings) -> dict[str, Any]:
    from nlu.client import make_llm_client
    from rag.answer import answer_question

    async def run(kb: Any) -> dict[str, Any]:
        llm = make_llm_client(settings)
        try:
            return await answer_question(llm, kb, args.tenant, args.question, language=args.lang,
                                         max_tokens=args.max_tokens)
        finally:
            await llm.aclose()

    kb = open_kb(settings)
    try:
        return asyncio.run(run(kb))
    finally:
        kb.close()


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from workers.app import QUEUES, app

    argv = ["worker", "-Q", args.queues or ",".join(QUEUES), "--concurrency", str(args.concurrency),
            "--loglevel", settings.telemetry.log_level, "--hostname", args.hostname]
    app.worker_main(argv)
    return 0


def add_parsers(sub: Any, run: Any) -> None:
    """Adds `kb`, `ask` and `worker` to the main parser; ``run`` wraps a command with settings."""
    kb = sub.add_parser("kb", help="the knowledge base: ingest documents, search, list, delete")
    ksub = kb.add_subparsers(dest="kb_command", required=True)
    i = ksub.add_parser("ingest", help="index files or folders (pdf, docx, html, md, txt) for a tenant")
    i.add_argument("paths", nargs="+", metavar="PATH")
    i.add_argument("--tenant", required=True)
    i.add_argument("--priority", choices=["high", "default"], default="default")
    i.add_argument("--timeout", type=float, default=900, help="through a gateway: seconds to wait for indexing")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=run(cmd_kb_ingest))
    s = ksub.add_parser("search", help="hybrid search over a tenant's documents")
    s.add_argument("query")
    s.add_argument("--tenant", required=True)
    s.add_argument("--top-k", type=int, default=3)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=run(cmd_kb_search))
    ls = ksub.add_parser("list", help="a tenant's documents and their state")
    ls.add_argument("--tenant", required=True)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=run(cmd_kb_list))
    d = ksub.add_parser("delete", help="remove a document and its vectors")
    d.add_argument("document_id")
    d.add_argument("--tenant", required=True)
    d.set_defaults(func=run(cmd_kb_delete))

    a = sub.add_parser("ask", help="the grounded answer the bot would give, with its sources")
    a.add_argument("question")
    a.add_argument("--tenant", required=True)
    a.add_argument("--lang", choices=["ar", "en"], help="reply language (default: the question's)")
    a.add_argument("--max-tokens", type=int, default=160)
    a.add_argument("--json", action="store_true", help="JSON with answer, sources, passages, timings")
    a.set_defaults(func=run(cmd_ask))

    w = sub.add_parser("worker", help="run a Celery ingestion worker (kb.broker_url / VOICEAI_BROKER_URL)")
    w.add_argument("--queues", help="comma-separated (default ingest.high,ingest.default)")
    w.add_argument("--concurrency", type=int, default=1)
    w.add_argument("--hostname", default="voiceai-worker@%h")
    w.set_defaults(func=run(cmd_worker))
