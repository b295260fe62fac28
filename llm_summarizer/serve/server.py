"""A local HTTP server for trying a fine-tuned model: a page and a JSON API over one loaded model.

Routes:
- `GET /`: the page (paste or upload a document; the fine-tuned summary and, with --compare-base, the base
  model's beside it, each with its generation time).
- `POST /summarize` `{"document": "..."}` -> `{"summary", "seconds", "method", "truncated_input",
  "hit_max_new_tokens", "new_tokens", "prompt_tokens", "chunks" (a chunked document's tree), "base": {...} (with
  --compare-base)}`. A document over the token budget is chunked or cut by eval.long_documents (`method` says
  which: whole, chunked, truncated); with chunking, the token counts add up every window and merge round.
- `POST /v1/chat/completions`: the OpenAI shape, plain or `"stream": true` (server-sent events); the last user
  message is the document, the answer is its summary (the training prompt is applied here, so clients send
  only the document). `GET /v1/models` lists the served model.
- `GET /health`: `{"ok": true, "model", ..., "generating", "waiting", "max_queue"}`.

The HTTP side is Starlette on uvicorn: one event loop answers every connection, so concurrent clients are
accepted and read at once. Generation runs one request at a time (one model in memory) in a worker thread;
the others wait in a queue of at most `max_queue` requests, served shortest-first with a bound (Queue), and one
more gets a 503 with Retry-After
instead of a reset connection. A bad request gets a JSON 4xx (`{"error": "..."}`; on /v1 routes the OpenAI
shape `{"error": {"message", "type", "code", "param"}}`, which the openai client raises as an APIError)
and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import math
import socket
import threading
import time
from importlib import resources
from typing import Optional

import anyio
import h11
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..errors import UserError
from ..models.generation import default_max_new_tokens, summarize_texts
from ..redaction import redact
from ..stats import percentile
from ..untrusted import clean_text, loads

log = logging.getLogger("llm_summarizer.serve")

# JSON escapes a character in at most 6 bytes (\uXXXX); the rest leaves room for the other fields of a request.
_BYTES_PER_CHAR = 6
_BODY_SLACK = 1 << 20

_REASONS = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    500: "internal_error",
    503: "busy",
}


class Refusal(Exception):
    """A request this server answers with an error status and a message (a 4xx, or 503 when busy)."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = int(status)
        self.headers = headers or {}


class Summarizer:
    """The loaded model behind the routes; one generation at a time."""

    def __init__(self, loaded, compare_base: bool, max_chars: int):
        self.loaded = loaded
        self.compare_base = compare_base
        self.max_chars = max_chars
        self.max_new_tokens = default_max_new_tokens(loaded)[0]
        self.lock = threading.Lock()
        self.name = loaded.info.path.name
        self.created = int(loaded.info.path.stat().st_mtime)  # read once: the folder may move while serving
        self.last_seconds = 1.0  # the last request's generation time: what Retry-After is estimated from

    def check(self, document) -> str:
        if not isinstance(document, str):
            raise Refusal(400, "'document' must be a string with the text to summarize")
        if not document.strip():
            raise Refusal(400, "the document is empty")
        if len(document) > self.max_chars:
            raise Refusal(
                413,
                f"the document has {len(document)} characters; this server takes at most "
                f"{self.max_chars} (--max-chars)",
            )
        return clean_text(document)[0]  # lone surrogates and NUL, as every reader replaces them

    def _one(self, model, document: str) -> dict:
        t0 = time.perf_counter()
        (g,) = summarize_texts(self.loaded, [document], self.max_new_tokens, model=model, names=["the document"])
        if g.tree is None:
            prompt_tokens = len(self.loaded.formatter.generation_prompt(document, self.max_new_tokens)[0])
            generated = g.new_tokens
        else:  # chunked (eval.long_documents): every window's and merge round's prompt, and all they generated
            prompt_tokens = sum(
                p["input_tokens"] + self.loaded.formatter.template_tokens for r in g.tree["rounds"] for p in r
            )
            generated = g.tree["generated_tokens"]
        out = {
            "summary": g.text,
            "seconds": round(time.perf_counter() - t0, 3),
            "method": g.method,
            "truncated_input": g.truncated_input,
            "hit_max_new_tokens": g.hit_max,
            "new_tokens": generated,
            "prompt_tokens": prompt_tokens,
        }
        if g.tree is not None:
            out["chunks"] = g.tree
        return out

    def summarize(self, document: str, with_base: Optional[bool] = None) -> dict:
        document = self.check(document)
        with self.lock:
            t0 = time.perf_counter()
            try:
                out = self._one(self.loaded.model, document)
                if self.compare_base if with_base is None else with_base:
                    with self.loaded.base_model() as base:
                        out["base"] = self._one(base, document)
            except UserError as e:  # e.g. more windows than eval.max_chunks: the request's fault, not the server's
                raise Refusal(400, str(e)) from None
            self.last_seconds = time.perf_counter() - t0
        return out


