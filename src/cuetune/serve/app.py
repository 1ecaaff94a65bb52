"""`cuetune serve`: the HTTP server (FastAPI + uvicorn) over one frozen base and many adapters.

Endpoints: OpenAI-compatible `POST /v1/completions` and `/v1/chat/completions` (`model` names
the adapter, as in vLLM and LoRAX, so the `openai` client works unchanged), `POST
/v1/classify`, `GET /v1/models`, `POST /v1/adapters` and `DELETE /v1/adapters/{name}`,
`GET /health` and Prometheus `GET /metrics`. Every refusal is OpenAI's error body
`{"error": {"message", "type", "param", "code"}}`; the server keeps serving through all of them.
With an API key, /v1 requests need `Authorization: Bearer KEY` (health and metrics stay open
for probes and scrapers). uvicorn drains on SIGTERM: it stops accepting, lets requests finish,
then the worker finishes what is queued.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cuetune.errors import CuetuneError
from cuetune.serve import requests as req
from cuetune.serve import streaming
from cuetune.serve.adapters import Registry, UnknownAdapter
from cuetune.serve.scheduler import Job, QueueFull, Scheduler
from cuetune.serve.telemetry import Metrics


@dataclass
class Limits:
    max_body_bytes: int = 1 << 20
    max_tokens: int = 512
    """The most tokens one completion may ask for (`max_tokens`)."""
    max_inputs: int = 64
    """Texts per request (a list `prompt` or `input`)."""
    retry_after_s: int = 1


def create_app(registry, scheduler, metrics: Metrics, api_key: str | None = None,
               limits: Limits | None = None) -> FastAPI:
    limits = limits or Limits()

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await asyncio.to_thread(scheduler.stop)  # drain: queued and running jobs finish

    app = FastAPI(title="cuetune serve", lifespan=lifespan)
    app.add_middleware(Guard, api_key=api_key, max_body=limits.max_body_bytes, metrics=metrics)
    metrics.queue_depth.set_function(scheduler.depth)

    @app.exception_handler(req.Refused)
    async def refused(_request, exc: req.Refused):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            why = (first.get("ctx") or {}).get("error", first["msg"])
            return _error(400, f"request body is not valid JSON ({why})")
        field = ".".join(str(p) for p in first["loc"] if p != "body") or None
        message = f"{field}: {first['msg']}" if field else first["msg"]
        return JSONResponse(req.Refused(422, message, field).body(), 422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):  # e.g. a body that is not UTF-8
        return _error(exc.status_code, f"request refused: {exc.detail}")

    def adapter_for(request: Request, name: str):
        try:
            adapter = registry.get(name)
        except UnknownAdapter as exc:
            raise req.Refused(404, str(exc), "model", "not_found_error") from None
        request.state.adapter = name
        return adapter

    def submit(jobs: list[Job]) -> list:
        try:
            return scheduler.submit(jobs)
        except QueueFull as exc:
            raise req.Refused(429, f"{exc}; retry after {limits.retry_after_s} s", kind="rate_limit_error",
                              headers={"Retry-After": str(limits.retry_after_s)}) from None

    def streamed(request: Request, jobs: list[Job], kind: str) -> StreamingResponse:
        futures = submit(jobs)
        return StreamingResponse(streaming.events(request, jobs[0], futures[0], kind),
                                 media_type="text/event-stream")

    async def run(request: Request, jobs: list[Job]) -> list:
        futures = submit(jobs)
        gathered = asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
        while True:
            done, _ = await asyncio.wait({gathered}, timeout=0.1)
            if done:
                break
            if await request.is_disconnected():  # the client left: stop its work
                for f in futures:
                    f.cancel()
                gathered.cancel()
                return []
        try:
            return gathered.result()
        except CuetuneError as exc:
            raise req.Refused(400, str(exc)) from None
        except asyncio.CancelledError:
            return []
        except Exception as exc:  # a fault in the worker's round: this request fails, serving goes on
            raise req.Refused(500, f"the model failed on this batch: {type(exc).__name__}: {exc}",
                              kind="server_error") from None

    @app.post("/v1/classify")
    async def classify(body: req.ClassifyRequest, request: Request):
        req.refuse_invalid_text(body)
        adapter = adapter_for(request, body.model)
        if adapter.task != "classification":
            raise req.Refused(400, f"model: adapter {adapter.name!r} writes text; use /v1/completions",
                              "model")
        texts = req.as_list(body.input, "input", limits.max_inputs)
        pairs = None if body.input_pair is None else req.as_list(body.input_pair, "input_pair",
                                                                 limits.max_inputs)
        items = req.encode_inputs(adapter, texts, pairs, "input", generation=False)
        probs = await run(request, [Job("classify", adapter, item) for item in items])
        labels = adapter.tuned.labels
        data = [{"index": i, "label": labels[int(p.argmax())],
                 "probs": {lab: float(v) for lab, v in zip(labels, p.tolist(), strict=True)}}
                for i, p in enumerate(probs)]
        return {"object": "list", "model": adapter.name, "data": data,
                "usage": {"prompt_tokens": sum(len(i.input_ids) for i in items)}}

    @app.post("/v1/completions")
    async def completions(body: req.CompletionRequest, request: Request):
        req.refuse_invalid_text(body)
        adapter = adapter_for(request, body.model)
        texts = req.as_list(body.prompt, "prompt", limits.max_inputs)
        jobs = req.generate_jobs(adapter, body, texts, limits.max_tokens)
        if body.stream:
            return streamed(request, jobs, "text_completion")
        rows = await run(request, jobs)
        choices = [{"index": i, "text": r.text(), "finish_reason": r.finish_reason, "logprobs": None}
                   for i, r in enumerate(rows)]
        return _completion("text_completion", adapter, jobs, rows, choices, metrics)

    @app.post("/v1/chat/completions")
    async def chat(body: req.ChatRequest, request: Request):
        req.refuse_invalid_text(body)
        adapter = adapter_for(request, body.model)
        text = req.chat_text(adapter, body)
        jobs = req.generate_jobs(adapter, body, [text], limits.max_tokens)
        if body.stream:
            return streamed(request, jobs, "chat.completion.chunk")
        rows = await run(request, jobs)
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text()},
                    "finish_reason": r.finish_reason, "logprobs": None} for i, r in enumerate(rows)]
        return _completion("chat.completion", adapter, jobs, rows, choices, metrics)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [registry.get(n).describe() for n in registry.names()]}

    @app.post("/v1/adapters", status_code=201)
    async def add_adapter(body: req.AdapterRequest):
        req.refuse_invalid_text(body)
        try:
            path = registry.within_root(body.path)
        except CuetuneError as exc:
            raise req.Refused(403, str(exc), "path", "permission_error") from None
        try:
            adapter = await asyncio.wrap_future(scheduler.call(lambda: registry.add(path, body.name)))
        except CuetuneError as exc:
            raise req.Refused(400, str(exc), "path") from None
        return adapter.describe()

    @app.delete("/v1/adapters/{name}")
    async def remove_adapter(name: str):
        if registry.root is None:
            raise req.Refused(403, "unloading adapters at run time is off; start the server with "
                                   "--adapter-root DIR to manage adapters over HTTP", "name",
                              "permission_error")
        try:
            registry.remove(name)
        except UnknownAdapter as exc:
            raise req.Refused(404, str(exc), "name", "not_found_error") from None
        return {"id": name, "object": "model", "deleted": True}

    @app.get("/health")
    async def health():
        return {"status": "ok", "adapters": len(registry.names()), "queue": scheduler.depth()}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def unknown(path: str, request: Request):
        allowed = sorted(m for r in app.routes if getattr(r, "path", None) == f"/{path}"
                         for m in getattr(r, "methods", ()) if m != "HEAD")
        if allowed:
            raise req.Refused(405, f"/{path}: {request.method} is not allowed; use {', '.join(allowed)}",
                              headers={"Allow": ", ".join(allowed)})
        raise req.Refused(404, f"/{path}: no such endpoint (see /docs)", kind="not_found_error")

    return app


class Guard:
    """ASGI middleware: the API key on /v1, the body size cap (declared or streamed), and the
    request count and latency per adapter. A plain ASGI wrapper, not `BaseHTTPMiddleware`,
    which would hide a client's disconnect from the endpoint (cancellation needs it)."""

    def __init__(self, app, api_key: str | None, max_body: int, metrics: Metrics):
        self.app, self.api_key, self.max_body, self.metrics = app, api_key, max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if scope["path"].startswith("/v1") and self.api_key:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                return await _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                    kind="authentication_error")(scope, receive, send)
        size = headers.get(b"content-length", b"")
        if size.isdigit() and int(size) > self.max_body:
            return await _error(413, f"request body of {int(size)} bytes is over the limit of "
                                     f"{self.max_body} bytes")(scope, receive, send)
        started, status, seen, over = time.perf_counter(), [500], [0], [False]
        end = {"type": "http.request", "body": b"", "more_body": False}

        async def counted_receive():  # a body streamed without content-length is cut at the cap
            if over[0]:
                return end
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.max_body:
                over[0] = True
                return end
            return message

        async def send_status(message):
            if over[0]:  # whatever the app made of the cut body, the answer is 413
                if message["type"] == "http.response.start":
                    status[0] = 413
                    await _error(413, f"request body is over the limit of {self.max_body} bytes")(
                        scope, receive, send)
                return
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, counted_receive, send_status)
        adapter = scope.get("state", {}).get("adapter")
        if adapter is not None:
            self.metrics.requests.labels(adapter, scope["path"], str(status[0])).inc()
            if status[0] == 200:
                self.metrics.latency.labels(adapter).observe(time.perf_counter() - started)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(req.Refused(status, message, kind=kind).body(), status)


