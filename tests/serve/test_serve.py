"""llm-summarizer serve: the JSON API under concurrent, malformed and OpenAI-client requests, a full queue,
Ctrl-C, and the page in a real headless browser. All requests go to 127.0.0.1."""

import asyncio
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import ROOT, read_jsonl

DOCS = [r["document"] for r in read_jsonl(ROOT / "data" / "demo" / "test.jsonl")[:6]]
SECRET_KEY = "sk-serve-test-0a1b2c3d4e5f"  # what an OpenAI client sends as its API key: never in the server's log


def _request(url: str, body=None, method: str = "POST", raw: bool = False, timeout: float = 300):
    data = None if body is None else body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def _post(url: str, body, raw: bool = False, timeout: float = 300):
    status, _, answer = _request(url, body, raw=raw, timeout=timeout)
    return status, answer


class _Server:
    """One `llm-summarizer serve` process for the module, started again if a test stopped it (Ctrl-C test)."""

    def __init__(self, model_dir, log_dir):
        self.model_dir, self.log_dir, self.proc, self.url, self.starts = model_dir, log_dir, None, None, 0

    def get(self) -> "_Server":
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        return self

    def _start(self):
        self.starts += 1
        self.log = self.log_dir / f"stderr-{self.starts}.log"
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llm_summarizer",
                    "serve",
                    "--model",
                    str(self.model_dir),
                    "--compare-base",
                    "--port",
                    "0",
                    "--max-chars",
                    "5000",
                    "eval.max_window_tokens=256",  # the tiny model's training length: long documents are chunked
                ],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.url, deadline = None, time.time() + 300
        while time.time() < deadline and self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"on (http://[\d.]+:\d+)/", line)
            self.url = m.group(1) if m else None
        if self.url is None:
            self.proc.kill()
            pytest.fail("the server did not start: " + self.log.read_text()[-3000:])

    def stderr(self) -> str:
        return self.log.read_text()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def servers(tiny_run, tmp_path_factory):
    s = _Server(tiny_run.model_dir, tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


@pytest.fixture
def server(servers):
    return servers.get()


def test_api_answers_concurrent_requests_each_with_its_own_summary(server):
    server = server.url
    status, one = _post(server + "/summarize", {"document": DOCS[0]})
    assert status == 200 and one["summary"].strip() and one["seconds"] > 0
    assert one["base"]["summary"] != one["summary"]  # --compare-base: the adapter switched off writes otherwise
    alone = {d: _post(server + "/summarize", {"document": d})[1]["summary"] for d in DOCS[:3]}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda d: _post(server + "/summarize", {"document": d}), DOCS[:3] * 2))
    for d, (status, body) in zip(DOCS[:3] * 2, answers):
        assert status == 200 and body["summary"] == alone[d]  # greedy: the same answer, whatever ran beside it
    status, chat = _post(
        server + "/v1/chat/completions",
        {"model": "x", "messages": [{"role": "system", "content": "ignored"}, {"role": "user", "content": DOCS[0]}]},
    )
    assert status == 200 and chat["choices"][0]["message"]["content"] == one["summary"]
    with urllib.request.urlopen(server + "/health", timeout=30) as r:
        assert json.loads(r.read())["ok"] is True


def test_a_long_document_is_chunked_and_its_tree_comes_back(server):
    long_doc = "\n".join(r["document"] for r in read_jsonl(ROOT / "data" / "demo" / "test.jsonl")[:14])
    assert len(long_doc) < 5000  # under --max-chars, far over the tiny model's 256-token window
    status, out = _post(server.url + "/summarize", {"document": long_doc})
    assert status == 200 and out["method"] == "chunked" and out["summary"] == out["chunks"]["rounds"][-1][0]["summary"]
    assert out["chunks"]["windows"] >= 3 and out["new_tokens"] == out["chunks"]["generated_tokens"]
    assert out["base"]["method"] == "chunked"  # --compare-base: the base reads the same windows
    status, short = _post(server.url + "/summarize", {"document": DOCS[0]})
    assert short["method"] == "whole" and "chunks" not in short


