"""The server: a FastAPI app with the AUTOMATIC1111 routes (/sdapi/v1), the OpenAI routes (/v1), the web UI (/ui)
and /health, served by uvicorn. This module holds what they share: the app factory and its lifespan, the limit on
request bodies, authentication, every error in the shape of the API it answers for, and `run`, which listens and
stops cleanly on SIGTERM.

Errors: bad input is a 400 naming the field (never FastAPI's 422, never a 5xx: the openai client retries those), a
missing or wrong credential 401, an oversized body 413, a full queue 429, a model that is not (yet) loaded 503, and
a route we do not have 404, each as {"error": {"message", "type", "param", "code"}} under /v1 and as AUTOMATIC1111's
{"error", "detail", "body", "errors"} elsewhere.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import secrets
import signal
import socket
import sys
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import UserError
from .batcher import Busy
from .state import ClientGone, Server, Unavailable

log = logging.getLogger("imagegen.serve")
STATUS_NAMES = {400: "BadRequest", 401: "Unauthorized", 404: "NotFound", 405: "MethodNotAllowed",
                413: "PayloadTooLarge", 429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}
OPENAI_CODES = {401: "invalid_api_key", 404: "not_found", 413: "request_too_large", 429: "rate_limit_exceeded",
                503: "service_unavailable"}


# ---------------------------------------------------------------- errors, in each API's own shape
def error_response(path: str, status: int, message: str, field: str | None = None, headers=None) -> JSONResponse:
    if path.startswith("/v1/") or path == "/v1":
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": field,
                          "code": OPENAI_CODES.get(status, "invalid_value" if status == 400 else None)}}
    else:
        body = {"error": STATUS_NAMES.get(status, "Error"), "detail": message, "body": "", "errors": message,
                "field": field}
    return JSONResponse(body, status_code=status, headers=headers)


def validation_message(error: dict) -> tuple[str | None, str]:
    """(field, message) of pydantic's first complaint about a request body."""
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    kind = error.get("type", "")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return None, "the request body is not valid JSON" + (f" ({reason})" if reason else "")
    if not loc or kind in ("model_attributes_type", "dict_type"):
        return None, f"the request body must be a JSON object, got {type(error.get('input')).__name__}"
    field = ".".join(loc)
    shown = repr(error.get("input"))
    shown = shown if len(shown) <= 60 else shown[:60] + "..."
    return field, f"{field}: {error.get('msg', 'invalid')}" + ("" if kind == "missing" else f", got {shown}")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(UserError)
    async def user_error(request: Request, err: UserError):
        return error_response(request.url.path, 400, str(err), getattr(err, "field", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError):
        field, message = validation_message(err.errors()[0] if err.errors() else {})
        return error_response(request.url.path, 400, message, field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException):
        message = err.detail
        if err.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            message = (f"{request.method} {request.url.path} is not supported by imagegen serve (its routes: "
                       "/openapi.json)")
        return error_response(request.url.path, err.status_code, str(message), headers=getattr(err, "headers", None))

    @app.exception_handler(Busy)
    async def busy(request: Request, err: Busy):
        return error_response(request.url.path, err.status, str(err), headers={"Retry-After": "1"})

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, err: Unavailable):
        return error_response(request.url.path, 503, str(err), headers={"Retry-After": "5"})

    @app.exception_handler(ClientGone)
    async def gone(request: Request, err: ClientGone):
        return Response(status_code=499)  # nobody reads it: the client has gone


# ---------------------------------------------------------------- request bodies
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"the request body is over this server's limit of {limit} bytes")