class Queue:
    """Requests take turns at the model, one generating at a time, at most `max_waiting` waiting, more refused.

    The next turn goes to the waiting request whose arrival time plus estimated work (its length times the seconds
    per character the last requests took) is smallest: a short request is not held for minutes behind long ones
    that came a moment earlier, and no request waits forever, since one arriving later than an earlier request's
    arrival plus that request's own estimated work never goes before it. The waits are kept for /health."""

    def __init__(self, max_waiting: int):
        self.max_waiting = max_waiting
        self.generating = False
        self._waiters: list = []  # heap of [priority, seq, future, arrived]
        self._seq = 0
        self.seconds_per_char = 1e-4  # learned from each finished request (an exponential mean)
        self.recent_waits: list[float] = []  # the last 200 waits, seconds

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w[2].done())

    def oldest_wait(self) -> float:
        now = time.monotonic()
        return max((now - w[3] for w in self._waiters if not w[2].done()), default=0.0)

    def waits(self) -> dict:
        w = sorted(self.recent_waits)
        pick = lambda q: round(percentile(w, q), 3) if w else None  # noqa: E731
        return {"recent": len(w), "p50_s": pick(0.5), "p95_s": pick(0.95), "max_s": round(w[-1], 3) if w else None}

    def _grant_next(self) -> None:
        while self._waiters:
            _, _, fut, _ = heapq.heappop(self._waiters)
            if not fut.done():  # a waiter whose client left is skipped
                fut.set_result(True)
                return
        self.generating = False

    @contextlib.asynccontextmanager
    async def turn(self, retry_seconds: float, chars: int = 0):
        busy = self.generating or self.waiting > 0  # a released turn passes to a waiter, never a newcomer
        if busy and self.waiting >= self.max_waiting:
            after = max(1, math.ceil(retry_seconds * (self.waiting + 1)))
            raise Refusal(
                503,
                f"the model is busy: {self.waiting} request(s) are already waiting "
                f"(--max-queue {self.max_waiting}); retry in about {after} s",
                headers={"Retry-After": str(after)},
            )
        arrived = time.monotonic()
        if busy:
            fut = asyncio.get_running_loop().create_future()
            self._seq += 1
            heapq.heappush(self._waiters, [arrived + chars * self.seconds_per_char, self._seq, fut, arrived])
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # the turn was ours already: pass it on
                    self._grant_next()
                else:
                    fut.cancel()
                raise
        else:
            self.generating = True
        waited = time.monotonic() - arrived
        self.recent_waits = (self.recent_waits + [waited])[-200:]
        if waited > 1:
            log.info(
                "a request of %d characters waited %.1f s for its turn (%d still waiting)", chars, waited, self.waiting
            )
        t0 = time.monotonic()
        try:
            yield
        finally:
            if chars > 0:
                took = (time.monotonic() - t0) / chars
                self.seconds_per_char = 0.7 * self.seconds_per_char + 0.3 * took
            self._grant_next()


def page() -> bytes:
    return resources.files(__package__).joinpath("page.html").read_bytes()


def _text(content, where: str, required: bool) -> str:
    """The text of a message's content: a string, or a list of {"type": "text", "text": "..."} parts."""
    if isinstance(content, str):
        return content
    if content is None and not required:
        return ""
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type", "text") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise Refusal(
                    400,
                    f'{where}.content[{j}]: only text parts are read ({{"type": "text", "text": "..."}}), got {kind!r}',
                )
            if not isinstance(part.get("text"), str):
                raise Refusal(400, f"{where}.content[{j}].text must be a string")
            texts.append(part["text"])
        return "".join(texts)
    raise Refusal(400, f"{where}.content must be a string or a list of text parts, not {type(content).__name__}")


def chat_document(body: dict) -> str:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise Refusal(400, "'messages' must be a non-empty list of {role, content}")
    document = None
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise Refusal(400, f"messages[{i}] must be an object with a string 'role' and a 'content'")
        text = _text(m.get("content"), f"messages[{i}]", required=m["role"] == "user")
        if m["role"] == "user":
            document = text
    if document is None:
        raise Refusal(400, "no message with role 'user': its content is the document")
    return document