def _completion(kind: str, adapter, jobs, rows, choices, metrics: Metrics) -> dict:
    if not rows:  # the client went away; nobody reads this
        return {}
    written = sum(len(r.tokens) for r in rows)
    metrics.tokens.labels(adapter.name).inc(written)
    prompt = sum(len(j.item.input_ids) for j in jobs)
    return {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": kind, "created": int(time.time()),
            "model": adapter.name, "choices": choices,
            "usage": {"prompt_tokens": prompt, "completion_tokens": written,
                      "total_tokens": prompt + written}}


def build_server(runs: list[str], *, device: str | None = None, adapter_root: str | None = None,
                 api_key: str | None = None, limits: Limits | None = None, **scheduling):
    """The app with its adapters loaded and its worker started. `runs`: run folders, or
    `NAME=FOLDER` to name an adapter (default: the folder's name)."""
    registry = Registry(device, adapter_root)
    for spec in runs:
        name, _, path = spec.rpartition("=") if "=" in spec else (None, "", spec)
        registry.add(path, name or None)
    metrics = Metrics()
    scheduler = Scheduler(registry, metrics=metrics, **scheduling).start()
    return create_app(registry, scheduler, metrics, api_key, limits), registry


def serve(runs: list[str], host: str = "127.0.0.1", port: int = 8000, **options) -> None:
    """Load the runs, then serve until SIGTERM or Ctrl-C (which drain first)."""
    app, registry = build_server(runs, **options)
    print(f"cuetune serve: {len(registry.names())} adapters ({', '.join(registry.names())}) on "
          f"http://{host}:{port}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=60)
