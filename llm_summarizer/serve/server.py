"""A local HTTP server for trying a fine-tuned model: a page and a JSON API over one loaded model.

Routes:
- `GET /`: the page (paste or upload a document; the fine-tuned summary and, with --compare-base, the base
  model's beside it, each with its generation time).
- `POST /summarize` `{"document": "..."}` -> `{"summary", "seconds", "truncated_input", "hit_max_new_tokens",
  "base": {...} (with --compare-base)}`.
- `POST /v1/chat/completions`: the OpenAI shape; the last user message is the document, the answer is its
  summary (the training prompt is applied here, so clients send only the document).
- `GET /health`: `{"ok": true, "model": ...}`.

Requests are answered concurrently; generation runs one at a time (one model in memory) under a lock.
A bad request (not JSON, no document, an empty or too long one, an unknown route) gets a 4xx with
`{"error": "..."}` and the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Optional

from ..models.generation import default_max_new_tokens, summarize_texts

log = logging.getLogger("llm_summarizer.serve")

MAX_BODY = 8 * 1024 * 1024  # bytes of one request


class BadRequest(Exception):
    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class Summarizer:
    """The loaded model behind the routes; one generation at a time."""

    def __init__(self, loaded, compare_base: bool, max_chars: int):
        self.loaded = loaded
        self.compare_base = compare_base
        self.max_chars = max_chars
        self.max_new_tokens = default_max_new_tokens(loaded)[0]
        self.lock = threading.Lock()
        self.name = loaded.info.path.name

    def check(self, document) -> str:
        if not isinstance(document, str):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "'document' must be a string with the text to summarize")
        if not document.strip():
            raise BadRequest(HTTPStatus.BAD_REQUEST, "the document is empty")
        if len(document) > self.max_chars:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                             f"the document has {len(document)} characters; this server takes at most "
                             f"{self.max_chars} (--max-chars)")
        return document

    def _one(self, model, document: str) -> dict:
        t0 = time.perf_counter()
        (g,) = summarize_texts(self.loaded, [document], self.max_new_tokens, model=model)
        return {"summary": g.text, "seconds": round(time.perf_counter() - t0, 3),
                "truncated_input": g.truncated_input, "hit_max_new_tokens": g.hit_max, "new_tokens": g.new_tokens}

    def summarize(self, document: str, with_base: Optional[bool] = None) -> dict:
        document = self.check(document)
        with self.lock:
            out = self._one(self.loaded.model, document)
            if self.compare_base if with_base is None else with_base:
                with self.loaded.base_model() as base:
                    out["base"] = self._one(base, document)
        return out


def page() -> bytes:
    return resources.files(__package__).joinpath("page.html").read_bytes()


def chat_document(body: dict) -> str:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "'messages' must be a non-empty list of {role, content}")
    users = [m for m in msgs if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise BadRequest(HTTPStatus.BAD_REQUEST, "no message with role 'user': its content is the document")
    content = users[-1].get("content")
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content


class Handler(BaseHTTPRequestHandler):
    """The routes; the Summarizer is the server's (`make_server`)."""

    server_version = "llm-summarizer"

    @property
    def s(self) -> Summarizer:
        return self.server.summarizer  # type: ignore[attr-defined]

    def log_message(self, fmt, *args):  # one line per request in our log, not on stderr raw
        log.info("%s %s", self.address_string(), fmt % args)

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, obj: dict) -> None:
        self._send(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise BadRequest(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "the body is not JSON; send {\"document\": \"...\"} with "
                             "Content-Type: application/json") from None
        if not isinstance(body, dict):
            raise BadRequest(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _guard(self, fn) -> None:
        try:
            fn()
        except BadRequest as e:
            self._json(e.status, {"error": str(e)})
        except Exception as e:  # noqa: BLE001 - a failed generation must not stop the server
            log.exception("request failed")
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{type(e).__name__}: {e}"})

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(HTTPStatus.OK, page(), "text/html; charset=utf-8")
        elif path == "/health":
            self._json(HTTPStatus.OK, {"ok": True, "model": self.s.name, "compare_base": self.s.compare_base,
                                       "max_chars": self.s.max_chars, "max_new_tokens": self.s.max_new_tokens})
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}; try GET /, POST /summarize"})

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path == "/summarize":
            self._guard(lambda: self._json(HTTPStatus.OK, self.s.summarize(self._body().get("document"))))
        elif path == "/v1/chat/completions":
            self._guard(self._chat)
        else:
            self._json(HTTPStatus.NOT_FOUND, {"error": f"no route {path}; try POST /summarize"})

    def _chat(self):
        body = self._body()
        out = self.s.summarize(chat_document(body), with_base=False)
        self._json(HTTPStatus.OK, {
            "id": f"summ-{time.time_ns()}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model") or self.s.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["summary"]},
                         "finish_reason": "length" if out["hit_max_new_tokens"] else "stop"}],
            "usage": {"completion_tokens": out["new_tokens"]}})


def make_server(summarizer: Summarizer, host: str, port: int) -> ThreadingHTTPServer:
    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.summarizer = summarizer  # type: ignore[attr-defined]
    httpd.daemon_threads = True
    return httpd