class BodyLimit:
    """Refuse request bodies over `max_bytes` (413): at once by Content-Length, or as a chunked body streams in."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            err = BodyTooLarge(self.max_bytes) if length.isdigit() else HTTPException(400, "bad Content-Length")
            return await error_response(scope["path"], err.status_code, err.detail)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)  # FastAPI passes HTTPExceptions from reading the body on
            return message

        await self.app(scope, counted, send)


# ---------------------------------------------------------------- authentication
def basic_auth(credentials: list[tuple[str, str]]):
    """A dependency: HTTP Basic with one of `credentials` (none: open)."""
    pairs = [(user.encode(), password.encode()) for user, password in credentials]

    async def check(request: Request) -> None:
        if not pairs:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).partition(b":")
            except (binascii.Error, ValueError):
                user = password = b""
            if any(secrets.compare_digest(user, u) & secrets.compare_digest(password, p) for u, p in pairs):
                return
        raise HTTPException(401, "this server needs a user name and password (HTTP Basic, --api-auth)",
                            headers={"WWW-Authenticate": 'Basic realm="imagegen"'})
    return check


def bearer_auth(key: str | None):
    """A dependency: `Authorization: Bearer KEY` (no key configured: open)."""
    expected = key.encode() if key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), expected):
            raise HTTPException(401, "Incorrect API key provided (this server needs the key it was started with, "
                                     "--api-key)", headers={"WWW-Authenticate": "Bearer"})
    return check


# ---------------------------------------------------------------- the app
def create_app(options, loader=None) -> FastAPI:
    """The whole server; `loader(model_ref)` makes a pipeline (default: imagegen.load_pipeline)."""
    from . import a1111, openai_api

    options.validate()
    if options.outputs_folder is not None:
        from ..png import check_writable_folder

        check_writable_folder(options.outputs_folder)  # before listening, not at the first image
    server = Server(options, loader)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        yield
        await asyncio.to_thread(server.batcher.close, options.shutdown_timeout)

    app = FastAPI(title="imagegen serve", version=__version__, lifespan=lifespan, redoc_url=None)
    app.state.server = server
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=options.max_body_bytes)

    @app.get("/health")
    async def health():
        """200 once the model is loaded (503 while it loads, or if it failed), with the queue's counters."""
        batcher, ready = server.batcher, server.batcher.ready.is_set()
        status = "loading" if not ready else "error" if batcher.load_error else "ok"
        body = {"status": status, "model": server.pipe.model.name if server.pipe else options.model,
                "error": batcher.load_error, "queue": batcher.state()["jobs"], "calls": batcher.stats.calls,
                "images": batcher.stats.images, "largest_batch": batcher.stats.largest_batch,
                "jobs": batcher.stats.jobs, "max_batch": options.max_batch, "version": __version__}
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    @app.get("/files/{token}.png", include_in_schema=False)
    async def kept_image(token: str):
        """The images of OpenAI `url` answers (unguessable names, kept for an hour, as OpenAI's signed URLs)."""
        data = server.kept(token)
        if data is None:
            raise HTTPException(404, "no such image (images for url answers are kept for an hour)")
        return Response(data, media_type="image/png")

    app.include_router(a1111.router(server, Depends(basic_auth(options.credentials()))))
    app.include_router(openai_api.router(server, Depends(bearer_auth(options.api_key))))
    if not options.no_ui:
        from . import ui

        ui.mount(app, server, options.credentials())

    @app.get("/", include_in_schema=False)
    async def index():
        if not options.no_ui:
            return RedirectResponse("/ui/")
        return {"imagegen": __version__, "routes": ["/health", "/sdapi/v1/...", "/v1/images/generations", "/docs"]}

    return app


def run(options, loader=None) -> int:
    """Listen on --host/--port until SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish (at most
    --shutdown-timeout seconds), stop the worker, exit 0."""
    import uvicorn

    app = create_app(options, loader)
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((options.host, options.port))
    except OSError as err:
        raise UserError(f"cannot listen on {options.host}:{options.port}: {err.strerror}") from None
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=int(options.shutdown_timeout) or None,
                            limit_concurrency=options.max_queue + 64, access_log=False)
    server = uvicorn.Server(config)
    stopped = []
    # uvicorn raises the signal again once it has shut down; with this handler that ends in a clean exit 0.
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))
    host = f"[{options.host}]" if family == socket.AF_INET6 else options.host
    print(json.dumps({"listening": f"http://{host}:{port}", "port": port, "model": options.model}), flush=True)
    print(f"imagegen serve: http://{host}:{port}/ui/ (web UI), /sdapi/v1 (AUTOMATIC1111), /v1 (OpenAI), /health",
          file=sys.stderr, flush=True)
    server.run(sockets=[sock])
    return 0