def _chat_options(body: dict) -> tuple[bool, bool]:
    """(stream, include_usage) from a chat request; other sampling fields are not used (see the README)."""
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise Refusal(400, "'stream' must be true or false")
    if body.get("n") not in (None, 1):
        raise Refusal(400, "'n': this server writes one summary per request (n=1)")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise Refusal(400, "'stream_options' must be an object")
    return bool(stream), bool(opts.get("include_usage"))


def _error(path: str, status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    message = redact(message)
    if path.startswith("/v1/"):
        body = {
            "error": {
                "message": message,
                "type": "server_error" if status >= 500 else "invalid_request_error",
                "code": _REASONS.get(status, str(status)),
                "param": None,
            }
        }
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store", **(headers or {})})


async def _http_error(request: Request, exc: HTTPException) -> Response:
    path = request.url.path
    if exc.status_code == 404:
        hint = (
            "GET /v1/models, POST /v1/chat/completions"
            if path.startswith("/v1/")
            else "GET /, GET /health, POST /summarize, POST /v1/chat/completions"
        )
        message = f"no route {path}; try {hint}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {path}; use {(exc.headers or {}).get('Allow', 'another method')}"
    else:
        message = exc.detail
    return _error(path, exc.status_code, message, exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """The server's own failure outside a route's handling: JSON like every other answer, never plain text."""
    log.error("%s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, redact(str(exc))[:300])
    return _error(request.url.path, 500, f"the server failed ({type(exc).__name__}); see its log")


class _AccessLog:
    """One line per request in our log: client, method, path (never the query string or headers), status, time."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), ["-"]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            client = (scope.get("client") or ("-",))[0]
            log.info(
                "%s %s %s %s %.2f s",
                client,
                scope["method"],
                redact(scope["path"]),
                status[0],
                time.perf_counter() - t0,
            )


class _JSON400(H11Protocol):
    """uvicorn's answer to a request it cannot parse (a bad Content-Length, a broken request line) is plain
    text; ours is the same 400 as JSON, so every client reads errors one way."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(
            {
                "error": "the request is not valid HTTP/1.1 (its request line or a header such as "
                "Content-Length or Transfer-Encoding could not be read)"
            }
        ).encode()
        for event in (
            h11.Response(
                status_code=400,
                reason=b"Bad Request",
                headers=[
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            ),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event))
        self.transport.close()


class App:
    """The routes over one Summarizer; `server` (set by `make_server`) tells when a shutdown began."""

    def __init__(self, summarizer: Summarizer, max_queue: int):
        self.s = summarizer
        self.queue = Queue(max_queue)
        self.max_body = summarizer.max_chars * _BYTES_PER_CHAR + _BODY_SLACK
        self.server: Optional[uvicorn.Server] = None
        routes = [
            Route("/", self.index, methods=["GET"]),
            Route("/index.html", self.index, methods=["GET"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/summarize", self.summarize, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/models/{model:path}", self.model, methods=["GET"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
        ]
        self.asgi = Starlette(
            routes=routes,
            middleware=[Middleware(_AccessLog)],
            exception_handlers={HTTPException: _http_error, Exception: _server_error},
        )

    # -- plumbing ------------------------------------------------------------------------------------
    async def _body(self, request: Request) -> dict:
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > self.max_body:
            raise Refusal(
                413,
                f"the request body has {n} bytes; this server reads at most {self.max_body} "
                f"(--max-chars {self.s.max_chars})",
            )
        raw = bytearray()
        async for chunk in request.stream():  # a Content-Length body or a chunked one alike
            raw += chunk
            if len(raw) > self.max_body:
                raise Refusal(413, f"the request body is over {self.max_body} bytes (--max-chars {self.s.max_chars})")
        try:
            text = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise Refusal(400, "the body is not UTF-8") from None
        try:
            body = loads(text, "the body")
        except UserError as e:
            raise Refusal(
                400,
                f'the body is not JSON that can be read ({e}); send {{"document": "..."}} with Content-Type: '
                "application/json",
            ) from None
        if not isinstance(body, dict):
            raise Refusal(400, "the body must be a JSON object")
        return body

    async def _generate(self, request: Request, document: str, with_base: Optional[bool]) -> Optional[dict]:
        """The summary, after this request's turn in the queue; None when the client left before its turn."""
        document = self.s.check(document)  # a bad document is refused before it waits
        async with self.queue.turn(self.s.last_seconds, len(document)):
            if self.server is not None and self.server.should_exit:
                raise Refusal(503, "the server is shutting down", headers={"Retry-After": "5"})
            if await request.is_disconnected():
                return None
            return await anyio.to_thread.run_sync(self.s.summarize, document, with_base)

    async def _answer(self, request: Request, work) -> Response:
        try:
            return await work()
        except Refusal as e:
            return _error(request.url.path, e.status, str(e), e.headers)
        except ClientDisconnect:
            return _gone()
        except Exception as e:  # noqa: BLE001 - a failed generation must not stop the server
            log.exception("%s %s failed", request.method, request.url.path)
            return _error(request.url.path, 500, f"{type(e).__name__}: {e}")

    # -- routes --------------------------------------------------------------------------------------
    async def index(self, request: Request) -> Response:
        return HTMLResponse(page(), headers={"Cache-Control": "no-store"})

    async def health(self, request: Request) -> Response:
        s, q = self.s, self.queue
        return JSONResponse(
            {
                "ok": True,
                "model": s.name,
                "compare_base": s.compare_base,
                "max_chars": s.max_chars,
                "max_new_tokens": s.max_new_tokens,
                "generating": q.generating,
                "waiting": q.waiting,
                "max_queue": q.max_waiting,
                "longest_waiting_s": round(q.oldest_wait(), 3),
                "waits": q.waits(),
            },
            headers={"Cache-Control": "no-store"},
        )

    async def summarize(self, request: Request) -> Response:
        async def work():
            body = await self._body(request)
            out = await self._generate(request, body.get("document"), None)
            return _gone() if out is None else JSONResponse(out, headers={"Cache-Control": "no-store"})

        return await self._answer(request, work)

    def _model_card(self) -> dict:
        return {"id": self.s.name, "object": "model", "created": self.s.created, "owned_by": "llm-summarizer"}

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name != self.s.name:
            return _error(request.url.path, 404, f"no model {name!r} here; this server serves {self.s.name!r}")
        return JSONResponse(self._model_card())

    async def chat(self, request: Request) -> Response:
        async def work():
            body = await self._body(request)
            stream, include_usage = _chat_options(body)
            out = await self._generate(request, chat_document(body), False)
            if out is None:
                return _gone()
            ident, created = f"chatcmpl-{time.time_ns()}", int(time.time())
            finish = "length" if out["hit_max_new_tokens"] else "stop"
            usage = {
                "prompt_tokens": out["prompt_tokens"],
                "completion_tokens": out["new_tokens"],
                "total_tokens": out["prompt_tokens"] + out["new_tokens"],
            }
            if not stream:
                return JSONResponse(
                    {
                        "id": ident,
                        "object": "chat.completion",
                        "created": created,
                        "model": self.s.name,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": out["summary"]},
                                "logprobs": None,
                                "finish_reason": finish,
                            }
                        ],
                        "usage": usage,
                    },
                    headers={"Cache-Control": "no-store"},
                )
            return StreamingResponse(
                _events(ident, created, self.s.name, out["summary"], finish, usage if include_usage else None),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        return await self._answer(request, work)


def _gone() -> Response:
    # The client closed its connection: nothing reads this answer (499 as nginx logs it).
    return Response(status_code=499)


async def _events(ident: str, created: int, model: str, text: str, finish: str, usage: Optional[dict]):
    """The OpenAI chunk sequence as server-sent events. Generation is not token-streamed, so the summary comes
    as one content chunk, after the role chunk and before the finish chunk (and the usage chunk when asked)."""

    def chunk(choices, **extra):
        return (
            "data: "
            + json.dumps(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": choices,
                    **extra,
                },
                ensure_ascii=False,
            )
            + "\n\n"
        )

    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}])
    yield chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish}])
    if usage is not None:
        yield chunk([], usage=usage)
    yield "data: [DONE]\n\n"


class Served:
    """A listening server: `address` is known before `run()` (so `--port 0` can be printed); `run()` blocks until
    Ctrl-C / SIGTERM in the main thread, or `stop()` from another thread."""

    def __init__(self, app: App, sock: socket.socket, server: uvicorn.Server):
        self.app, self.sock, self.server = app, sock, server

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.sock.close()

    def stop(self) -> None:
        self.server.should_exit = True


def make_server(summarizer: Summarizer, host: str, port: int, max_queue: int) -> Served:
    """Bind host:port now (an OSError says why not) and prepare the server; nothing is served before run()."""
    app = App(summarizer, max_queue)
    config = uvicorn.Config(
        app.asgi,
        http=_JSON400,
        ws="none",
        lifespan="off",
        loop="asyncio",
        log_config=None,
        access_log=False,
        server_header=False,
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=config.backlog)
    # uvicorn's own loggers: problems only, in our log format (its start-up lines would repeat our URL line)
    ours = logging.getLogger("llm_summarizer")
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.WARNING)
        if ours.handlers:
            lg.handlers, lg.propagate = list(ours.handlers), False
    server = uvicorn.Server(config)
    app.server = server
    return Served(app, sock, server)
