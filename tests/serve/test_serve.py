"""llm-summarizer serve: the JSON API under concurrent and bad requests, and the page in a real headless browser."""

import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import ROOT, read_jsonl

DOCS = [r["document"] for r in read_jsonl(ROOT / "data" / "demo" / "test.jsonl")[:6]]


def _post(url: str, body, raw: bool = False, timeout: float = 300):
    data = body if raw else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(tiny_run):
    p = subprocess.Popen([sys.executable, "-m", "llm_summarizer", "serve", "--model", str(tiny_run.model_dir),
                          "--compare-base", "--port", "0", "--max-chars", "5000"], cwd=ROOT,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url, deadline = None, time.time() + 300
    while time.time() < deadline and url is None:
        line = p.stdout.readline()
        if not line:
            break
        m = re.search(r"on (http://[\d.]+:\d+)/", line)
        url = m.group(1) if m else None
    if url is None:
        p.kill()
        pytest.fail("the server did not start: " + p.stderr.read()[-3000:])
    yield url
    p.terminate()
    p.wait(timeout=30)


def test_api_answers_concurrent_requests_each_with_its_own_summary(server):
    status, one = _post(server + "/summarize", {"document": DOCS[0]})
    assert status == 200 and one["summary"].strip() and one["seconds"] > 0
    assert one["base"]["summary"] != one["summary"]  # --compare-base: the adapter switched off writes otherwise
    alone = {d: _post(server + "/summarize", {"document": d})[1]["summary"] for d in DOCS[:3]}
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda d: _post(server + "/summarize", {"document": d}), DOCS[:3] * 2))
    for d, (status, body) in zip(DOCS[:3] * 2, answers):
        assert status == 200 and body["summary"] == alone[d]  # greedy: the same answer, whatever ran beside it
    status, chat = _post(server + "/v1/chat/completions",
                         {"model": "x", "messages": [{"role": "system", "content": "ignored"},
                                                     {"role": "user", "content": DOCS[0]}]})
    assert status == 200 and chat["choices"][0]["message"]["content"] == one["summary"]
    with urllib.request.urlopen(server + "/health", timeout=30) as r:
        assert json.loads(r.read())["ok"] is True


def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(server):
    cases = [(b"{not json", True, 400, "not JSON"), ({"text": "x"}, False, 400, "'document' must be a string"),
             ({"document": "   "}, False, 400, "empty"), ({"document": "word " * 2000}, False, 413, "at most 5000"),
             ([1, 2], False, 400, "JSON object"), ({"messages": []}, False, 400, None)]
    for body, raw, code, words in cases:
        path = "/v1/chat/completions" if isinstance(body, dict) and "messages" in body else "/summarize"
        status, answer = _post(server + path, body, raw=raw)
        assert status == code and (words is None or words in answer["error"]), (body, status, answer)
    status, answer = _post(server + "/nowhere", {"document": "x"})
    assert status == 404 and "POST /summarize" in answer["error"]
    status, ok = _post(server + "/summarize", {"document": DOCS[1]})
    assert status == 200 and ok["summary"].strip()


def _chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian's chromium is not installed (scripts/test.sh installs it where apt-get works as root)")
    return path


async def _in_browser(chromium: str, url: str, document: str, profile) -> dict:
    import aiohttp  # its websocket client speaks the DevTools protocol

    proc = await asyncio.create_subprocess_exec(
        chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
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
                ids = iter(range(1, 10 ** 6))

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
                            "document.getElementById('model').textContent") not in ("…", None):
                        break
                    await asyncio.sleep(0.1)
                await js(f"document.getElementById('document').value = {json.dumps(document)}")
                await js("document.getElementById('go').click()")
                for _ in range(3000):
                    if await js("document.getElementById('status').textContent") in ("done", ""):
                        if await js("document.getElementById('summary').textContent"):
                            break
                    await asyncio.sleep(0.1)
                return {k: await js(f"document.getElementById('{k}').textContent")
                        for k in ("model", "summary", "summary-meta", "base", "error")} | {
                    "base_hidden": await js("document.getElementById('base-card').hidden")}
    finally:
        proc.kill()
        await proc.wait()


def test_page_in_a_headless_browser_shows_the_summary_and_the_base(server, tiny_run, tmp_path):
    chromium = _chromium()
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
