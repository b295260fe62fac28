"""How long a short request waits behind long ones at `llm-summarizer serve`: first in, first out (the queue before
it was size-aware) against the queue as it is, on one model, in one run.

    .venv/bin/python scripts/bench_serve_queue.py --model fine_tuned/tiny          # six 80,000-character documents
    .venv/bin/python scripts/bench_serve_queue.py --model M --n-long 6 --long-chars 80000 --short-chars 300

Six long documents are sent at once, then (0.5 s later) a short one; each policy runs on a fresh server over the
same loaded model. Prints one JSON line per policy (the short request's and the long ones' latencies, the order they
were answered) and a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def post(url: str, document: str) -> tuple[float, float]:
    """(latency, the time it was answered)."""
    t0 = time.perf_counter()
    req = urllib.request.Request(
        url + "/summarize",
        data=json.dumps({"document": document}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=3600) as r:
        json.loads(r.read())
    return time.perf_counter() - t0, time.perf_counter()


def measure(summarizer, policy: str, longs: list[str], short: str) -> dict:
    from llm_summarizer.serve import server

    class Fifo(server.Queue):
        """The queue as it was: turns in arrival order (no estimate of the work)."""

        @property
        def seconds_per_char(self):
            return 0.0

        @seconds_per_char.setter
        def seconds_per_char(self, value):
            pass

    served = server.make_server(summarizer, "127.0.0.1", 0, max_queue=64)
    if policy == "fifo":
        served.app.queue = Fifo(64)
    thread = threading.Thread(target=served.run, daemon=True)
    thread.start()
    url = "http://%s:%d" % served.address
    try:
        with ThreadPoolExecutor(len(longs) + 1) as pool:
            futures = []
            for d in longs:
                futures.append(pool.submit(post, url, d))
                time.sleep(0.05)
            time.sleep(0.5)
            short_f = pool.submit(post, url, short)
            short_s, short_done = short_f.result()
            long_results = [f.result() for f in futures]
    finally:
        served.stop()
        thread.join(60)
    answered_before_short = sum(done < short_done for _, done in long_results)
    return {
        "policy": policy,
        "short_latency_s": round(short_s, 2),
        "long_latencies_s": [round(s, 2) for s, _ in long_results],
        "long_answered_before_the_short": answered_before_short,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--n-long", type=int, default=6)
    ap.add_argument("--long-chars", type=int, default=80_000)
    ap.add_argument("--short-chars", type=int, default=300)
    args = ap.parse_args(argv)

    from llm_summarizer.commands import boot

    boot.setup_logging()
    boot.ml_stack(boot.saved_model_backend(args.model, None))
    from llm_summarizer.models.loading import load_for_generation
    from llm_summarizer.serve.server import Summarizer

    docs = [json.loads(line)["document"] for line in (ROOT / "data" / "demo" / "test.jsonl").read_text().splitlines()]
    text = "\n".join(docs * (args.long_chars // sum(map(len, docs)) + 2))
    longs = [text[i * 997 : i * 997 + args.long_chars] for i in range(args.n_long)]  # six different documents
    short = docs[0][: args.short_chars]
    summarizer = Summarizer(load_for_generation(args.model), False, max(args.long_chars, args.short_chars) + 1)
    t0 = time.perf_counter()
    one = summarizer.summarize(longs[0])
    print(f"one long document alone: {time.perf_counter() - t0:.1f} s ({one['method']})", flush=True)
    rows = []
    for policy in ("fifo", "size-aware"):
        row = measure(summarizer, policy, longs, short)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| policy | short request's latency | long ones answered before it | long latencies |\n|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['policy']} | {r['short_latency_s']} s | {r['long_answered_before_the_short']} of {args.n_long} | "
            f"{min(r['long_latencies_s'])}-{max(r['long_latencies_s'])} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
