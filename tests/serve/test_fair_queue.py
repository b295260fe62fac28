"""The serve queue under load (a stand-in model that takes time in proportion to the document's length, so the
timing is the queue's alone), and the server's answers at the edges: deep JSON, lone surrogates, a model folder
moved while serving. All in process, on 127.0.0.1."""

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .test_serve import DOCS, _post, _request

SECONDS_PER_CHAR = 2e-5  # a 20,000-character document takes 0.4 s


class Sleepy:
    """What the routes use of a Summarizer, generating by sleeping in proportion to the document's length."""

    compare_base, max_chars, max_new_tokens, name, created, last_seconds = False, 10**6, 8, "sleepy", 0, 0.1

    def __init__(self):
        self.lock = threading.Lock()
        self.order: list[int] = []  # the lengths of the documents, in the order they were summarized

    def check(self, document):
        from llm_summarizer.serve.server import Summarizer

        return Summarizer.check(self, document)

    def summarize(self, document, with_base=None):
        with self.lock:
            self.order.append(len(document))
            time.sleep(len(document) * SECONDS_PER_CHAR)
        return {
            "summary": document[:20],
            "seconds": 0.0,
            "method": "whole",
            "truncated_input": False,
            "hit_max_new_tokens": False,
            "new_tokens": 1,
            "prompt_tokens": 1,
        }


@pytest.fixture
def sleepy_server():
    from llm_summarizer.serve.server import make_server

    model = Sleepy()
    served = make_server(model, "127.0.0.1", 0, max_queue=64)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    yield "http://%s:%d" % served.address, model
    served.stop()
    thread.join(30)


def timed_post(url, document):
    t0 = time.perf_counter()
    status, answer = _post(url + "/summarize", {"document": document}, timeout=120)
    return status, time.perf_counter() - t0


def test_a_short_request_is_not_held_behind_six_long_ones(sleepy_server):
    """Six long documents (0.4 s each) arrive, then a short one: first in, first out made it wait for all six (2.4 s
    here; 57.5 s with real 80,000-character documents); now it waits for the one generating at most."""
    url, model = sleepy_server
    long_doc, short_doc = "x" * 20_000, "A short note."
    with ThreadPoolExecutor(7) as pool:
        longs = []
        for _ in range(6):
            longs.append(pool.submit(timed_post, url, long_doc))
            time.sleep(0.02)
        time.sleep(0.1)
        short = pool.submit(timed_post, url, short_doc)
        status, short_s = short.result()
        results = [f.result() for f in longs]
    assert status == 200 and all(s == 200 for s, _ in results)  # every long one answered too
    assert short_s < 0.4 * 1.5 + 0.3, short_s  # at most the one generating, not the six
    assert model.order.index(len(short_doc)) <= 1, model.order
    health = _request(url + "/health", method="GET")[2]
    assert health["waiting"] == 0 and health["waits"]["recent"] == 7 and health["waits"]["max_s"] >= 1.0


def test_short_requests_arriving_all_the_time_never_starve_a_long_one(sleepy_server):
    url, model = sleepy_server
    stop, shorts = threading.Event(), []

    def stream():
        while not stop.is_set():
            shorts.append(timed_post(url, "y" * 2_000))  # 0.04 s each, back to back

    with ThreadPoolExecutor(4) as pool:
        streams = [pool.submit(stream) for _ in range(2)]
        time.sleep(0.2)
        status, long_s = timed_post(url, "z" * 20_000)
        stop.set()
        for f in streams:
            f.result()
    assert status == 200 and long_s < 2.0, long_s  # served within a bound, while shorts kept coming
    assert len(shorts) > 5


def test_json_nested_too_deeply_and_lone_surrogates_get_answers_not_500s(sleepy_server):
    url, model = sleepy_server
    for body in (b"[" * 100_000 + b"]" * 100_000, b'{"document": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        status, _, answer = _request(url + "/summarize", body, raw=True)
        assert status == 400 and "nested too deeply" in answer["error"], answer
        status, _, answer = _request(url + "/v1/chat/completions", body, raw=True)
        assert status == 400 and answer["error"]["type"] == "invalid_request_error", answer
    # a lone surrogate, as JSON escapes it: replaced (U+FFFD) and summarized
    status, _, answer = _request(url + "/summarize", b'{"document": "Hello \\ud800 world, a fine day."}', raw=True)
    assert status == 200 and "\ufffd" in answer["summary"]
    chat = b'{"messages": [{"role": "user", "content": "Bad \\udfff text in a chat message."}]}'
    status, _, answer = _request(url + "/v1/chat/completions", chat, raw=True)
    assert status == 200 and answer["choices"][0]["message"]["content"]


def test_the_model_folder_moved_while_serving(tiny_run, tmp_path):
    from llm_summarizer.models.loading import load_for_generation
    from llm_summarizer.serve.server import Summarizer, make_server

    copy = tmp_path / "model"
    shutil.copytree(tiny_run.model_dir, copy)
    served = make_server(Summarizer(load_for_generation(copy), False, 5000), "127.0.0.1", 0, 4)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    url = "http://%s:%d" % served.address
    try:
        shutil.move(str(copy), str(tmp_path / "moved"))
        status, _, answer = _request(url + "/v1/models", method="GET")
        assert status == 200 and answer["data"][0]["id"] == "model"
        status, answer = _post(url + "/summarize", {"document": DOCS[0]})
        assert status == 200 and answer["summary"]
    finally:
        served.stop()
        thread.join(30)


def test_health_reports_the_queue_waits(sleepy_server):
    url, _ = sleepy_server
    health = _request(url + "/health", method="GET")[2]
    assert health["waits"] == {"recent": 0, "p50_s": None, "p95_s": None, "max_s": None}
    assert health["longest_waiting_s"] == 0.0
    assert json.dumps(health)  # plain JSON