def test_too_many_windows_is_a_400_with_the_reason(tiny_run):
    from llm_summarizer.models.loading import load_for_generation
    from llm_summarizer.serve.server import Refusal, Summarizer

    s = Summarizer(
        load_for_generation(tiny_run.model_dir, overrides=["eval.max_chunks=2", "eval.max_window_tokens=256"]),
        False,
        100_000,
    )
    with pytest.raises(Refusal) as e:
        s.summarize("\n".join(DOCS * 3))
    assert e.value.status == 400 and "windows of at most" in str(e.value) and "eval.max_chunks=2" in str(e.value)
    assert s.summarize(DOCS[0])["method"] == "whole"  # and it goes on serving


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server):
    server = server.url
    cases = [
        (b"{not json", True, 400, "not JSON"),
        ({"text": "x"}, False, 400, "'document' must be a string"),
        ({"document": "   "}, False, 400, "empty"),
        ({"document": "word " * 2000}, False, 413, "at most 5000"),
        ([1, 2], False, 400, "JSON object"),
        ({"messages": []}, False, 400, None),
    ]
    for body, raw, code, words in cases:
        path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/summarize"
        status, answer = _post(server + path, body, raw=raw)
        assert status == code and (words is None or words in answer["error"]), (body, status, answer)
    status, answer = _post(server + "/nowhere", {"document": "x"})
    assert status == 404 and "POST /summarize" in answer["error"]
    status, ok = _post(server + "/summarize", {"document": DOCS[1]})
    assert status == 200 and ok["summary"].strip()


def test_the_official_openai_client_lists_the_model_chats_and_streams(server):
    import openai  # the official client, from the test extra

    client = openai.OpenAI(base_url=server.url + "/v1", api_key=SECRET_KEY, max_retries=0, timeout=300)
    assert [m.id for m in client.models.list()] == [server.model_dir.name]
    messages = [{"role": "system", "content": "ignored"}, {"role": "user", "content": DOCS[3]}]
    plain = client.chat.completions.create(model=server.model_dir.name, messages=messages)
    text = plain.choices[0].message.content
    assert text and text == _post(server.url + "/summarize", {"document": DOCS[3]})[1]["summary"]
    u = plain.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    chunks = list(
        client.chat.completions.create(
            model=server.model_dir.name, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len(chunks) >= 3 and "".join(deltas) == text  # the same answer, as server-sent events
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == u.total_tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": " "}])
    assert e.value.status_code == 400 and "the document is empty" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": " "}], stream=True)
    assert "the document is empty" in e.value.message
    assert SECRET_KEY not in server.stderr()


def test_36_concurrent_clients_are_all_answered_none_reset(server):
    n = 36
    barrier = threading.Barrier(n)
    want = _post(server.url + "/v1/chat/completions", {"messages": [{"role": "user", "content": DOCS[4]}]})[1]

    def client(i):
        barrier.wait()  # all connect at once: more than any listen queue of 5 holds
        path = "/summarize" if i % 12 == 0 else "/v1/chat/completions"  # /summarize also runs the base model
        body = {"document": DOCS[4]} if path == "/summarize" else {"messages": [{"role": "user", "content": DOCS[4]}]}
        try:
            status, answer = _post(server.url + path, body, timeout=600)
        except OSError as e:  # a reset or refused connection
            return path, repr(e), None
        return path, status, answer

    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(client, range(n)))
    assert [r[1] for r in results] == [200] * n, results
    for path, _, answer in results:
        got = answer["summary"] if path == "/summarize" else answer["choices"][0]["message"]["content"]
        assert got == want["choices"][0]["message"]["content"]
    assert "Traceback" not in server.stderr()


def _raw(url: str, data: bytes, close_after: float | None = None):
    """Send bytes as they are; (status, headers, body) of the answer, or None when we hang up after close_after s."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=300) as sock:
        sock.sendall(data)
        if close_after is not None:
            time.sleep(close_after)
            return None
        buf = b""
        while chunk := sock.recv(65536):
            buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _http(method: str, path: str, body: bytes = b"", headers: str = "") -> bytes:
    length = (
        ""
        if "content-length" in headers.lower() or "transfer-encoding" in headers.lower()
        else f"Content-Length: {len(body)}\r\n"
    )
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}{length}"
        f"Content-Type: application/json\r\n\r\n"
    ).encode() + body


def test_malformed_requests_and_hang_ups_get_json_4xx_and_no_traceback(server):
    url = server.url
    for headers in ("Content-Length: -5\r\n", "Content-Length: abc\r\n"):
        status, h, body = _raw(url, _http("POST", "/summarize", b'{"document": "x"}', headers))
        assert status == 400 and h["content-type"].startswith("application/json"), (headers, status, body)
        assert "Content-Length" in json.loads(body)["error"]
    doc = json.dumps({"document": DOCS[5]}).encode()
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (doc[:40], doc[40:])) + b"0\r\n\r\n"
    status, _, body = _raw(url, _http("POST", "/summarize", chunked, "Transfer-Encoding: chunked\r\n"))
    assert (
        status == 200 and json.loads(body)["summary"] == _post(url + "/summarize", {"document": DOCS[5]})[1]["summary"]
    )
    for content, words in (
        ([{"type": "text", "text": 5}], "messages[0].content[0].text must be a string"),
        (42, "messages[0].content must be a string or a list of text parts"),
        ([{"type": "image_url", "image_url": {"url": "x"}}], "only text parts"),
    ):
        status, _, body = _raw(
            url,
            _http(
                "POST",
                "/v1/chat/completions",
                json.dumps({"messages": [{"role": "user", "content": content}]}).encode(),
            ),
        )
        err = json.loads(body)["error"]
        assert status == 400 and words in err["message"] and err["type"] == "invalid_request_error", body
    for method, path in (("PUT", "/summarize"), ("DELETE", "/summarize"), ("DELETE", "/v1/chat/completions")):
        status, h, body = _raw(url, _http(method, path))
        err = json.loads(body)["error"]
        assert status == 405 and "POST" in h["allow"] and method in (err if isinstance(err, str) else err["message"])
    status, h, body = _raw(url, _http("HEAD", "/summarize"))
    assert status == 405 and body == b"" and "POST" in h["allow"]
    status, h, body = _raw(url, _http("HEAD", "/"))
    assert status == 200 and h["content-type"].startswith("text/html") and body == b""
    status, _, body = _raw(url, _http("POST", "/summarize", headers="Content-Length: 999999999\r\n"))
    assert status == 413 and "--max-chars 5000" in json.loads(body)["error"]  # answered before any body is sent
    _raw(url, _http("POST", "/summarize", b'{"docu', "Content-Length: 1000\r\n"), close_after=0.2)  # mid-body
    _raw(url, _http("POST", "/summarize", json.dumps({"document": DOCS[0]}).encode()), close_after=0.05)  # mid-work
    status, ok = _post(url + "/summarize", {"document": DOCS[1]})
    assert status == 200 and ok["summary"].strip()
    log = server.stderr()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def test_a_full_queue_answers_503_with_retry_after_and_the_waiting_are_served(tiny_run):
    from llm_summarizer.models.loading import load_for_generation
    from llm_summarizer.serve.server import Summarizer, make_server

    summarizer = Summarizer(load_for_generation(tiny_run.model_dir), False, 5000)
    served = make_server(summarizer, "127.0.0.1", 0, max_queue=1)
    url = "http://%s:%d" % served.address
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()

    def health():
        return _request(url + "/health", method="GET", timeout=30)[2]

    def until(cond):
        for _ in range(600):
            if cond(health()):
                return
            time.sleep(0.05)
        raise AssertionError(health())

    body = {"document": DOCS[0]}
    try:
        with ThreadPoolExecutor(2) as pool:
            with summarizer.lock:  # the model is busy: the first request holds the turn, the second waits
                first = pool.submit(_post, url + "/summarize", body)
                until(lambda h: h["generating"])
                second = pool.submit(_post, url + "/summarize", body)
                until(lambda h: h["waiting"] == 1)
                status, headers, answer = _request(url + "/summarize", body)
                assert status == 503 and int(headers["Retry-After"]) >= 1 and "--max-queue 1" in answer["error"]
                status, _, answer = _request(
                    url + "/v1/chat/completions", {"messages": [{"role": "user", "content": DOCS[0]}]}
                )
                assert status == 503 and answer["error"]["code"] == "busy" and answer["error"]["message"]
            results = [first.result(), second.result()]
        assert [s for s, _ in results] == [200, 200] and results[0][1]["summary"] == results[1][1]["summary"]
        assert health()["waiting"] == 0
    finally:
        served.stop()
        thread.join(60)
    assert not thread.is_alive()


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it where apt-get works as root)")
    return path


async def _in_browser(chromium: str, url: str, document: str, profile) -> dict:
    import aiohttp  # its websocket client speaks the DevTools protocol

    proc = await asyncio.create_subprocess_exec(
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "about:blank",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        ws_url = None
        while ws_url is None:
            line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            if not line:
                raise AssertionError("chromium exited before DevTools listened")
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            ws_url = m.group(1) if m else None
        port = re.search(r":(\d+)/", ws_url).group(1)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as r:
                target = next(t for t in await r.json() if t["type"] == "page")
            async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                ids = iter(range(1, 10**6))

                async def call(method, **params):
                    i = next(ids)
                    await ws.send_json({"id": i, "method": method, "params": params})
                    while True:
                        msg = await ws.receive_json()
                        if msg.get("id") == i:
                            assert "error" not in msg, msg
                            return msg.get("result", {})

                async def js(expr):
                    res = await call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
                    return res["result"].get("value")

                await call("Page.navigate", url=url + "/")
                for _ in range(200):
                    if await js("document.readyState") == "complete" and await js(
                        "document.getElementById('model').textContent"
                    ) not in ("…", None):
                        break
                    await asyncio.sleep(0.1)
                await js(f"document.getElementById('document').value = {json.dumps(document)}")
                await js("document.getElementById('go').click()")
                for _ in range(3000):
                    if await js("document.getElementById('status').textContent") in ("done", ""):
                        if await js("document.getElementById('summary').textContent"):
                            break
                    await asyncio.sleep(0.1)
                return {
                    k: await js(f"document.getElementById('{k}').textContent")
                    for k in ("model", "summary", "summary-meta", "base", "error")
                } | {"base_hidden": await js("document.getElementById('base-card').hidden")}
    finally:
        proc.kill()
        await proc.wait()


def test_page_in_a_headless_browser_shows_the_summary_and_the_base(server, tiny_run, tmp_path):
    chromium = _chromium()
    server = server.url
    want = _post(server + "/summarize", {"document": DOCS[2]})[1]
    got = asyncio.run(_in_browser(chromium, server, DOCS[2], tmp_path / "profile"))
    assert got["error"] == "" and got["model"] == tiny_run.model_dir.name
    assert got["summary"] == want["summary"] and got["base"] == want["base"]["summary"]
    assert got["base_hidden"] is False and re.search(r"\d+\.\d\d s · \d+ tokens", got["summary-meta"])


def test_serve_refuses_bad_arguments_with_one_message(tiny_run, tmp_path):
    from tests.conftest import run_cli

    r = run_cli("serve", "--model", tmp_path / "nothing-here")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "nothing-here" in r.stderr
    r = run_cli("serve", "--model", tiny_run.model_dir, "--port", "70000")
    assert r.returncode == 2 and "--port 70000" in r.stderr


# Last in the module: it stops the module's server (a test after it would start a new one).
def test_ctrl_c_finishes_the_summary_in_progress_then_exits_0_with_one_line(server):
    proc = server.proc
    with ThreadPoolExecutor(2) as pool:
        busy = pool.submit(_post, server.url + "/summarize", {"document": DOCS[2]})
        for _ in range(600):
            if _request(server.url + "/health", method="GET", timeout=30)[2]["generating"]:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        status, answer = busy.result(timeout=120)
    assert status == 200 and answer["summary"].strip()  # not cut off by the stop
    out, _ = proc.communicate(timeout=120)
    log = server.stderr()
    assert proc.returncode == 0 and out.strip().splitlines()[-1] == "stopped", (proc.returncode, out, log[-2000:])
    assert "Traceback" not in log and "KeyboardInterrupt" not in log, log[-3000:]
    host, port = server.url.removeprefix("http://").split(":")
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=5).close()
